-- Online garbage collection (docs/LIFECYCLE.md).
--
-- touched_at: when a row was last created or used by a push (a re-upload of the same blob, a
-- mount, a HEAD of an old link, a re-push of a manifest). Nothing touched within the grace
-- window is collected.
-- blobs.deleting_at: set by a GC run, in the transaction that found the blob unlinked, before
-- it removes the bytes; the row goes once they are gone. A push of the same digest waits for
-- the row to go (or finishes the deletion itself when no GC run holds the lease).
ALTER TABLE blobs ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET touched_at = created_at;
ALTER TABLE blobs ADD COLUMN deleting_at BIGINT;
CREATE INDEX blobs_deleting ON blobs(deleting_at) WHERE deleting_at IS NOT NULL;

ALTER TABLE repo_blobs ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
UPDATE repo_blobs SET touched_at = created_at;

ALTER TABLE manifests ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
UPDATE manifests SET touched_at = created_at;

CREATE INDEX manifest_refs_repo_child ON manifest_refs(repo_id, child, kind);

-- Work that one process at a time may do (a GC run), with a renewed expiry: a process killed
-- mid-run loses its lease when it expires, and the next run takes over.
CREATE TABLE leases (
    name        TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL
);

-- One row per GC run, with its report.
CREATE TABLE gc_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger       TEXT    NOT NULL,     -- cli | api | schedule
    dry_run       INTEGER NOT NULL,
    state         TEXT    NOT NULL,     -- running | succeeded | failed
    started_at    BIGINT  NOT NULL,
    finished_at   BIGINT,
    report        TEXT                  -- JSON: totals, per repository, errors
);
