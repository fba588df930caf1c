-- Events an operator should be told about (a game the agent gave up restarting, …) are
-- marked `alert`; everything else stays `info`. Notifications (webhooks) read the mark.
ALTER TABLE server_events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'
    CHECK (severity IN ('info', 'alert'));

-- Per-user quotas, set by an admin; NULL: the defaults of `quota.*` in the config.
-- Admins are not limited.
ALTER TABLE users ADD COLUMN max_servers INTEGER CHECK (max_servers >= 0);
ALTER TABLE users ADD COLUMN max_memory_mb INTEGER CHECK (max_memory_mb >= 0);
