#!/usr/bin/env bash
# Starts a local FTP server for herd's tests, idempotently, on Debian 12 (run as root).
#
# - installs pyftpdlib from PyPI into a venv under ${HERD_SERVICES_DIR:-/var/tmp/herd-services}/ftp
#   (and Debian's python3-venv first if `python3 -m venv` is missing);
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

# Debian's python3 first (the one python3-venv serves), else whatever python3 is on PATH.
base_python=/usr/bin/python3
[[ -x $base_python ]] || base_python=$(command -v python3 || true)
[[ -n $base_python ]] || fail "python3 not found: apt-get install python3 python3-venv"

if ! "$python" -c 'import pyftpdlib' >/dev/null 2>&1; then
    if ! "$base_python" -m venv --help >/dev/null 2>&1 || ! "$base_python" -c 'import ensurepip' >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || fail "python3-venv is missing: run as root (it installs it with apt-get) or install it"
        say "installing python3-venv with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >&2
        apt-get install -y python3-venv >&2
    fi
    say "creating $venv with pyftpdlib"
    rm -rf "$venv"
    "$base_python" -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'pyftpdlib>=2,<3' >&2
    "$python" -c 'import pyftpdlib' || fail "pyftpdlib did not install into $venv"
fi
say "pyftpdlib $("$python" -c 'import pyftpdlib; print(pyftpdlib.__ver__)') in $venv"

# The 220 banner on 127.0.0.1:$port, within 2 s.
answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c 3 <&3" 2>/dev/null | grep -q '^220'
}

pid_file=$dir/server.pid
if [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null && answers; then
    say "server already running (pid $(cat "$pid_file")) on 127.0.0.1:$port"
else
    if answers; then
        fail "something else answers on 127.0.0.1:$port: stop it or set HERD_FTP_PORT"
    fi
    say "starting the server on 127.0.0.1:$port (root $root, log $dir/server.log)"
    nohup setsid "$python" "$server_script" --root "$root" --user "$user" --password "$password" \
        --port "$port" --log "$dir/server.log" </dev/null >"$dir/server.out" 2>&1 &
    echo $! >"$pid_file"
    deadline=$((SECONDS + 20))
    until answers; do
        kill -0 "$(cat "$pid_file")" 2>/dev/null || fail "the server exited; see $dir/server.out and $dir/server.log"
        ((SECONDS < deadline)) || fail "the server does not answer on 127.0.0.1:$port after 20 s; see $dir/server.log"
        sleep 0.2
    done
fi

# Check what it really listens on: nothing but loopback.
if command -v ss >/dev/null 2>&1; then
    exposed=$(ss -Hltn "sport = :$port" | awk '{ print $4 }' | grep -vE '^(127\.[0-9.]+|\[::1\]):' || true)
    [[ -z $exposed ]] || fail "the FTP server listens on non-loopback address(es): $exposed"
fi
say "ftp server accepts connections on 127.0.0.1:$port (loopback only)"

echo "export HERD_TEST_FTP_URL=ftp://$user:$password@127.0.0.1:$port/"
echo "export HERD_TEST_FTP_ANONYMOUS_URL=ftp://127.0.0.1:$port/"
echo "export HERD_TEST_FTP_PYTHON=$python"
