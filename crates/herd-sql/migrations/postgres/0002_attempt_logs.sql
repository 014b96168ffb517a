-- herd's schema, version 2, for PostgreSQL: attempts keep their logs (see
-- migrations/sqlite/0002_attempt_logs.sql).

ALTER TABLE attempts ADD COLUMN stdout_total BIGINT, ADD COLUMN stderr_total BIGINT;
