-- Retention (docs/LIFECYCLE.md).
--
-- tags.pulled_at: when the tag was last pulled (GET or HEAD of a manifest by this tag), at
-- the precision of the registry's pull-time flush: pulls are counted in memory and written
-- in one transaction per flush, never one write per pull. NULL: not pulled since recorded.
ALTER TABLE tags ADD COLUMN pulled_at BIGINT;

-- One row per retention run, with its report.
CREATE TABLE retention_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger       TEXT    NOT NULL,     -- cli | api | schedule
    dry_run       INTEGER NOT NULL,
    state         TEXT    NOT NULL,     -- running | succeeded | failed | interrupted
    started_at    BIGINT  NOT NULL,
    finished_at   BIGINT,
    report        TEXT                  -- JSON: tags removed and kept per repository, errors
);
