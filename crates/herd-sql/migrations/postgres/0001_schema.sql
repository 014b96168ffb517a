-- herd's schema, version 1, for PostgreSQL: the same tables as the SQLite
-- schema (see migrations/sqlite/0001_schema.sql for what every column means).
-- Times are microseconds since the Unix epoch; integers are BIGINT throughout.

CREATE TABLE batches (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT,
    idempotency_key  TEXT UNIQUE,
    flow             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         BIGINT  NOT NULL,
    concurrency      BIGINT  NOT NULL CHECK (concurrency > 0),
    policy           TEXT    NOT NULL,
    error_policy     TEXT    NOT NULL,
    deadline         BIGINT,
    open             BOOLEAN NOT NULL,
    paused           BOOLEAN NOT NULL,
    stopped          TEXT,
    cancelled        BOOLEAN NOT NULL DEFAULT FALSE,
    failed_by_policy BOOLEAN NOT NULL DEFAULT FALSE,
    running_cost     BIGINT  NOT NULL DEFAULT 0,
    last_served      BIGINT  NOT NULL DEFAULT 0,
    next_index       BIGINT  NOT NULL DEFAULT 0,
    next_ready       BIGINT  NOT NULL DEFAULT 0,
    n_pending        BIGINT  NOT NULL DEFAULT 0,
    n_queued         BIGINT  NOT NULL DEFAULT 0,
    n_running        BIGINT  NOT NULL DEFAULT 0,
    n_retry_wait     BIGINT  NOT NULL DEFAULT 0,
    n_succeeded      BIGINT  NOT NULL DEFAULT 0,
    n_failed         BIGINT  NOT NULL DEFAULT 0,
    n_cancelled      BIGINT  NOT NULL DEFAULT 0,
    n_skipped        BIGINT  NOT NULL DEFAULT 0,
    retries          BIGINT  NOT NULL DEFAULT 0,
    durations        BYTEA,
    created_at       BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX batches_deadline ON batches (deadline)
    WHERE deadline IS NOT NULL AND finished_at IS NULL;
CREATE INDEX batches_live ON batches (id) WHERE finished_at IS NULL;
CREATE INDEX batches_served ON batches (last_served);

CREATE TABLE tasks (
    id            BIGSERIAL PRIMARY KEY,
    batch_id      BIGINT  NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    idx           BIGINT  NOT NULL,
    key           TEXT,
    priority      BIGINT  NOT NULL,
    cost          BIGINT  NOT NULL CHECK (cost > 0),
    payload       TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    reason        TEXT,
    message       TEXT,
    attempt       BIGINT  NOT NULL DEFAULT 0,
    first_attempt BIGINT  NOT NULL DEFAULT 1,
    lost          BIGINT  NOT NULL DEFAULT 0,
    worker_id     BIGINT,
    lease_until   BIGINT,
    started_at    BIGINT,
    cancel_mode   TEXT,
    cancel_reason TEXT,
    run_at        BIGINT,
    ready_seq     BIGINT,
    deps_left     BIGINT  NOT NULL DEFAULT 0,
    rule          TEXT    NOT NULL,
    n_dependents  BIGINT  NOT NULL DEFAULT 0,
    n_upstream    BIGINT  NOT NULL DEFAULT 0,
    output        TEXT,
    UNIQUE (batch_id, idx)
);
CREATE INDEX tasks_ready ON tasks (batch_id, priority DESC, ready_seq)
    WHERE state = 'queued';
CREATE INDEX tasks_leases ON tasks (lease_until) WHERE state = 'running';
CREATE INDEX tasks_retries ON tasks (run_at) WHERE state = 'retry_wait';
CREATE UNIQUE INDEX tasks_keys ON tasks (batch_id, key) WHERE key IS NOT NULL;

CREATE TABLE task_deps (
    task_id     BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    upstream_id BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    position    BIGINT NOT NULL,
    PRIMARY KEY (task_id, upstream_id)
);
CREATE INDEX task_deps_upstream ON task_deps (upstream_id);

CREATE TABLE attempts (
    task_id     BIGINT  NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     BIGINT  NOT NULL,
    worker_id   BIGINT,
    started_at  BIGINT  NOT NULL,
    finished_at BIGINT,
    outcome     TEXT,
    reason      TEXT,
    exit_code   BIGINT,
    error       TEXT,
    stdout_tail BYTEA,
    stderr_tail BYTEA,
    compressed  BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE herd_meta (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    next_seq BIGINT NOT NULL
);
INSERT INTO herd_meta (id, next_seq) VALUES (1, 1);

CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    batch_id   BIGINT NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('task', 'batch')),
    task_id    BIGINT,
    idx        BIGINT,
    attempt    BIGINT,
    from_state TEXT,
    to_state   TEXT   NOT NULL,
    reason     TEXT
);
CREATE INDEX events_batch ON events (batch_id, seq);

CREATE TABLE workers (
    id             BIGSERIAL PRIMARY KEY,
    host           TEXT   NOT NULL,
    pid            BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL
);
