-- herd's schema, version 3: each batch keeps its head, the priority and
-- cost of its first queued task in queue order (the first entry of
-- `tasks_ready` for the batch), NULL when it has none. Every write of a
-- batch row sets them again, after the transaction's task rows. A claim
-- ranks the batches it could take tasks from by reading `batches_ranked`
-- in order, instead of probing `tasks_ready` once per live batch.

ALTER TABLE batches ADD COLUMN head_priority INTEGER;
ALTER TABLE batches ADD COLUMN head_cost INTEGER;

UPDATE batches SET (head_priority, head_cost) = (
    SELECT t.priority, t.cost FROM tasks t
    WHERE t.batch_id = batches.id AND t.state = 'queued'
    ORDER BY t.priority DESC, t.ready_seq LIMIT 1)
WHERE finished_at IS NULL;

CREATE INDEX batches_ranked ON batches (head_priority DESC, running_cost, last_served, id)
    WHERE head_priority IS NOT NULL AND finished_at IS NULL AND NOT paused
      AND stopped IS NULL;
