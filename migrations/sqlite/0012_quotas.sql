-- Byte quotas per repository pattern (docs/LIFECYCLE.md).
--
-- A quota counts each distinct blob linked by any repository its pattern matches once.
-- quota_blobs holds, per quota, every such blob with the number of matching repositories
-- that link it; quotas.used is the sum of their sizes. Both change in the transaction that
-- links or unlinks, so a check and the charge it allows are one step.
CREATE TABLE quotas (
    pattern      TEXT    PRIMARY KEY,
    used         BIGINT  NOT NULL,
    computed_at  BIGINT  NOT NULL
);

CREATE TABLE quota_blobs (
    pattern  TEXT    NOT NULL REFERENCES quotas(pattern) ON DELETE CASCADE,
    digest   TEXT    NOT NULL,
    size     BIGINT  NOT NULL,
    refs     BIGINT  NOT NULL,
    PRIMARY KEY (pattern, digest)
);
