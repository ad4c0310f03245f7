//! The connection-phase packets that carry capabilities and credentials: the server's greeting
//! (HandshakeV10), the client's SSLRequest and its HandshakeResponse41.

use crate::reader::{bytes, cstr, end, field, lenenc_bytes, u8_, u16_, u32_, write_cstr, write_lenenc_int};
use crate::{Capabilities, MariaDbCapabilities, WireError};

/// Payload length of an SSLRequest; a HandshakeResponse41 is always longer (it carries at least
/// a user name terminator and an auth-response length), so the length alone tells them apart.
pub const SSL_REQUEST_LEN: usize = 32;

const GREETING: &str = "server greeting";
const RESPONSE: &str = "handshake response";
const SSL_REQUEST: &str = "SSL request";
const PROTOCOL_V10: u8 = 10;
const RESERVED_LEN: usize = 10;
const FILLER_LEN: usize = 23;

/// The server's first packet (HandshakeV10), borrowing from the receive buffer.
///
/// Fields are kept as they were on the wire so that the proxy can relay the greeting with only
/// the capability words changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting<'a> {
    /// Server version string, e.g. `10.11.6-MariaDB-0+deb12u1`.
    pub server_version: &'a [u8],
    /// The server's thread id for this connection.
    pub connection_id: u32,
    /// First 8 bytes of the auth nonce.
    pub auth_data_1: &'a [u8],
    /// Capability flags (both halves).
    pub capabilities: Capabilities,
    /// Default collation id.
    pub charset: u8,
    /// Server status flags.
    pub status: u16,
    /// Announced total auth-data length (0 without `CLIENT_PLUGIN_AUTH`).
    pub auth_data_len: u8,
    /// MariaDB's extended capabilities; zero for MySQL servers.
    pub mariadb_capabilities: MariaDbCapabilities,
    /// Rest of the auth nonce as sent, usually with a trailing NUL.
    pub auth_data_2: &'a [u8],
    /// Default authentication plugin.
    pub auth_plugin: Option<&'a [u8]>,
}

impl<'a> Greeting<'a> {
    /// Parses a HandshakeV10 payload. Pre-4.1 greetings are refused.
    pub fn parse(i: &'a [u8]) -> Result<Self, WireError> {
        let (i, version) = field(GREETING, "protocol version", i, u8_)?;
        if version != PROTOCOL_V10 {
            return Err(WireError::Unsupported("server greeting is not protocol version 10"));
        }
        let (i, server_version) = field(GREETING, "server version", i, cstr)?;
        let (i, connection_id) = field(GREETING, "connection id", i, u32_)?;
        let (i, auth_data_1) = field(GREETING, "auth data", i, bytes(8))?;
        let (i, _filler) = field(GREETING, "filler", i, u8_)?;
        let (i, caps_low) = field(GREETING, "capabilities", i, u16_)?;
        let (i, charset) = field(GREETING, "character set", i, u8_)?;
        let (i, status) = field(GREETING, "status", i, u16_)?;
        let (i, caps_high) = field(GREETING, "capabilities", i, u16_)?;
        let capabilities = Capabilities(u32::from(caps_low) | u32::from(caps_high) << 16);
        if !capabilities.contains(Capabilities::PROTOCOL_41) {
            return Err(WireError::Unsupported("server does not speak the 4.1 protocol"));
        }
        let (i, auth_data_len) = field(GREETING, "auth data length", i, u8_)?;
        let (i, reserved) = field(GREETING, "reserved bytes", i, bytes(RESERVED_LEN))?;
        let mariadb_capabilities = if capabilities.has_mariadb_extension() {
            MariaDbCapabilities(u32::from_le_bytes([reserved[6], reserved[7], reserved[8], reserved[9]]))
        } else {
            MariaDbCapabilities(0)
        };
        let (i, auth_data_2) = if capabilities.contains(Capabilities::SECURE_CONNECTION) {
            let n = usize::from(auth_data_len).saturating_sub(8).max(13);
            field(GREETING, "auth data", i, bytes(n))?
        } else {
            (i, &i[..0])
        };
        let (i, auth_plugin) = if capabilities.contains(Capabilities::PLUGIN_AUTH) {
            // Some MySQL 5.5 servers omit the final NUL; accept the rest of the packet then.
            match cstr(i) {
                Ok((rest, name)) => (rest, Some(name)),
                Err(_) => (&i[i.len()..], Some(i)),
            }
        } else {
            (i, None)
        };
        end(GREETING, i)?;
        Ok(Self {
            server_version,
            connection_id,
            auth_data_1,
            capabilities,
            charset,
            status,
            auth_data_len,
            mariadb_capabilities,
            auth_data_2,
            auth_plugin,
        })
    }

    /// The 20-byte nonce the client scrambles its password with.
    pub fn nonce(&self) -> Vec<u8> {
        let part2 = self.auth_data_2.strip_suffix(&[0]).unwrap_or(self.auth_data_2);
        [self.auth_data_1, part2].concat()
    }

