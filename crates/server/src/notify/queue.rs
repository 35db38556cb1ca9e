//! One endpoint's durable queue: a directory with one JSON file per pending
//! delivery.
//!
//! ```text
//! <queue-dir>/<endpoint>/
//!     00000000000000000007-<event id>.json    pending, delivered in name order
//!     .tmp-<uuid>                             being written (removed on open)
//!     dead/<same name>                        given up on (max-retries) or unreadable
//! ```
//!
//! A file is written to a temporary name, synced, renamed into place and the
//! directory synced, so once [`Queue::push`] returns the delivery survives a
//! crash. One process owns a queue: it holds an exclusive `flock` on
//! `.lock` in it, so that two registry processes given the same directory
//! (several processes on one machine sharing a config) refuse to start
//! rather than deliver each other's events twice. The number in front of the name grows with every push (it resumes
//! after the largest one found on open), so name order is creation order.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::event::Event;

const DEAD: &str = "dead";
const TMP_PREFIX: &str = ".tmp-";
const LOCK: &str = ".lock";

/// A directory of pending deliveries.
#[derive(Debug)]
pub(crate) struct Queue {
    dir: PathBuf,
    next: AtomicU64,
    /// Holds the directory's lock while the queue lives.
    _lock: fs::File,
}

/// Take the queue directory's lock, or fail saying who has it.
fn lock(dir: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another registry process delivers from this queue; give each process its own \
             webhooks.queue-dir",
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

impl Queue {
    /// Open (creating it if needed) the queue in `dir`. Returns the queue and
    /// the number of deliveries pending in it.
    pub(crate) fn open(dir: PathBuf) -> io::Result<(Queue, u64)> {
        fs::create_dir_all(&dir)?;
        let lock = lock(&dir)?;
        let mut max = 0;
        let mut pending = 0;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                // A write that never completed: its request never returned.
                let _ = fs::remove_file(entry.path());
            } else if let Some(seq) = sequence(name) {
                max = max.max(seq);
                pending += 1;
            }
        }
        Ok((
            Queue {
                dir,
                next: AtomicU64::new(max + 1),
                _lock: lock,
            },
            pending,
        ))
    }

    /// Add `event` durably. Blocking.
    pub(crate) fn push(&self, event: &Event) -> io::Result<PathBuf> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let bytes = serde_json::to_vec(event).map_err(io::Error::other)?;
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
        let path = self
            .dir
            .join(format!("{seq:020}-{}.json", safe_id(&event.id)));
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map(|()| path)
    }

    /// The pending deliveries, oldest first. Blocking.
    pub(crate) fn list(&self) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(seq) = name.to_str().and_then(sequence) {
                found.push((seq, entry.path()));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }

    /// Read a pending delivery. Blocking.
    pub(crate) fn load(path: &Path) -> io::Result<Event> {
        let bytes = fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Forget a delivered one. Blocking.
    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Move one that will not be delivered to `dead/`, for an operator to
    /// look at. Blocking.
    pub(crate) fn bury(&self, path: &Path) -> io::Result<PathBuf> {
        let dead = self.dir.join(DEAD);
        fs::create_dir_all(&dead)?;
        let to = dead.join(path.file_name().unwrap_or_default());
        fs::rename(path, &to)?;
        sync_dir(&self.dir)?;
        Ok(to)
    }
}

/// The sequence number of a pending file's name, `None` for anything else.
fn sequence(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    let (seq, _) = stem.split_once('-')?;
    if seq.len() != 20 {
        return None;
    }
    seq.parse().ok()
}

/// An event id fit for a file name (ids are UUIDs; this only guards against
/// a hand-edited file).
fn safe_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

/// Make a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::event::{Action, RequestInfo, Target};

    fn event(n: usize) -> Event {
        Event::new(
            Action::Push,
            Target {
                repository: format!("r{n}"),
                ..Target::default()
            },
            RequestInfo::default(),
            None,
        )
    }

    #[test]
    fn one_process_per_queue() {
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join("ep");
        let (q, _) = Queue::open(qdir.clone()).unwrap();
        let e = Queue::open(qdir.clone()).unwrap_err();
        assert!(e.to_string().contains("queue-dir"), "{e}");
        drop(q);
        let (q, pending) = Queue::open(qdir).unwrap();
        assert_eq!(pending, 0);
        assert!(q.list().unwrap().is_empty());
    }

    #[test]
    fn order_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join("ep");
        let (q, pending) = Queue::open(qdir.clone()).unwrap();
        assert_eq!(pending, 0);
        for n in 0..12 {
            q.push(&event(n)).unwrap();
        }
        fs::write(qdir.join(".tmp-leftover"), b"{").unwrap();
        let first = q.list().unwrap()[0].clone();
        q.remove(&first).unwrap();
        q.remove(&first).unwrap();
        drop(q);

        let (q, pending) = Queue::open(qdir.clone()).unwrap();
        assert_eq!(pending, 11);
        assert!(!qdir.join(".tmp-leftover").exists());
        q.push(&event(12)).unwrap();
        let repos: Vec<String> = q
            .list()
            .unwrap()
            .iter()
            .map(|p| Queue::load(p).unwrap().target.repository)
            .collect();
        let want: Vec<String> = (1..=12).map(|n| format!("r{n}")).collect();
        assert_eq!(repos, want);

        let buried = q.bury(&q.list().unwrap()[0]).unwrap();
        assert!(buried.starts_with(qdir.join("dead")));
        assert_eq!(q.list().unwrap().len(), 11);
        drop(q);
        assert_eq!(Queue::open(qdir).unwrap().1, 11);
    }
}
