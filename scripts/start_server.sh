#!/usr/bin/env sh
# The server side of the hardened deployment (see docs/DEPLOYMENT.md), in the foreground until Ctrl-C:
# a TLS SuperLink with SuperNode and SuperExec authentication bound to 127.0.0.1 (its Control API is for
# the operator only: on this machine or through `ssh -L 8000:127.0.0.1:8000 <server>`), its SuperExec, and
# an nginx proxy on LISTEN that forwards only the Fleet API to the devices.
#
#   scripts/start_server.sh [CERTS_DIR [LISTEN]] [more options of resam_flower.deploy.server]
#   scripts/start_server.sh certs 0.0.0.0:9443 --port 8000
#
# Needs nginx (Debian/Ubuntu: apt-get install -y --no-install-recommends nginx) and the credentials of
# scripts/generate_certs.sh (ca.crt, server.pem, server.key, superexec.secret).
set -eu
certs="${1:-certs}"
listen="${2:-0.0.0.0:9443}"
[ "$#" -gt 0 ] && shift
[ "$#" -gt 0 ] && shift
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
exec "$python" -m resam_flower.deploy.server --certs "$certs" --listen "$listen" "$@"
