# shellcheck shell=bash
# What the service scripts (scripts/start-*.sh, bench/setup.sh, bench/fetch-s3.sh) share to
# install a tool into a venv and start a test service on loopback, sourced with the script's
# name, which starts every message:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh" start-gcs
#
# Everything here writes to stderr only: stdout is for the export lines the scripts print.
# The functions about the server use the caller's variables `pid` (the server's), `pid_file`,
# `log_file` and `started_here` (1 when this run started it), and its function `answers`.

readonly service_script="$1"

say() { printf '%s: %s\n' "$service_script" "$*" >&2; }
fail() {
    say "error: $*"
    exit 1
}

require_ss() {
    command -v ss > /dev/null || fail "\`ss\` is missing: install iproute2 (apt-get install -y iproute2)"
}

# venv_version VENV PACKAGE: the version of PACKAGE installed in VENV; fails when it is not.
venv_version() {
    [[ -x "$1/bin/python" ]] || return 1
    "$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))" 2> /dev/null
}

# venv_install VENV REQUIREMENT: creates VENV if it is missing (installing python3-venv with
# apt-get first when python3 cannot, if root), then installs REQUIREMENT into it with pip.
venv_install() {
    local venv="$1" requirement="$2"
    say "installing $requirement into $venv"
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
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" >&2
}

# live_pid: the pid in $pid_file when that process is alive (the caller checks that it is
# its server, not another program that got the pid since).
live_pid() {
    [[ -s "$pid_file" ]] || return 1
    local live
    live="$(cat "$pid_file")"
    [[ "$live" =~ ^[0-9]+$ ]] && kill -0 "$live" 2> /dev/null || return 1
    echo "$live"
}

# stop_ours: stops the server if this run started it.
stop_ours() {
    if [[ "$started_here" == 1 ]]; then
        kill "$pid" 2> /dev/null || true
        rm -f "$pid_file"
    fi
}

# wait_until_answers NAME ENDPOINT SECONDS: waits until `answers` succeeds; fails, with the end
# of the log, when the server exits first or SECONDS pass (stopping it if this run started it).
wait_until_answers() {
    local name="$1" endpoint="$2" timeout="$3"
    local deadline=$((SECONDS + timeout))
    until answers; do
        if ! kill -0 "$pid" 2> /dev/null; then
            rm -f "$pid_file"
            tail -n 20 "$log_file" >&2 || true
            fail "$name exited before answering on $endpoint; see $log_file"
        fi
        if ((SECONDS >= deadline)); then
            stop_ours
            tail -n 20 "$log_file" >&2 || true
            fail "$name did not answer on $endpoint within ${timeout}s; see $log_file"
        fi
        sleep 0.2
    done
}

# refuse_exposed NAME LISTENING COMMAND FLAGS: LISTENING holds the server's listening
# "address:port" lines, as COMMAND shows them; fails, stopping the server if this run started
# it, when there are none or one is not on loopback, 127.0.0.1 or [::1] (FLAGS says what to
# check).
refuse_exposed() {
    local name="$1" listening="$2" command="$3" flags="$4" exposed
    [[ -n "$listening" ]] || {
        stop_ours
        fail "cannot see $name's listening sockets with \`$command\` (run as root?)"
    }
    exposed="$(grep -vE '^(127\.0\.0\.1|\[::1\]):' <<< "$listening" || true)"
    if [[ -n "$exposed" ]]; then
        stop_ours
        fail "$name listens beyond 127.0.0.1 on: $(tr '\n' ' ' <<< "$exposed")— it was stopped; check the $flags"
    fi
}
