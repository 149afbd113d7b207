#!/usr/bin/env bash
# Start PostgreSQL and Redis on loopback if they are not running, and make sure the `postgres`
# role can log in over TCP. What this script starts is recorded in .run/infra-started so that
# `make down` stops exactly that and nothing else.
#   infra.sh start | stop
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .run
record=.run/infra-started

pg_ok() { pg_isready -h 127.0.0.1 -p 5432 -q; }
redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

start() {
  if ! pg_ok; then
    cluster=$(ls /etc/postgresql | sort -V | tail -n1)
    echo "==> starting PostgreSQL $cluster"
    pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
    echo "postgresql $cluster" >>"$record"
    for _ in $(seq 30); do pg_ok && break; sleep 1; done
  fi
  # A fresh Debian cluster asks for a password over TCP; give the postgres role the one the
  # default URL uses (trust setups ignore it).
  if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qtAc 'select 1' >/dev/null 2>&1; then
    echo "==> setting a password for the postgres role (local development only)"
    su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\""
  fi
  if ! redis_ok; then
    echo "==> starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/cliprs.log --pidfile /run/redis-cliprs.pid
    echo "redis" >>"$record"
    for _ in $(seq 30); do redis_ok && break; sleep 0.5; done
  fi
}

stop() {
  [ -f "$record" ] || return 0
  while read -r what version; do
    case "$what" in
      redis) echo "stopping Redis (started by make up)"; redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true ;;
      postgresql) echo "stopping PostgreSQL $version (started by make up)"; pg_ctlcluster --skip-systemctl-redirect "$version" main stop || true ;;
    esac
  done <"$record"
  rm -f "$record"
}

"${1:-start}"
