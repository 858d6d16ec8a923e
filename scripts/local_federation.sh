#!/usr/bin/env sh
# The whole hardened deployment on this machine (loopback): a TLS SuperLink bound to 127.0.0.1 with
# SuperNode and SuperExec authentication, an nginx proxy that forwards only the Fleet API, NODES
# authenticated SuperNodes that dial the proxy (the last one Byzantine by its node config), and
# `flwr run .` against the SuperLink's Control API on loopback. Every process is stopped at the end (or on
# Ctrl-C). Needs nginx (apt-get install -y --no-install-recommends nginx); --no-proxy runs without it.
# Options are those of resam_flower.deploy.loopback:
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
