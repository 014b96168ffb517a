#!/usr/bin/env bash
# herd's durable stores against the bare database, same run: no-op tasks
# drained per second (store contract and worker loop) with ratios to a bare
# claim-and-complete loop, enqueue-to-start latency, one large submit.
#
#   bash benches/store_drain.sh [sqlite|postgres|both]
#
# PostgreSQL: HERD_BENCH_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/test), in the schema HERD_BENCH_SCHEMA
# (default herd_bench), dropped and created again for each measure. Sizes:
# HERD_BENCH_TASKS, HERD_BENCH_SINGLE_TASKS, HERD_BENCH_SUBMIT,
# HERD_BENCH_SAMPLES (see benches/src/bin/store_drain.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p herd-benches --bin store_drain
"${CARGO_TARGET_DIR:-target}/release/store_drain" "$@"
