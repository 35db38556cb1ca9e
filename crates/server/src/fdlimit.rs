//! The process's open-file limit (`RLIMIT_NOFILE`).
//!
//! Why: most systems start processes with a soft limit of 1024 descriptors
//! and a far higher hard limit. A registry at the soft limit refuses
//! everyone once about a thousand clients hold a connection each (issue 9),
//! so the binaries raise the soft limit to the hard one at start; the
//! connection bound is then derived from what was obtained.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The soft limit to ask for when the hard limit is unlimited (the kernel's
/// usual `fs.nr_open`).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// The current soft open-file limit (`u64::MAX` when unlimited).
pub fn current() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raise the soft open-file limit to the hard limit, and return the soft
/// limit now in force (unchanged when raising fails, with the error).
pub fn raise() -> (u64, Option<std::io::Error>) {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let target = limit.maximum.unwrap_or(UNLIMITED_TARGET);
    if soft >= target {
        return (soft, None);
    }
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (current(), None),
        Err(e) => (soft, Some(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let (now, error) = raise();
        assert!(error.is_none(), "{error:?}");
        assert_eq!(now, current());
        let hard = getrlimit(Resource::Nofile).maximum;
        assert_eq!(Some(now), hard.or(Some(now)));
    }
}
