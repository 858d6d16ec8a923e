#!/usr/bin/env sh
# The whole secure deployment on this machine (loopback): a TLS SuperLink with SuperNode authentication,
# NODES authenticated SuperNodes (the last one Byzantine by its node config), `flwr run .` against it.
# Every process is stopped at the end (or on Ctrl-C). Options are those of resam_flower.deploy.loopback:
#
#   scripts/local_federation.sh --nodes 4 --byzantine sf --rounds 5 --run-config "lr=0.5"
set -eu
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
cd "$here"
exec "$python" -m resam_flower.deploy.loopback --app "$here" "$@"
