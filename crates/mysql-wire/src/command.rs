//! The few command-phase packets a proxy must understand: it passes every other command through
//! without looking past its first byte.

use crate::reader::{bytes, cstr, field, lenenc_bytes, u8_, u16_, u32_, write_cstr, write_lenenc_int};
use crate::{Capabilities, WireError};

/// Command bytes (the first payload byte of a client packet with sequence id 0).
pub mod com {
    /// `COM_QUIT`: the client is closing the connection.
    pub const QUIT: u8 = 0x01;
    /// `COM_QUERY`: a text statement.
    pub const QUERY: u8 = 0x03;
    /// `COM_PROCESS_KILL`: `KILL CONNECTION <id>` as a binary command.
    pub const PROCESS_KILL: u8 = 0x0c;
    /// `COM_CHANGE_USER`: re-authenticate on the same connection.
    pub const CHANGE_USER: u8 = 0x11;
    /// `COM_RESET_CONNECTION`: reset session state, keep the login.
    pub const RESET_CONNECTION: u8 = 0x1f;
}

const CHANGE_USER: &str = "change-user";

/// `COM_CHANGE_USER`, borrowing from the receive buffer.
///
/// Its layout depends on the capabilities negotiated at login, so parsing and writing take
/// them. Its `Debug` output leaves out the auth response, which is password-derived.
#[derive(Clone, PartialEq, Eq)]
pub struct ChangeUser<'a> {
    /// Account name.
    pub username: &'a [u8],
    /// Plugin-specific proof of the password.
    pub auth_response: &'a [u8],
    /// Schema to use (empty for none).
    pub database: &'a [u8],
    /// Collation id, when the client sent the optional tail.
    pub charset: Option<u16>,
    /// Plugin the auth response was made with.
    pub auth_plugin: Option<&'a [u8]>,
    /// Connection attributes, still encoded (the bytes after the length prefix).
    pub connect_attrs: Option<&'a [u8]>,
}

impl std::fmt::Debug for ChangeUser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeUser")
            .field("username", &String::from_utf8_lossy(self.username))
            .field("auth_response_len", &self.auth_response.len())
            .field("database", &String::from_utf8_lossy(self.database))
            .field("auth_plugin", &self.auth_plugin.map(String::from_utf8_lossy))
            .finish_non_exhaustive()
    }
}

impl<'a> ChangeUser<'a> {
    /// Parses a `COM_CHANGE_USER` payload (starting at the 0x11 command byte) sent by a client
    /// that logged in with `caps`.
    pub fn parse(i: &'a [u8], caps: Capabilities) -> Result<Self, WireError> {
        let Some((&com::CHANGE_USER, i)) = i.split_first() else {
            return Err(WireError::Malformed { packet: CHANGE_USER, field: "command byte" });
        };
        let (i, username) = field(CHANGE_USER, "user name", i, cstr)?;
        // Servers read a one-byte length here even when the login used lenenc auth data.
        let (i, auth_response) = if caps.contains(Capabilities::SECURE_CONNECTION) {
            let (i, n) = field(CHANGE_USER, "auth response length", i, u8_)?;
            field(CHANGE_USER, "auth response", i, bytes(usize::from(n)))?
        } else {
            field(CHANGE_USER, "auth response", i, cstr)?
        };
        let (i, database) = field(CHANGE_USER, "database", i, cstr)?;
        // The rest is optional and positional: older clients stop after the schema.
        let (i, charset) =
            if i.is_empty() { (i, None) } else { field(CHANGE_USER, "charset", i, u16_).map(|(i, c)| (i, Some(c)))? };
        let (i, auth_plugin) = if i.is_empty() || !caps.contains(Capabilities::PLUGIN_AUTH) {
            (i, None)
        } else {
            field(CHANGE_USER, "auth plugin", i, cstr).map(|(i, p)| (i, Some(p)))?
        };
        let (i, connect_attrs) = if i.is_empty() || !caps.contains(Capabilities::CONNECT_ATTRS) {
            (i, None)
        } else {
            field(CHANGE_USER, "connection attributes", i, lenenc_bytes).map(|(i, a)| (i, Some(a)))?
        };
        // Servers ignore what follows the fields they read: mysql_common always appends an
        // empty attribute block, even when the login did not set CLIENT_CONNECT_ATTRS.
        let _ignored = i;
        Ok(Self { username, auth_response, database, charset, auth_plugin, connect_attrs })
    }

    /// Appends the payload (no header), laid out for `caps`.
    pub fn write(&self, out: &mut Vec<u8>, caps: Capabilities) {
        out.push(com::CHANGE_USER);
        write_cstr(out, self.username);
        if caps.contains(Capabilities::SECURE_CONNECTION) {
            let n = self.auth_response.len().min(usize::from(u8::MAX));
            out.push(n as u8);
            out.extend_from_slice(&self.auth_response[..n]);
        } else {
            write_cstr(out, self.auth_response);
        }
        write_cstr(out, self.database);
        let Some(charset) = self.charset else { return };
        out.extend_from_slice(&charset.to_le_bytes());
        if caps.contains(Capabilities::PLUGIN_AUTH) {
            write_cstr(out, self.auth_plugin.unwrap_or_default());
        }
        if caps.contains(Capabilities::CONNECT_ATTRS)
            && let Some(attrs) = self.connect_attrs
        {
            write_lenenc_int(out, attrs.len() as u64);
            out.extend_from_slice(attrs);
        }
    }
}

