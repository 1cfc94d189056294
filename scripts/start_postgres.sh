#!/usr/bin/env bash
# Start a private PostgreSQL server for the shared Optuna study tests; print its SQLAlchemy URL.
#
# Idempotent: a server already answering on the port is reused, an initialised data directory is
# started again, the database is created once. CI calls it before pytest and exports the URL:
#
#   export VLMOPT_TEST_POSTGRES_URL="$(scripts/start_postgres.sh)"
#
# The server is the distribution's PostgreSQL (Debian/Ubuntu package `postgresql`; installed with
# apt-get when missing and we may). It runs from its own data directory with trust auth on
# 127.0.0.1 only, so it touches no system cluster. PostgreSQL refuses to run as root: as root the
# server runs as the `postgres` user the package creates.
#
# Settings (environment): VLMOPT_PG_DIR (default /tmp/vlmopt-postgres), VLMOPT_PG_PORT (55432).
# Stop it with: pg_ctl -D "$VLMOPT_PG_DIR/data" stop   (as the same user)
set -euo pipefail

PG_DIR="${VLMOPT_PG_DIR:-/tmp/vlmopt-postgres}"
PORT="${VLMOPT_PG_PORT:-55432}"
DB="vlmopt_test"
URL="postgresql+psycopg://postgres@127.0.0.1:${PORT}/${DB}"

find_bin() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$dir" ] && echo "$dir"
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
    elif sudo -n true 2>/dev/null; then
        sudo -n apt-get install -y -q postgresql >&2
    else
        echo "start_postgres.sh: PostgreSQL is not installed and this user cannot apt-get install it" >&2
        exit 1
    fi
    BIN="$(find_bin)"
fi

# Run PostgreSQL's tools as a non-root user.
if [ "$(id -u)" = 0 ]; then
    as_owner() { runuser -u postgres -- "$@"; }
else
    as_owner() { "$@"; }
fi

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

if ! ready; then
    mkdir -p "$PG_DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
    if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
        as_owner "$BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
            || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
    fi
    as_owner "$BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2 \
        || { cat "$PG_DIR/server.log" >&2; exit 1; }
fi

if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" postgres \
        | grep -q 1; then
    "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi
echo "$URL"
