package signer

import (
	"bytes"
	"fmt"
	"testing"
)

// benchContent is a MIME entity of about size bytes: a header and base64-
// like lines, as an envelope with an attachment looks.
func benchContent(size int) []byte {
	var b bytes.Buffer
	b.WriteString("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	line := bytes.Repeat([]byte("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"), 3)[:76]
	for b.Len() < size {
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func sizeName(size int) string {
	if size >= 1<<20 {
		return fmt.Sprintf("%dMB", size>>20)
	}
	return fmt.Sprintf("%dKB", size>>10)
}

func BenchmarkSign(b *testing.B) {
	for _, k := range []struct{ name, fixture string }{{"rsa2048", "rsa"}, {"p256", "p256"}} {
		s := fixtureSigner(b, k.fixture)
		for _, size := range []int{10 << 10, 1 << 20} {
			content := benchContent(size)
			b.Run(k.name+"/"+sizeName(size), func(b *testing.B) {
				b.SetBytes(int64(len(content)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.Sign(content, testAt); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, size := range []int{10 << 10, 1 << 20} {
		out, err := fixtureSigner(b, "rsa").Sign(benchContent(size), testAt)
		if err != nil {
			b.Fatal(err)
		}
		msg := asMessage(out)
		b.Run("rsa2048/"+sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, err := Verify(msg, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
