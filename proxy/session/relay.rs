//! The pass-through after login: bytes copied both ways, unparsed.
//!
//! Unlike `tokio::io::copy_bidirectional`, which keeps a heap buffer per direction for the life
//! of the connection, this reads into a buffer on the stack of `poll` and writes straight from
//! it. Only when the writer cannot take everything does the remainder move to the heap, and that
//! allocation is freed as soon as it drains. An idle session (a pooled connection, say) so holds
//! no relay buffer at all, while the busy path makes the same single copy as before.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per `poll_read`: one full TLS record, and HAProxy's default buffer size.
const CHUNK: usize = 16 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// Client → server.
    pub(crate) from_client: u64,
    /// Server → client.
    pub(crate) to_client: u64,
}

/// Copies `client` ↔ `server` until both directions have reached EOF (each EOF is passed on as
/// a write shutdown), or either fails. Byte counts are kept even when it fails.
pub(crate) async fn relay<C, S>(client: &mut C, server: &mut S) -> (Transferred, io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = Relay { client, server, up: Direction::default(), down: Direction::default() };
    let result = (&mut r).await;
    (Transferred { from_client: r.up.bytes, to_client: r.down.bytes }, result)
}

struct Relay<'a, C, S> {
    client: &'a mut C,
    server: &'a mut S,
    up: Direction,
    down: Direction,
}

impl<C, S> Future for Relay<'_, C, S>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let up = this.up.poll_copy(cx, &mut *this.client, &mut *this.server)?;
        let down = this.down.poll_copy(cx, &mut *this.server, &mut *this.client)?;
        if up.is_ready() && down.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

/// One direction's state. `pending` exists only while the writer is behind.
#[derive(Default)]
struct Direction {
    pending: Option<Box<[u8]>>,
    pos: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
    bytes: u64,
}

impl Direction {
    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // What the writer could not take last time goes first.
            if let Some(buf) = &self.pending {
                while self.pos < buf.len() {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, &buf[self.pos..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pos += n;
                    self.bytes += n as u64;
                    self.need_flush = true;
                }
                self.pending = None;
                self.pos = 0;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read now: push out what was written (TLS buffers it).
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let data = buf.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.bytes += n as u64;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer is behind: keep the rest until it catches up. The waker
                        // is registered, so the loop's retry returns Pending.
                        self.pending = Some(data[off..].into());
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Writes `data` then shuts down, while reading everything the other side sends.
    async fn send_and_receive(stream: tokio::io::DuplexStream, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut r, mut w) = tokio::io::split(stream);
        let send = async move {
            w.write_all(&data).await?;
            w.shutdown().await
        };
        let mut got = Vec::new();
        let (sent, received) = tokio::join!(send, r.read_to_end(&mut got));
        sent.and(received).map(|_| got)
    }

    /// Both directions at once, through pipes smaller than a chunk, so that writes fall behind
    /// and the pending path runs; the bytes arrive intact and are counted.
    #[tokio::test]
    async fn copies_both_ways_through_slow_writers() {
        let (client_far, mut client_near) = duplex(1000);
        let (mut server_near, server_far) = duplex(777);
        let relay = tokio::spawn(async move { relay(&mut client_near, &mut server_near).await });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i * 13) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client = tokio::spawn(send_and_receive(client_far, up2));
        let server = tokio::spawn(send_and_receive(server_far, down2));
        let at_client = client.await.ok().and_then(Result::ok).unwrap_or_default();
        let at_server = server.await.ok().and_then(Result::ok).unwrap_or_default();
        let (moved, result) = relay.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(at_server, up);
        assert_eq!(at_client, down);
        assert_eq!(moved, Transferred { from_client: up.len() as u64, to_client: down.len() as u64 });
    }
}
