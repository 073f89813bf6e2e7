#!/usr/bin/env bash
# Installs what herd-bench compares herd with: HyperQueue from PyPI (`hyperqueue`), in a venv
# under ${HERD_SERVICES_DIR:-/var/tmp/herd-services}/hq-venv, through scripts/lib/services.sh
# like every service script. Idempotent: a venv that already has the right version is kept.
#
# The wheel carries HyperQueue's server, worker and client in its Python extension module
# (no separate `hq` binary): bench/hyperqueue-e2e.py starts them with `LocalCluster`.
#
# Needs python3 with venv (on Debian, python3-venv is installed with apt-get when run as root)
# and PyPI. Prints the line to eval on stdout, everything else on stderr:
#     eval "$(bash bench/setup.sh)"      # exports HERD_BENCH_HQ_PYTHON
set -euo pipefail

# shellcheck source=../scripts/lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/services.sh" bench-setup

version=0.27.0
services=${HERD_SERVICES_DIR:-/var/tmp/herd-services}
venv=$services/hq-venv
python=$venv/bin/python
mkdir -p "$services"

if [[ "$(venv_version "$venv" hyperqueue || true)" != "$version" ]]; then
    venv_install "$venv" "hyperqueue==$version"
    [[ "$(venv_version "$venv" hyperqueue || true)" == "$version" ]] \
        || fail "hyperqueue $version did not install into $venv; is PyPI reachable (pip download hyperqueue)?"
fi
say "hyperqueue $("$python" -c 'import hyperqueue; print(hyperqueue.get_version())') in $venv"
echo "export HERD_BENCH_HQ_PYTHON=$python"
