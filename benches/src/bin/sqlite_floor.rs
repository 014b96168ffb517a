//! The floor of herd's SQLite write set: what SQLite alone does with the
//! rows herd must write per task, beside the bare claim-and-complete loop,
//! in the same file, through the same driver (sqlx, one connection), in
//! the same run. `benches/pg_floor.sh` is the same for PostgreSQL.
//!
//! ```text
//! sqlite_floor [TASKS]
//! ```
//!
//! herd's own schema (a store opened on a fresh file applies its
//! migrations) holds one live batch of TASKS (default 200,000, at least
//! 12,000) queued tasks. A turn is what a worker's store call does in one transaction, in
//! herd's two round trips: `BEGIN IMMEDIATE` with the reads (the running
//! tasks it reports, by lease; the queued tasks it claims, in queue order,
//! with their payloads), then the writes with the `COMMIT`: the reported
//! tasks go `running → succeeded` with an attempt row each, the claimed go
//! `queued → running` (leased), the batch row's counts change, one event
//! row records the run of events. herd also reads its batch rows and the
//! reported tasks' whole rows, and decides in Rust between the two round
//! trips; none of that is here, so herd can only come near these figures.
//!
//! The bare loop is `store_drain`'s: a two-column table, `BEGIN IMMEDIATE`,
//! `SELECT` the queued ids, `UPDATE` them by `json_each`, `COMMIT`.
//!
//! Prints rows per second for each at 100 and at 1 per transaction, and
//! the ratio, the median of `HERD_FLOOR_ROUNDS` (default 3) rounds, each
//! on a fresh file, the two taking turns. `HERD_FLOOR_WITHOUT` leaves parts
//! of the write set out (`attempts`, `batch`, `events`, comma-separated),
//! to see what each costs.

use std::time::{Duration, Instant};

use herd_benches::sqlite_bare;
use herd_sql::SqliteStore;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// Transactions timed per measure at one row per transaction.
const SINGLE_TRANSACTIONS: usize = 3_000;

/// The fewest queued tasks (and bare rows) the measures need.
const MIN_TASKS: usize = 4 * SINGLE_TRANSACTIONS;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let tasks: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 200_000,
    };
    // Half the rows go to the measure at 100 per transaction, and the one
    // at 1 per transaction takes its transactions' worth after them.
    if tasks < MIN_TASKS {
        return Err(format!(
            "TASKS is {tasks}: give at least {MIN_TASKS}, so that no measure runs out of rows"
        )
        .into());
    }
    let rounds: usize = std::env::var("HERD_FLOOR_ROUNDS")
        .ok()
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let dir = tempfile::Builder::new().prefix("herd-floor").tempdir()?;
    let mut figures: Vec<[f64; 4]> = Vec::new();
    for round in 0..rounds {
        let path = dir.path().join(format!("floor-{round}.db"));
        let mut conn = fresh(&path.display().to_string(), tasks).await?;
        let mut figure = [0.0; 4];
        // The next event number.
        let mut seq = 1;
        for (i, per) in [100, 1].into_iter().enumerate() {
            let count = match per {
                1 => SINGLE_TRANSACTIONS,
                _ => tasks / per / 2,
            };
            figure[2 * i] = bares(&mut conn, per, count).await?;
            figure[2 * i + 1] = turns(&mut conn, per, count, &mut seq).await?;
        }
        drop(conn);
        figures.push(figure);
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = figures.iter().map(|f| f[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("SQLite floor, {tasks} queued tasks, median of {rounds} (rows/s):");
    for (i, per) in [100, 1].into_iter().enumerate() {
        let (bare, turn) = (median(2 * i), median(2 * i + 1));
        println!(
            "  {per:>3} per transaction: bare {bare:>9.0}   herd's write set {turn:>9.0}   {:.2}x",
            turn / bare
        );
    }
    Ok(())
}

/// A fresh file with herd's schema, one batch of `tasks` queued tasks and
/// the bare table of as many rows; a connection of its own to it.
async fn fresh(path: &str, tasks: usize) -> Result<SqliteConnection> {
    let url = format!("sqlite:{path}");
    let store = SqliteStore::<String, String>::open(&url).await?;
    let pool = store.pool().clone();
    drop(store);
    pool.close().await;
    let mut conn = SqliteConnection::connect(&url).await?;
    sqlx::raw_sql(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "INSERT INTO batches (id, flow, state, priority, concurrency, policy, error_policy, \
           open, paused, created_at, n_queued, head_priority, head_cost) \
         VALUES (1, 'floor', 'running', 0, 1000000, '{}', '{}', 0, 0, 0, ?, 0, 1)",
    )
    .bind(tasks as i64)
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) \
         INSERT INTO tasks (id, batch_id, idx, priority, cost, payload, state, ready_seq, rule) \
         SELECT i, 1, i - 1, 0, 1, '{\"argv\":[\"/bin/true\"],\"items\":[\"' || i || '\"]}', \
           'queued', i, 'all' FROM s",
    )
    .bind(tasks as i64)
    .execute(&mut conn)
    .await?;
    sqlite_bare::fill(&mut conn, tasks).await?;
    Ok(conn)
}

