-- zlh schema v5: admin UI sessions. The cookie carries a random 256-bit secret; only
-- its SHA-256 is stored, so a copy of the database cannot be used to log in.

CREATE TABLE sessions (
    id           INTEGER PRIMARY KEY,
    token_hash   TEXT    NOT NULL UNIQUE,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Sent in every form of this session; checked on every POST.
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);

-- Every page shows a banner while jobs are held: a partial index keeps that lookup off a
-- scan of the whole queue. Only rows entering or leaving `held` touch it, so claiming
-- and finishing jobs pay nothing (unlike the per-state indexes left out of 0001).
CREATE INDEX jobs_held ON jobs (id) WHERE state = 'held';

