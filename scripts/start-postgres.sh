#!/usr/bin/env bash
# Starts a local PostgreSQL for herd's tests, idempotently, on Debian 12 (run as root).
#
# - installs the `postgresql` package only if `pg_ctlcluster` is missing;
# - starts the newest installed cluster (`<version>/main`) if it is not running;
# - refuses to go on unless the server listens on loopback only;
# - creates the role `herd` (password `herd`, CREATEDB) if missing;
# - prints the line to eval on stdout, everything else on stderr:
#     eval "$(scripts/start-postgres.sh)"
set -euo pipefail

# shellcheck source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh" start-postgres

[[ $(id -u) -eq 0 ]] || fail "run as root (it may install packages and runs psql as the postgres user)"

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "pg_ctlcluster not found: installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
fi

# The newest installed major version that has a `main` cluster.
version=$(pg_lsclusters --no-header 2>/dev/null | awk '$2 == "main" { print $1 }' | sort -V | tail -n 1)
if [[ -z $version ]]; then
    version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    [[ -n $version ]] || fail "postgresql is installed but no server version is under /usr/lib/postgresql"
    say "no cluster ${version}/main: creating it"
    pg_createcluster "$version" main >&2
fi

# Loopback only. Debian's default (listen_addresses commented out) means `localhost`.
conf_dir=/etc/postgresql/$version/main
listen=$(grep -hE "^[[:space:]]*listen_addresses[[:space:]]*=" "$conf_dir"/postgresql.conf "$conf_dir"/conf.d/*.conf 2>/dev/null | tail -n 1 || true)
if [[ -n $listen ]]; then
    value=$(sed -E "s/^[^=]*=[[:space:]]*'?([^'#]*)'?.*/\1/" <<<"$listen" | tr -d '[:space:]')
    case $value in
        localhost | 127.0.0.1 | ::1 | 127.0.0.1,::1 | ::1,127.0.0.1 | localhost,127.0.0.1 | 127.0.0.1,localhost) ;;
        *) fail "cluster $version/main has listen_addresses='$value' in $conf_dir; set it to 'localhost' for tests" ;;
    esac
fi

require_ss
port=$(pg_conftool -s "$version" main show port 2>/dev/null || echo 5432)
[[ $port == 5432 ]] || fail "cluster $version/main listens on port $port, expected 5432"
data_dir=$(pg_conftool -s "$version" main show data_directory 2>/dev/null || echo "/var/lib/postgresql/$version/main")
postmaster_pid_file=$data_dir/postmaster.pid
# services.sh removes $pid_file when the server it started dies: postmaster.pid is PostgreSQL's
# own, so there is none here.
pid_file=
log_file=/var/log/postgresql/postgresql-$version-main.log

answers() { pg_isready -q -h 127.0.0.1 -p "$port"; }

started_here=0
if pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    say "cluster $version/main already running"
else
    say "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
    started_here=1
fi
# postmaster.pid's first line is the server's pid.
pid=$(head -n 1 "$postmaster_pid_file" 2>/dev/null || true)
[[ $pid =~ ^[0-9]+$ ]] || fail "cluster $version/main runs but $postmaster_pid_file names no pid"

wait_until_answers "cluster $version/main" "127.0.0.1:$port" 30

# Check what it really listens on: nothing but loopback.
listening="$(ss -ltnH "sport = :$port" | awk '{ print $4 }' | sort -u)"
refuse_exposed "PostgreSQL" "$listening" "ss -ltn" "listen_addresses (set it to 'localhost')"
say "cluster $version/main accepts connections on 127.0.0.1:$port (loopback only)"

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"; }
if [[ $(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'herd'") == 1 ]]; then
    say "role herd already exists"
else
    say "creating role herd (CREATEDB)"
    psql_admin -c "CREATE ROLE herd LOGIN CREATEDB PASSWORD 'herd'" >&2
fi

echo "export HERD_TEST_POSTGRES_URL=postgres://herd:herd@127.0.0.1:$port/postgres"
# How the chaos suite restarts this cluster under load (scenario: PostgreSQL restarted).
echo "export HERD_TEST_POSTGRES_RESTART='pg_ctlcluster $version main restart'"
