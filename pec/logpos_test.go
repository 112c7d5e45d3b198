package pec_test

import (
	"bytes"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// TestLogPositionInTheSignedEntity: the position goes into the signed
// multipart/mixed entity as one header field right after its
// MIME-Version, and nothing else changes: daticert.xml is the same
// octets (and still valid against the DTD), the outer header does not
// carry it, openssl still verifies, and the position is read back from
// the verified content. A message without a position is the golden file
// (TestGolden).
func TestLogPositionInTheSignedEntity(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	xmllint := testtool.Need(t, "xmllint")
	ca := testpki.CAFile(t)
	s := testpki.Signer(t, "rsa")
	hash := strings.Repeat("5f0c", 16)
	const seq = 18446744073709551615 // the longest seq
	// Receipts and notices: not the envelope.
	for _, k := range kinds[1:] {
		t.Run(k.name, func(t *testing.T) {
			m, err := k.build(goldenTx(t))
			if err != nil {
				t.Fatal(err)
			}
			before, xml := append([]byte(nil), m.Body...), append([]byte(nil), m.DatiCert...)
			if err := m.SetLogPosition(seq, hash); err != nil {
				t.Fatal(err)
			}
			field := "X-Pecgw-Log-Position: seq=18446744073709551615;\r\n record=" + hash + "\r\n"
			const mv = "MIME-Version: 1.0\r\n"
			if want := mv + field + string(before[len(mv):]); string(m.Body) != want {
				t.Fatalf("entity:\n%.400s", m.Body)
			}
			for _, line := range strings.Split(field, "\r\n") {
				if len(line) > 78 {
					t.Errorf("line of %d characters: %q", len(line), line)
				}
			}
			if !bytes.Equal(m.DatiCert, xml) {
				t.Error("daticert.xml changed")
			}
			msg := signed(t, m, s, goldenAt)
			if !bytes.Equal(daticertOf(t, msg), xml) {
				t.Error("the daticert.xml part is not the one built")
			}
			res, err := signer.Verify(msg, testpki.Roots())
			if err != nil {
				t.Fatal(err)
			}
			gotSeq, gotHash, found, err := pec.ReadLogPosition(res.Content)
			if err != nil || !found || gotSeq != seq || gotHash != hash {
				t.Errorf("ReadLogPosition: %d %s %v %v", gotSeq, gotHash, found, err)
			}
			outer, err := mail.ReadMessage(bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			if v := outer.Header.Get(pec.LogPositionField); v != "" {
				t.Errorf("the outer (unsigned) header carries %q", v)
			}
			dir := t.TempDir()
			f, x := filepath.Join(dir, "msg.eml"), filepath.Join(dir, "daticert.xml")
			if err := os.WriteFile(f, msg, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(x, xml, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(openssl, "cms", "-verify", "-CAfile", ca, "-in", f, "-out", os.DevNull).CombinedOutput(); err != nil {
				t.Fatalf("openssl cms -verify: %v\n%s", err, out)
			}
			if out, err := exec.Command(xmllint, "--noout", "--dtdvalid", filepath.Join("testdata", "daticert.dtd"), x).CombinedOutput(); err != nil {
				t.Fatalf("xmllint --dtdvalid: %v\n%s", err, out)
			}
		})
	}
}

func TestLogPositionRefusals(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	m, err := pec.BuildAcceptance(goldenTx(t))
	if err != nil {
		t.Fatal(err)
	}
	before := string(m.Body)
	for _, bad := range []struct {
		seq  uint64
		hash string
	}{{0, hash}, {1, strings.ToUpper(hash)}, {1, hash[:62]}, {1, hash[:63] + "\n"}, {1, ""}} {
		if err := m.SetLogPosition(bad.seq, bad.hash); err == nil || string(m.Body) != before {
			t.Errorf("SetLogPosition(%d, %q): %v", bad.seq, bad.hash, err)
		}
	}
	if err := m.SetLogPosition(7, hash); err != nil {
		t.Fatal(err)
	}
	if err := m.SetLogPosition(8, hash); err == nil {
		t.Error("a second position was set")
	}
	if seq, h, found, err := pec.ReadLogPosition(m.Body); seq != 7 || h != hash || !found || err != nil {
		t.Errorf("ReadLogPosition: %d %s %v %v", seq, h, found, err)
	}
}

func TestReadLogPosition(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		entity string
		seq    uint64
		found  bool
		bad    bool
	}{
		{"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nx\r\n", 0, false, false},
		{"MIME-Version: 1.0\r\nX-Pecgw-Log-Position: seq=12; record=" + hash + "\r\n\r\n", 12, true, false},
		{"x-pecgw-log-position: seq=12;\r\n\trecord=" + hash + "\r\n\r\n", 12, true, false},
		// Only the header of the entity: not a field in its body.
		{"MIME-Version: 1.0\r\n\r\nX-Pecgw-Log-Position: seq=12; record=" + hash + "\r\n", 0, false, false},
		{"X-Pecgw-Log-Position: seq=1; record=" + hash + "\r\nX-Pecgw-Log-Position: seq=2; record=" + hash + "\r\n\r\n", 0, true, true},
		{"X-Pecgw-Log-Position: seq=0; record=" + hash + "\r\n\r\n", 0, true, true},
		{"X-Pecgw-Log-Position: seq=1; record=" + strings.ToUpper(hash) + "\r\n\r\n", 0, true, true},
		{"X-Pecgw-Log-Position: seq=1 record=" + hash + "\r\n\r\n", 0, true, true},
		{"X-Pecgw-Log-Position: seq=1; record=" + hash[:62] + "\r\n\r\n", 0, true, true},
		{"X-Pecgw-Log-Position: seq=99999999999999999999; record=" + hash + "\r\n\r\n", 0, true, true},
		{"X-Pecgw-Log-Position: seq=1; record=" + hash + "; more\r\n\r\n", 0, true, true},
	} {
		seq, h, found, err := pec.ReadLogPosition([]byte(tc.entity))
		if found != tc.found || (err != nil) != tc.bad || !tc.bad && seq != tc.seq || !tc.bad && found && h != hash {
			t.Errorf("ReadLogPosition(%q) = %d %s %v %v", tc.entity, seq, h, found, err)
		}
	}
}
