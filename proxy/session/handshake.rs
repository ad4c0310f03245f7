//! The packets flexgate writes itself during the handshake: its own greeting, and the
//! HandshakeResponse and change-user it sends the server on the client's behalf.
//!
//! Pure: plain data in, payload bytes out.

use super::policy;
use crate::events::loggable;
use crate::profile::ServerProfile;
use crate::protocol::{Capabilities, ChangeUser, Greeting, HandshakeResponse, MariaDbCapabilities, connect_attrs};

/// The plugin name flexgate puts in what it sends the server, so that the server answers with
/// an AuthSwitchRequest carrying its account's real plugin and a nonce of its own. Servers
/// compare the name as a string, and no account uses this one. MySQL Router does the same
/// with `switch_me_if_you_can`. (Empty auth data under the account's real plugin would be a
/// failed login with an empty password.)
pub(crate) const FORCE_SWITCH_PLUGIN: &[u8] = b"flexgate_switch_me";

/// Length of flexgate's nonce, as MySQL's.
pub(crate) const NONCE_LEN: usize = 20;

/// Capabilities whose absence on the live server does not matter to a client that used them:
/// flexgate sets or clears them per leg itself.
const PER_LEG: Capabilities = Capabilities(Capabilities::SSL.0 | Capabilities::CLIENT_MYSQL.0);

/// flexgate's greeting payload, built from the profile with its own nonce and connection id.
pub(crate) fn own_greeting(p: &ServerProfile, connection_id: u32, nonce: &[u8; NONCE_LEN], offer_tls: bool) -> Vec<u8> {
    let mut part2 = [0u8; NONCE_LEN - 8 + 1];
    part2[..NONCE_LEN - 8].copy_from_slice(&nonce[8..]);
    let g = Greeting {
        server_version: &p.version,
        connection_id,
        auth_data_1: &nonce[..8],
        capabilities: policy::greeting_capabilities(p.capabilities, offer_tls),
        charset: p.charset,
        status: p.status,
        auth_data_len: (NONCE_LEN + 1) as u8,
        mariadb_capabilities: p.mariadb_capabilities,
        auth_data_2: &part2,
        auth_plugin: Some(&p.auth_plugin),
    };
    let mut out = Vec::with_capacity(96 + p.version.len());
    g.write(&mut out);
    out
}

/// The client's HandshakeResponse without its auth data, owned: parsed once, then used to
/// decide, to log, and to build what the server receives.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) capabilities: Capabilities,
    pub(crate) max_packet_size: u32,
    pub(crate) charset: u8,
    pub(crate) mariadb_capabilities: MariaDbCapabilities,
    pub(crate) user: Vec<u8>,
    pub(crate) database: Option<Vec<u8>>,
    pub(crate) plugin: Option<Vec<u8>>,
    pub(crate) attrs: Option<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("capabilities", &self.capabilities)
            .field("user", &loggable(&self.user, 80))
            .field("database", &self.database.as_deref().map(|d| loggable(d, 80)))
            .field("plugin", &self.plugin.as_deref().map(|p| loggable(p, 64)))
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub(crate) fn from_response(r: &HandshakeResponse<'_>) -> Self {
        Self {
            capabilities: r.capabilities,
            max_packet_size: r.max_packet_size,
            charset: r.charset,
            mariadb_capabilities: r.mariadb_capabilities,
            user: r.username.to_vec(),
            database: r.database.map(<[u8]>::to_vec),
            plugin: r.auth_plugin.map(<[u8]>::to_vec),
            attrs: r.connect_attrs.map(<[u8]>::to_vec),
        }
    }

    /// The same client after a change-user: new account, schema, attributes and collation.
    pub(crate) fn changed(&self, cu: &ChangeUser<'_>) -> Self {
        Self {
            user: cu.username.to_vec(),
            database: (!cu.database.is_empty()).then(|| cu.database.to_vec()),
            plugin: cu.auth_plugin.map(<[u8]>::to_vec),
            attrs: cu.connect_attrs.map(<[u8]>::to_vec).or_else(|| self.attrs.clone()),
            charset: cu.charset.map_or(self.charset, |c| c as u8),
            ..self.clone()
        }
    }

    /// `program_name` and `_client_name _client_version` from the connection attributes.
    pub(crate) fn program(&self) -> (Option<String>, Option<String>) {
        let (mut program, mut name, mut version) = (None, None, None);
        for (k, v) in connect_attrs(self.attrs.as_deref().unwrap_or_default()).take(64) {
            match k {
                b"program_name" => program = Some(loggable(v, 64)),
                b"_client_name" => name = Some(loggable(v, 64)),
                b"_client_version" => version = Some(loggable(v, 32)),
                _ => {}
            }
        }
        let client = match (name, version) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (n, v) => n.or(v),
        };
        (program, client)
    }
}