/// Rows per second over `count` bare transactions of `per` rows each.
async fn bares(conn: &mut SqliteConnection, per: usize, count: usize) -> Result<f64> {
    let started = Instant::now();
    let mut rows = 0;
    for _ in 0..count {
        rows += sqlite_bare::step(conn, per).await?;
    }
    per_second(rows, per * count, started)
}

/// `rows` (which must be `expected`) per second since `started`.
fn per_second(rows: usize, expected: usize, started: Instant) -> Result<f64> {
    if rows != expected {
        return Err(format!(
            "{rows} rows of {expected}: the queue ran dry; give more tasks (sqlite_floor TASKS)"
        )
        .into());
    }
    Ok(rows as f64 / started.elapsed().max(Duration::from_nanos(1)).as_secs_f64())
}

/// `count` turns of `per` tasks (the first claims only; each after reports
/// what the one before claimed): tasks reported per second.
async fn turns(
    conn: &mut SqliteConnection,
    per: usize,
    count: usize,
    seq: &mut i64,
) -> Result<f64> {
    *seq += 2 * per as i64;
    turn(conn, per, *seq).await?;
    let started = Instant::now();
    let mut rows = 0;
    for _ in 0..count {
        *seq += 2 * per as i64;
        rows += turn(conn, per, *seq).await?;
    }
    // The last turn's claims stay running: the next measure reports them.
    per_second(rows, per * count, started)
}

/// One turn: reports the running tasks (up to `per`) and claims `per`.
async fn turn(conn: &mut SqliteConnection, per: usize, seq: i64) -> Result<usize> {
    let rows: Vec<(String, i64, i64, Option<String>)> = sqlx::query_as(
        "BEGIN IMMEDIATE; \
         SELECT 'r', id, attempt, NULL FROM (SELECT id, attempt FROM tasks \
           WHERE state = 'running' ORDER BY lease_until LIMIT ?) \
         UNION ALL \
         SELECT 'q', id, attempt, payload FROM (SELECT id, attempt, payload FROM tasks \
           WHERE batch_id = 1 AND state = 'queued' ORDER BY priority DESC, ready_seq LIMIT ?)",
    )
    .bind(per as i64)
    .bind(per as i64)
    .fetch_all(&mut *conn)
    .await?;
    let reported: Vec<i64> = rows.iter().filter(|r| r.0 == "r").map(|r| r.1).collect();
    let claimed: Vec<i64> = rows.iter().filter(|r| r.0 == "q").map(|r| r.1).collect();
    let (done, next) = (reported.len() as i64, claimed.len() as i64);
    let body = "t 1 2 3 running succeeded -\n".repeat(reported.len() + claimed.len());
    sqlx::query(&writes(&without()))
        .bind(serde_json::to_string(&reported)?)
        .bind(serde_json::to_string(&claimed)?)
        .bind(next)
        .bind(done)
        .bind(seq)
        .bind(seq + done + next - 1)
        .bind(body)
        .execute(&mut *conn)
        .await?;
    Ok(reported.len())
}

/// The parts of the write set `HERD_FLOOR_WITHOUT` leaves out (a comma
/// list of `attempts`, `batch`, `events`), to see what each costs.
fn without() -> Vec<String> {
    std::env::var("HERD_FLOOR_WITHOUT")
        .unwrap_or_default()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A turn's writes and its `COMMIT`, without the parts named. Parameters:
/// 1 the reported ids, 2 the claimed ids (JSON lists), 3 and 4 their
/// counts, 5 and 6 the events' first and last numbers, 7 the events.
fn writes(without: &[String]) -> String {
    let skip = |part: &str| without.iter().any(|w| w == part);
    let mut sql = String::from(
        "UPDATE tasks SET state = 'succeeded', lease_until = NULL, worker_id = NULL \
           WHERE id IN (SELECT value FROM json_each(?1)); ",
    );
    if !skip("attempts") {
        sql.push_str(
            "INSERT INTO attempts (task_id, attempt, worker_id, started_at, finished_at, \
               outcome, exit_code, stdout_tail, stderr_tail, stdout_total, stderr_total) \
             SELECT t.id, t.attempt, 1, 100, 200, 'succeeded', 0, 'line\n', NULL, 5, 0 \
             FROM json_each(?1) AS j CROSS JOIN tasks AS t ON t.id = j.value; ",
        );
    }
    sql.push_str(
        "UPDATE tasks SET state = 'running', attempt = attempt + 1, worker_id = 1, \
           lease_until = 30000000 + id, started_at = 100 \
           WHERE id IN (SELECT value FROM json_each(?2)); ",
    );
    if !skip("batch") {
        sql.push_str(
            "UPDATE batches SET n_queued = n_queued - ?3, n_running = n_running + ?3 - ?4, \
               n_succeeded = n_succeeded + ?4, running_cost = running_cost + ?3 - ?4, \
               last_served = last_served + 1 WHERE id = 1; ",
        );
    }
    if !skip("events") {
        sql.push_str(
            "INSERT INTO events (seq, last_seq, at, batch_id, body) VALUES (?5, ?6, 0, 1, ?7); ",
        );
    }
    sql.push_str("COMMIT");
    sql
}
