package delivery

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestMaildirHasMessage(t *testing.T) {
	data := t.TempDir()
	out, ok := NewLocal(data).Outbound().(Finder)
	if !ok {
		t.Fatal("Local.Outbound is not a Finder")
	}
	// Nothing delivered yet: the folders do not even exist.
	if found, err := out.HasMessage("opec.1@pec.example.it"); err != nil || found {
		t.Fatalf("HasMessage on an empty maildir = %v, %v", found, err)
	}
	msg := func(header string) *Message {
		return &Message{
			ReversePath:  "posta-certificata@pec.example.it",
			ForwardPaths: []string{"a@pec.example.it"},
			Data:         []byte(header + "Subject: x\r\n\r\nMessage-ID: <in.the.body@x>\r\n"),
		}
	}
	target := out.(Target)
	for _, h := range []string{
		"Message-ID: <opec.1@pec.example.it>\r\n",
		"X-Riferimento-Message-ID: <client.1@x>\r\n",
		"message-id:\r\n <opec.folded@pec.example.it>\r\n",
	} {
		if err := target.Deliver(context.Background(), msg(h)); err != nil {
			t.Fatal(err)
		}
	}
	// A file read by a mail client sits in cur/.
	newDir := filepath.Join(data, "outbound", "new")
	entries, err := os.ReadDir(newDir)
	if err != nil || len(entries) != 3 {
		t.Fatalf("new/ = %d files, %v", len(entries), err)
	}
	first := entries[0].Name()
	if err := os.Rename(filepath.Join(newDir, first), filepath.Join(data, "outbound", "cur", first+":2,S")); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{
		"opec.1@pec.example.it":            true,
		"<opec.1@pec.example.it>":          true,
		"opec.folded@pec.example.it":       true,
		"client.1@x":                       false, // X-Riferimento-Message-ID is not the Message-ID
		"in.the.body@x":                    false, // after the header: not read
		"opec.2@pec.example.it":            false,
		"posta-certificata@pec.example.it": false,
	} {
		found, err := out.HasMessage(id)
		if err != nil {
			t.Fatalf("HasMessage(%q): %v", id, err)
		}
		if found != want {
			t.Errorf("HasMessage(%q) = %v, want %v", id, found, want)
		}
	}
	if _, err := out.HasMessage(" <> "); err == nil {
		t.Error("HasMessage of an empty id: no error")
	}
}