/// The live server cannot honour what flexgate's greeting promised for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// Capability bits the client uses that the live server does not offer.
    pub(crate) missing: Capabilities,
}

/// What the server receives in place of the client's HandshakeResponse: the client's fields,
/// its capabilities intersected with the live server's, no auth data, and the forced-switch
/// plugin name.
pub(crate) fn server_response(
    id: &Identity,
    promised: Capabilities,
    live_caps: Capabilities,
    live_mariadb: MariaDbCapabilities,
    backend_tls: bool,
) -> Result<Vec<u8>, Mismatch> {
    let login = As { user: &id.user, plugin: FORCE_SWITCH_PLUGIN, auth: &[] };
    response_as(id, promised, live_caps, live_mariadb, backend_tls, &login)
}

/// The capabilities of what the server receives: the client's that the live server offers,
/// with `CLIENT_SSL` describing the server leg.
pub(crate) fn response_capabilities(id: &Identity, live_caps: Capabilities, backend_tls: bool) -> Capabilities {
    // The client's own CLIENT_MYSQL bit says whether it sends MariaDB's extended word.
    let caps = id.capabilities.intersect(live_caps.with(Capabilities::CLIENT_MYSQL));
    policy::backend_capabilities(caps, backend_tls)
}

/// Who flexgate logs in as, when it is not the client's own account: an Entra principal's
/// server account, with auth data flexgate computed from the secret it holds.
pub(crate) struct As<'a> {
    pub(crate) user: &'a [u8],
    pub(crate) plugin: &'a [u8],
    pub(crate) auth: &'a [u8],
}

/// [`server_response`] for another account: the client's schema, collation, capabilities and
/// connection attributes, with `login`'s account, plugin and auth data.
pub(crate) fn response_as(
    id: &Identity,
    promised: Capabilities,
    live_caps: Capabilities,
    live_mariadb: MariaDbCapabilities,
    backend_tls: bool,
    login: &As<'_>,
) -> Result<Vec<u8>, Mismatch> {
    // Clients may set bits nobody offered (CLIENT_REMEMBER_OPTIONS, say); only what the
    // greeting promised and the client took must still hold.
    let used = id.capabilities.intersect(promised).without(PER_LEG);
    let missing = used.without(live_caps);
    if missing.0 != 0 {
        return Err(Mismatch { missing });
    }
    let caps = response_capabilities(id, live_caps, backend_tls);
    let r = HandshakeResponse {
        capabilities: caps,
        max_packet_size: id.max_packet_size,
        charset: id.charset,
        mariadb_capabilities: MariaDbCapabilities(id.mariadb_capabilities.0 & live_mariadb.0),
        username: login.user,
        auth_response: login.auth,
        database: id.database.as_deref(),
        auth_plugin: Some(login.plugin),
        connect_attrs: id.attrs.as_deref(),
    };
    let mut out = Vec::with_capacity(96 + login.user.len() + id.attrs.as_ref().map_or(0, Vec::len));
    r.write(&mut out);
    Ok(out)
}

/// The change-user the server receives: the client's, without auth data and with the
/// forced-switch plugin name, for the same reason as at login.
pub(crate) fn server_change_user(cu: &ChangeUser<'_>, caps: Capabilities) -> Vec<u8> {
    change_user_as(cu, caps, cu.username)
}

