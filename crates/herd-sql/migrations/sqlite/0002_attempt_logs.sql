-- herd's schema, version 2: attempts keep their logs. An attempt whose
-- report carried a log has its exit code, output tails (zlib streams when
-- `compressed`) and the total bytes each stream wrote; one that ended
-- without a report of its own (a timeout, a lost worker) has NULLs.

ALTER TABLE attempts ADD COLUMN stdout_total INTEGER;
ALTER TABLE attempts ADD COLUMN stderr_total INTEGER;
