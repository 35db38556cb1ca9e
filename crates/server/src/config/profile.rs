//! Which kind of registry the settings describe, and what a buildset
//! registry announces about itself. The config file always describes the
//! intermediate profile; `Settings::buildset` builds the other.

use std::fmt;

/// Which profile the settings were built for. It names the registry in its
/// logs; every difference in behaviour is a setting of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The long-lived registry of `speculum-registry serve`.
    Intermediate,
    /// The ephemeral registry of one buildset.
    Buildset,
}

impl Profile {
    /// `intermediate` or `buildset`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Intermediate => "intermediate",
            Profile::Buildset => "buildset",
        }
    }
}

/// What a started registry announces as its connection info (the
/// `buildset_registry` dict); the port and CA certificate are added once
/// they are known.
#[derive(Clone, PartialEq, Eq)]
pub struct InfoSettings {
    /// The host clients connect to; `None`: the bound address (loopback
    /// when bound to every address).
    pub host: Option<String>,
    /// The push user.
    pub username: String,
    /// The push user's password.
    pub password: String,
}

impl fmt::Debug for InfoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfoSettings")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}
