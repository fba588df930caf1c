-- One-time enrollment tokens for `curl …/install/pve-node.sh?token=… | bash` on a Proxmox
-- host: stored as SHA-256 only, expiring, spent by the one registration they allow
-- (node_id then names the node it made).
CREATE TABLE node_enrollments (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    node_id     INTEGER REFERENCES nodes(id) ON DELETE SET NULL
);
