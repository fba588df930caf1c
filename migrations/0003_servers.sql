-- zlh schema v3: users and API tokens, nodes, templates, servers with their events,
-- port allocations and idempotency records.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    -- argon2id PHC string; NULL until a password is set.
    password_hash TEXT,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
) STRICT;

-- API tokens are random 256-bit secrets: a SHA-256 of the token is enough to verify
-- them, and the token itself is never stored.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE TABLE nodes (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('local', 'proxmox')),
    -- Kind-specific settings as JSON (Proxmox API URL, token, node name, template …).
    settings    TEXT    NOT NULL DEFAULT '{}',
    -- Memory offered to game servers; placement picks the node with the most left.
    memory_mb   INTEGER NOT NULL,
    vmid_min    INTEGER NOT NULL DEFAULT 5000,
    vmid_max    INTEGER NOT NULL DEFAULT 5999,
    port_min    INTEGER NOT NULL DEFAULT 30000,
    port_max    INTEGER NOT NULL DEFAULT 30999,
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    CHECK (vmid_min <= vmid_max AND port_min <= port_max)
) STRICT;

CREATE TABLE templates (
    id         INTEGER PRIMARY KEY,
    slug       TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    game       TEXT    NOT NULL,
    variant    TEXT    NOT NULL,
    builtin    INTEGER NOT NULL DEFAULT 0,
    -- The template's recipe as JSON (artifact paths, mods, files, commands, readiness,
    -- defaults, edge kind).
    spec       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE servers (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    owner_id        INTEGER NOT NULL REFERENCES users (id),
    template_id     INTEGER NOT NULL REFERENCES templates (id),
    version         TEXT    NOT NULL,
    node_id         INTEGER NOT NULL REFERENCES nodes (id),
    vmid            INTEGER NOT NULL,
    ip              TEXT,
    game_port       INTEGER NOT NULL,
    agent_port      INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    cores           INTEGER NOT NULL,
    eula_accepted   INTEGER NOT NULL,
    -- The control plane must present this to the agent, so it cannot be hashed; it
    -- never leaves the database through the API.
    agent_token     TEXT    NOT NULL,
    install_id      TEXT    NOT NULL,
    -- The exact agent payload last sent (with secrets: redacted in API output).
    payload         TEXT,
    desired_state   TEXT    NOT NULL DEFAULT 'running',
    status          TEXT    NOT NULL,
    status_reason   TEXT,
    failed_step     TEXT,
    -- When the current transitional status must be over.
    status_deadline INTEGER,
    -- Provisioning steps done, so a retry resumes (JSON object step -> detail).
    checkpoints     TEXT    NOT NULL DEFAULT '{}',
    agent_state     TEXT,
    agent_seen_at   INTEGER,
    ready           INTEGER NOT NULL DEFAULT 0,
    crash_count     INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- Set when deleted: the row is kept as an archive, its name and VMID are freed.
    deleted_at      INTEGER
) STRICT;

CREATE UNIQUE INDEX servers_name_live ON servers (name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX servers_vmid_live ON servers (node_id, vmid) WHERE deleted_at IS NULL;
CREATE INDEX servers_owner ON servers (owner_id, id);

-- A port is used by at most one server per node, by constraint.
CREATE TABLE port_allocations (
    node_id   INTEGER NOT NULL REFERENCES nodes (id),
    port      INTEGER NOT NULL,
    server_id INTEGER NOT NULL REFERENCES servers (id),
    purpose   TEXT    NOT NULL,
    PRIMARY KEY (node_id, port)
) STRICT;
CREATE INDEX port_allocations_server ON port_allocations (server_id);

-- Every status transition and notable step, newest last.
CREATE TABLE server_events (
    id          INTEGER PRIMARY KEY,
    server_id   INTEGER NOT NULL REFERENCES servers (id),
    at          INTEGER NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    job_id      INTEGER,
    actor       TEXT    NOT NULL,
    message     TEXT    NOT NULL
) STRICT;
CREATE INDEX server_events_server ON server_events (server_id, id);

-- `Idempotency-Key` of create requests: same key + same body → the same server.
CREATE TABLE idempotency_keys (
    user_id      INTEGER NOT NULL REFERENCES users (id),
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    server_id    INTEGER NOT NULL REFERENCES servers (id),
    job_id       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT;
