#!/usr/bin/env bash
# Regenerates the sandbox's TLS test material (committed; test-only, never use elsewhere):
#   ca.pem      test CA certificate (give it to clients, e.g. SSL_CERT_FILE=sandbox/tls/ca.pem)
#   server.pem  server certificate for 127.0.0.1..127.0.0.9 and localhost, signed by the CA
#   server.key  the server's private key (PKCS#8 PEM)
# The CA key is not kept: regenerate everything together. Valid for 20 years.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 7300 -subj "/CN=paymux sandbox test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" -out ca.pem

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out "$tmp/server.csr"
cat > "$tmp/ext.cnf" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,IP:127.0.0.4,IP:127.0.0.5,IP:127.0.0.6,IP:127.0.0.7,IP:127.0.0.8,IP:127.0.0.9
EXT
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days 7300 -sha256 -extfile "$tmp/ext.cnf" -out server.pem
openssl verify -CAfile ca.pem server.pem
