#!/usr/bin/env bash
# Writes the files kustomization.yaml turns into Secrets, into deploy/kubernetes/secrets/
# (or the folder given as $1), mode 0600, never overwriting one that exists (run it again
# after deleting a file to renew that credential). Needs bash and openssl (1.1.1 or later).
#
#   redis-password, redis-url   the trial Redis' password and the coordinators' REDIS_URL
#   jwt-hs256.secret            the HS256 key of the coordinator's JWTs (python -m
#                               coordinator token --secret-file secrets/jwt-hs256.secret ...)
#   tokens.csv                  the static token file, with one operator token, hashed
#   operator.token              that operator's token itself: NOT in any Secret; keep it in
#                               your password manager and delete the file
#   metrics.token               the bearer token Prometheus sends to /metrics
#   ca.crt, ca.key              a throw-away CA (10 years); ca.key signs client certificates
#   tls.crt, tls.key            the node's certificate (1 year) for the Service's names
#
# For production, issue tls.* from your own CA or with cert-manager (cert-manager/), and
# point redis-url at your Redis.
set -euo pipefail
umask 077
out=${1:-"$(cd "$(dirname "$0")" && pwd)/secrets"}
namespace=${AITBC_NAMESPACE:-aitbc}
mkdir -p "$out"
cd "$out"

made() { [[ -s $1 ]] && echo "kept $out/$1" && return 0; return 1; }

made redis-password || openssl rand -hex 32 | tr -d '\n' > redis-password
# Hex, so the password needs no escaping in the URL.
made redis-url || printf 'redis://:%s@aitbc-redis:6379/1' "$(cat redis-password)" > redis-url
made jwt-hs256.secret || openssl rand -base64 48 | tr -d '\n' > jwt-hs256.secret
made metrics.token || openssl rand -hex 32 | tr -d '\n' > metrics.token
if ! made tokens.csv; then
    token=$(openssl rand -hex 32)
    printf '%s' "$token" > operator.token
    {
        echo '# sha256:<hex of sha256(token)>,<principal>,<roles ;-separated>,<agent patterns ;-separated>'
        printf 'sha256:%s,ops-admin,operator,\n' "$(printf '%s' "$token" | openssl dgst -sha256 -r | cut -d' ' -f1)"
    } > tokens.csv
    echo "operator token of ops-admin written to $out/operator.token"
fi
if ! made ca.crt; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=aitbc trial CA" -keyout ca.key -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
fi
if ! made tls.crt; then
    service=aitbc-coordinator
    names="DNS:$service,DNS:$service.$namespace,DNS:$service.$namespace.svc"
    names="$names,DNS:$service.$namespace.svc.cluster.local,DNS:localhost"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$service.$namespace.svc" -keyout tls.key -out tls.csr 2>/dev/null
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
        -out tls.crt -extfile <(printf '%s\n' "subjectAltName=$names" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
            "basicConstraints=critical,CA:FALSE") 2>/dev/null
    rm -f tls.csr ca.srl
fi
echo "secrets in $out"
