package pec_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/pec"
)

// sizedOriginal returns a conformant message of about size octets.
func sizedOriginal(size int) string {
	head := "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nFrom: a@pec.example.it\r\nTo: b@pec.altro.it\r\n" +
		"Subject: benchmark\r\nMessage-ID: <bench@client>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
	line := strings.Repeat("0123456789", 7) + "\r\n"
	var b strings.Builder
	b.WriteString(head)
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// BenchmarkEnvelope measures building and signing a transport envelope:
// BuildEnvelope, then Sign (SHA-256 over the whole entity, one private-key
// operation), then assembling the bytes.
func BenchmarkEnvelope(b *testing.B) {
	for _, key := range []string{"rsa", "p256"} {
		s := testpki.Signer(b, key)
		for _, size := range []int{10 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/%dKB", key, size>>10), func(b *testing.B) {
				raw := sizedOriginal(size)
				sub, v := pec.Inspect([]byte(raw), pec.SMTPEnvelope{From: "a@pec.example.it", To: []string{"b@pec.altro.it"}}, pec.Limits{})
				if len(v) > 0 {
					b.Fatal(v)
				}
				tx := pec.Transaction{Provider: provider, At: goldenAt, ID: goldenID, Submission: sub, Directory: dir}
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				for b.Loop() {
					m, err := pec.BuildEnvelope(tx)
					if err != nil {
						b.Fatal(err)
					}
					entity, err := s.Sign(m.Body, goldenAt.Time())
					if err != nil {
						b.Fatal(err)
					}
					_ = m.Bytes(entity)
				}
			})
		}
	}
}

// BenchmarkInspect measures the formal checks of a 1 MB submission.
func BenchmarkInspect(b *testing.B) {
	raw := []byte(sizedOriginal(1 << 20))
	env := pec.SMTPEnvelope{From: "a@pec.example.it", To: []string{"b@pec.altro.it"}}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, v := pec.Inspect(raw, env, pec.Limits{}); len(v) > 0 {
			b.Fatal(v)
		}
	}
}
