-- Events an operator should be told about (a game the agent gave up restarting, …) are
-- marked `alert`; everything else stays `info`. Notifications (webhooks) read the mark.
ALTER TABLE server_events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'
    CHECK (severity IN ('info', 'alert'));
