#!/usr/bin/env bash
# Installs what herd-bench compares herd with: HyperQueue from PyPI (`hyperqueue`), in a venv
# under ${HERD_SERVICES_DIR:-/var/tmp/herd-services}/hq-venv. Idempotent: a venv that already
# has the right version is kept.
#
# The wheel carries HyperQueue's server, worker and client in its Python extension module
# (no separate `hq` binary): bench/hyperqueue.py starts them with `LocalCluster`.
#
# Needs python3 with venv (on Debian, python3-venv is installed with apt-get when run as root)
# and PyPI. Prints the line to eval on stdout, everything else on stderr:
#     eval "$(bash bench/setup.sh)"      # exports HERD_BENCH_HQ_PYTHON
set -euo pipefail

log() { printf 'bench-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

version=0.27.0
services=${HERD_SERVICES_DIR:-/var/tmp/herd-services}
venv=$services/hq-venv
python=$venv/bin/python
mkdir -p "$services"

installed() {
    "$python" -c "import sys, hyperqueue; sys.exit(0 if hyperqueue.get_version().lstrip('v') == '$version' else 1)" >/dev/null 2>&1
}

if ! installed; then
    # Debian's python3 first (the one python3-venv serves), else whatever python3 is on PATH.
    base_python=/usr/bin/python3
    [[ -x $base_python ]] || base_python=$(command -v python3 || true)
    [[ -n $base_python ]] || die "python3 not found: apt-get install python3 python3-venv"
    if ! "$base_python" -m venv --help >/dev/null 2>&1 || ! "$base_python" -c 'import ensurepip' >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || die "python3-venv is missing: run as root (it installs it with apt-get) or install it"
        log "installing python3-venv with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >&2
        apt-get install -y python3-venv >&2
    fi
    log "creating $venv with hyperqueue==$version from PyPI"
    rm -rf "$venv"
    "$base_python" -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "hyperqueue==$version" >&2 \
        || die "pip could not install hyperqueue==$version; is PyPI reachable (pip download hyperqueue)?"
    installed || die "hyperqueue $version did not install into $venv"
fi
log "hyperqueue $("$python" -c 'import hyperqueue; print(hyperqueue.get_version())') in $venv"
echo "export HERD_BENCH_HQ_PYTHON=$python"
