//! The `artifacts` table: the mirror's sha256 index. Rows are plain columns here;
//! `artifacts` gives them their types (the database layer knows no domain).

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;

/// One index row as stored.
#[derive(Debug, Clone)]
pub struct Row {
    pub path: String,
    pub sha256: String,
    pub size: i64,
    pub source: String,
    pub created_at: i64,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        path: r.get(0)?,
        sha256: r.get(1)?,
        size: r.get(2)?,
        source: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// The row of `path`.
pub fn get(conn: &Connection, path: &str) -> Result<Option<Row>, DbError> {
    Ok(conn
        .prepare_cached(
            "SELECT path, sha256, size, source, created_at FROM artifacts WHERE path = ?1",
        )?
        .query_row([path], from_row)
        .optional()?)
}

/// Every row, by path.
pub fn list(conn: &Connection) -> Result<Vec<Row>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, sha256, size, source, created_at FROM artifacts ORDER BY path",
    )?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Records (or replaces) the row of `row.path`.
pub fn put(conn: &Connection, row: &Row) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO artifacts (path, sha256, size, source, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
             source = excluded.source, created_at = excluded.created_at",
        params![row.path, row.sha256, row.size, row.source, row.created_at],
    )?;
    Ok(())
}
