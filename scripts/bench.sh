#!/usr/bin/env bash
# Benchmarks (not part of CI): builds the release binaries, installs moto into
# target/bench-venv, and runs lobster-bench against lobster on SQLite and PostgreSQL, moto and
# a bare axum endpoint. The table goes to stdout and target/bench.md; progress to stderr.
# Extra arguments go to lobster-bench (e.g. --backends sqlite --big 0 --seconds 3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/bench-venv/bin/moto_server ]; then
  python3 -m venv target/bench-venv
  target/bench-venv/bin/pip install --quiet 'moto[server]'
fi
cargo build --release --quiet -p lobster -p lobster-bench
./target/release/lobster-bench "$@" | tee target/bench.md
