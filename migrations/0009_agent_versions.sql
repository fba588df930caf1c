-- The version each server's agent last reported (`GET /version`: "0.1.0 (commit …)"),
-- so the UI and `zlh doctor` can say which agents run another build than this zlh.
ALTER TABLE servers ADD COLUMN agent_version TEXT;
ALTER TABLE servers ADD COLUMN agent_version_at INTEGER;
