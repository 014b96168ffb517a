#!/usr/bin/env bash
# Peak RSS of streaming 1,000,000 outcomes through herd, against collecting
# them all into a Vec with buffer_unordered; one variant per process.
#
#   bash benches/stream_rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p herd-benches --bin stream_rss
bin="${CARGO_TARGET_DIR:-target}/release/stream_rss"
herd=$("$bin" herd)
vec=$("$bin" vec)
echo "$herd" | head -n 1
echo "$vec"
echo "$herd" | tail -n 1
