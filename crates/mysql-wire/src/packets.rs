//! Server packets of the authentication exchange, and ERR packets in both directions.

use crate::reader::{bytes, cstr, field, u16_};
use crate::{WireError, write_header};

/// Error codes and SQLSTATEs flexgate sends itself. Codes are MySQL's, so that clients and
/// operators recognise them.
pub mod codes {
    /// `ER_CON_COUNT_ERROR`: too many connections.
    pub const CON_COUNT_ERROR: u16 = 1040;
    /// `ER_SERVER_SHUTDOWN`: the server is shutting down.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// `ER_HOST_NOT_PRIVILEGED`: this host may not connect.
    pub const HOST_NOT_PRIVILEGED: u16 = 1130;
    /// `ER_HANDSHAKE_ERROR`: the handshake packet could not be understood.
    pub const HANDSHAKE_ERROR: u16 = 1043;
    /// `ER_ACCESS_DENIED_ERROR`.
    pub const ACCESS_DENIED: u16 = 1045;
    /// `ER_NET_PACKET_TOO_LARGE`.
    pub const PACKET_TOO_LARGE: u16 = 1153;
    /// `ER_NET_PACKETS_OUT_OF_ORDER`.
    pub const PACKETS_OUT_OF_ORDER: u16 = 1156;
    /// `ER_NOT_SUPPORTED_AUTH_MODE`: flexgate will not complete this auth method.
    pub const NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
    /// `ER_SERVER_OFFLINE_MODE`: the server takes no new connections (flexgate: its
    /// data-encryption key is unavailable).
    pub const SERVER_OFFLINE_MODE: u16 = 3032;
    /// `ER_SECURE_TRANSPORT_REQUIRED`.
    pub const SECURE_TRANSPORT_REQUIRED: u16 = 3159;
    /// `CR_CONN_HOST_ERROR`: cannot connect to the server.
    pub const CONN_HOST_ERROR: u16 = 2003;
    /// `ER_UNKNOWN_ERROR`: flexgate's failures that have no specific server code. Codes from
    /// the client range (2000–2999) are refused by MariaDB Connector/C when they arrive in an
    /// ERR packet (it reports 2027 "malformed packet" instead), so only the contract's 2003 uses it.
    pub const UNKNOWN_ERROR: u16 = 1105;

    /// General error.
    pub const STATE_GENERAL: &[u8; 5] = b"HY000";
    /// Communication link failure.
    pub const STATE_COMM: &[u8; 5] = b"08S01";
    /// Client unable to establish connection (`ER_NOT_SUPPORTED_AUTH_MODE`'s state).
    pub const STATE_AUTH_MODE: &[u8; 5] = b"08004";
    /// Access denied.
    pub const STATE_ACCESS: &[u8; 5] = b"28000";
}

const ERR_MARKER: u8 = 0xff;

/// An ERR packet, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrPacket<'a> {
    /// Error code.
    pub code: u16,
    /// SQLSTATE, when the sender used the 4.1 format.
    pub sql_state: Option<&'a [u8]>,
    /// Human-readable message.
    pub message: &'a [u8],
}

impl<'a> ErrPacket<'a> {
    /// Parses an ERR payload (starting at the 0xff marker).
    pub fn parse(i: &'a [u8]) -> Result<Self, WireError> {
        const P: &str = "ERR packet";
        let Some((&ERR_MARKER, i)) = i.split_first() else {
            return Err(WireError::Malformed { packet: P, field: "marker" });
        };
        let (i, code) = field(P, "error code", i, u16_)?;
        let (message, sql_state) = match i.split_first() {
            Some((b'#', rest)) => {
                let (rest, state) = field(P, "SQLSTATE", rest, bytes(5))?;
                (rest, Some(state))
            }
            _ => (i, None),
        };
        Ok(Self { code, sql_state, message })
    }
}

