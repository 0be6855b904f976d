#!/usr/bin/env bash
# Makes sure the PostgreSQL at $1 answers, starting the local cluster if it is down, and drops
# the per-test schemas earlier runs left behind (each test makes a fresh one).
set -euo pipefail
url="$1"
if ! psql "$url" -Atqc 'select 1' >/dev/null 2>&1; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do
    psql "$url" -Atqc 'select 1' >/dev/null 2>&1 && break
    sleep 1
  done
fi
psql "$url" -Atqc 'select 1' >/dev/null
psql "$url" -Atqc "select nspname from pg_namespace where nspname ~ '^(t|e2e)_[0-9a-f]+$'" | while read -r s; do
  psql "$url" -qc "drop schema if exists \"$s\" cascade" >/dev/null 2>&1 || true
done
