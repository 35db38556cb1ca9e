//! Connection limits: how long a client may take over a request head, how
//! long a request body may stall, how long an idle connection is kept, and
//! how many connections are served at once (issue 9, point 2).
//!
//! Why: without them one client with no credentials could hold every file
//! descriptor of the process with idle or trickling connections, and the
//! registry refused everyone else until they closed. With them, a slot held
//! by a silent client is freed within seconds, and past the connection bound
//! new clients wait in the listen backlog instead of making `accept` fail.
//!
//! The `connections:` config section (`serve`) and the buildset's flags both
//! build a [`ConnectionLimits`]; the timeouts are enforced by the `watchdog`
//! and `body_timeout` modules, the bound by `serve`.

use std::time::Duration;

use serde::Deserialize;

use crate::value::DurationValue;

/// Limits on each connection, and on how many are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The longest a request head may take to arrive, from the first byte
    /// (or from accepting a new connection).
    pub header_timeout: Duration,
    /// The longest a request body may go without a byte arriving.
    pub body_idle_timeout: Duration,
    /// How long a connection with no request in progress is kept open.
    pub keep_alive_timeout: Duration,
    /// At most this many connections are served at once; more wait to be
    /// accepted. `None`: derived from the open-file limit at start
    /// ([`default_max_connections`]).
    pub max_connections: Option<usize>,
}

impl ConnectionLimits {
    /// A request head is one or two packets: even a congested CI node sends
    /// it in well under a second. 30 s leaves a wide margin while a client
    /// trickling a head byte by byte (slowloris) loses its slot quickly.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Clients stream layers as they read them, sometimes from another
    /// registry (skopeo copy), so an upload can pause while the source
    /// stalls; a minute covers such pauses and TCP retransmission backoff,
    /// and a vanished client frees its slot within a minute.
    pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Longer than the time clients keep idle pooled connections (Go's
    /// `http.Transport` drops them after 90 s), so the client closes first
    /// and never reuses a connection the server is closing at that instant;
    /// short enough that idle connections do not pile up.
    pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(120);

    /// The bound on connections: as configured, or derived from the
    /// process's open-file limit now.
    pub fn max_connections(&self) -> usize {
        self.max_connections
            .unwrap_or_else(|| default_max_connections(crate::fdlimit::current()))
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            body_idle_timeout: Self::DEFAULT_BODY_IDLE_TIMEOUT,
            keep_alive_timeout: Self::DEFAULT_KEEP_ALIVE_TIMEOUT,
            max_connections: None,
        }
    }
}

/// Descriptors kept free of connections: storage files, upstream and
/// webhook connections, the listener, logs.
const FD_RESERVE: u64 = 128;
/// Never fewer connections than this, whatever the limit.
const MIN_CONNECTIONS: usize = 16;

/// The connection bound for an open-file limit of `fd_limit`: half of what
/// the reserve leaves, because a connection that reads or writes a blob
/// holds a file open besides its socket.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let half = fd_limit.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(half)
        .unwrap_or(usize::MAX)
        .max(MIN_CONNECTIONS)
}

/// The `connections:` section of the config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawConnections {
    header_timeout: Option<DurationValue>,
    body_idle_timeout: Option<DurationValue>,
    keep_alive_timeout: Option<DurationValue>,
    max: Option<usize>,
}

impl RawConnections {
    /// Validate: every timeout above zero, the bound at least 1. Errors are
    /// the key under `connections` and the message.
    pub(crate) fn validate(&self) -> Result<ConnectionLimits, (&'static str, String)> {
        let defaults = ConnectionLimits::default();
        let timeout = |key, value: Option<DurationValue>, default| match value {
            None => Ok(default),
            Some(DurationValue(d)) if d.is_zero() => Err((key, "must be above zero".to_string())),
            Some(DurationValue(d)) => Ok(d),
        };
        let limits = ConnectionLimits {
            header_timeout: timeout(
                "header-timeout",
                self.header_timeout,
                defaults.header_timeout,
            )?,
            body_idle_timeout: timeout(
                "body-idle-timeout",
                self.body_idle_timeout,
                defaults.body_idle_timeout,
            )?,
            keep_alive_timeout: timeout(
                "keep-alive-timeout",
                self.keep_alive_timeout,
                defaults.keep_alive_timeout,
            )?,
            max_connections: self.max,
        };
        if self.max == Some(0) {
            return Err(("max", "must be at least 1".to_string()));
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_follows_the_fd_limit() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(65536), 32704);
        assert_eq!(default_max_connections(100), MIN_CONNECTIONS);
        assert_eq!(default_max_connections(0), MIN_CONNECTIONS);
    }
}
