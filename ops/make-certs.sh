#!/usr/bin/env bash
# Makes, with openssl, a private CA, a server certificate and caller
# certificates for readstates's [tls] section (see "Security" in the
# README). Each caller's certificate names it as its SAN DNS name and its
# common name: list that name in auth.allowed_callers.
#
#   ops/make-certs.sh OUT_DIR SERVER_NAME [CALLER_NAME...]
#
# Writes ca.pem and ca.key (keep ca.key off the servers), SERVER_NAME's
# server.pem and server.key (also valid for localhost and 127.0.0.1), and a
# CALLER_NAME.pem and .key per caller. Keys are EC P-256, unencrypted.
set -euo pipefail

out=${1:?usage: make-certs.sh OUT_DIR SERVER_NAME [CALLER_NAME...]}
server=${2:?usage: make-certs.sh OUT_DIR SERVER_NAME [CALLER_NAME...]}
shift 2
mkdir -p "$out"
cd "$out"

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# sign FILE_STEM COMMON_NAME EXTENSIONS: a certificate signed by the CA.
sign() {
    new_key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 825 -extfile <(printf '%s\n' "$3") -out "$1.pem"
    rm "$1.csr"
}

new_key ca.key
openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=readstates CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

sign server "$server" "subjectAltName=DNS:$server,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"

for caller in "$@"; do
    sign "$caller" "$caller" "subjectAltName=DNS:$caller
extendedKeyUsage=clientAuth"
done
