//! Sans-IO MySQL/MariaDB wire protocol for the pre-authentication phase.
//!
//! Everything here is a pure function from bytes to values (or values to bytes): no sockets, no
//! clock, no logging and no policy. Parsers borrow from the caller's buffer, check every length
//! against what is actually there, and turn every malformation into a [`WireError`] instead of a
//! panic, so the same code runs under the fuzzer, in property tests and in the proxy.
//!
//! After a successful login the proxy relays bytes without parsing them, except for the few
//! commands in [`com`] that it must recognise (change-user, kill, quit).

#![warn(missing_docs, unreachable_pub)]

mod caps;
mod command;
mod error;
mod frame;
mod handshake;
mod packets;
mod reader;

pub use caps::{Capabilities, MariaDbCapabilities};
pub use command::{ChangeUser, com, connect_attrs, process_kill_id};
pub use error::WireError;
pub use frame::{Frame, HEADER_LEN, Header, MAX_PAYLOAD_LEN, frame, write_header, write_packet};
pub use handshake::{ClientFirst, Greeting, HandshakeResponse, SSL_REQUEST_LEN, SslRequest, parse_client_first};
pub use packets::{AuthPacket, ErrPacket, codes, write_err};
