-- berth metadata, SQLite flavour. Keep statements portable: the PostgreSQL set mirrors this
-- one with BIGSERIAL/BYTEA in place of INTEGER PRIMARY KEY/BLOB.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

-- One row per verified blob in the blob store, whatever repositories link it.
CREATE TABLE blobs (
    digest      TEXT    PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Which repositories may serve which blobs (pushed, mounted or referenced there).
CREATE TABLE repo_blobs (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    digest      TEXT    NOT NULL REFERENCES blobs(digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

-- Manifests, byte-exact, per repository.
CREATE TABLE manifests (
    repo_id       BIGINT  NOT NULL REFERENCES repositories(id),
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    size          BIGINT  NOT NULL,
    content       BLOB    NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repo_id, subject);

-- Edges from a manifest to what it references: kind 'blob' (config, layers) or 'manifest'
-- (index children). Garbage collection and deletes walk these.
CREATE TABLE manifest_refs (
    repo_id  BIGINT NOT NULL REFERENCES repositories(id),
    parent   TEXT   NOT NULL,
    child    TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    PRIMARY KEY (repo_id, parent, child, kind)
);
CREATE INDEX manifest_refs_child ON manifest_refs(child);

CREATE TABLE tags (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    name        TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name)
);
CREATE INDEX tags_digest ON tags(repo_id, digest);

-- Upload sessions between POST and the closing PUT.
CREATE TABLE uploads (
    id          TEXT    PRIMARY KEY,
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX uploads_updated ON uploads(updated_at);