    /// Appends the payload (no header).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(PROTOCOL_V10);
        write_cstr(out, self.server_version);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.extend_from_slice(self.auth_data_1);
        out.push(0);
        let caps = self.capabilities.0.to_le_bytes();
        out.extend_from_slice(&caps[..2]);
        out.push(self.charset);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&caps[2..]);
        out.push(self.auth_data_len);
        out.extend_from_slice(&[0; 6]);
        if self.capabilities.has_mariadb_extension() {
            out.extend_from_slice(&self.mariadb_capabilities.0.to_le_bytes());
        } else {
            out.extend_from_slice(&[0; 4]);
        }
        if self.capabilities.contains(Capabilities::SECURE_CONNECTION) {
            out.extend_from_slice(self.auth_data_2);
        }
        if let Some(plugin) = self.auth_plugin.filter(|_| self.capabilities.contains(Capabilities::PLUGIN_AUTH)) {
            write_cstr(out, plugin);
        }
    }
}

/// The client's request to upgrade to TLS before it sends credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslRequest {
    /// Capability flags the client will use.
    pub capabilities: Capabilities,
    /// Client's maximum packet size.
    pub max_packet_size: u32,
    /// Client's collation id.
    pub charset: u8,
    /// MariaDB's extended capabilities, when the client uses them.
    pub mariadb_capabilities: MariaDbCapabilities,
}

impl SslRequest {
    /// Parses a 32-byte SSLRequest payload.
    pub fn parse(i: &[u8]) -> Result<Self, WireError> {
        let (i, (capabilities, max_packet_size, charset, mariadb_capabilities)) = fixed_prefix(SSL_REQUEST, i)?;
        end(SSL_REQUEST, i)?;
        if !capabilities.contains(Capabilities::SSL) {
            return Err(WireError::Malformed { packet: SSL_REQUEST, field: "capabilities (CLIENT_SSL not set)" });
        }
        Ok(Self { capabilities, max_packet_size, charset, mariadb_capabilities })
    }

    /// Appends the payload (no header).
    pub fn write(&self, out: &mut Vec<u8>) {
        write_fixed_prefix(out, self.capabilities, self.max_packet_size, self.charset, self.mariadb_capabilities);
    }
}

/// The client's credentials (HandshakeResponse41), borrowing from the receive buffer.
///
/// Its `Debug` output leaves out the auth response, which is password-derived.
#[derive(Clone, PartialEq, Eq)]
pub struct HandshakeResponse<'a> {
    /// Capability flags the client will use.
    pub capabilities: Capabilities,
    /// Client's maximum packet size.
    pub max_packet_size: u32,
    /// Client's collation id.
    pub charset: u8,
    /// MariaDB's extended capabilities, when the client uses them.
    pub mariadb_capabilities: MariaDbCapabilities,
    /// Account name.
    pub username: &'a [u8],
    /// Plugin-specific proof of the password (or, for cleartext plugins, the password itself).
    pub auth_response: &'a [u8],
    /// Initial schema.
    pub database: Option<&'a [u8]>,
    /// Plugin the auth response was made with.
    pub auth_plugin: Option<&'a [u8]>,
    /// Connection attributes, still encoded (the bytes after the length prefix).
    pub connect_attrs: Option<&'a [u8]>,
}

impl std::fmt::Debug for HandshakeResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeResponse")
            .field("capabilities", &self.capabilities)
            .field("username", &String::from_utf8_lossy(self.username))
            .field("auth_response_len", &self.auth_response.len())
            .field("database", &self.database.map(String::from_utf8_lossy))
            .field("auth_plugin", &self.auth_plugin.map(String::from_utf8_lossy))
            .finish_non_exhaustive()
    }
}

impl<'a> HandshakeResponse<'a> {
    /// Parses a HandshakeResponse41 payload.
    pub fn parse(i: &'a [u8]) -> Result<Self, WireError> {
        let (i, (capabilities, max_packet_size, charset, mariadb_capabilities)) = fixed_prefix(RESPONSE, i)?;
        let (i, username) = field(RESPONSE, "user name", i, cstr)?;
        let (i, auth_response) = if capabilities.contains(Capabilities::PLUGIN_AUTH_LENENC_DATA) {
            field(RESPONSE, "auth response", i, lenenc_bytes)?
        } else if capabilities.contains(Capabilities::SECURE_CONNECTION) {
            let (i, n) = field(RESPONSE, "auth response length", i, u8_)?;
            field(RESPONSE, "auth response", i, bytes(usize::from(n)))?
        } else {
            field(RESPONSE, "auth response", i, cstr)?
        };
        let (i, database) = optional(capabilities.contains(Capabilities::CONNECT_WITH_DB), i, |i| {
            field(RESPONSE, "database", i, cstr)
        })?;
        let (i, auth_plugin) =
            optional(capabilities.contains(Capabilities::PLUGIN_AUTH), i, |i| field(RESPONSE, "auth plugin", i, cstr))?;
        let (i, connect_attrs) = optional(capabilities.contains(Capabilities::CONNECT_ATTRS), i, |i| {
            field(RESPONSE, "connection attributes", i, lenenc_bytes)
        })?;
        end(RESPONSE, i)?;
        Ok(Self {
            capabilities,
            max_packet_size,
            charset,
            mariadb_capabilities,
            username,
            auth_response,
            database,
            auth_plugin,
            connect_attrs,
        })
    }

