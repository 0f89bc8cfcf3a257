#!/usr/bin/env bash
# A throwaway PostgreSQL server on localhost, for the tuning tests and for trying multi-machine Optuna
# storage on one machine. Nothing outside DIR is touched; `stop` leaves DIR for the caller to delete.
#
#   scripts/postgres_for_tests.sh start DIR [PORT] [DBNAME]   # prints postgresql://postgres@127.0.0.1:PORT/DBNAME
#   scripts/postgres_for_tests.sh stop DIR
#
# Needs the server binaries (Debian/Ubuntu: apt-get install -y postgresql); exits 3 if they are missing.
# initdb and postgres refuse to run as root: as root the server runs as the `postgres` system user
# (created by that package; override with PG_USER), via runuser (or su). DIR must then be reachable by
# that user (e.g. under /tmp, not under a 0700 directory). PG_BIN overrides where the binaries are.
set -euo pipefail

find_bin() {
    if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then echo "$PG_BIN"; return; fi
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -V -r) /usr/local/pgsql/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"; return
    fi
    return 1
}

as_db_user() {  # run "$@" as the database user (root cannot run initdb/postgres)
    if [ "$(id -u)" != 0 ]; then "$@"; return; fi
    local user=${PG_USER:-postgres}
    if ! id "$user" >/dev/null 2>&1; then
        echo "running as root but there is no '$user' user to run PostgreSQL as (set PG_USER)" >&2
        exit 4
    fi
    if command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start DIR [PORT] [DBNAME] | stop DIR" >&2
    exit 2
fi
BIN=$(find_bin) || { echo "PostgreSQL server binaries not found (apt-get install -y postgresql)" >&2; exit 3; }

case "$cmd" in
    start)
        port=${3:-$(free_port)}
        db=${4:-optuna}
        mkdir -p "$dir"
        dir=$(cd "$dir" && pwd)
        if [ "$(id -u)" = 0 ]; then chown "${PG_USER:-postgres}" "$dir"; fi
        chmod 700 "$dir"
        as_db_user "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
        as_db_user "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
        echo "$port" >"$dir/port"
        "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" 2>/dev/null \
            || as_db_user "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
        echo "postgresql://postgres@127.0.0.1:$port/$db"
        ;;
    stop)
        if [ -f "$dir/data/postmaster.pid" ]; then
            as_db_user "$BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
        fi
        ;;
    *)
        echo "usage: $0 start DIR [PORT] [DBNAME] | stop DIR" >&2
        exit 2
        ;;
esac
