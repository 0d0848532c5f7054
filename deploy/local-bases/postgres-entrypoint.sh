#!/bin/bash
# The official image's contract, as far as docker-compose.yml uses it: a cluster in $PGDATA
# created on first start with $POSTGRES_USER (password $POSTGRES_PASSWORD) owning $POSTGRES_DB.
set -euo pipefail
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
as_postgres() { su postgres -s /bin/bash -c "$*"; }
if [[ ! -s $PGDATA/PG_VERSION ]]; then
    printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
    chown postgres /tmp/pwfile
    as_postgres "initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256" >/dev/null
    rm /tmp/pwfile
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    as_postgres "pg_ctl -D '$PGDATA' -o '-c listen_addresses=' -w start" >/dev/null
    if [[ $POSTGRES_DB != postgres ]]; then
        as_postgres "psql -U '$POSTGRES_USER' -d postgres -c 'CREATE DATABASE \"$POSTGRES_DB\"'" >/dev/null
    fi
    as_postgres "pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
fi
exec su postgres -s /bin/bash -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
