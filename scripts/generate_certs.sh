#!/usr/bin/env sh
# Development/test credentials for a secure Flower deployment (see docs/DEPLOYMENT.md):
# a local CA, the SuperLink's TLS certificate (SANs: localhost, 127.0.0.1, ::1 and every HOST given)
# and one OpenSSH P-384 key pair per SuperNode (register the .pub files with `flwr supernode register`).
#
#   scripts/generate_certs.sh [OUT_DIR [NUM_SUPERNODES [SUPERLINK_HOST ...]]]
#   scripts/generate_certs.sh certs 4 192.168.1.10 superlink.lan
#
# Python equivalent: python -m resam_flower.deploy.credentials --out certs --nodes 4 --host 192.168.1.10
set -eu
out="${1:-certs}"
nodes="${2:-4}"
[ "$#" -gt 0 ] && shift
[ "$#" -gt 0 ] && shift
hosts=""
for h in "$@"; do hosts="$hosts --host $h"; done
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
# shellcheck disable=SC2086
exec "$python" -m resam_flower.deploy.credentials --out "$out" --nodes "$nodes" $hosts