/// The thread id of a `COM_PROCESS_KILL` payload (starting at the 0x0c command byte).
pub fn process_kill_id(i: &[u8]) -> Result<u32, WireError> {
    const P: &str = "process-kill";
    let Some((&com::PROCESS_KILL, i)) = i.split_first() else {
        return Err(WireError::Malformed { packet: P, field: "command byte" });
    };
    let (i, id) = field(P, "thread id", i, u32_)?;
    crate::reader::end(P, i)?;
    Ok(id)
}

/// One connection attribute (`key`, `value`) pair at a time, from the encoded attribute bytes
/// of a HandshakeResponse or change-user. Stops at the first malformed pair.
pub fn connect_attrs(mut i: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        let (rest, k) = lenenc_bytes(i).ok()?;
        let (rest, v) = lenenc_bytes(rest).ok()?;
        i = rest;
        Some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAPS: Capabilities = Capabilities(0x0000_0200 | 0x8000 | 0x0008_0000 | 0x0010_0000);

    #[test]
    fn parses_what_the_mariadb_client_sends() {
        // user "bob", 20-byte scramble, schema "s", utf8mb4_general_ci, plugin, no attributes.
        let mut p = vec![0x11];
        p.extend_from_slice(b"bob\0");
        p.push(20);
        p.extend_from_slice(&[7; 20]);
        p.extend_from_slice(b"s\0");
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(b"mysql_native_password\0");
        p.push(0);
        let c = ChangeUser::parse(&p, CAPS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.username, b"bob");
        assert_eq!(c.auth_response, &[7; 20]);
        assert_eq!(c.database, b"s");
        assert_eq!(c.charset, Some(45));
        assert_eq!(c.auth_plugin, Some(&b"mysql_native_password"[..]));
        assert_eq!(c.connect_attrs, Some(&b""[..]));
        let mut out = Vec::new();
        c.write(&mut out, CAPS);
        assert_eq!(out, p);
        assert!(!format!("{c:?}").contains("\\u{7}"), "Debug must not show the auth response");
    }

    #[test]
    fn old_clients_may_stop_after_the_schema() {
        let c = ChangeUser::parse(b"\x11u\0\0db\0", CAPS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.charset, c.auth_plugin, c.connect_attrs), (None, None, None));
        assert!(ChangeUser::parse(b"\x11u\0\x05ab", CAPS).is_err());
        // What mysql_async sends after a login without CLIENT_CONNECT_ATTRS: a trailing empty
        // attribute block, which servers ignore.
        let no_attrs = CAPS.without(Capabilities::CONNECT_ATTRS);
        let c = ChangeUser::parse(b"\x11u\0\0db\0\x2d\0plugin\0\0", no_attrs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.auth_plugin, c.connect_attrs), (Some(&b"plugin"[..]), None));
        assert!(ChangeUser::parse(b"\x03u\0\0db\0", CAPS).is_err());
    }

    #[test]
    fn process_kill() {
        assert_eq!(process_kill_id(&[0x0c, 5, 0, 0, 0x80]), Ok(0x8000_0005));
        assert!(process_kill_id(&[0x0c, 5, 0, 0]).is_err());
        assert!(process_kill_id(&[0x0c, 5, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn attributes_iterate_in_order() {
        let mut a = Vec::new();
        for s in [&b"_client_name"[..], b"libmariadb", b"program_name", b"mysql"] {
            write_lenenc_int(&mut a, s.len() as u64);
            a.extend_from_slice(s);
        }
        let got: Vec<_> = connect_attrs(&a).collect();
        assert_eq!(got, vec![(&b"_client_name"[..], &b"libmariadb"[..]), (b"program_name", b"mysql")]);
        assert_eq!(connect_attrs(&[0x05, b'a']).count(), 0);
    }

    proptest! {
        #[test]
        fn change_user_round_trips(
            user in proptest::collection::vec(1u8..=255, 0..40),
            auth in proptest::collection::vec(any::<u8>(), 0..64),
            db in proptest::collection::vec(1u8..=255, 0..20),
            charset in any::<u16>(),
            plugin in proptest::collection::vec(1u8..=255, 0..30),
            attrs in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let c = ChangeUser { username: &user, auth_response: &auth, database: &db, charset: Some(charset), auth_plugin: Some(&plugin), connect_attrs: Some(&attrs) };
            let mut out = Vec::new();
            c.write(&mut out, CAPS);
            let back = ChangeUser::parse(&out, CAPS).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, c);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), caps in any::<u32>()) {
            let _ = ChangeUser::parse(&data, Capabilities(caps));
            let _ = process_kill_id(&data);
            let _ = connect_attrs(&data).count();
        }
    }
}
