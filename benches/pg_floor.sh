#!/usr/bin/env bash
# The floor of herd's PostgreSQL write set: what the database alone does
# with the rows herd must write per task, beside the bare claim-and-complete
# loop, in the same run, with no herd code in the way (pgbench, prepared
# statements, one connection).
#
#   bash benches/pg_floor.sh
#
# herd's own schema (its migrations, applied in a schema of their own) holds
# one live batch of HERD_FLOOR_TASKS (default 200000) queued tasks. A "turn"
# is what a worker's store call writes in one transaction: the tasks it
# reports go `running → succeeded` with an attempt row each, as many queued
# tasks are claimed (`queued → running`, leased), the batch row's counts
# change, and one event row records the run of events. herd also reads (its
# claim's candidates, the batches it locks) and decides in Rust between the
# two; none of that is here, so herd can only come near these figures, not
# pass them. The bare loop is `benches/src/bin/store_drain.rs`'s: a
# two-column table, claim and complete in one transaction.
#
# PostgreSQL: HERD_BENCH_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/test), schema herd_floor (dropped and
# created again).
set -euo pipefail
cd "$(dirname "$0")/.."

url=${HERD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
tasks=${HERD_FLOOR_TASKS:-200000}
for tool in psql pgbench; do
    command -v "$tool" >/dev/null || {
        echo "pg_floor: $tool is missing: install PostgreSQL's client programs (Debian: apt-get install postgresql)" >&2
        exit 2
    }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PGOPTIONS="-c search_path=herd_floor -c plan_cache_mode=force_generic_plan -c jit=off"

setup() {
    psql -q "$url" -v ON_ERROR_STOP=1 -c "DROP SCHEMA IF EXISTS herd_floor CASCADE" \
        -c "CREATE SCHEMA herd_floor" 2>/dev/null
    for migration in crates/herd-sql/migrations/postgres/*.sql; do
        psql -q "$url" -v ON_ERROR_STOP=1 -f "$migration" >/dev/null
    done
    psql -q "$url" -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO batches (id, flow, state, priority, concurrency, policy, error_policy, open,
                     paused, created_at, n_queued, head_priority, head_cost)
VALUES (1, 'floor', 'running', 0, 1000000, '{}', '{}', false, false, 0, $tasks, 0, 1);
INSERT INTO tasks (id, batch_id, idx, priority, cost, payload, state, ready_seq, rule)
SELECT g, 1, g - 1, 0, 1, '"noop"', 'queued', g, 'all' FROM generate_series(1, $tasks) g;
CREATE SEQUENCE floor_events;
CREATE TABLE bare (id BIGINT PRIMARY KEY, state TEXT NOT NULL);
CREATE INDEX bare_queued ON bare (id) WHERE state = 'queued';
INSERT INTO bare SELECT g, 'queued' FROM generate_series(1, $tasks) g;
VACUUM ANALYZE;
SQL
}

# bare N: the bare loop's transaction, N rows.
bare() {
    cat <<SQL
BEGIN;
UPDATE bare SET state = 'done' WHERE id IN (
  SELECT id FROM bare WHERE state = 'queued' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED);
COMMIT;
SQL
}

# turn N: one worker's turn, N reported and N claimed.
turn() {
    cat <<SQL
BEGIN;
WITH ended AS (
  SELECT id FROM tasks WHERE state = 'running' ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED),
done AS (
  UPDATE tasks t SET state = 'succeeded', lease_until = NULL, worker_id = NULL
  FROM ended WHERE t.id = ended.id RETURNING t.id, t.attempt),
logged AS (
  INSERT INTO attempts (task_id, attempt, worker_id, started_at, finished_at, outcome, exit_code,
                        stdout_total, stderr_total)
  SELECT id, attempt, 1, 100, 200, 'succeeded', 0, 0, 0 FROM done RETURNING 1),
next AS (
  SELECT id FROM tasks WHERE batch_id = 1 AND state = 'queued'
  ORDER BY priority DESC, ready_seq LIMIT $1 FOR UPDATE SKIP LOCKED),
claimed AS (
  UPDATE tasks t SET state = 'running', attempt = t.attempt + 1, worker_id = 1,
    lease_until = 30000000, started_at = 100
  FROM next WHERE t.id = next.id RETURNING t.id)
UPDATE batches SET n_queued = n_queued - $1, n_running = n_running + $1 - (SELECT count(*) FROM done),
  n_succeeded = n_succeeded + (SELECT count(*) FROM done),
  running_cost = running_cost + $1 - (SELECT count(*) FROM done),
  last_served = last_served + 1
WHERE id = 1 AND (SELECT count(*) FROM logged) + (SELECT count(*) FROM claimed) >= 0;
INSERT INTO events (seq, last_seq, at, batch_id, body)
SELECT nextval('floor_events'), 0, 0, 1, repeat('t 1 2 3 running succeeded -' || chr(10), 2 * $1);
COMMIT;
SQL
}

# rate NAME SCRIPT ROWS TRANSACTIONS: rows per second through SCRIPT.
rate() {
    local name=$1 script=$2 rows=$3 count=$4
    local tps
    tps=$(pgbench -n -M prepared -f "$script" -t "$count" "$url" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    echo "$name $(awk -v t="$tps" -v r="$rows" 'BEGIN { printf "%.0f", t * r }')"
}

for n in 100 1; do
    bare "$n" >"$work/bare$n.sql"
    turn "$n" >"$work/turn$n.sql"
done
setup
{
    # Turns: the first claims only; each after reports what the one before claimed.
    rate "bare_100" "$work/bare100.sql" 100 $((tasks / 100 / 2))
    rate "turn_100" "$work/turn100.sql" 100 $((tasks / 100 / 2))
    rate "bare_1" "$work/bare1.sql" 1 3000
    rate "turn_1" "$work/turn1.sql" 1 3000
} >"$work/rates"
psql -q "$url" -c "DROP SCHEMA herd_floor CASCADE" 2>/dev/null

awk '
    { rate[$1] = $2 }
    END {
        printf "%-34s %12s %12s %8s\n", "PostgreSQL, rows per second", "write set", "bare", "ratio"
        printf "%-34s %12d %12d %7.2fx\n", "100 per transaction", rate["turn_100"], rate["bare_100"], rate["turn_100"] / rate["bare_100"]
        printf "%-34s %12d %12d %7.2fx\n", "1 per transaction", rate["turn_1"], rate["bare_1"], rate["turn_1"] / rate["bare_1"]
    }' "$work/rates"
