#!/usr/bin/env bash
# End to end with a client that is not ours: build pecgw, init, add a user,
# serve, send one message with swaks over each listener, and check the
# results with openssl and pecgw's own verifiers. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
sub=127.0.0.1:$(freeport)
smtps=127.0.0.1:$(freeport)
while [ "$smtps" = "$sub" ]; do smtps=127.0.0.1:$(freeport); done # the kernel may give the same port twice

go build -o "$tmp/pecgw" ./cmd/pecgw
"$tmp/pecgw" init --dir "$tmp/d" --domain pec.example.it --provider-name "CI PEC S.p.A." \
  --submission-addr "$sub" --smtps-addr "$smtps" >/dev/null
printf 'ci password 1\n' | "$tmp/pecgw" user add ci@pec.example.it --config "$tmp/d/pecgw.toml" --password-stdin >/dev/null
"$tmp/pecgw" check-config --config "$tmp/d/pecgw.toml"
"$tmp/pecgw" serve --config "$tmp/d/pecgw.toml" >"$tmp/serve.out" 2>"$tmp/serve.err" &
pid=$!
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/${smtps%:*}/${smtps#*:}") 2>/dev/null; then break; fi
  sleep 0.2
done

cat >"$tmp/msg.eml" <<MSG
Date: $(date -R)
From: ci@pec.example.it
To: anna@pec.altro.it
Subject: CI end to end
Message-ID: <ci-$$@client.example>

Sent by swaks.
MSG
# The same message twice, once per listener: the second is the client's
# retry and must be answered with the first PEC identifier, nothing new.
id1=$(swaks --server "$sub" --tls --auth PLAIN --auth-user ci@pec.example.it --auth-password 'ci password 1' \
  --from ci@pec.example.it --to anna@pec.altro.it --data "$tmp/msg.eml" 2>&1 | sed -n 's/.*250 2.0.0 \([^ ]*@[^ ]*\) Messaggio .*/\1/p')
id2=$(swaks --server "$smtps" --tlsc --auth LOGIN --auth-user ci@pec.example.it --auth-password 'ci password 1' \
  --from ci@pec.example.it --to anna@pec.altro.it --data "$tmp/msg.eml" 2>&1 | sed -n 's/.*250 2.0.0 \([^ ]*@[^ ]*\) Messaggio .*/\1/p')
[ -n "$id1" ] && [ "$id1" = "$id2" ] || { echo "PEC ids: first '$id1', retry '$id2'"; cat "$tmp/serve.err"; exit 1; }

n=0
for f in "$tmp"/d/outbound/new/* "$tmp"/d/mailboxes/ci@pec.example.it/new/*; do
  openssl cms -verify -CAfile "$tmp/d/pki/ca.pem" -in "$f" -out /dev/null 2>/dev/null \
    || { echo "openssl cms -verify failed on $f"; exit 1; }
  "$tmp/pecgw" verify "$f" --ca "$tmp/d/pki/ca.pem" >/dev/null || { echo "pecgw verify failed on $f"; exit 1; }
  n=$((n+1))
done
[ "$n" -eq 2 ] || { echo "expected 1 envelope and 1 receipt (the retry is a duplicate), found $n files"; cat "$tmp/serve.err"; exit 1; }
kill -TERM "$pid"; wait "$pid" || true; pid=
"$tmp/pecgw" log verify --dir "$tmp/d/log" --ca "$tmp/d/pki/ca.pem" >/dev/null
echo "e2e: a message and its retry sent with swaks ($id1), 2 signed files verified by openssl, log verified"
