#!/usr/bin/env bash
# Starts a local FTP server for herd's tests, idempotently, on Debian 12 (run as root).
#
# - installs pyftpdlib from PyPI into a venv under ${HERD_SERVICES_DIR:-/var/tmp/herd-services}/ftp
#   (and Debian's python3-venv first if `python3 -m venv` is missing), through scripts/lib/services.sh
#   like every service script;
# - starts fetch/tests/support/ftp_server.py on 127.0.0.1:${HERD_FTP_PORT:-2121} unless it is
#   already running: user `herd` (password `herd`) may read and write, anonymous may read, both
#   in .../ftp/root; passive data connections stay on loopback;
# - refuses to go on unless the server listens on loopback only;
# - prints the lines to eval on stdout, everything else on stderr:
#     eval "$(scripts/start-ftp.sh)"
#   HERD_TEST_FTP_URL (the writable user), HERD_TEST_FTP_ANONYMOUS_URL, and
#   HERD_TEST_FTP_PYTHON (the venv's python, with which herd-fetch's tests start their own
#   private servers on ephemeral ports).
set -euo pipefail

# shellcheck source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh" start-ftp

repo=$(cd "$(dirname "$0")/.." && pwd)
server_script=$repo/fetch/tests/support/ftp_server.py
[[ -f $server_script ]] || fail "$server_script is missing"

services=${HERD_SERVICES_DIR:-/var/tmp/herd-services}
dir=$services/ftp
venv=$dir/venv
python=$venv/bin/python
root=$dir/root
port=${HERD_FTP_PORT:-2121}
user=herd
password=herd
mkdir -p "$dir" "$root"

require_ss

# 1. pyftpdlib, from PyPI, in its own venv.
if [[ "$(venv_version "$venv" pyftpdlib || true)" != 2.* ]]; then
    venv_install "$venv" 'pyftpdlib>=2,<3'
    venv_version "$venv" pyftpdlib > /dev/null || fail "pyftpdlib did not install into $venv"
fi
say "pyftpdlib $(venv_version "$venv" pyftpdlib) in $venv"

# 2. Start it unless ours is already running. It answers with its 220 banner.
answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c 3 <&3" 2> /dev/null | grep -q '^220'
}
pid_file=$dir/server.pid
log_file=$dir/server.out
running_pid() {
    local live
    live="$(live_pid)" || return 1
    tr '\0' ' ' < "/proc/$live/cmdline" 2> /dev/null | grep -qF "ftp_server.py" || return 1
    echo "$live"
}

started_here=0
if pid="$(running_pid)" && answers; then
    say "server already running (pid $pid) on 127.0.0.1:$port"
else
    if answers; then
        fail "something else answers on 127.0.0.1:$port: stop it or set HERD_FTP_PORT"
    fi
    say "starting the server on 127.0.0.1:$port (root $root, log $dir/server.log)"
    nohup setsid "$python" "$server_script" --root "$root" --user "$user" --password "$password" \
        --port "$port" --log "$dir/server.log" < /dev/null > "$log_file" 2>&1 &
    pid=$!
    echo "$pid" > "$pid_file"
    started_here=1
fi

wait_until_answers "the ftp server" "127.0.0.1:$port" 20

# 3. Every port it listens on must be on loopback (passive data ports open only on demand).
listening="$(ss -ltnpH 2> /dev/null | awk -v pid="pid=$pid," 'index($0, pid) { print $4 }' | sort -u)"
refuse_exposed "the ftp server" "$listening" "ss -ltnp" "--host of $server_script"
say "ftp server accepts connections on 127.0.0.1:$port (loopback only)"

echo "export HERD_TEST_FTP_URL=ftp://$user:$password@127.0.0.1:$port/"
echo "export HERD_TEST_FTP_ANONYMOUS_URL=ftp://127.0.0.1:$port/"
echo "export HERD_TEST_FTP_PYTHON=$python"
