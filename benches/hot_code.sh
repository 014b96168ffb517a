#!/usr/bin/env bash
# Writes crates/herd-cli/hot-code.txt: the functions of the release binary
# that `herd run` executes, which the linker places together at the start of
# the code (see crates/herd-cli/build.rs). Run it again after a toolchain or
# dependency update: symbol names carry hashes of the compiler and crate
# versions, and names that no longer match are left where the linker puts
# them (cli_run.sh prints how many still match).
#
#   bash benches/hot_code.sh
#
# Runs herd under callgrind (valgrind; installed with apt when missing) over
# small batches that take herd run's common paths: items on stdin, quiet and
# with output streamed, a failing command, the summary, then `herd status`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    apt-get install -y -qq valgrind >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq valgrind >/dev/null; }
fi
cargo build --quiet --release -p herd-cli
herd="$(pwd)/${CARGO_TARGET_DIR:-target}/release/herd"
out=crates/herd-cli/hot-code.txt

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HERD_HOME="$work/home"

profile() {
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.%p" \
        "$herd" "$@" >/dev/null 2>>"$work/log" || true
}
seq 1 300 | profile run -j2 --quiet -- /bin/true
seq 1 200 | profile run -j2 -- sh -c 'echo line {}'
seq 1 50 | profile run -j2 --retries 1 -- sh -c 'exit $(({} % 7 == 0))'
profile status
profile list

# Every function of the binary that ran, most instructions first; recursion
# marks ('2) dropped; only names the binary has (its own symbols, not libc's).
for f in "$work"/cg.*; do
    callgrind_annotate --threshold=100 --show-percs=no "$f" 2>/dev/null
done | grep -F "[$herd]" |
    sed -E "s/^ *([0-9,]+) +[^:]*:([^ ]+) .*/\1 \2/; s/'[0-9]+$//" |
    awk '{ n = $1; gsub(",", "", n); ir[$2] += n } END { for (f in ir) print ir[f], f }' |
    sort -rn | awk '{ print $2 }' >"$work/ran"
nm "$herd" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$work/symbols"
awk 'NR == FNR { have[$1] = 1; next } ($1 in have)' "$work/symbols" "$work/ran" >"$out"
echo "$(wc -l <"$out") functions written to $out (of $(wc -l <"$work/ran") that ran)"
