#!/usr/bin/env bash
# herd's one verify command: what CI runs, and what a developer runs before pushing.
#
# Starts what the tests need (PostgreSQL on loopback, the Docker test image), then checks
# formatting, lints (warnings are errors), and runs every test and doctest of the workspace
# against SQLite, PostgreSQL, a real Docker engine and real processes. Run it as root on
# Debian 12 (it may apt-get install postgresql and busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "services: PostgreSQL"
eval "$(bash scripts/start-postgres.sh)"
export HERD_TEST_POSTGRES_URL

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
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) passed += $i; if ($(i+1) ~ /^failed/) failed += $i } }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
