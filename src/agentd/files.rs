//! The server directory over HTTP (DESIGN §7 files contract, §1.10 confinement): list,
//! read (ranges), atomic write, streamed upload and download (a folder as tar.gz),
//! mkdir, rename, delete and archive extraction.
//!
//! Every path goes through [`parse`] and is then opened with [`open_beneath`] from an
//! fd of the server directory: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, or
//! where the kernel lacks it a component-by-component walk with `O_NOFOLLOW`. Whatever
//! acts on a final name (create, rename, delete, stat) does it with `*at()` calls on the
//! parent's fd, never following the name itself. Special files are never opened.

use std::ffi::OsStr;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use super::install::AtomicWrite;
use crate::agent::{FileEntry, FileKind, FileList};

/// Entries an archive may hold.
const MAX_ARCHIVE_ENTRIES: usize = 100_000;
/// Longest path accepted (bytes), and longest component.
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path itself is malformed or tries to leave (400, naming the field).
    #[error("{field}: {message}")]
    BadPath {
        field: &'static str,
        message: String,
    },
    /// The path is well formed but leads somewhere the agent never goes (403).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// An archive with an entry that would leave its folder, a link, or a special file.
    #[error("{0}")]
    BadArchive(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    fn bad(field: &'static str, message: impl Into<String>) -> Self {
        FileError::BadPath {
            field,
            message: message.into(),
        }
    }

    /// An errno from opening or acting on `path`, as what it means for a client.
    fn from_errno(action: &'static str, path: &str, e: Errno) -> Self {
        let shown = if path.is_empty() { "/" } else { path };
        match e {
            Errno::XDEV => FileError::Refused(format!(
                "{shown}: leads outside the server directory (a symlink pointing out)"
            )),
            Errno::LOOP => FileError::Refused(format!(
                "{shown}: a symlink on the way is not followed here"
            )),
            Errno::NOENT => FileError::NotFound(format!("{shown}: no such file or directory")),
            Errno::NOTDIR => {
                FileError::Conflict(format!("{shown}: a part of it is not a directory"))
            }
            Errno::ISDIR => FileError::Conflict(format!("{shown}: is a directory")),
            Errno::EXIST => FileError::Conflict(format!("{shown}: already exists")),
            Errno::NOTEMPTY => FileError::Conflict(format!("{shown}: directory not empty")),
            Errno::NXIO => FileError::Refused(format!("{shown}: a special file")),
            Errno::INVAL if action == "renaming" => {
                FileError::Conflict(format!("{shown}: cannot move a directory into itself"))
            }
            e => FileError::Io {
                action,
                path: shown.to_string(),
                source: e.into(),
            },
        }
    }

    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            FileError::BadPath { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            FileError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
            FileError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            FileError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            FileError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            FileError::BadArchive(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_archive"),
            FileError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for FileError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let field = match &self {
            FileError::BadPath { field, .. } => Some(*field),
            _ => None,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "file request failed");
        }
        let body = json!({"error": {"code": code, "message": self.to_string(), "field": field}});
        (status, axum::Json(body)).into_response()
    }
}

/// A path relative to the server directory, checked: its components, none `..`, `.`
/// or empty. The empty path is the directory itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(Vec<String>);

impl RelPath {
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    fn joined(&self) -> String {
        self.0.join("/")
    }

    fn name(&self) -> &str {
        self.0.last().map(String::as_str).unwrap_or("")
    }

