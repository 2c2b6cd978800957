-- Refresh tokens berth issued (docs/AUTH.md). A refresh grant is honoured only while its row
-- exists, is not revoked and has not expired; a password change, the replacement or deletion
-- of the account and an admin's revoke mark the rows of a principal revoked (or delete them).
-- principal: 'user:NAME' or 'robot:NAME'.
CREATE TABLE refresh_tokens (
    jti         TEXT    PRIMARY KEY,
    principal   TEXT    NOT NULL,
    issued_at   BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_principal ON refresh_tokens(principal);
