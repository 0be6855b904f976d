#!/usr/bin/env bash
# What a PostgreSQL launch writes, table by table and index by index (not part of CI).
#
# Runs one quick PostgreSQL bench of the writes (9,900 launches, then deletes), keeps its
# schema until the WAL of the launches has been read (`LOBSTER_BENCH_KEEP_SCHEMA`), reads
# that WAL with pg_waldump between the two positions the bench prints, names each record's
# relation from the kept schema, and prints the records and bytes per launch by kind and
# relation; then drops the schema. Machine-speed independent, unlike the rates: use it to
# see what a change to the launch path's rows and indexes does (docs/benchmarks.md).
#
# Needs: PostgreSQL on this machine with its WAL readable here (run as root or postgres),
# python3. Builds the release binaries first, as scripts/bench.sh does.
#   scripts/wal-by-relation.sh [path to a lobster binary]
#   LOBSTER_BENCH_POSTGRES_URL: the database (default postgres://postgres@127.0.0.1:5432/test)
set -euo pipefail
cd "$(dirname "$0")/.."
LOBSTER=${1:-target/release/lobster}
URL=${LOBSTER_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
WALDIR=$(psql "$URL" -Atc "SHOW data_directory")/pg_wal
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cargo build --release --quiet -p lobster -p lobster-bench

LOBSTER_BENCH_KEEP_SCHEMA=1 ./target/release/lobster-bench --lobster "$LOBSTER" --big 0 \
  --seconds 3 --moto-server /nonexistent --backends postgres --writes-only \
  --postgres-url "$URL" >"$OUT/bench" 2>&1
grep -E "CPU per launch|WAL per launch|launch accepted " "$OUT/bench" | head -3
SCHEMA=$(grep -o "kept schema bench_[0-9]*" "$OUT/bench" | awk '{print $3}')
read -r FROM TO < <(grep -o "from [0-9A-F/]* to [0-9A-F/]*" "$OUT/bench" | head -1 | awk '{print $2, $4}')
psql "$URL" -Atc "SELECT c.relfilenode, c.relname FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '$SCHEMA'" >"$OUT/names"
"$PGBIN/pg_waldump" -p "$WALDIR" -s "$FROM" -e "$TO" >"$OUT/wal" 2>/dev/null || true
PGOPTIONS="-c client_min_messages=warning" psql "$URL" -qc "DROP SCHEMA $SCHEMA CASCADE"

python3 - "$OUT/names" "$OUT/wal" <<'PY'
import collections, re, sys
names = dict(l.strip().split('|') for l in open(sys.argv[1]) if '|' in l)
count, size, kinds = collections.Counter(), collections.Counter(), collections.Counter()
for line in open(sys.argv[2]):
    rec = re.search(r'rmgr: (\S+)\s+len \(rec/tot\):\s+\d+/\s*(\d+).*?desc: (\S+)', line)
    if not rec:
        continue
    rel = re.search(r'rel \d+/\d+/(\d+)', line)
    name = names.get(rel.group(1), 'other') if rel else '-'
    key = (rec.group(1), rec.group(3), name)
    count[key] += 1
    size[key] += int(rec.group(2))
    kinds[(rec.group(1), rec.group(3).split('+')[0])] += 1
n = 9900
print("records a launch %.2f, bytes a launch %.0f" % (sum(count.values()) / n, sum(size.values()) / n))
print("B-tree leaf inserts %.2f, heap inserts %.2f, updates %.2f (HOT %.2f), row locks %.2f" % (
    kinds[('Btree', 'INSERT_LEAF')] / n, kinds[('Heap', 'INSERT')] / n,
    kinds[('Heap', 'UPDATE')] / n, kinds[('Heap', 'HOT_UPDATE')] / n, kinds[('Heap', 'LOCK')] / n))
for key, b in sorted(size.items(), key=lambda kv: -kv[1])[:25]:
    print("  %5.2f a launch %6.1f bytes  %s %s %s" % (count[key] / n, b / n, *key))
PY
