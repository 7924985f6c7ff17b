#!/usr/bin/env bash
# Benchmarks of tally (release build), with DuckDB on the same files for comparison.
#   bench/run.sh                 # all, at 10 million enquiries
#   SCALE=45 bench/run.sh        # about 1 million, quicker
set -euo pipefail
cd "$(dirname "$0")/.."
export SCALE="${SCALE:-450}"
export THREADS="${THREADS:-$(nproc)}"
export OUT="${OUT:-bench/out}"

cargo build --release --locked --bin tally --example generate --example timeit
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet duckdb
fi
exec bench/.venv/bin/python bench/bench.py