    fn parent(&self) -> RelPath {
        RelPath(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }
}

/// Checks a path from a client or an archive. Refused: `..`, absolute paths, NUL and
/// other control characters, backslashes, and percent-encoded dots or separators
/// (a query string is decoded once; anything still encoded is an attempt to sneak one
/// past a check).
pub fn parse(field: &'static str, raw: &str) -> Result<RelPath, FileError> {
    if raw.len() > MAX_PATH {
        return Err(FileError::bad(
            field,
            format!("longer than {MAX_PATH} bytes"),
        ));
    }
    if raw.contains('\0') {
        return Err(FileError::bad(field, "contains a NUL byte"));
    }
    if raw.chars().any(char::is_control) {
        return Err(FileError::bad(field, "contains a control character"));
    }
    if raw.contains('\\') {
        return Err(FileError::bad(
            field,
            "contains a backslash (use / between folders)",
        ));
    }
    if raw.starts_with('/') {
        return Err(FileError::bad(
            field,
            "is absolute: paths are relative to the server directory",
        ));
    }
    let lower = raw.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return Err(FileError::bad(
            field,
            "contains a percent-encoded dot, separator or NUL",
        ));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(FileError::bad(field, "contains '..'")),
            p if p.len() > MAX_NAME => {
                return Err(FileError::bad(
                    field,
                    format!("a name is longer than {MAX_NAME} bytes"),
                ));
            }
            p => parts.push(p.to_string()),
        }
    }
    Ok(RelPath(parts))
}

fn not_root(field: &'static str, p: &RelPath) -> Result<(), FileError> {
    if p.is_root() {
        Err(FileError::bad(field, "names the server directory itself"))
    } else {
        Ok(())
    }
}

/// The server directory, opened once per request.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(dir: &std::path::Path) -> Result<Root, FileError> {
        std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
            action: "creating",
            path: dir.display().to_string(),
            source,
        })?;
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FileError::from_errno("opening the server directory", "", e))?;
        Ok(Root { fd })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens `path` beneath `root` with `flags`: no component (symlinks included) may lead
/// out, and magic links (`/proc/self/fd/…`) are never followed.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    path: &RelPath,
    flags: OFlags,
) -> Result<OwnedFd, FileError> {
    let joined = path.joined();
    let target = if joined.is_empty() {
        "."
    } else {
        joined.as_str()
    };
    // openat2 refuses O_PATH with anything but O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    };
    match rustix::fs::openat2(
        root,
        target,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        // Kernels before 5.6 (or a seccomp filter) lack openat2: walk instead.
        Err(Errno::NOSYS) | Err(Errno::PERM) => walk_beneath(root, path, flags),
        // openat2 may ask to retry when a rename raced it.
        Err(Errno::AGAIN) => walk_beneath(root, path, flags),
        r => r.map_err(|e| FileError::from_errno("opening", &joined, e)),
    }
}

/// The fallback of [`open_beneath`]: one component at a time, never following a
/// symlink (stricter than openat2: a link that stays inside is refused too).
fn walk_beneath(root: BorrowedFd<'_>, path: &RelPath, flags: OFlags) -> Result<OwnedFd, FileError> {
    let joined = path.joined();
    let err = |e| FileError::from_errno("opening", &joined, e);
    let mut dir = rustix::fs::openat(
        root,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let Some((last, dirs)) = path.0.split_last() else {
        return rustix::fs::openat(root, ".", flags, Mode::empty()).map_err(err);
    };
    for part in dirs {
        dir = rustix::fs::openat(
            &dir,
            part.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_DIRECTORY answers ENOTDIR for a symlink too.
            Errno::NOTDIR if is_symlink(dir.as_fd(), part) => err(Errno::LOOP),
            e => err(e),
        })?;
    }
    rustix::fs::openat(&dir, last.as_str(), flags | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| {
        match e {
            Errno::NOTDIR if is_symlink(dir.as_fd(), last) => err(Errno::LOOP),
            e => err(e),
        }
    })
}

