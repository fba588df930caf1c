-- zlh schema v2: the artifact mirror's index (DESIGN §7: `/artifacts/…` with a sha256
-- index). One row per file stored under `<data_dir>/artifacts/<path>`; the row is
-- written after the file is in place, so a listed artifact is always complete.
-- `source` says where the bytes came from: import | mojang | fabric | paper | adoptium.

CREATE TABLE artifacts (
    path       TEXT    PRIMARY KEY,
    sha256     TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
