-- zlh schema v4: edge records — one row per thing published for a server (a Velocity
-- registration, a DNS record, a Traefik route), with the exact identity needed to
-- remove it and its state.

CREATE TABLE edge_records (
    id              INTEGER PRIMARY KEY,
    server_id       INTEGER NOT NULL REFERENCES servers (id),
    -- velocity | dns_a | dns_srv | traefik_tcp | traefik_udp
    target          TEXT    NOT NULL,
    -- The canonical name, the same for publish and unpublish (Velocity server name,
    -- DNS record name, Traefik router name).
    name            TEXT    NOT NULL,
    -- What should be published (address, port, value …) as JSON.
    desired         TEXT    NOT NULL,
    -- What the target returned that a delete needs (e.g. a DNS record id), as JSON.
    identity        TEXT,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'published', 'failed', 'removed')),
    last_error      TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    published_at    INTEGER,
    removed_at      INTEGER,
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX edge_records_live ON edge_records (server_id, target, name)
    WHERE state <> 'removed';
CREATE INDEX edge_records_state ON edge_records (state, next_attempt_at);
