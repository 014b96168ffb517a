-- herd's schema, version 3, for PostgreSQL: each batch keeps its head (see
-- migrations/sqlite/0003_batch_heads.sql).

ALTER TABLE batches ADD COLUMN head_priority BIGINT;
ALTER TABLE batches ADD COLUMN head_cost BIGINT;

UPDATE batches b SET (head_priority, head_cost) = (
    SELECT t.priority, t.cost FROM tasks t
    WHERE t.batch_id = b.id AND t.state = 'queued'
    ORDER BY t.priority DESC, t.ready_seq LIMIT 1)
WHERE b.finished_at IS NULL;

CREATE INDEX batches_ranked ON batches (head_priority DESC, running_cost, last_served, id)
    WHERE head_priority IS NOT NULL AND finished_at IS NULL AND NOT paused
      AND stopped IS NULL;
