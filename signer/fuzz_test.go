package signer

import (
	"bytes"
	"testing"
)

// FuzzVerify feeds Verify hostile messages: it must never panic, and a nil
// error must come with a signer certificate.
func FuzzVerify(f *testing.F) {
	signed := signedMessage(f, "rsa")
	f.Add(signed)
	f.Add(signedMessage(f, "p256"))
	f.Add(toLF(signed))
	f.Add(readTestdata(f, "legacy-sha1.eml"))
	// Broken ones.
	f.Add([]byte{})
	f.Add([]byte("Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nMAA=\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: binary\r\n\r\n0\x80\x06\x09*\x86H\x86\xf7\r\x01\x07\x02\xa0\x80\x00\x00\x00\x00\r\n--b--\r\n"))
	f.Add(bytes.Replace(signed, []byte("smime.p7s\"\r\n\r\nMII"), []byte("smime.p7s\"\r\n\r\nMIA"), 1))
	f.Add(signed[:len(signed)/2])
	f.Fuzz(func(t *testing.T, msg []byte) {
		res, err := Verify(msg, nil)
		if err == nil && (res == nil || res.Signer == nil) {
			t.Fatalf("Verify returned no error and no signer: %+v", res)
		}
		if err != nil && res != nil {
			t.Fatalf("Verify returned both a Result and %v", err)
		}
	})
}