fn is_symlink(dir: BorrowedFd<'_>, name: &str) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// The parent directory of `path` (opened beneath the root) and its last name.
fn parent_of(root: &Root, path: &RelPath) -> Result<(OwnedFd, String), FileError> {
    let dir = open_beneath(
        root.fd(),
        &path.parent(),
        OFlags::DIRECTORY | OFlags::RDONLY,
    )?;
    Ok((dir, path.name().to_string()))
}

fn kind_of(t: FileType) -> FileKind {
    match t {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Special,
    }
}

/// `GET /files?path=`: a directory's entries, folders first (links are listed, not followed).
pub fn list(root: &Root, path: &RelPath) -> Result<FileList, FileError> {
    let fd = open_beneath(root.fd(), path, OFlags::DIRECTORY | OFlags::RDONLY)?;
    let joined = path.joined();
    let mut entries = Vec::new();
    for entry in
        rustix::fs::Dir::read_from(&fd).map_err(|e| FileError::from_errno("listing", &joined, e))?
    {
        let entry = entry.map_err(|e| FileError::from_errno("listing", &joined, e))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed while we listed: not there any more.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(FileError::from_errno("listing", &joined, e)),
        };
        let kind = kind_of(FileType::from_raw_mode(st.st_mode));
        entries.push(FileEntry {
            name: name.to_string_lossy().into_owned(),
            kind,
            size: if kind == FileKind::File {
                st.st_size.max(0) as u64
            } else {
                0
            },
            mtime: crate::util::format_ts(st.st_mtime.saturating_mul(1000)),
        });
    }
    entries.sort_by(|a, b| {
        (a.kind != FileKind::Dir, a.name.to_lowercase())
            .cmp(&(b.kind != FileKind::Dir, b.name.to_lowercase()))
    });
    Ok(FileList {
        path: joined,
        entries,
    })
}

/// Opens a regular file for reading (a directory, link out or special file is refused;
/// `O_NONBLOCK` so a FIFO cannot hang the open).
fn open_regular(root: &Root, path: &RelPath) -> Result<(std::fs::File, u64), FileError> {
    let joined = path.joined();
    let probe = probe(root, path)?;
    if FileType::from_raw_mode(probe.st_mode) == FileType::Directory {
        return Err(FileError::Conflict(format!(
            "{joined}: is a directory (download it as a tar.gz)"
        )));
    }
    let fd = open_beneath(root.fd(), path, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| FileError::from_errno("reading", &joined, e))?;
    if (st.st_dev, st.st_ino) != (probe.st_dev, probe.st_ino)
        || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
    {
        return Err(FileError::Conflict(format!(
            "{joined}: changed while it was opened: try again"
        )));
    }
    let fd_flags =
        rustix::fs::fcntl_getfl(&fd).map_err(|e| FileError::from_errno("reading", &joined, e))?;
    rustix::fs::fcntl_setfl(&fd, fd_flags - OFlags::NONBLOCK)
        .map_err(|e| FileError::from_errno("reading", &joined, e))?;
    Ok((std::fs::File::from(fd), st.st_size.max(0) as u64))
}

/// What `path` is, looked at through an `O_PATH` fd (opening nothing: a device or FIFO
/// never sees an open). A regular file or a directory passes; anything else is refused.
fn probe(root: &Root, path: &RelPath) -> Result<rustix::fs::Stat, FileError> {
    let joined = path.joined();
    let fd = open_beneath(root.fd(), path, OFlags::PATH)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| FileError::from_errno("reading", &joined, e))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile | FileType::Directory => Ok(st),
        // Only the component walk gets here (O_PATH | O_NOFOLLOW opens the link itself).
        FileType::Symlink => Err(FileError::Refused(format!(
            "{joined}: a symlink on the way is not followed here"
        ))),
        _ => Err(FileError::Refused(format!(
            "{joined}: a special file is never read or written"
        ))),
    }
}

/// Starts an atomic write of `path`: its parent must exist; an existing directory or
/// special file of that name is refused (an existing link is replaced, not followed).
fn begin_write(root: &Root, path: &RelPath) -> Result<(AtomicWrite, std::fs::File), FileError> {
    not_root("path", path)?;
    let joined = path.joined();
    let (dir, name) = parent_of(root, path)?;
    match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile | FileType::Symlink => {}
            FileType::Directory => {
                return Err(FileError::Conflict(format!("{joined}: is a directory")));
            }
            _ => {
                return Err(FileError::Refused(format!(
                    "{joined}: a special file is never written"
                )));
            }
        },
        Err(Errno::NOENT) => {}
        Err(e) => return Err(FileError::from_errno("writing", &joined, e)),
    }
    AtomicWrite::create_in(dir, OsStr::new(&name)).map_err(|source| FileError::Io {
        action: "creating a temp file for",
        path: joined,
        source,
    })
}

