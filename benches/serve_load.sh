#!/usr/bin/env bash
# `herd serve` under load, on this machine's loopback only:
#
#   bash benches/serve_load.sh
#
# 1. HERD_BENCH_CLIENTS (default 50) clients, each on its own connection,
#    creating small batches (three records of `true`) and reading each one's
#    status, for HERD_BENCH_SECONDS (default 60): requests/s, p50/p99
#    latency, errors: first with the batches stored paused (the API alone),
#    then run as they come by the server's worker (2 slots).
# 2. One batch of HERD_BENCH_RECORDS (default 100000) records through the
#    NDJSON endpoint (stored paused), then its status read 50 times.
# Goals (issue 5): 0 errors, p99 <= 50 ms; the big create <= 2 s; its
# status <= 20 ms. The store is a fresh SQLite file.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=${HERD_BENCH_CLIENTS:-50}
seconds=${HERD_BENCH_SECONDS:-60}
records=${HERD_BENCH_RECORDS:-100000}

cargo build --release --quiet -p herd-cli -p herd-benches --bin herd --bin serve_load
home=$(mktemp -d)
log="$home/serve.log"
HERD_HOME="$home" target/release/herd serve --listen 127.0.0.1:0 --slots 2 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$home"' EXIT
for _ in $(seq 100); do
    grep -q "listening on" "$log" && break
    sleep 0.1
done
addr=$(sed -n 's/.*listening on http:\/\///p' "$log")
[ -n "$addr" ] || { cat "$log"; exit 1; }
echo "herd serve on $addr ($(nproc) cores), store $home/serve.db"
# First with the batches stored paused: the API without the worker's
# writes beside it; then as they come, run by the server's 2 slots.
target/release/serve_load "$addr" load "$clients" "$seconds" paused
target/release/serve_load "$addr" load "$clients" "$seconds"
target/release/serve_load "$addr" big "$records"
