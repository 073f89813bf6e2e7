-- herd's schema, PostgreSQL flavour. Keep it in step with migrations/sqlite/0001_initial.sql.
--
-- Only types that sqlx's Any driver can decode: every integer, flag (0/1) and timestamp
-- (milliseconds since the epoch) is BIGINT, every string is TEXT. No BOOLEAN, no TIMESTAMPTZ.

CREATE TABLE tasks (
    id          BIGINT  NOT NULL PRIMARY KEY,
    batch       TEXT    NOT NULL,
    name        TEXT,
    spec        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    attempt     BIGINT  NOT NULL,
    exit_code   BIGINT,
    reason      TEXT,
    message     TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE INDEX tasks_batch_state ON tasks (batch, state);

CREATE TABLE attempts (
    task_id             BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number              BIGINT NOT NULL,
    worker_id           BIGINT NOT NULL,
    worker_name         TEXT   NOT NULL,
    state               TEXT   NOT NULL,
    exit_code           BIGINT,
    reason              TEXT,
    message             TEXT,
    assigned_at         BIGINT NOT NULL,
    download_started_at BIGINT,
    run_started_at      BIGINT,
    upload_started_at   BIGINT,
    ended_at            BIGINT,
    transfers           TEXT   NOT NULL,
    PRIMARY KEY (task_id, number)
);

CREATE TABLE batches (
    name        TEXT   NOT NULL PRIMARY KEY,
    paused      BIGINT NOT NULL CHECK (paused IN (0, 1)),
    created_at  BIGINT NOT NULL
);

CREATE TABLE workers (
    id               BIGINT NOT NULL PRIMARY KEY,
    name             TEXT   NOT NULL,
    batch            TEXT   NOT NULL,
    concurrency      BIGINT NOT NULL,
    prefetch         BIGINT NOT NULL,
    docker           BIGINT NOT NULL CHECK (docker IN (0, 1)),
    allow_privileged BIGINT NOT NULL CHECK (allow_privileged IN (0, 1)),
    cores            BIGINT NOT NULL,
    memory_bytes     BIGINT NOT NULL,
    version          TEXT   NOT NULL,
    registered_at    BIGINT NOT NULL,
    last_seen        BIGINT NOT NULL,
    lost             BIGINT NOT NULL CHECK (lost IN (0, 1))
);

CREATE TABLE counters (
    name   TEXT   NOT NULL PRIMARY KEY,
    value  BIGINT NOT NULL
);
