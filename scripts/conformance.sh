#!/usr/bin/env bash
# Runs schemathesis against the OpenAPI document the server itself serves, for the Blue Lobster
# operations built so far, and fails on any server error or response that breaks the document.
# Installs schemathesis into target/conformance-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/conformance-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4,<5'
fi
cargo build --quiet --bin lobster
work=$(mktemp -d)
port=${CONFORMANCE_PORT:-18231}
key=conformance-key-0123456789abcdef
cat > "$work/lobster.toml" <<TOML
[sim.delays_ms]
create = 0
start = 0
shutdown = 0
stop = 0
reboot = 0
destroy = 0
TOML
LOBSTER_BOOTSTRAP_KEY=$key ./target/debug/lobster serve --config "$work/lobster.toml" --data-dir "$work/data" \
  --listen "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done
# Every operation of the contract is tested. positive_data_acceptance is left out: schema-valid bodies naming an unknown
# instance type or region are rightly refused with the spec's 400. One worker: on this
# machine's CPython 3.11.7 two workers trip CPython's "AST constructor recursion depth
# mismatch" bug inside hypothesis (an interpreter fault, not a finding: CPython gh-106905,
# two threads parsing at once), in the coverage phase always (so it is skipped) and in the
# examples phase now and then (session 19: in a run and in its retry, failing CI).
run() {
  "$venv/bin/schemathesis" run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --url "http://127.0.0.1:$port" \
    --header "X-API-Key: $key" \
    --checks all --exclude-checks positive_data_acceptance \
    --phases examples,fuzzing,stateful \
    --max-time "${CONFORMANCE_SECONDS:-60}" --workers 1 --seed "${CONFORMANCE_SEED:-1}" \
    2>&1 | tee "$work/schemathesis.log"
}
# The same bug can strike example generation even so (rarely; with two workers it struck a
# run and its retry in session 19): a run that failed on that interpreter error alone runs
# again, up to three runs in all. Any failure the server caused still fails, whichever run.
for attempt in 1 2 3; do
  if run; then
    exit 0
  fi
  if ! grep -q "AST constructor recursion depth mismatch" "$work/schemathesis.log" \
    || grep -q "= FAILURES =" "$work/schemathesis.log"; then
    exit 1
  fi
  echo "schemathesis tripped CPython's AST recursion bug (not a finding; run $attempt of 3)"
done
exit 1
