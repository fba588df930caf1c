-- zlh schema: worlds — backups of game servers' worlds, their retention, the world a
-- new server is seeded from, and per-server schedules (backup, restart, command).

-- One row per world backup. `location` is where the copy lives: a file path under
-- `<data_dir>/world-backups` (local nodes) or a Proxmox volume id (`pbs:backup/ct/…`).
CREATE TABLE world_backups (
    id           INTEGER PRIMARY KEY,
    server_id    INTEGER NOT NULL REFERENCES servers (id),
    -- local | proxmox
    kind         TEXT    NOT NULL CHECK (kind IN ('local', 'proxmox')),
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'failed', 'deleted')),
    location     TEXT,
    -- Proxmox: the storage the volume is on.
    storage      TEXT,
    size_bytes   INTEGER,
    sha256       TEXT,
    note         TEXT    NOT NULL DEFAULT '',
    protected    INTEGER NOT NULL DEFAULT 0,
    -- What happened (console steps skipped, the task's exit status on failure …).
    detail       TEXT,
    error        TEXT,
    -- user:<name> or schedule:<id>
    actor        TEXT    NOT NULL,
    job_id       INTEGER,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    deleted_at   INTEGER
) STRICT;
CREATE INDEX world_backups_server ON world_backups (server_id, id);

-- Retention per server; no row = keep everything.
CREATE TABLE world_retention (
    server_id  INTEGER PRIMARY KEY REFERENCES servers (id),
    -- Keep the newest N backups.
    keep_last  INTEGER NOT NULL CHECK (keep_last >= 0),
    -- Keep the newest backup of each of the last D days (UTC).
    keep_daily INTEGER NOT NULL CHECK (keep_daily >= 0),
    updated_at INTEGER NOT NULL
) STRICT;

-- A server created as a clone: its provisioning seeds the world from this backup
-- before the game's first start.
CREATE TABLE world_seeds (
    server_id  INTEGER PRIMARY KEY REFERENCES servers (id),
    backup_id  INTEGER NOT NULL REFERENCES world_backups (id),
    seeded_at  INTEGER
) STRICT;

CREATE TABLE schedules (
    id            INTEGER PRIMARY KEY,
    server_id     INTEGER NOT NULL REFERENCES servers (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('backup', 'restart', 'command')),
    -- 5 fields (minute hour day-of-month month day-of-week, UTC), or 6 with a leading
    -- seconds field. NULL for a chained schedule: it fires after `after_id`'s firing.
    cron          TEXT,
    after_id      INTEGER REFERENCES schedules (id),
    -- kind = command: the console command.
    command       TEXT,
    -- kind = restart: the in-game warning this many seconds before.
    warning_secs  INTEGER NOT NULL DEFAULT 0,
    note          TEXT    NOT NULL DEFAULT '',
    enabled       INTEGER NOT NULL DEFAULT 1,
    -- The last slot fired (epoch seconds of the cron match), so a slot fires once.
    last_slot     INTEGER,
    last_job_id   INTEGER,
    created_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    deleted_at    INTEGER,
    CHECK ((cron IS NULL) <> (after_id IS NULL))
) STRICT;
CREATE INDEX schedules_server ON schedules (server_id, id);
CREATE INDEX schedules_after ON schedules (after_id);
