#!/usr/bin/env bash
# Runs the executor bench (herd against its baselines, same run) and the
# streaming-memory comparison, then prints throughput ratios.
#
#   bash benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench -p herd-benches --bench executor
echo
bash benches/stream_rss.sh
echo

tasks=1000000
criterion="${CARGO_TARGET_DIR:-target}/criterion"
# criterion's mean time per iteration (ns) -> millions of tasks per second.
mtps() {
    local ns
    ns=$(sed -E 's/.*"mean":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' "$criterion/$1/new/estimates.json")
    awk -v n="$tasks" -v ns="$ns" 'BEGIN { printf "%.3f", n / ns * 1000 }'
}
ratios() {
    local group=$1
    shift
    local herd
    herd=$(mtps "$group/herd")
    for baseline in "$@"; do
        awk -v h="$herd" -v o="$(mtps "$group/$baseline")" -v g="$group" -v name="$baseline" 'BEGIN {
            printf "%s: herd %.2f M tasks/s, %s %.2f M tasks/s, ratio %.2fx\n", g, h, name, o, h / o
        }'
    done
}
ratios executor_1m_noop_c64 semaphore_joinset semaphore_joinset_reaping buffer_unordered
ratios executor_1m_yield_c64 semaphore_joinset_reaping
