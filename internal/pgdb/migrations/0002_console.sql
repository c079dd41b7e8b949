-- Migration 2: reserved for the web console's sessions (issue #21, branch "auth"), which
-- lands beside migration 3 (host acknowledgements). Versions are one number without gaps, so
-- this branch holds the number with an empty migration. When merging the branch that brings
-- the real 0002_console.sql, keep that branch's file: this placeholder makes no schema.
SELECT 1;