    /// Appends the payload (no header), encoding each field as `self.capabilities` says. A field
    /// whose capability is not set is left out, so a caller that clears a capability gets a
    /// packet that is consistent with it.
    pub fn write(&self, out: &mut Vec<u8>) {
        let caps = self.capabilities;
        write_fixed_prefix(out, caps, self.max_packet_size, self.charset, self.mariadb_capabilities);
        write_cstr(out, self.username);
        if caps.contains(Capabilities::PLUGIN_AUTH_LENENC_DATA) {
            write_lenenc_int(out, self.auth_response.len() as u64);
            out.extend_from_slice(self.auth_response);
        } else if caps.contains(Capabilities::SECURE_CONNECTION) {
            let n = self.auth_response.len().min(usize::from(u8::MAX));
            out.push(n as u8);
            out.extend_from_slice(&self.auth_response[..n]);
        } else {
            write_cstr(out, self.auth_response);
        }
        if caps.contains(Capabilities::CONNECT_WITH_DB) {
            write_cstr(out, self.database.unwrap_or_default());
        }
        if caps.contains(Capabilities::PLUGIN_AUTH) {
            write_cstr(out, self.auth_plugin.unwrap_or_default());
        }
        if caps.contains(Capabilities::CONNECT_ATTRS) {
            let attrs = self.connect_attrs.unwrap_or_default();
            write_lenenc_int(out, attrs.len() as u64);
            out.extend_from_slice(attrs);
        }
    }
}

/// What a client's first packet after the greeting was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFirst<'a> {
    /// The client wants TLS before it sends credentials.
    SslRequest(SslRequest),
    /// The client sent its credentials in the clear.
    Response(HandshakeResponse<'a>),
}

/// Parses the client's first packet.
pub fn parse_client_first(payload: &[u8]) -> Result<ClientFirst<'_>, WireError> {
    if payload.len() == SSL_REQUEST_LEN {
        SslRequest::parse(payload).map(ClientFirst::SslRequest)
    } else {
        HandshakeResponse::parse(payload).map(ClientFirst::Response)
    }
}

type Prefix = (Capabilities, u32, u8, MariaDbCapabilities);

/// The 32 bytes that SSLRequest and HandshakeResponse41 share.
fn fixed_prefix<'a>(packet: &'static str, i: &'a [u8]) -> Result<(&'a [u8], Prefix), WireError> {
    let (i, caps) = field(packet, "capabilities", i, u32_)?;
    let capabilities = Capabilities(caps);
    if !capabilities.contains(Capabilities::PROTOCOL_41) {
        return Err(WireError::Unsupported("client does not speak the 4.1 protocol"));
    }
    let (i, max_packet_size) = field(packet, "max packet size", i, u32_)?;
    let (i, charset) = field(packet, "character set", i, u8_)?;
    let (i, filler) = field(packet, "filler", i, bytes(FILLER_LEN))?;
    let mariadb = if capabilities.has_mariadb_extension() {
        MariaDbCapabilities(u32::from_le_bytes([filler[19], filler[20], filler[21], filler[22]]))
    } else {
        MariaDbCapabilities(0)
    };
    Ok((i, (capabilities, max_packet_size, charset, mariadb)))
}

fn write_fixed_prefix(
    out: &mut Vec<u8>,
    caps: Capabilities,
    max_packet: u32,
    charset: u8,
    mariadb: MariaDbCapabilities,
) {
    out.extend_from_slice(&caps.0.to_le_bytes());
    out.extend_from_slice(&max_packet.to_le_bytes());
    out.push(charset);
    out.extend_from_slice(&[0; FILLER_LEN - 4]);
    let ext = if caps.has_mariadb_extension() { mariadb.0 } else { 0 };
    out.extend_from_slice(&ext.to_le_bytes());
}

fn optional<'a, O>(
    present: bool,
    i: &'a [u8],
    parse: impl FnOnce(&'a [u8]) -> Result<(&'a [u8], O), WireError>,
) -> Result<(&'a [u8], Option<O>), WireError> {
    if !present {
        return Ok((i, None));
    }
    // A client may stop early when a trailing optional field is empty (older libmysql does so for
    // the plugin name and attributes); treat an exhausted packet as "absent".
    if i.is_empty() {
        return Ok((i, None));
    }
    parse(i).map(|(i, v)| (i, Some(v)))
}

#[cfg(test)]
mod tests;
