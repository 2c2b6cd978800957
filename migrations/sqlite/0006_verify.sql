-- Verification gate: workers and the job queue. One job per (repository, variant manifest,
-- isolation mode, host build). Portable SQL: PostgreSQL replicas claim with
-- `FOR UPDATE SKIP LOCKED` on the same columns (see storage/src/meta/verify.rs).
CREATE TABLE verify_workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    principal TEXT NOT NULL DEFAULT '',
    os TEXT NOT NULL,
    architecture TEXT NOT NULL,
    variant TEXT NOT NULL DEFAULT '',
    os_version TEXT NOT NULL DEFAULT '',
    registration TEXT NOT NULL,            -- the registration document (JSON)
    simulated INTEGER NOT NULL DEFAULT 0,
    registered_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE TABLE verify_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    index_digest TEXT NOT NULL DEFAULT '',
    os TEXT NOT NULL,
    architecture TEXT NOT NULL,
    platform TEXT NOT NULL,                -- the variant's platform object (JSON)
    isolation TEXT NOT NULL,
    host_build TEXT NOT NULL DEFAULT '',   -- major.minor.build a Windows worker must have; '' any
    policy TEXT NOT NULL,
    probe TEXT,                            -- JSON array, NULL: the image's entrypoint
    timeout_secs BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before BIGINT NOT NULL,
    lease TEXT,
    lease_worker TEXT,
    lease_expires BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    exit_code BIGINT,
    message TEXT NOT NULL DEFAULT '',
    log_tail TEXT NOT NULL DEFAULT '',
    timings TEXT,                          -- JSON
    runner TEXT,
    host TEXT,                             -- JSON
    simulated INTEGER NOT NULL DEFAULT 0,
    result_digest TEXT,
    UNIQUE (repository, digest, isolation, host_build)
);
CREATE INDEX verify_jobs_claim ON verify_jobs (state, os, architecture, not_before);
CREATE INDEX verify_jobs_digest ON verify_jobs (digest);
