-- Users, tokens and ownership, postgres flavour. Keep it in step with the other engine's file.
--
-- Tokens are stored as the SHA-256 (hex) of their secret, never the secret. A task's or a
-- batch's owner is a user id; NULL for rows written before herd had users (admins only see
-- those). A worker keeps the SHA-256 of the resume key the server gave it, without which its
-- identity cannot be taken over, and the token it last connected with.

CREATE TABLE users (
    id          BIGINT NOT NULL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    admin       BIGINT NOT NULL CHECK (admin IN (0, 1)),
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id          BIGINT NOT NULL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id),
    kind        TEXT   NOT NULL CHECK (kind IN ('user', 'worker')),
    batch       TEXT,
    label       TEXT   NOT NULL,
    hash        TEXT   NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

ALTER TABLE tasks ADD COLUMN owner BIGINT;
ALTER TABLE batches ADD COLUMN owner BIGINT;
ALTER TABLE workers ADD COLUMN token_id BIGINT;
ALTER TABLE workers ADD COLUMN resume_hash TEXT;
