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

log() { printf 'start-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it may install packages and runs psql as the postgres user)"

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "pg_ctlcluster not found: installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
fi

# The newest installed major version that has a `main` cluster.
version=$(pg_lsclusters --no-header 2>/dev/null | awk '$2 == "main" { print $1 }' | sort -V | tail -n 1)
if [[ -z $version ]]; then
    version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    [[ -n $version ]] || die "postgresql is installed but no server version is under /usr/lib/postgresql"
    log "no cluster ${version}/main: creating it"
    pg_createcluster "$version" main >&2
fi

# Loopback only. Debian's default (listen_addresses commented out) means `localhost`.
conf_dir=/etc/postgresql/$version/main
listen=$(grep -hE "^[[:space:]]*listen_addresses[[:space:]]*=" "$conf_dir"/postgresql.conf "$conf_dir"/conf.d/*.conf 2>/dev/null | tail -n 1 || true)
if [[ -n $listen ]]; then
    value=$(sed -E "s/^[^=]*=[[:space:]]*'?([^'#]*)'?.*/\1/" <<<"$listen" | tr -d '[:space:]')
    case $value in
        localhost | 127.0.0.1 | ::1 | 127.0.0.1,::1 | ::1,127.0.0.1 | localhost,127.0.0.1 | 127.0.0.1,localhost) ;;
        *) die "cluster $version/main has listen_addresses='$value' in $conf_dir; set it to 'localhost' for tests" ;;
    esac
fi

if pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    log "cluster $version/main already running"
else
    log "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi

# Wait until it accepts TCP connections on loopback (not a fixed sleep: poll with a deadline).
deadline=$((SECONDS + 30))
until pg_isready -q -h 127.0.0.1 -p 5432; do
    ((SECONDS < deadline)) || die "cluster $version/main does not accept connections on 127.0.0.1:5432 after 30 s; see /var/log/postgresql/postgresql-$version-main.log"
    sleep 0.2
done

# Check what it really listens on: nothing but loopback.
port=$(pg_conftool -s "$version" main show port 2>/dev/null || echo 5432)
[[ $port == 5432 ]] || die "cluster $version/main listens on port $port, expected 5432"
if command -v ss >/dev/null 2>&1; then
    exposed=$(ss -Hltn "sport = :$port" | awk '{ print $4 }' | grep -vE '^(127\.[0-9.]+|\[::1\]):' || true)
    [[ -z $exposed ]] || die "PostgreSQL listens on non-loopback address(es): $exposed; set listen_addresses='localhost'"
fi
log "cluster $version/main accepts connections on 127.0.0.1:$port (loopback only)"

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"; }
if [[ $(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'herd'") == 1 ]]; then
    log "role herd already exists"
else
    log "creating role herd (CREATEDB)"
    psql_admin -c "CREATE ROLE herd LOGIN CREATEDB PASSWORD 'herd'" >&2
fi

echo "export HERD_TEST_POSTGRES_URL=postgres://herd:herd@127.0.0.1:$port/postgres"
