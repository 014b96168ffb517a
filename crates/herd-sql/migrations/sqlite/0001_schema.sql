-- herd's schema, version 1. Times are microseconds since the Unix epoch
-- (herd_core::Timestamp). Per-batch counters are kept in the same transaction
-- as every transition, so no view ever counts rows; the hot indexes are
-- partial, over live states only, so finished tasks do not slow claims.

CREATE TABLE batches (
    id               INTEGER PRIMARY KEY,
    name             TEXT,
    idempotency_key  TEXT UNIQUE,
    flow             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    concurrency      INTEGER NOT NULL CHECK (concurrency > 0),
    -- JSON: retry policy, timeout, deadline, grace.
    policy           TEXT    NOT NULL,
    -- JSON: on_failure and threshold.
    error_policy     TEXT    NOT NULL,
    deadline         INTEGER,
    open             INTEGER NOT NULL,
    paused           INTEGER NOT NULL,
    -- The reason nothing new may start (cancelled, tripped, expired).
    stopped          TEXT,
    cancelled        INTEGER NOT NULL DEFAULT 0,
    failed_by_policy INTEGER NOT NULL DEFAULT 0,
    running_cost     INTEGER NOT NULL DEFAULT 0,
    last_served      INTEGER NOT NULL DEFAULT 0,
    next_index       INTEGER NOT NULL DEFAULT 0,
    -- The next position in the batch's ready queue (tasks.ready_seq).
    next_ready       INTEGER NOT NULL DEFAULT 0,
    n_pending        INTEGER NOT NULL DEFAULT 0,
    n_queued         INTEGER NOT NULL DEFAULT 0,
    n_running        INTEGER NOT NULL DEFAULT 0,
    n_retry_wait     INTEGER NOT NULL DEFAULT 0,
    n_succeeded      INTEGER NOT NULL DEFAULT 0,
    n_failed         INTEGER NOT NULL DEFAULT 0,
    n_cancelled      INTEGER NOT NULL DEFAULT 0,
    n_skipped        INTEGER NOT NULL DEFAULT 0,
    retries          INTEGER NOT NULL DEFAULT 0,
    -- Attempt durations: a serialized fixed-size histogram.
    durations        BLOB,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX batches_deadline ON batches (deadline)
    WHERE deadline IS NOT NULL AND finished_at IS NULL;
CREATE INDEX batches_live ON batches (id) WHERE finished_at IS NULL;
CREATE INDEX batches_served ON batches (last_served);

CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY,
    batch_id      INTEGER NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,
    key           TEXT,
    priority      INTEGER NOT NULL,
    cost          INTEGER NOT NULL CHECK (cost > 0),
    -- JSON.
    payload       TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    reason        TEXT,
    message       TEXT,
    -- The current attempt: every report after a claim names it (fencing).
    attempt       INTEGER NOT NULL DEFAULT 0,
    -- The first attempt of the current run (after a rerun, the next one):
    -- earlier attempts do not count against the retry policy.
    first_attempt INTEGER NOT NULL DEFAULT 1,
    lost          INTEGER NOT NULL DEFAULT 0,
    worker_id     INTEGER,
    lease_until   INTEGER,
    -- When the current attempt started (its attempts row is written at its end).
    started_at    INTEGER,
    cancel_mode   TEXT,
    cancel_reason TEXT,
    -- retry_wait: when the task is due again.
    run_at        INTEGER,
    -- queued: position in its batch's FIFO within a priority.
    ready_seq     INTEGER,
    deps_left     INTEGER NOT NULL DEFAULT 0,
    rule          TEXT    NOT NULL,
    -- Tasks that wait for this one: its output is kept for them.
    n_dependents  INTEGER NOT NULL DEFAULT 0,
    -- Tasks this one waits for: a claim reads their results only if any.
    n_upstream    INTEGER NOT NULL DEFAULT 0,
    -- JSON: the result, kept for dependents.
    output        TEXT,
    UNIQUE (batch_id, idx)
);
CREATE INDEX tasks_ready ON tasks (batch_id, priority DESC, ready_seq)
    WHERE state = 'queued';
CREATE INDEX tasks_leases ON tasks (lease_until) WHERE state = 'running';
CREATE INDEX tasks_retries ON tasks (run_at) WHERE state = 'retry_wait';
CREATE UNIQUE INDEX tasks_keys ON tasks (batch_id, key) WHERE key IS NOT NULL;

CREATE TABLE task_deps (
    task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    upstream_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- Position in the dependent's `after`, so upstream outputs arrive in order.
    position    INTEGER NOT NULL,
    PRIMARY KEY (task_id, upstream_id)
);
CREATE INDEX task_deps_upstream ON task_deps (upstream_id);

-- One row per attempt that ended, written when it ends (a running attempt's
-- worker and start are on its task row).
CREATE TABLE attempts (
    task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker_id   INTEGER,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    -- The state the attempt led to, and why.
    outcome     TEXT,
    reason      TEXT,
    exit_code   INTEGER,
    error       TEXT,
    -- Output tails, size-capped; compressed when large.
    stdout_tail BLOB,
    stderr_tail BLOB,
    compressed  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)
);

-- One row: counters shared by every process using the store.
CREATE TABLE herd_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    -- The next event's seq: taken last in a write transaction, so that seq
    -- order is commit order and a reader resuming after seq N misses nothing.
    next_seq INTEGER NOT NULL
);
INSERT INTO herd_meta (id, next_seq) VALUES (1, 1);

CREATE TABLE events (
    -- From herd_meta.next_seq: never reused, in commit order.
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    batch_id   INTEGER NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('task', 'batch')),
    task_id    INTEGER,
    idx        INTEGER,
    attempt    INTEGER,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    reason     TEXT
);
CREATE INDEX events_batch ON events (batch_id, seq);

CREATE TABLE workers (
    id             INTEGER PRIMARY KEY,
    host           TEXT    NOT NULL,
    pid            INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL
);