/// Appends a whole ERR packet (header included).
///
/// `protocol_41` selects the format: without it (before the client has announced its
/// capabilities) the SQLSTATE is left out, as the server itself does.
pub fn write_err(out: &mut Vec<u8>, seq: u8, code: u16, sql_state: &[u8; 5], message: &str, protocol_41: bool) {
    // Messages are ours and short; cap them anyway so the packet can never need splitting.
    let msg = &message.as_bytes()[..message.len().min(512)];
    let len = 1 + 2 + if protocol_41 { 6 } else { 0 } + msg.len();
    write_header(out, len, seq);
    out.push(ERR_MARKER);
    out.extend_from_slice(&code.to_le_bytes());
    if protocol_41 {
        out.push(b'#');
        out.extend_from_slice(sql_state);
    }
    out.extend_from_slice(msg);
}

/// A server packet during the authentication exchange, classified by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPacket<'a> {
    /// Login succeeded (0x00).
    Ok,
    /// Login failed (0xff).
    Err(ErrPacket<'a>),
    /// The server wants another plugin (0xfe): its name and the data for it.
    Switch {
        /// Plugin name.
        plugin: &'a [u8],
        /// Plugin data, usually a fresh nonce.
        data: &'a [u8],
    },
    /// Plugin-specific data (0x01, "AuthMoreData"), without the marker.
    MoreData(&'a [u8]),
    /// Plugin-specific data with no marker. MariaDB (through 11.x) sends a plugin's packets
    /// raw and prefixes 0x01 only when the first byte would clash with a marker: PAM `dialog`
    /// prompts start with 0x02–0x05, and an ed25519 nonce starts with any byte.
    Data(&'a [u8]),
}

impl<'a> AuthPacket<'a> {
    /// Classifies a server payload received during authentication.
    pub fn parse(i: &'a [u8]) -> Result<Self, WireError> {
        const P: &str = "authentication packet";
        match i.split_first() {
            Some((0x00, _)) => Ok(Self::Ok),
            Some((0xff, _)) => ErrPacket::parse(i).map(Self::Err),
            // A bare 0xfe is the pre-4.1 "use the old password hash" request.
            Some((0xfe, [])) => Ok(Self::Switch { plugin: b"mysql_old_password", data: &[] }),
            Some((0xfe, rest)) => {
                let (data, plugin) = field(P, "plugin name", rest, cstr)?;
                Ok(Self::Switch { plugin, data })
            }
            Some((0x01, data)) => Ok(Self::MoreData(data)),
            Some(_) => Ok(Self::Data(i)),
            None => Err(WireError::Malformed { packet: P, field: "packet type" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn err_round_trips_in_both_formats() {
        for p41 in [true, false] {
            let mut out = Vec::new();
            write_err(&mut out, 2, codes::SECURE_TRANSPORT_REQUIRED, codes::STATE_GENERAL, "no", p41);
            let f = frame(&out, 64).ok().flatten().unwrap_or_else(|| panic!("framed"));
            assert_eq!(f.header.seq, 2);
            let e = ErrPacket::parse(f.payload).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(e.code, 3159);
            assert_eq!(e.message, b"no");
            assert_eq!(e.sql_state, p41.then_some(&b"HY000"[..]));
        }
    }

    #[test]
    fn classifies_auth_packets() {
        assert_eq!(AuthPacket::parse(&[0, 0, 0, 2, 0, 0, 0]), Ok(AuthPacket::Ok));
        assert_eq!(AuthPacket::parse(&[1, 4]), Ok(AuthPacket::MoreData(&[4])));
        assert_eq!(
            AuthPacket::parse(b"\xfemysql_native_password\0abc"),
            Ok(AuthPacket::Switch { plugin: b"mysql_native_password", data: b"abc" })
        );
        assert!(AuthPacket::parse(b"\xfeno-terminator").is_err());
        assert!(AuthPacket::parse(&[]).is_err());
        assert_eq!(AuthPacket::parse(&[0x02, 0x41]), Ok(AuthPacket::Data(&[0x02, 0x41])));
    }
}
