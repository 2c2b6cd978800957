-- Mirroring and the pull-through cache (docs/MIRROR.md).

-- Mirrors defined at runtime through the admin API (those in the config file are not stored).
CREATE TABLE mirror_defs (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,              -- the mirror definition (JSON)
    updated_at BIGINT NOT NULL
);

-- One row per run, with its report.
CREATE TABLE mirror_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mirror TEXT NOT NULL,
    trigger TEXT NOT NULL,                 -- cli | api | schedule
    state TEXT NOT NULL,                   -- running | succeeded | failed | interrupted
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    copied BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    report TEXT                            -- JSON: per-item outcomes and errors
);
CREATE INDEX mirror_runs_mirror ON mirror_runs (mirror, id);

-- Blob copies in progress: an interrupted run resumes these upload sessions.
CREATE TABLE mirror_uploads (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);

-- What each mirrored tag was made from, so an unchanged upstream tag is skipped after one HEAD.
CREATE TABLE mirror_tags (
    mirror TEXT NOT NULL,
    repository TEXT NOT NULL,              -- the local repository
    tag TEXT NOT NULL,
    upstream_digest TEXT NOT NULL,
    local_digest TEXT NOT NULL,
    fingerprint TEXT NOT NULL,             -- of the filters that shaped it
    synced_at BIGINT NOT NULL,
    PRIMARY KEY (mirror, repository, tag)
);

-- Pull-through cache: when each cached tag was last checked against the upstream.
CREATE TABLE proxy_tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked_at BIGINT NOT NULL,
    PRIMARY KEY (repository, tag)
);
