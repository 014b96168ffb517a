-- herd's schema, version 5: one event row per run of an operation's
-- events of one batch, instead of one per event. A claim or a completion
-- of a hundred tasks wrote a hundred rows and index entries, a fifth of
-- the instructions of a drain; now it writes one. `seq` is the first
-- event's number and `last_seq` the last (the run's numbers are
-- consecutive); `body` holds one line per event:
--   t TASK INDEX ATTEMPT FROM TO REASON     (a task's transition)
--   b FROM TO                               (the batch's)
-- with `-` for a missing state or reason. Existing events keep their
-- numbers, one row each.

CREATE TABLE events_v5 (
    -- From herd_meta.next_seq: never reused, in commit order.
    seq      INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    body     TEXT    NOT NULL
);
INSERT INTO events_v5 (seq, last_seq, at, batch_id, body)
SELECT seq, seq, at, batch_id,
       CASE kind
         WHEN 'task' THEN printf('t %d %d %d %s %s %s', task_id, idx, attempt,
                                 COALESCE(from_state, '-'), to_state, COALESCE(reason, '-'))
         ELSE printf('b %s %s', COALESCE(from_state, '-'), to_state)
       END
FROM events;
DROP TABLE events;
ALTER TABLE events_v5 RENAME TO events;
CREATE INDEX events_batch ON events (batch_id, seq);
