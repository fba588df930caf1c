-- zlh schema v1: instance ownership and the durable job queue.
-- Timestamps are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Exactly one row: who serves (or last served) this database.
CREATE TABLE instance (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    host         TEXT    NOT NULL,
    host_id      TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    boot_epoch   INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    stopped_at   INTEGER
) STRICT;

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    kind                TEXT    NOT NULL,
    payload             TEXT    NOT NULL DEFAULT '{}',
    state               TEXT    NOT NULL CHECK (state IN
                          ('scheduled', 'available', 'running', 'retryable',
                           'completed', 'cancelled', 'discarded', 'held')),
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    priority            INTEGER NOT NULL DEFAULT 0,
    run_at              INTEGER NOT NULL,
    lane                TEXT,
    unique_key          TEXT,
    lock_by             TEXT,
    lease_until         INTEGER,
    cancel_requested_at INTEGER,
    held_reason         TEXT,
    checkpoint          TEXT,
    errors              TEXT    NOT NULL DEFAULT '[]',
    created_at          INTEGER NOT NULL,
    attempted_at        INTEGER,
    finished_at         INTEGER
) STRICT;

-- A unique key is unique among jobs that are not finished: a duplicate enqueue
-- returns the existing job instead of inserting a second one.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('scheduled', 'available', 'running', 'retryable', 'held');

-- At most one running job per lane, enforced by the database itself.
CREATE UNIQUE INDEX jobs_lane_running ON jobs (lane)
    WHERE lane IS NOT NULL AND state = 'running';

-- Matches the claim query's ORDER BY.
CREATE INDEX jobs_claim ON jobs (priority, run_at, id) WHERE state = 'available';
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'retryable');
CREATE INDEX jobs_running_lock ON jobs (lock_by) WHERE state = 'running';
-- Deliberately no index on (state, kind) or finished_at: every job changes state at
-- least twice, and maintaining such indexes halved queue throughput (measured with
-- `zlh bench queue`). Counts and hourly pruning scan the table instead.

-- Last slot each periodic job fired for: a slot never fires twice, even across restarts.
CREATE TABLE cron_slots (
    name      TEXT PRIMARY KEY,
    last_slot INTEGER NOT NULL,
    job_id    INTEGER
) STRICT;

-- Monotonic counters that must survive restarts (e.g. rescued jobs).
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