/// [`server_change_user`] to another account (an Entra principal's server account): the
/// server answers with a switch to that account's plugin, which flexgate follows itself.
pub(crate) fn change_user_as(cu: &ChangeUser<'_>, caps: Capabilities, user: &[u8]) -> Vec<u8> {
    let forwarded = ChangeUser {
        username: user,
        auth_response: &[],
        auth_plugin: Some(FORCE_SWITCH_PLUGIN),
        charset: Some(cu.charset.unwrap_or(0x2d)),
        ..cu.clone()
    };
    let mut out = Vec::with_capacity(64 + cu.username.len());
    forwarded.write(&mut out, caps);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{SSL_REQUEST_LEN, parse_client_first};

    const MARIADB: Capabilities = Capabilities(0xf7fe | 0x0008_0000 | 0x0010_0000 | 0x0020_0000 | 0x8000 | 0x0001_0000);

    fn profile() -> ServerProfile {
        ServerProfile {
            version: b"10.11.19-MariaDB-0+deb12u1"[..].into(),
            capabilities: MARIADB.with(Capabilities::SSL),
            mariadb_capabilities: MariaDbCapabilities(0x1d),
            charset: 45,
            status: 2,
            auth_plugin: b"mysql_native_password"[..].into(),
        }
    }

    #[test]
    fn own_greeting_parses_back_with_our_nonce_and_id() {
        let nonce = [b'x'; NONCE_LEN];
        let bytes = own_greeting(&profile(), 0x8000_0001, &nonce, true);
        let g = Greeting::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.nonce(), nonce);
        assert_eq!(g.connection_id, 0x8000_0001);
        assert_eq!(g.server_version, b"10.11.19-MariaDB-0+deb12u1");
        assert_eq!(g.auth_plugin, Some(&b"mysql_native_password"[..]));
        assert_eq!(g.mariadb_capabilities, MariaDbCapabilities(0x1d));
        assert!(g.capabilities.contains(Capabilities::SSL));
        assert!(
            !Greeting::parse(&own_greeting(&profile(), 1, &nonce, false))
                .is_ok_and(|g| g.capabilities.contains(Capabilities::SSL))
        );
    }

    fn identity() -> Identity {
        Identity {
            capabilities: MARIADB.without(Capabilities::CLIENT_MYSQL).with(Capabilities::SSL),
            max_packet_size: 1 << 24,
            charset: 45,
            mariadb_capabilities: MariaDbCapabilities(0x1f),
            user: b"app".to_vec(),
            database: Some(b"shop".to_vec()),
            plugin: Some(b"mysql_native_password".to_vec()),
            attrs: Some(b"\x0c_client_name\x0alibmariadb\x0cprogram_name\x05mysql".to_vec()),
        }
    }

    #[test]
    fn server_response_forces_a_switch_and_keeps_the_clients_fields() {
        let bytes = server_response(&identity(), MARIADB, MARIADB, MariaDbCapabilities(0x1d), false)
            .unwrap_or_else(|m| panic!("{m:?}"));
        assert_ne!(bytes.len(), SSL_REQUEST_LEN);
        let r = HandshakeResponse::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.username, b"app");
        assert_eq!(r.database, Some(&b"shop"[..]));
        assert_eq!(r.auth_response, b"");
        assert_eq!(r.auth_plugin, Some(FORCE_SWITCH_PLUGIN));
        assert_eq!(r.connect_attrs, identity().attrs.as_deref());
        assert!(!r.capabilities.contains(Capabilities::SSL), "plaintext server leg");
        assert_eq!(r.mariadb_capabilities, MariaDbCapabilities(0x1d), "intersected with the live server's");
        assert!(matches!(parse_client_first(&bytes), Ok(crate::protocol::ClientFirst::Response(_))));
    }

    #[test]
    fn a_live_server_lacking_a_used_capability_is_a_mismatch() {
        let downgraded = MARIADB.without(Capabilities::CONNECT_ATTRS);
        assert_eq!(
            server_response(&identity(), MARIADB, downgraded, MariaDbCapabilities(0), false),
            Err(Mismatch { missing: Capabilities::CONNECT_ATTRS })
        );
        // SSL is per leg: a server without TLS is not a mismatch for a TLS client.
        assert!(
            server_response(&identity(), MARIADB, MARIADB.without(Capabilities::SSL), MariaDbCapabilities(0), false)
                .is_ok()
        );
    }

    #[test]
    fn program_comes_from_the_attributes() {
        assert_eq!(identity().program(), (Some("mysql".into()), Some("libmariadb".into())));
    }

    #[test]
    fn change_user_to_server_forces_a_switch() {
        let caps = identity().capabilities;
        let cu = ChangeUser {
            username: b"bob",
            auth_response: &[9; 20],
            database: b"",
            charset: Some(45),
            auth_plugin: Some(b"client_ed25519"),
            connect_attrs: None,
        };
        let bytes = server_change_user(&cu, caps);
        let back = ChangeUser::parse(&bytes, caps).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.username, b"bob");
        assert_eq!(back.auth_response, b"");
        assert_eq!(back.auth_plugin, Some(FORCE_SWITCH_PLUGIN));
        assert!(!format!("{:?}", identity()).contains("libmariadb"), "attributes are not in Debug");
    }
}
