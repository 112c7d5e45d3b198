package pec

import (
	"bytes"
	"net/mail"
	"strings"
	"testing"
)

func TestLogPosition(t *testing.T) {
	m := &Message{Body: []byte("MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\nbody\r\n")}
	hash := strings.Repeat("ab", 32)
	m.SetLogPosition(1234, hash)
	want := "MIME-Version: 1.0\r\nX-Pecgw-Log-Position: seq=1234; record=" + hash + "\r\nContent-Type: multipart/mixed;"
	if !bytes.HasPrefix(m.Body, []byte(want)) {
		t.Fatalf("entity:\n%s", m.Body)
	}
	e, err := mail.ReadMessage(bytes.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	seq, h, err := ParseLogPosition(e.Header.Get(LogPositionField))
	if err != nil || seq != 1234 || h != hash {
		t.Errorf("ParseLogPosition: %d %s %v", seq, h, err)
	}
	for _, bad := range []string{"", "seq=0; record=" + hash, "seq=1; record=" + strings.ToUpper(hash), "seq=1;record=" + hash, "seq=1; record=" + hash[:62], "seq=99999999999999999999; record=" + hash} {
		if _, _, err := ParseLogPosition(bad); err == nil {
			t.Errorf("ParseLogPosition(%q) passed", bad)
		}
	}
}
