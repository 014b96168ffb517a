//! herd benches: what the benchmark programs share.

/// The bare claim-and-complete loop on SQLite, the baseline of
/// `store_drain` and `sqlite_floor`: a two-column table with a partial
/// index on the queued rows (as herd has), and a transaction that claims
/// and completes up to `per` rows: `BEGIN IMMEDIATE`, `SELECT` the queued
/// ids, `UPDATE` them by `json_each`, `COMMIT`.
pub mod sqlite_bare {
    use sqlx::Connection;
    use sqlx::sqlite::SqliteConnection;

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// Creates the table with `rows` queued rows.
    pub async fn fill(conn: &mut SqliteConnection, rows: usize) -> Result<()> {
        sqlx::raw_sql("CREATE TABLE bare (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
            .execute(&mut *conn)
            .await?;
        sqlx::raw_sql("CREATE INDEX bare_queued ON bare (id) WHERE state = 'queued'")
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) \
             INSERT INTO bare (id, state) SELECT i, 'queued' FROM s",
        )
        .bind(rows as i64)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// One transaction: claims and completes up to `per` rows; how many.
    pub async fn step(conn: &mut SqliteConnection, per: usize) -> Result<usize> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM bare WHERE state = 'queued' ORDER BY id LIMIT ?")
                .bind(per as i64)
                .fetch_all(&mut *tx)
                .await?;
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE bare SET state = 'done' WHERE id IN (SELECT value FROM json_each(?))",
            )
            .bind(serde_json::to_string(&ids)?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}
