-- Submits made with an idempotency key (`herd launch --idempotency-key`), kept 24 hours: a
-- submit repeated with the same key by the same user returns the ids of the first and queues
-- nothing. A submit's ids are consecutive: `first_task_id` and `task_count` list them all.
-- `key` is the user id, a colon and the client's key.

CREATE TABLE submissions (
    key            TEXT   NOT NULL PRIMARY KEY,
    user_id        BIGINT NOT NULL,
    first_task_id  BIGINT NOT NULL,
    task_count     BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
