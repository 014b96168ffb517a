-- herd's schema, version 4: nothing changes for SQLite. PostgreSQL's
-- attempts lost their foreign key to tasks at this version (see
-- migrations/postgres/0004_attempts_unchecked.sql); SQLite keeps it (a
-- table cannot drop a constraint without being rebuilt, and its check is
-- an index probe in the same process). The versions stay aligned.

SELECT 1;
