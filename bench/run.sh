#!/usr/bin/env bash
# herd's benchmark suite, the one command for humans (README.md, "Performance"):
#
#     sudo bash bench/run.sh                 # full sizes, release build (a few minutes on 2 cores)
#     sudo bash bench/run.sh --small         # CI sizes, debug build (about a minute)
#     sudo bash bench/run.sh --only e2e,hq --tasks 5000     # any other flag goes to herd-bench
#
# Starts PostgreSQL on loopback (scripts/start-postgres.sh), installs HyperQueue in a venv
# (bench/setup.sh), builds the Docker test image (scripts/build-test-image.sh), builds herd
# and herd-bench (--release unless --small or --debug), runs herd-bench, and writes the
# figures to bench/results/latest.json (and a dated copy). The table goes to stdout.
# Run it as root on Debian 12, as scripts/test.sh is; a missing service is reported as skipped
# (an error when CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench: %s\n' "$*" >&2; }

profile=release
forwarded=()
for argument in "$@"; do
    case "$argument" in
        --small) profile=debug; forwarded+=("$argument") ;;
        --debug) profile=debug ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) forwarded+=("$argument") ;;
    esac
done

log "services: PostgreSQL"
if exports=$(bash scripts/start-postgres.sh); then
    eval "$exports"
    export HERD_TEST_POSTGRES_URL
else
    log "no PostgreSQL: its figures will be reported as skipped"
fi
log "services: HyperQueue venv"
if exports=$(bash bench/setup.sh); then
    eval "$exports"
    export HERD_BENCH_HQ_PYTHON
else
    log "no HyperQueue: its figure will be reported as skipped"
fi
log "services: Docker test image"
bash scripts/build-test-image.sh || log "no Docker test image: the Docker figure will be reported as skipped"

# 1,000 simulated workers hold 2,000 sockets between herd-bench and the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo_flags=(--locked -p herd-tests --bin herd-bench -p herd-launch --bin herd)
[[ $profile == release ]] && cargo_flags+=(--release)
log "cargo build (${profile})"
cargo build "${cargo_flags[@]}"

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
json=bench/results/$stamp.json
log "herd-bench ${forwarded[*]:-}"
"target/$profile/herd-bench" --json "$json" "${forwarded[@]}"
cp "$json" bench/results/latest.json
log "figures in $json and bench/results/latest.json"
