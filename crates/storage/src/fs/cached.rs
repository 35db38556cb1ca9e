//! Reading a small file on the calling task when the kernel's caches can
//! answer without the disk.
//!
//! A table value (a tag, a manifest record) is a few hundred bytes. Sending
//! its read to tokio's blocking pool costs a thread hand-off — a futex wake
//! and wait on each side — that took about 40 % of the server's CPU under a
//! burst of manifest GETs by tag, far more than the read itself. Reading on
//! the async worker is only safe if the read cannot wait for the disk, so
//! the path walk is asked to use only cached directory entries
//! (`RESOLVE_CACHED`) and the read only cached pages (`RWF_NOWAIT`); if
//! either would have to wait, the caller reads on the blocking pool as
//! before.

use std::io::ErrorKind;
use std::path::Path;

use bytes::Bytes;

/// Larger files are always read on the blocking pool.
const MAX_INLINE: u64 = 64 * 1024;

/// What the caches could say about a file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cached {
    /// Its whole content, read from the page cache.
    Bytes(Bytes),
    /// It does not exist (a cached negative lookup).
    Missing,
    /// The caches cannot answer without the disk, or the kernel cannot say:
    /// read it the ordinary way.
    Unknown,
}

/// The content of `path` if the kernel's caches hold it (see the module
/// docs). Never waits for the disk.
#[cfg(target_os = "linux")]
pub(super) fn read(path: &Path) -> Cached {
    use rustix::fs::{Mode, OFlags, ResolveFlags};

    let fd = match rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::CACHED,
    ) {
        Ok(fd) => fd,
        Err(e) if std::io::Error::from(e).kind() == ErrorKind::NotFound => return Cached::Missing,
        // EAGAIN (not all cached), ENOSYS or EPERM (an older kernel or a
        // seccomp filter without openat2): let the pool find out.
        Err(_) => return Cached::Unknown,
    };
    let Ok(stat) = rustix::fs::fstat(&fd) else {
        return Cached::Unknown;
    };
    let len = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if len > MAX_INLINE {
        return Cached::Unknown;
    }
    // At most MAX_INLINE, so the cast cannot truncate.
    let mut buf = vec![0u8; len as usize];
    let got = rustix::io::preadv2(
        &fd,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        0,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    match got {
        // A short read is a page not cached, or a file being replaced
        // (writes replace by rename, so this file is whole, but do not
        // rely on it): the pool reads it again from the start.
        Ok(n) if n == buf.len() => Cached::Bytes(Bytes::from(buf)),
        _ => Cached::Unknown,
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn read(_path: &Path) -> Cached {
    Cached::Unknown
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_cached_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tag");
        std::fs::write(&path, b"{\"digest\":\"sha256:00\"}").unwrap();
        // Just written: its pages and directory entries are cached.
        assert_eq!(
            read(&path),
            Cached::Bytes(Bytes::from_static(b"{\"digest\":\"sha256:00\"}"))
        );
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(&path), Cached::Bytes(Bytes::new()));
    }

    #[test]
    fn a_missing_file_is_missing_or_unknown() {
        let dir = tempfile::tempdir().unwrap();
        // The directory was just listed, so the lookup of a name in it is
        // either a cached negative entry or unknown — never an error, and
        // never content.
        std::fs::read_dir(dir.path()).unwrap().for_each(drop);
        let r = read(&dir.path().join("absent"));
        assert!(matches!(r, Cached::Missing | Cached::Unknown), "{r:?}");
        // After a failed lookup the negative entry is cached.
        assert!(std::fs::metadata(dir.path().join("absent")).is_err());
        assert_eq!(read(&dir.path().join("absent")), Cached::Missing);
    }

    #[test]
    fn large_files_and_directories_go_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![7u8; (MAX_INLINE + 1) as usize]).unwrap();
        assert_eq!(read(&path), Cached::Unknown);
        // A directory opens but cannot be read: not content, not missing.
        assert_eq!(read(dir.path()), Cached::Unknown);
    }
}
