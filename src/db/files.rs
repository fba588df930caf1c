//! File modes of the data dir: it holds the database, its backups, world backups
//! and the secret key, so only zlh's own user may read anything in it (0700 dirs,
//! 0600 files; the process umask is 077, see `cli::main`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Group and other read/write bits. Execute bits may stay (a `--x` directory or
/// binary reveals nothing), but the data dir itself is 0700.
const LOOSE: u32 = 0o066;

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes one file 0600.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Every file and directory under `dir` that group or others may read or write
/// (symlinks are not followed; at most `limit` paths are returned).
pub fn loose(dir: &Path, limit: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, &mut |path, mode| {
        if mode & LOOSE != 0 && out.len() < limit {
            out.push(path.to_path_buf());
        }
        Ok(())
    })?;
    Ok(out)
}

/// Takes group and other read/write bits off everything under `dir` (a data dir
/// from before this rule, or a file copied in by hand); returns how many changed.
pub fn tighten(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    walk(dir, &mut |path, mode| {
        if mode & LOOSE != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !LOOSE))?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Calls `f` with every path under `dir` (not `dir` itself) and its mode bits.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u32) -> std::io::Result<()>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone between the listing and now (a game writing its world).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        f(&path, meta.permissions().mode() & 0o7777)?;
        if meta.is_dir() {
            walk(&path, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_modes_are_found_and_tightened() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let dir = tmp.path().join("data");
        private_dir(&dir.join("backups")).expect("dirs");
        let file = dir.join("backups").join("old.db");
        std::fs::write(&file, b"x").expect("a file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(dir.join("backups"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert_eq!(loose(&dir, 10).expect("walk").len(), 2);
        assert_eq!(tighten(&dir).expect("tighten"), 2);
        assert!(loose(&dir, 10).expect("walk").is_empty());
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.join("backups")), 0o711);
    }
}