/// Creates `path` and every missing folder on the way, one component at a time with
/// `O_NOFOLLOW` (a symlinked folder on the way is refused), from `base`.
fn mkdir_walk(base: BorrowedFd<'_>, path: &RelPath) -> Result<OwnedFd, FileError> {
    let joined = path.joined();
    let err = |e| FileError::from_errno("creating", &joined, e);
    let mut dir = rustix::fs::openat(
        base,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    for part in &path.0 {
        match rustix::fs::mkdirat(&dir, part.as_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(err(e)),
        }
        dir = rustix::fs::openat(
            &dir,
            part.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_DIRECTORY answers ENOTDIR for a symlink too: say which it is.
            Errno::NOTDIR | Errno::LOOP if is_symlink(dir.as_fd(), part) => FileError::Refused(
                format!("{joined}: '{part}' is a symlink, not followed here"),
            ),
            Errno::NOTDIR => {
                FileError::Conflict(format!("{joined}: '{part}' exists and is not a directory"))
            }
            e => err(e),
        })?;
    }
    Ok(dir)
}

pub fn mkdir(root: &Root, path: &RelPath) -> Result<(), FileError> {
    not_root("path", path)?;
    mkdir_walk(root.fd(), path).map(drop)
}

pub fn rename(root: &Root, from: &RelPath, to: &RelPath) -> Result<(), FileError> {
    not_root("from", from)?;
    not_root("to", to)?;
    let (from_dir, from_name) = parent_of(root, from)?;
    let (to_dir, to_name) = parent_of(root, to)?;
    rustix::fs::renameat_with(
        &from_dir,
        from_name.as_str(),
        &to_dir,
        to_name.as_str(),
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| match e {
        Errno::EXIST => FileError::Conflict(format!("{}: already exists", to.joined())),
        Errno::NOENT => {
            FileError::NotFound(format!("{}: no such file or directory", from.joined()))
        }
        e => FileError::from_errno("renaming", &from.joined(), e),
    })
}

/// Deletes a file or link (the link itself), or a directory when `recursive`.
pub fn delete(root: &Root, path: &RelPath, recursive: bool) -> Result<(), FileError> {
    not_root("path", path)?;
    let joined = path.joined();
    let (dir, name) = parent_of(root, path)?;
    let st = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FileError::from_errno("deleting", &joined, e))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        if !recursive {
            return Err(FileError::Conflict(format!(
                "{joined}: is a directory: delete it with \"recursive\": true"
            )));
        }
        remove_tree(dir.as_fd(), &name).map_err(|e| FileError::from_errno("deleting", &joined, e))
    } else {
        rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
            .map_err(|e| FileError::from_errno("deleting", &joined, e))
    }
}

