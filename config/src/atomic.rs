//! Crash-safe file writes: temp file, fsync, rename, fsync of the directory.
//!
//! Every file switchback owns (the routing state, later keys and certificates) goes through
//! [`write_atomic`], so a crash or power loss leaves either the old file or the new one, never a
//! torn mix. The temp file is created with its final mode, so a key is never readable by others,
//! not even for the moment between create and rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically with the given unix `mode` (for example `0o600`).
///
/// On error, `path` is unchanged and the temp file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_via_temp(path, bytes, mode, |tmp, path| fs::rename(tmp, path))
}

/// Writes `bytes` to a new file at `path`, as [`write_atomic`] does, but never over an existing
/// file: the finished temp file is hard-linked into place, which fails when `path` exists, even
/// if it appeared a moment ago. The error is then `AlreadyExists` and nothing was changed.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_via_temp(path, bytes, mode, |tmp, path| {
        fs::hard_link(tmp, path)?;
        fs::remove_file(tmp)
    })
}

/// Writes `bytes` to a temp file beside `path` with `mode`, syncs it, puts it in place with
/// `place` (a rename, or a link), and syncs the directory. The temp file never outlives it.
fn write_via_temp(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    place: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        place(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and its parents) if needed, with mode 0700 for the directories it creates.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// An exclusive `flock` on a file, held until dropped (or until the process dies, so a crash
/// never leaves it stuck).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Takes the lock on `path` (created 0600 if needed) if nobody holds it; `Ok(None)` if
/// someone does.
pub fn try_lock(path: &Path) -> io::Result<Option<FileLock>> {
    use std::os::unix::io::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(FileLock { _file: file }))
    } else {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        }
    }
}

impl FileLock {
    /// The lock's descriptor: a process started with it open shares the lock (an upgrade's
    /// new process, which then holds it when this one exits).
    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        self._file.as_raw_fd()
    }

    /// Takes over the lock held through `fd`, a descriptor this process inherited from the one
    /// that took it. Fails unless `fd` holds the lock (or can take it).
    pub fn adopt(fd: std::os::unix::io::RawFd) -> io::Result<FileLock> {
        use std::os::unix::io::FromRawFd;
        // SAFETY: flock on a descriptor number; a wrong one fails with EBADF.
        let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is open (flock succeeded) and was handed to this process to
        // own; nothing else in it uses that number.
        let file = unsafe { File::from_raw_fd(fd) };
        // Not passed on to processes this one starts, unless it hands it over itself.
        // SAFETY: fcntl on an open descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state files must not be readable by others");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp."))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temp files left behind: {leftovers:?}"
        );
    }

    #[test]
    fn write_new_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchback.toml");
        write_new(&path, b"first", 0o644).unwrap();
        let e = write_new(&path, b"second", 0o644).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn failed_write_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        // A directory where the temp file would go makes the write fail part-way.
        let blocker = dir
            .path()
            .join(format!(".state.json.tmp.{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        assert!(write_atomic(&path, b"new", 0o600).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }
}
