#!/bin/sh
# Regenerates the committed test keys and certificates with OpenSSL, so that
# they come from an implementation other than ours. Run from this folder:
#   sh mkfixtures.sh && cd .. && go test -run TestSignGolden -update
# The keys are for these tests only. The CA key is thrown away; the
# certificates are valid for 20 years from the day they are made.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/ext.cnf" <<'CNF'
[req]
distinguished_name = dn
[dn]

[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

# RFC 6109 §5.5: no basicConstraints, critical keyUsage, SAN rfc822Name.
[signing]
keyUsage = critical, digitalSignature
extendedKeyUsage = emailProtection
subjectAltName = email:posta-certificata@pec.example.it
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$tmp/ca-key.pem" -out ca.pem \
	-days 7300 -sha256 -subj "/O=Example PEC S.p.A./CN=pecgw test CA" \
	-config "$tmp/ext.cnf" -extensions ca

openssl genrsa -traditional -out rsa-key.pem 2048
openssl ecparam -name prime256v1 -genkey -out p256-key.pem
for k in rsa p256; do
	openssl req -new -key $k-key.pem -out "$tmp/$k.csr" \
		-subj "/C=IT/O=Example PEC S.p.A./CN=Posta Certificata Example PEC S.p.A."
	openssl x509 -req -in "$tmp/$k.csr" -CA ca.pem -CAkey "$tmp/ca-key.pem" -CAcreateserial \
		-CAserial "$tmp/serial" -days 7300 -sha256 -extfile "$tmp/ext.cnf" -extensions signing -out $k.pem
done

# A legacy S/MIME message as the 2014 providers sent them: SHA-1,
# application/x-pkcs7-signature (a fuzz seed and a parser fixture).
openssl smime -sign -md sha1 -in content.eml -signer rsa.pem -inkey rsa-key.pem -out legacy-sha1.eml