/// Removes the directory `name` in `dir` and everything below it, never following a link.
fn remove_tree(dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    for n in names {
        let st = rustix::fs::statat(&sub, n.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(sub.as_fd(), &n.to_string_lossy())?;
        } else {
            rustix::fs::unlinkat(&sub, n.as_c_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// A `Write` that hands 64 KiB chunks to an async body through a small channel: a
/// blocking producer (tar + gzip) runs at the pace the client reads.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
}

const CHUNK: usize = 64 * 1024;

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Writes the folder `dir` as a gzipped tar into `out`. Regular files and folders go
/// in; links and special files are left out (never followed, never read).
fn tar_folder(dir: OwnedFd, out: ChunkWriter) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    add_folder(&mut tar, dir.as_fd(), "")?;
    let mut out = tar.into_inner()?.finish()?;
    out.flush()
}

fn add_folder<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: BorrowedFd<'_>,
    prefix: &str,
) -> std::io::Result<()> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let n = entry.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    names.sort();
    for n in names {
        let rel = format!("{prefix}{}", n.to_string_lossy());
        // Only files and folders are opened (a device or FIFO never sees an open); the
        // open does not follow a link either, should one have been swapped in meanwhile.
        match rustix::fs::statat(dir, n.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if matches!(
                    FileType::from_raw_mode(st.st_mode),
                    FileType::RegularFile | FileType::Directory
                ) => {}
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
        let fd = match rustix::fs::openat(
            dir,
            n.as_c_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // A link (ELOOP), a FIFO without a writer (ENXIO), gone meanwhile: left out.
            Err(Errno::LOOP | Errno::NXIO | Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(st.st_mtime.max(0) as u64);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, format!("{rel}/"), std::io::empty())?;
                add_folder(tar, fd.as_fd(), &format!("{rel}/"))?;
            }
            FileType::RegularFile => {
                let size = st.st_size.max(0) as u64;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if st.st_mode & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                });
                header.set_size(size);
                // Exactly the size in the header, even if the game appends meanwhile.
                let file = std::fs::File::from(fd).take(size);
                tar.append_data(
                    &mut header,
                    &rel,
                    Padded {
                        inner: file,
                        left: size,
                    },
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A reader of exactly `left` bytes: zeros fill in for a file that shrank while read,
/// so the tar stays well formed.
struct Padded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Padded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// What an archive holds, checked before anything is written.
enum ArchiveKind {
    Zip,
    TarGz,
}

fn archive_kind(path: &RelPath) -> Result<ArchiveKind, FileError> {
    let name = path.name().to_ascii_lowercase();
    if name.ends_with(".zip") {
        Ok(ArchiveKind::Zip)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(ArchiveKind::TarGz)
    } else {
        Err(FileError::bad(
            "path",
            "only .zip, .tar.gz and .tgz archives are extracted",
        ))
    }
}

/// An entry's path inside an archive, checked like a client's path.
fn entry_path(raw: &str) -> Result<RelPath, FileError> {
    parse("entry", raw).map_err(|e| FileError::BadArchive(format!("archive entry {raw:?}: {e}")))
}

/// Extracts the archive `path` into the folder `into` (created if missing). The whole
/// archive is checked first: an entry with `..`, an absolute path, a link (symbolic or
/// hard) or a special file refuses it before anything is written. Every entry is then
/// written through the same confined helpers, atomically. Returns the files written.
pub fn extract(
    root: &Root,
    path: &RelPath,
    into: &RelPath,
    max_bytes: u64,
) -> Result<u64, FileError> {
    let kind = archive_kind(path)?;
    let (file, _) = open_regular(root, path)?;
    let io = |action| {
        let p = path.joined();
        move |source| FileError::Io {
            action,
            path: p,
            source,
        }
    };
    let bad = |e: &dyn std::fmt::Display| FileError::BadArchive(format!("{}: {e}", path.joined()));
    match kind {
        ArchiveKind::Zip => {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(&e))?;
            if zip.len() > MAX_ARCHIVE_ENTRIES {
                return Err(FileError::BadArchive(format!(
                    "more than {MAX_ARCHIVE_ENTRIES} entries"
                )));
            }
            let mut total = 0u64;
            let mut plan = Vec::with_capacity(zip.len());
            for i in 0..zip.len() {
                let entry = zip.by_index_raw(i).map_err(|e| bad(&e))?;
                let name = entry.name().map_err(|e| bad(&e))?.into_owned();
                let rel = entry_path(&name)?;
                let mode = entry.unix_mode().unwrap_or(0);
                let ft = mode & 0o170000;
                if entry.is_symlink() || (ft != 0 && ft != 0o100000 && ft != 0o040000) {
                    return Err(FileError::BadArchive(format!(
                        "archive entry {name:?}: links and special files are not extracted"
                    )));
                }
                total = total.saturating_add(entry.size());
                plan.push((i, rel, entry.is_dir()));
            }
            if total > max_bytes {
                return Err(FileError::TooLarge(format!(
                    "the archive unpacks to {total} bytes, more than the {max_bytes} allowed"
                )));
            }
            let dest = mkdir_walk(root.fd(), into)?;
            let mut written = 0u64;
            let mut budget = max_bytes;
            for (i, rel, is_dir) in plan {
                if rel.is_root() {
                    continue;
                }
                if is_dir {
                    mkdir_walk(dest.as_fd(), &rel)?;
                    continue;
                }
                let mut entry = zip.by_index(i).map_err(|e| bad(&e))?;
                write_entry(dest.as_fd(), &rel, &mut entry, &mut budget)?;
                written += 1;
            }
            Ok(written)
        }
        ArchiveKind::TarGz => {
            // Pass one: every header checked, nothing written.
            let mut total = 0u64;
            let mut count = 0usize;
            {
                let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&file));
                for entry in tar.entries().map_err(|e| bad(&e))? {
                    let entry = entry.map_err(|e| bad(&e))?;
                    check_tar_entry(&entry)?;
                    total = total.saturating_add(entry.header().size().unwrap_or(0));
                    count += 1;
                    if count > MAX_ARCHIVE_ENTRIES {
                        return Err(FileError::BadArchive(format!(
                            "more than {MAX_ARCHIVE_ENTRIES} entries"
                        )));
                    }
                }
            }
            if total > max_bytes {
                return Err(FileError::TooLarge(format!(
                    "the archive unpacks to {total} bytes, more than the {max_bytes} allowed"
                )));
            }
            let mut file = file;
            file.rewind().map_err(io("rewinding"))?;
            let dest = mkdir_walk(root.fd(), into)?;
            let mut written = 0u64;
            let mut budget = max_bytes;
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&file));
            for entry in tar.entries().map_err(|e| bad(&e))? {
                let mut entry = entry.map_err(|e| bad(&e))?;
                let rel = check_tar_entry(&entry)?;
                if rel.is_root() {
                    continue;
                }
                if entry.header().entry_type().is_dir() {
                    mkdir_walk(dest.as_fd(), &rel)?;
                    continue;
                }
                write_entry(dest.as_fd(), &rel, &mut entry, &mut budget)?;
                written += 1;
            }
            Ok(written)
        }
    }
}

