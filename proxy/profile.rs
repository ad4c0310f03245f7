//! The server profile: what flexgate's own greeting promises on the server's behalf.
//!
//! flexgate greets a client before any server connection exists, so the greeting is built from
//! what the server last said about itself. The profile is learned from a probe at startup and
//! refreshed from every live greeting flexgate reads; it is swapped as one `Arc`, so a session
//! always sees one consistent profile.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::protocol::{Capabilities, Greeting, MariaDbCapabilities};

/// The greeting fields that describe the server rather than one connection (no nonce, no
/// connection id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProfile {
    /// Version string, shown to clients as the server's.
    pub version: Box<[u8]>,
    /// Capability flags.
    pub capabilities: Capabilities,
    /// MariaDB's extended capabilities (zero for MySQL).
    pub mariadb_capabilities: MariaDbCapabilities,
    /// Default collation id.
    pub charset: u8,
    /// Status flags.
    pub status: u16,
    /// Default auth plugin; clients compute their first (discarded) auth response with it.
    pub auth_plugin: Box<[u8]>,
}

impl ServerProfile {
    /// The profile a live greeting describes.
    pub fn from_greeting(g: &Greeting<'_>) -> Self {
        Self {
            version: g.server_version.into(),
            capabilities: g.capabilities,
            mariadb_capabilities: g.mariadb_capabilities,
            charset: g.charset,
            status: g.status,
            auth_plugin: g.auth_plugin.unwrap_or(b"mysql_native_password").into(),
        }
    }

    /// Whether `g` describes this same profile (compared without allocating).
    pub fn matches(&self, g: &Greeting<'_>) -> bool {
        *self.version == *g.server_version
            && self.capabilities == g.capabilities
            && self.mariadb_capabilities == g.mariadb_capabilities
            && self.charset == g.charset
            && self.status == g.status
            && *self.auth_plugin == *g.auth_plugin.unwrap_or(b"mysql_native_password")
    }

    /// Whether flexgate can greet for this server: the forced auth switch needs plugin auth
    /// and 20-byte nonces (every MySQL since 5.5 and every MariaDB has both).
    pub fn supports_own_greeting(&self) -> bool {
        self.capabilities.contains(Capabilities::PLUGIN_AUTH)
            && self.capabilities.contains(Capabilities::SECURE_CONNECTION)
    }
}

/// The current profile, shared by every listener; `None` until a server has greeted.
#[derive(Debug, Default)]
pub struct ProfileCell(ArcSwapOption<ServerProfile>);

impl ProfileCell {
    /// The profile now in force.
    pub fn load(&self) -> Option<Arc<ServerProfile>> {
        self.0.load_full()
    }

    /// Records a live greeting. Returns whether the profile changed (the first greeting
    /// counts as a change). The common case, an unchanged server, costs a comparison.
    pub fn observe(&self, g: &Greeting<'_>) -> bool {
        if self.0.load().as_deref().is_some_and(|p| p.matches(g)) {
            return false;
        }
        self.0.store(Some(Arc::new(ServerProfile::from_greeting(g))));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(version: &'static [u8]) -> Greeting<'static> {
        Greeting {
            server_version: version,
            connection_id: 9,
            auth_data_1: b"12345678",
            capabilities: Capabilities(0xf7fe | 0x0008_0000),
            charset: 45,
            status: 2,
            auth_data_len: 21,
            mariadb_capabilities: MariaDbCapabilities(0x1d),
            auth_data_2: b"abcdefghijkl\0",
            auth_plugin: Some(b"mysql_native_password"),
        }
    }

    #[test]
    fn learns_then_only_swaps_on_change() {
        let cell = ProfileCell::default();
        assert!(cell.load().is_none());
        assert!(cell.observe(&greeting(b"10.11.6-MariaDB")));
        let first = cell.load();
        // Another connection's greeting differs only in nonce and id: no swap.
        let mut other = greeting(b"10.11.6-MariaDB");
        other.connection_id = 10;
        other.auth_data_1 = b"87654321";
        assert!(!cell.observe(&other));
        assert!(Arc::ptr_eq(&first.clone().unwrap_or_else(|| panic!()), &cell.load().unwrap_or_else(|| panic!())));
        // An upgraded server is a new profile.
        assert!(cell.observe(&greeting(b"11.4.2-MariaDB")));
        assert_eq!(cell.load().map(|p| p.version.clone()), Some(b"11.4.2-MariaDB"[..].into()));
    }
}
