//! The MySQL wire protocol: framing and connection-phase packets from the `mysql-wire` crate
//! (kept separate so that it fuzzes fast and cannot grow I/O), plus the auth cryptography that
//! needs aws-lc-rs.

pub mod scramble;

pub use mysql_wire::*;

/// Largest packet accepted before the login completes. Above any real HandshakeResponse:
/// connection attributes and Entra access tokens (a few KiB) both fit with room to spare, while a
/// peer still cannot make flexgate buffer more than this per connection before it authenticates.
pub const MAX_PRE_AUTH_PAYLOAD: usize = 64 * 1024;

/// Auth plugin names flexgate has to recognise.
pub mod plugins {
    /// MySQL 8's default plugin.
    pub const CACHING_SHA2: &[u8] = b"caching_sha2_password";
}