fn check_tar_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<RelPath, FileError> {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let t = entry.header().entry_type();
    if !(t.is_file() || t.is_dir()) {
        return Err(FileError::BadArchive(format!(
            "archive entry {raw:?}: links and special files are not extracted ({t:?})"
        )));
    }
    entry_path(&raw)
}

/// Writes one archive entry beneath `dest` (its folders created on the way), atomically,
/// counting what it unpacks against `budget`.
fn write_entry(
    dest: BorrowedFd<'_>,
    rel: &RelPath,
    data: &mut dyn Read,
    budget: &mut u64,
) -> Result<(), FileError> {
    let parent = mkdir_walk(dest, &rel.parent())?;
    let joined = rel.joined();
    match rustix::fs::statat(&parent, rel.name(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Err(FileError::Conflict(format!("{joined}: is a directory")));
        }
        Ok(st)
            if !matches!(
                FileType::from_raw_mode(st.st_mode),
                FileType::RegularFile | FileType::Symlink
            ) =>
        {
            return Err(FileError::Refused(format!(
                "{joined}: a special file is never written"
            )));
        }
        _ => {}
    }
    let (w, mut f) =
        AtomicWrite::create_in(parent, OsStr::new(rel.name())).map_err(|source| FileError::Io {
            action: "creating",
            path: joined.clone(),
            source,
        })?;
    let n = std::io::copy(&mut data.take(budget.saturating_add(1)), &mut f).map_err(|source| {
        FileError::Io {
            action: "unpacking",
            path: joined.clone(),
            source,
        }
    })?;
    if n > *budget {
        return Err(FileError::TooLarge(format!(
            "{joined}: the archive unpacks to more than allowed"
        )));
    }
    *budget -= n;
    w.commit(f).map_err(|source| FileError::Io {
        action: "writing",
        path: joined,
        source,
    })
}

// ---- HTTP ----

