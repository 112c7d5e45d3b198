package signer

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/internal/testtool"
)

// TestSignDetached: a detached signature over arbitrary bytes (the log's
// checkpoints) verifies with VerifyDetached and with openssl, and a
// changed byte does not.
func TestSignDetached(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	for _, kind := range []string{"rsa", "p256"} {
		s := fixtureSigner(t, kind)
		data := []byte("pecgw checkpoint seq=42 head=abc\nno CRLF canonicalisation\n")
		der, err := s.SignDetached(data, testAt)
		if err != nil {
			t.Fatal(err)
		}
		res, err := VerifyDetached(data, der, fixtureRoots(t))
		if err != nil || !res.ChainVerified || !res.SigningTime.Equal(testAt) {
			t.Fatalf("%s: VerifyDetached = %+v, %v", kind, res, err)
		}
		bad := append([]byte(nil), data...)
		bad[0] ^= 1
		if _, err := VerifyDetached(bad, der, nil); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: altered data: %v, want ErrBadSignature", kind, err)
		}
		dir := t.TempDir()
		for name, b := range map[string][]byte{"data": data, "sig.der": der, "ca.pem": readTestdata(t, "ca.pem")} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, err := exec.Command(openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", filepath.Join(dir, "sig.der"),
			"-content", filepath.Join(dir, "data"), "-CAfile", filepath.Join(dir, "ca.pem"), "-out", os.DevNull).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Verification successful") {
			t.Errorf("%s: openssl cms -verify: %v\n%s", kind, err, out)
		}
	}
	if _, err := fixtureSigner(t, "rsa").SignDetached([]byte("x"), testAt.AddDate(100, 0, 0)); err == nil {
		t.Error("SignDetached outside the certificate validity succeeded")
	}
}
