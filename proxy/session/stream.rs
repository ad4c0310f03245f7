//! The byte streams on each side of a session, and exact packet reads over them.
//!
//! Reads before login are exact (header, then payload) rather than buffered: after an
//! SSLRequest the next bytes on the socket are the TLS ClientHello, and after the final OK the
//! next bytes belong to the relay. A read-ahead buffer would have to hand both back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
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

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a packet could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection (EOF), possibly mid-packet.
    Closed,
    /// The header announced more than we accept; `seq` is the header's sequence id.
    TooLarge { error: WireError, seq: u8 },
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
    let header = header.check(max).map_err(|error| ReadError::TooLarge { error, seq: header.seq })?;
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
