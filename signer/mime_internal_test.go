package signer

import (
	"bytes"
	"testing"
)

// TestToCRLF checks the fast canonicalisation against the obvious one.
func TestToCRLF(t *testing.T) {
	slow := func(b []byte) []byte {
		var out []byte
		for i, c := range b {
			if c == '\n' && (i == 0 || b[i-1] != '\r') {
				out = append(out, '\r')
			}
			out = append(out, c)
		}
		return out
	}
	for _, in := range []string{"", "a", "\n", "\n\n", "\r\n", "\r\r\n", "a\nb\r\nc\n", "\n\r\n\n", "x\r", "\r\n\n\r\n", "end\n"} {
		if got, want := toCRLF([]byte(in)), slow([]byte(in)); !bytes.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("toCRLF(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzToCRLF(f *testing.F) {
	f.Add([]byte("a\nb\r\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := toCRLF(b)
		if bytes.Contains(bytes.ReplaceAll(got, []byte("\r\n"), nil), []byte("\n")) {
			t.Fatalf("bare LF left in %q", got)
		}
		if !bytes.Equal(bytes.ReplaceAll(got, []byte("\r\n"), []byte("\n")), bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))) {
			t.Fatalf("content changed: %q → %q", b, got)
		}
	})
}
