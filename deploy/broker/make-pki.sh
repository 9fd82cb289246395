#!/usr/bin/env bash
# A small certificate authority for a city's bench pilot, with openssl.
# Idempotent: an existing CA, key or certificate is never replaced.
#
#   make-pki.sh DIR ca                       CA key + certificate (ca.key, ca.crt)
#   make-pki.sh DIR broker HOST [HOST...]    broker.key/.crt for the broker's
#                                            DNS names / IP addresses
#   make-pki.sh DIR client NAME              NAME.key/.crt with CN=NAME: a bench
#                                            id ([a-z0-9][a-z0-9-]{0,62}) or an ops
#                                            identity: ops.view, ops.command,
#                                            ops.bridge, ops.archive (or ops.view-X, ...)
#   make-pki.sh DIR revoke NAME              withdraw NAME's certificate: DIR/crl.pem
#                                            is rewritten; copy it to the broker and
#                                            restart mosquitto
#   make-pki.sh DIR crl                      rewrite DIR/crl.pem (it is valid for
#                                            DAYS; renew it well before)
#
# Keys are EC P-256 (fast on a Pi Zero), written 0600; certificates 0644.
# Validity: DAYS (default 3650) - a bench runs unattended for years and an
# expired certificate silently cuts its telemetry, so renew well before.
# For production keep ca.key offline; the broker needs only ca.crt.
# On the bench: ca.crt, <id>.crt and <id>.key go to /etc/bench-agent/secrets/.
set -euo pipefail
umask 077

die() { echo "make-pki: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: make-pki.sh DIR ca | broker HOST... | client NAME | revoke NAME | crl"
dir=$1
what=$2
shift 2
days=${DAYS:-3650}
mkdir -p "$dir"
cd "$dir"

# sign NAME SUBJECT EXTENSIONS: NAME.key (kept if present) + NAME.crt signed by the CA.
sign() {
    local name=$1 subject=$2 extensions=$3
    [ -f ca.key ] && [ -f ca.crt ] || die "no CA in $dir: run 'make-pki.sh $dir ca' first"
    if [ -f "$name.crt" ]; then
        echo "make-pki: $dir/$name.crt exists, kept"
        return
    fi
    [ -f "$name.key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key" 2>/dev/null
    chmod 0600 "$name.key"
    openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
    printf '%s\n' "$extensions" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days "$days" -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
    chmod 0644 "$name.crt"
    echo "make-pki: wrote $dir/$name.crt and $dir/$name.key"
}

# ca_database: what `openssl ca` needs to revoke and to sign a CRL (certificates are
# issued with `openssl x509`, so the index starts empty and lists revocations).
ca_database() {
    [ -f ca.key ] && [ -f ca.crt ] || die "no CA in $dir: run 'make-pki.sh $dir ca' first"
    [ -f index.txt ] || : >index.txt
    [ -f crlnumber ] || echo 01 >crlnumber
    printf '%s\n' "[ca]" "default_ca = pilot" "[pilot]" "dir = ." "database = index.txt" \
        "crlnumber = crlnumber" "certificate = ca.crt" "private_key = ca.key" \
        "default_md = sha256" "default_crl_days = $days" >ca.cnf
}

write_crl() {
    openssl ca -config ca.cnf -gencrl -out crl.pem 2>/dev/null || die "openssl could not write the CRL"
    chmod 0644 crl.pem
    echo "make-pki: wrote $dir/crl.pem"
}

case "$what" in
    ca)
        if [ -f ca.crt ]; then
            echo "make-pki: $dir/ca.crt exists, kept"
        else
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
            chmod 0600 ca.key
            openssl req -x509 -new -key ca.key -sha256 -days "$days" \
                -subj "/O=${PKI_ORG:-Smart bench pilot}/CN=${PKI_CA_CN:-smartbench pilot CA}" \
                -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" \
                -addext "subjectKeyIdentifier=hash" -out ca.crt
            chmod 0644 ca.crt
            echo "make-pki: wrote $dir/ca.crt and $dir/ca.key"
        fi
        ca_database
        [ -f crl.pem ] || write_crl
        ;;
    revoke)
        [ $# -eq 1 ] || die "revoke needs exactly one NAME"
        [ -f "$1.crt" ] || die "no certificate $dir/$1.crt to revoke"
        ca_database
        openssl ca -config ca.cnf -revoke "$1.crt" 2>/dev/null ||
            die "openssl could not revoke $1 (already revoked?)"
        write_crl
        echo "make-pki: revoked $1; copy $dir/crl.pem to the broker and restart mosquitto"
        ;;
    crl)
        ca_database
        write_crl
        ;;
    broker)
        [ $# -ge 1 ] || die "broker needs at least one HOST (DNS name or IP address)"
        sans=()
        for host in "$@"; do
            if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then sans+=("IP:$host"); else sans+=("DNS:$host"); fi
        done
        sign broker "/CN=$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$(IFS=,; echo "${sans[*]}")
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"
        ;;
    client)
        [ $# -eq 1 ] || die "client needs exactly one NAME"
        name=$1
        # The CN becomes the MQTT username (and client id) and a bench's is
        # substituted into the ACL patterns: a bench id (no '/', '+', '#', no
        # dot), or an ops identity, whose dot no bench id can have.
        if [[ $name =~ ^ops\.(view|command|bridge|archive)(-[a-z0-9][a-z0-9-]{0,30})?$ ]]; then
            :
        elif [[ $name == ops.* ]]; then
            die "'$name' is not an ops identity (ops.view, ops.command, ops.bridge, ops.archive, or one of them -X)"
        else
            [[ $name =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || die "'$name' is not a bench id ([a-z0-9][a-z0-9-]{0,62})"
            [[ $name != ops ]] || die "'ops' is reserved: city operations use ops.view and ops.command"
            [[ $name != broker && $name != ca && $name != crl ]] || die "'$name' is reserved for the PKI's own files"
        fi
        sign "$name" "/CN=$name" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"
        ;;
    *) die "unknown command '$what' (ca, broker, client, revoke, crl)" ;;
esac
