-- Users, groups, robot accounts and permission rules.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    password_hash  TEXT    NOT NULL,
    admin          BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT  NOT NULL
);

CREATE TABLE group_members (
    group_name  TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    PRIMARY KEY (group_name, user_name)
);

CREATE TABLE robots (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    secret_hash  TEXT    NOT NULL,
    expires_at   BIGINT,
    created_at   BIGINT  NOT NULL
);

-- principal: 'user:NAME', 'group:NAME', 'robot:NAME' or 'anonymous'.
CREATE TABLE permissions (
    id          INTEGER PRIMARY KEY,
    principal   TEXT    NOT NULL,
    pattern     TEXT    NOT NULL,
    actions     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX permissions_principal ON permissions(principal);
