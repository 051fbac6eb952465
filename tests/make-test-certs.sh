#!/bin/sh
# make-test-certs.sh DIR [FQDN...]
#
# Makes TEST certificates for the bridge's SIP edge with openssl, in DIR:
#   ca.crt, ca.key      a self-signed test CA (10 years)
#   edge.crt, edge.key  the edge's leaf certificate, signed by that CA (825 days), for
#                       federation: basicConstraints=critical,CA:FALSE,
#                       keyUsage=critical,digitalSignature,keyEncipherment,
#                       extendedKeyUsage=serverAuth,clientAuth (a federation edge presents its
#                       certificate both as a TLS server and as a TLS client).
#
# The leaf's subject CN is the first FQDN; its subjectAltName lists every FQDN as a DNS name
# plus DNS:localhost and IP:127.0.0.1. Without FQDN arguments it is made for
# sip.example.org and example.org, matching config/lcs-bridge.example.toml:
#
#   sh tests/make-test-certs.sh config/certs
#   cargo run -- check-config config/lcs-bridge.example.toml
#
# Idempotent: when DIR already holds all four files and edge.crt is still valid for at least a
# day, nothing is done. Delete DIR to make new ones. Quiet unless something fails.
# These are for tests only: never use them for a real federation edge.
set -eu

if [ "$#" -lt 1 ]; then
    echo "usage: $0 DIR [FQDN...]" >&2
    exit 2
fi
dir=$1
shift
if [ "$#" -eq 0 ]; then
    set -- sip.example.org example.org
fi
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl is not installed" >&2; exit 1; }

mkdir -p "$dir"
if [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] && [ -s "$dir/edge.crt" ] && [ -s "$dir/edge.key" ] \
    && openssl x509 -in "$dir/edge.crt" -noout -checkend 86400 >/dev/null 2>&1; then
    exit 0
fi

cn=$1
san=
for name in "$@"; do
    san="${san}DNS:${name},"
done
san="${san}DNS:localhost,IP:127.0.0.1"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM
umask 077

openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -subj "/CN=lcs-bridge test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" >/dev/null 2>&1

openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
    -keyout "$tmp/edge.key" -out "$tmp/edge.csr" >/dev/null 2>&1

cat >"$tmp/edge.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
EXT

openssl x509 -req -in "$tmp/edge.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile "$tmp/edge.ext" \
    -out "$tmp/edge.crt" >/dev/null 2>&1

chmod 644 "$tmp/ca.crt" "$tmp/edge.crt"
chmod 600 "$tmp/ca.key" "$tmp/edge.key"
for f in ca.crt ca.key edge.crt edge.key; do
    mv -f "$tmp/$f" "$dir/$f"
done
