//! Operating the database file as a whole: the single-instance lock (who serves this
//! data dir) and online backup / restore. It knows the database, not the domain.

pub mod backup;
pub mod instance;
