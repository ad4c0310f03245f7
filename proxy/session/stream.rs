//! The byte streams on each side of a session, and exact packet reads over them.
//!
//! Reads before login are exact (header, then payload) rather than buffered: after an
//! SSLRequest the next bytes on the socket are the TLS ClientHello, and after the final OK the
//! next bytes belong to the relay. A read-ahead buffer would have to hand both back.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroize;

use crate::protocol::{HEADER_LEN, Header, WireError};

/// The client's connection: plaintext until an SSLRequest, TLS after it. Generic over the
/// transport so that tests drive a session over in-memory pipes.
pub(crate) enum ClientStream<C> {
    Plain(C),
    Tls(Box<tokio_rustls::server::TlsStream<C>>),
}

impl<C> ClientStream<C> {
    /// The negotiated TLS version and cipher, for logs and login events.
    pub(crate) fn tls_info(&self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Self::Plain(_) => (None, None),
            Self::Tls(t) => {
                let conn = t.get_ref().1;
                (
                    conn.protocol_version().map(crate::tls::version_name),
                    conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str()),
                )
            }
        }
    }
}

delegate_async_io!(ClientStream<C> { Plain, Tls });

/// Why a packet could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection (EOF), possibly mid-packet.
    Closed,
    /// The header announced more than we accept; `seq` is the header's sequence id, `raw`
    /// the header's bytes (which may be the start of something that is not MySQL at all).
    TooLarge { error: WireError, seq: u8, raw: [u8; HEADER_LEN] },
    /// A socket error.
    Io(io::Error),
}

/// Reads one whole packet into `buf` (replacing its contents), refusing payloads above `max`
/// before reading them.
pub(crate) async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Header, ReadError> {
    let mut hdr = [0u8; HEADER_LEN];
    read_exact(s, &mut hdr).await?;
    let header = Header::parse(hdr);
    let header = header.check(max).map_err(|error| ReadError::TooLarge { error, seq: header.seq, raw: hdr })?;
    if header.len > buf.capacity() {
        // Growing would free the old allocation as it is; it may hold an auth response.
        buf.zeroize();
    }
    buf.clear();
    buf.resize(header.len, 0);
    read_exact(s, buf).await?;
    Ok(header)
}

async fn read_exact<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), ReadError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ReadError::Closed),
        Err(e) => Err(ReadError::Io(e)),
    }
}
