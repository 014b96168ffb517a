#!/usr/bin/env bash
# `herd run` beside xargs, GNU parallel and rust-parallel, in one run, at two
# jobs at a time: wall time, peak RSS and the ratio to xargs.
#
#   bash benches/cli_run.sh
#
# Workloads: HERD_BENCH_TRUE (default 10000) runs of /bin/true, and
# HERD_BENCH_ECHO (default 2000) runs of `sh -c 'echo …'` whose output is
# captured (to a file). Each is measured HERD_BENCH_ROUNDS times (default 3,
# the tools taking turns) and the median is printed; the echo runs, which
# take about a second each and swing by a tenth between rounds,
# HERD_BENCH_ECHO_ROUNDS times (default 9). herd runs with its
# durable record on: a fresh SQLite store, every task and attempt written.
# Installs GNU parallel (apt) and rust-parallel (cargo) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

true_jobs=${HERD_BENCH_TRUE:-10000}
echo_jobs=${HERD_BENCH_ECHO:-2000}
rounds=${HERD_BENCH_ROUNDS:-3}
echo_rounds=${HERD_BENCH_ECHO_ROUNDS:-9}

apt_install() {
    if command -v apt-get >/dev/null; then
        (apt-get install -y -qq "$@" >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null && apt-get install -y -qq "$@" >/dev/null; })
    fi
}
[ -x /usr/bin/time ] || apt_install time
command -v parallel >/dev/null || apt_install parallel
command -v rust-parallel >/dev/null || cargo install --quiet --locked rust-parallel
# GNU parallel asks once for a citation; say it was seen.
mkdir -p ~/.parallel && touch ~/.parallel/will-cite

cargo build --quiet --release -p herd-cli
herd="$(pwd)/${CARGO_TARGET_DIR:-target}/release/herd"
# The code herd run executes is laid out together (crates/herd-cli/build.rs)
# as long as the names in hot-code.txt match the binary's; when few do,
# benches/hot_code.sh writes them again.
listed=$(wc -l <crates/herd-cli/hot-code.txt)
found=$(nm "$herd" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u |
    comm -12 - <(sort -u crates/herd-cli/hot-code.txt) | wc -l)
echo "hot code: $found of $listed listed functions found in the binary"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seq 1 "$true_jobs" >"$work/true.txt"
seq 1 "$echo_jobs" >"$work/echo.txt"

# measure NAME INPUT OUTPUT COMMAND...: appends "name seconds rss_kb" to results.
measure() {
    local name=$1 input=$2 output=$3
    shift 3
    rm -rf "$work/home" && mkdir -p "$work/home"
    HERD_HOME="$work/home" /usr/bin/time -f "%e %M" -o "$work/time" "$@" <"$input" >"$output"
    echo "$name $(cat "$work/time")" >>"$work/results"
}

run_true() {
    measure xargs "$work/true.txt" /dev/null xargs -P2 -n1 /bin/true
    measure herd "$work/true.txt" /dev/null "$herd" run -j2 --quiet -- /bin/true
    measure rust-parallel "$work/true.txt" /dev/null rust-parallel -j2 /bin/true
    measure parallel "$work/true.txt" /dev/null parallel -j2 /bin/true
}

run_echo() {
    measure xargs "$work/echo.txt" "$work/out" xargs -P2 -I{} sh -c 'echo line {}'
    measure herd "$work/echo.txt" "$work/out" "$herd" run -j2 -- sh -c 'echo line {}'
    measure rust-parallel "$work/echo.txt" "$work/out" rust-parallel -j2 sh -c 'echo line {}'
    measure parallel "$work/echo.txt" "$work/out" parallel -j2 sh -c "'echo line {}'"
}

report() {
    local title=$1
    echo "$title (median of $rounds, -j2):"
    awk -v rounds="$rounds" '
        { t[$1] = t[$1] " " $2; m[$1] = m[$1] " " $3; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
        function median(list,   a, k, i, j, x) {
            k = split(list, a, " ")
            for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return a[int((k + 1) / 2)]
        }
        END {
            base = median(t["xargs"])
            for (i = 1; i <= n; i++) {
                name = order[i]
                s = median(t[name])
                printf "  %-14s %7.2f s  %6.1f MB peak RSS  %5.2fx xargs\n", name, s, median(m[name]) / 1024, s / base
            }
        }' "$work/results"
}

: >"$work/results"
for _ in $(seq "$rounds"); do run_true; done
report "$true_jobs x /bin/true"
: >"$work/results"
for _ in $(seq "$echo_rounds"); do run_echo; done
rounds=$echo_rounds report "$echo_jobs x sh -c 'echo …', output captured"