#[derive(Deserialize)]
struct PathQuery {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathBody {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractBody {
    path: String,
    #[serde(default)]
    to: String,
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/files", get(list_route))
        .route("/files/content", get(read_route).put(write_route))
        .route("/files/upload", post(write_route))
        .route("/files/download", get(download_route))
        .route("/files/mkdir", post(mkdir_route))
        .route("/files/rename", post(rename_route))
        .route("/files/delete", post(delete_route))
        .route("/files/extract", post(extract_route))
}

fn server_dir(shared: &Shared) -> PathBuf {
    shared.opts.dir.join("server")
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FileError::Io {
            action: "running",
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FileError> {
    serde_json::from_slice(body).map_err(|e| FileError::bad("body", format!("invalid JSON: {e}")))
}

async fn list_route(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<PathQuery>,
) -> Result<Response, FileError> {
    let path = parse("path", &q.path)?;
    let dir = server_dir(&shared);
    let out = blocking(move || list(&Root::open(&dir)?, &path)).await?;
    Ok(axum::Json(out).into_response())
}

/// A single `bytes=` range of a file of `size` bytes: `Ok(None)` for none (or several,
/// which get the whole file), `Err` when it cannot be satisfied.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    // An empty file is sent whole (empty) whatever the range: nothing to cut.
    if size == 0 {
        return Ok(None);
    }
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if size == 0 || start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn read_route(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, FileError> {
    let path = parse("path", &q.path)?;
    let dir = server_dir(&shared);
    let (file, size) = blocking(move || open_regular(&Root::open(&dir)?, &path)).await?;
    let range = match byte_range(&headers, size) {
        Ok(r) => r,
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
    };
    file_response(file, size, range, None).await
}

/// A file as a streamed body, whole or one range of it.
async fn file_response(
    file: std::fs::File,
    size: u64,
    range: Option<(u64, u64)>,
    attachment: Option<&str>,
) -> Result<Response, FileError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::from_std(file);
    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|source| FileError::Io {
                action: "seeking",
                path: String::new(),
                source,
            })?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((s, e)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Some(name) = attachment {
        h.insert(header::CONTENT_DISPOSITION, content_disposition(name));
    }
    Ok(resp)
}

/// `attachment; filename="…"` with anything unusual in the name replaced.
pub fn content_disposition(name: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `PUT /files/content` and `POST /files/upload`: the raw body, streamed to a temp file
/// beside the target and renamed over it once complete (at most `max_upload_bytes`).
async fn write_route(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FileError> {
    use tokio::io::AsyncWriteExt;
    let path = parse("path", &q.path)?;
    let cap = shared.opts.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let dir = server_dir(&shared);
    let p = path.clone();
    let (w, file) = blocking(move || begin_write(&Root::open(&dir)?, &p)).await?;
    let joined = path.joined();
    let io = move |action: &'static str, p: &str| {
        let p = p.to_string();
        move |source| FileError::Io {
            action,
            path: p,
            source,
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    // Dropping `w` on any early return removes the temp file.
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FileError::Io {
            action: "receiving",
            path: joined.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        total += chunk.len() as u64;
        if total > cap {
            return Err(too_large(cap));
        }
        file.write_all(&chunk)
            .await
            .map_err(io("writing", &joined))?;
    }
    let file = file.into_std().await;
    let saving = io("saving", &joined);
    blocking(move || w.commit(file).map_err(saving)).await?;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"path": path.joined(), "size": total})),
    )
        .into_response())
}

fn too_large(cap: u64) -> FileError {
    FileError::TooLarge(format!(
        "uploads are capped at {cap} bytes (agent --max-upload-bytes)"
    ))
}

/// `GET /files/download?path=`: a file as it is, a folder as a streamed tar.gz.
async fn download_route(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<PathQuery>,
) -> Result<Response, FileError> {
    let path = parse("path", &q.path)?;
    let dir = server_dir(&shared);
    let p = path.clone();
    let opened = blocking(move || {
        let root = Root::open(&dir)?;
        match FileType::from_raw_mode(probe(&root, &p)?.st_mode) {
            FileType::Directory => {
                open_beneath(root.fd(), &p, OFlags::DIRECTORY | OFlags::RDONLY).map(Err)
            }
            _ => open_regular(&root, &p).map(Ok),
        }
    })
    .await?;
    let base = if path.is_root() {
        "server"
    } else {
        path.name()
    }
    .to_string();
    match opened {
        Ok((file, size)) => file_response(file, size, None, Some(&base)).await,
        Err(dir_fd) => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let label = path.joined();
            tokio::task::spawn_blocking(move || {
                let out = ChunkWriter {
                    buf: Vec::with_capacity(CHUNK),
                    tx: tx.clone(),
                };
                if let Err(e) = tar_folder(dir_fd, out) {
                    tracing::warn!(path = ?label, error = %e, "folder download cut short");
                    // The client sees a truncated body, never a well-formed partial archive.
                    if tx.blocking_send(Err(e)).is_err() {
                        tracing::debug!("the client of a folder download left");
                    }
                }
            });
            let stream = tokio_stream_from(rx);
            let mut resp = Response::new(Body::from_stream(stream));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            );
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                content_disposition(&format!("{base}.tar.gz")),
            );
            Ok(resp)
        }
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn mkdir_route(
    State(shared): State<Arc<Shared>>,
    body: bytes::Bytes,
) -> Result<Response, FileError> {
    let b: PathBody = json_body(&body)?;
    let path = parse("path", &b.path)?;
    let dir = server_dir(&shared);
    blocking(move || mkdir(&Root::open(&dir)?, &path)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rename_route(
    State(shared): State<Arc<Shared>>,
    body: bytes::Bytes,
) -> Result<Response, FileError> {
    let b: RenameBody = json_body(&body)?;
    let from = parse("from", &b.from)?;
    let to = parse("to", &b.to)?;
    let dir = server_dir(&shared);
    blocking(move || rename(&Root::open(&dir)?, &from, &to)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_route(
    State(shared): State<Arc<Shared>>,
    body: bytes::Bytes,
) -> Result<Response, FileError> {
    let b: PathBody = json_body(&body)?;
    let path = parse("path", &b.path)?;
    let dir = server_dir(&shared);
    blocking(move || delete(&Root::open(&dir)?, &path, b.recursive)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn extract_route(
    State(shared): State<Arc<Shared>>,
    body: bytes::Bytes,
) -> Result<Response, FileError> {
    let b: ExtractBody = json_body(&body)?;
    let path = parse("path", &b.path)?;
    let to = parse("to", &b.to)?;
    let dir = server_dir(&shared);
    let cap = shared.opts.max_upload_bytes;
    let files = blocking(move || extract(&Root::open(&dir)?, &path, &to, cap)).await?;
    Ok(axum::Json(json!({"files": files})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused_before_any_open() {
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\..\\b",
            "a\0b",
            "%2e%2e/x",
            "a%2fb",
            "A%2Fb",
            "%5c",
            "a\nb",
        ] {
            assert!(parse("path", bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse("path", "").map(|p| p.is_root()).ok(), Some(true));
        assert_eq!(
            parse("path", "./a//b/").map(|p| p.joined()).ok(),
            Some("a/b".to_string())
        );
    }

    /// The fallback for kernels without openat2: links are never followed, in or out.
    #[test]
    fn the_component_walk_never_follows_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root_dir = tmp.path().join("server");
        std::fs::create_dir_all(root_dir.join("a/b")).unwrap();
        std::fs::write(root_dir.join("a/b/f.txt"), b"in").unwrap();
        std::fs::write(tmp.path().join("outside.txt"), b"out").unwrap();
        std::os::unix::fs::symlink(tmp.path(), root_dir.join("out")).unwrap();
        std::os::unix::fs::symlink("a", root_dir.join("inner")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", root_dir.join("up.txt")).unwrap();
        let root = Root::open(&root_dir).unwrap();
        let p = |s: &str| parse("path", s).unwrap();
        let fd = walk_beneath(root.fd(), &p("a/b/f.txt"), OFlags::RDONLY).unwrap();
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        assert_eq!(text, "in");
        for bad in ["out/outside.txt", "up.txt", "inner/b/f.txt", "out"] {
            let e = walk_beneath(root.fd(), &p(bad), OFlags::RDONLY).unwrap_err();
            assert!(matches!(e, FileError::Refused(_)), "{bad}: {e:?}");
        }
        // openat2 refuses the links leading out and follows the one that stays inside.
        assert!(matches!(
            open_beneath(root.fd(), &p("out/outside.txt"), OFlags::RDONLY),
            Err(FileError::Refused(_))
        ));
        assert!(open_beneath(root.fd(), &p("inner/b/f.txt"), OFlags::RDONLY).is_ok());
    }

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        assert_eq!(byte_range(&h, 10), Ok(Some((2, 4))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-3"));
        assert_eq!(byte_range(&h, 10), Ok(Some((7, 9))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=8-"));
        assert_eq!(byte_range(&h, 10), Ok(Some((8, 9))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        assert_eq!(byte_range(&h, 10), Err(()));
    }
}
