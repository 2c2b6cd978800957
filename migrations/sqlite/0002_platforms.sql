-- Platforms of index entries, queryable without reading blobs, and validation findings.

CREATE TABLE index_entries (
    repo_id       BIGINT  NOT NULL REFERENCES repositories(id),
    index_digest  TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    child_digest  TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    size          BIGINT  NOT NULL,
    os            TEXT,
    architecture  TEXT,
    variant       TEXT,
    os_version    TEXT,
    os_features   TEXT,
    PRIMARY KEY (repo_id, index_digest, position)
);
CREATE INDEX index_entries_platform ON index_entries(os, architecture, os_version);

CREATE TABLE findings (
    repo_id          BIGINT  NOT NULL REFERENCES repositories(id),
    manifest_digest  TEXT    NOT NULL,
    position         INTEGER,
    kind             TEXT    NOT NULL,
    message          TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX findings_manifest ON findings(repo_id, manifest_digest);
