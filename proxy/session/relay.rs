//! The pass-through after login.
//!
//! Both directions run the same copy loop. Server → client passes every byte unparsed.
//! Client → server runs them through the [`Scanner`], which follows command boundaries so
//! that flexgate can translate `KILL` and pause for `COM_CHANGE_USER`. Neither copies per
//! packet: bytes are read into a buffer on the stack of `poll` and written straight from it.
//! Only when a writer cannot take everything does the remainder move to the heap, and that
//! allocation is freed as soon as it drains. An idle session (a pooled connection, say) so
//! holds no relay buffer at all.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::scan::{Scanner, Step};

/// Bytes read per `poll_read`: one full TLS record, and HAProxy's default buffer size.
const CHUNK: usize = 16 * 1024;

/// Maps a connection id flexgate gave out to the server's thread id.
type Lookup<'a> = &'a (dyn Fn(u32) -> Option<u32> + Sync);

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// Client → server.
    pub(crate) from_client: u64,
    /// Server → client.
    pub(crate) to_client: u64,
}

/// Which peer's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// A socket error in the relay, with the peer whose socket failed.
#[derive(Debug)]
pub(crate) struct RelayError {
    pub(crate) side: Side,
    pub(crate) source: io::Error,
}

/// Why [`Relay::run`] returned.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both directions reached EOF; [`Relay::closed_by`] says who closed.
    Closed,
    /// The client sent `COM_CHANGE_USER` (this payload). Everything before it has been
    /// relayed both ways; call `run` again once the session has handled it.
    ChangeUser(Vec<u8>),
    /// A socket failed, or the client broke the framing.
    Failed(RelayError),
    /// The `interrupt` future given to [`Relay::run`] resolved (the key breaker closes the
    /// session); nothing more was relayed.
    Interrupted,
}

/// The relay's state across pauses.
#[derive(Debug)]
pub(crate) struct Relay {
    up: Direction<Scanner>,
    down: Direction<Unparsed>,
    /// Who ended the session first: the client by COM_QUIT or EOF, or the server by EOF.
    closed_by: Option<Side>,
}

impl Relay {
    /// `max_change_user` bounds the one command the relay buffers whole; `counters` are the
    /// byte counters from the client and to it.
    pub(crate) fn new(max_change_user: usize, counters: (Counter, Counter)) -> Self {
        let (from_client, to_client) = counters;
        Self {
            up: Direction::new(Scanner::new(max_change_user), Side::Client, from_client),
            down: Direction::new(Unparsed, Side::Server, to_client),
            closed_by: None,
        }
    }

    /// Relays until both sides close, a side fails, or the client sends `COM_CHANGE_USER`.
    /// `lookup` translates flexgate's connection ids in `KILL` to the server's.
    /// `interrupt` is polled first at every wake, inside the relay's own future rather than
    /// beside it in a `select!`, which keeps the copy loop inlined: it must be cheap.
    pub(crate) async fn run<C, S, I>(
        &mut self,
        client: &mut C,
        server: &mut S,
        lookup: Lookup<'_>,
        interrupt: &mut I,
    ) -> RelayEnd
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
        I: Future<Output = ()> + Unpin,
    {
        Run { relay: self, client, server, lookup, pause: None, interrupt }.await
    }

    /// Bytes moved so far.
    pub(crate) fn moved(&self) -> Transferred {
        Transferred { from_client: self.up.bytes, to_client: self.down.bytes }
    }

    /// Whether the client has sent `COM_QUIT`.
    pub(crate) fn client_quit(&self) -> bool {
        self.up.filter.quit
    }

    /// Who ended the session first, if anyone has. `Server` means the server closed a session
    /// still in use (`KILL`, `wait_timeout`, shutdown), whatever the client did after.
    pub(crate) fn closed_by(&self) -> Option<Side> {
        self.closed_by
    }

    fn note_close(&mut self) {
        if self.closed_by.is_none() {
            if self.up.read_done || self.up.filter.quit {
                self.closed_by = Some(Side::Client);
            } else if self.down.read_done {
                self.closed_by = Some(Side::Server);
            }
        }
    }

    /// Client bytes that arrived after a `COM_CHANGE_USER` in the same read. A client waits
    /// for the server's answer before it sends more, so this is almost always empty; whatever
    /// it holds, the session reads it before the socket.
    pub(crate) fn take_client_input(&mut self) -> Vec<u8> {
        self.up.input.take().map(|(buf, pos)| buf[pos..].to_vec()).unwrap_or_default()
    }

    /// Gives back client bytes the session did not use, to be relayed before the socket's.
    pub(crate) fn put_client_input(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.up.input = Some((bytes, 0));
        }
    }
}

struct Run<'a, C, S, I> {
    relay: &'a mut Relay,
    client: &'a mut C,
    server: &'a mut S,
    lookup: Lookup<'a>,
    pause: Option<Vec<u8>>,
    interrupt: &'a mut I,
}

impl<C, S, I> Future for Run<'_, C, S, I>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    I: Future<Output = ()> + Unpin,
{
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.get_mut();
        if Pin::new(&mut *this.interrupt).poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::Interrupted);
        }
        let r = &mut *this.relay;
        if this.pause.is_none() {
            let up = r.up.poll(cx, &mut *this.client, &mut *this.server, this.lookup);
            r.note_close();
            match up {
                Poll::Ready(Ok(Some(payload))) => this.pause = Some(payload),
                Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::Failed(e)),
                Poll::Ready(Ok(None)) | Poll::Pending => {}
            }
        }
        if let Some(payload) = this.pause.take() {
            // What the server has already sent reaches the client before the session takes over.
            return match r.down.poll_drain(cx, &mut *this.client) {
                Poll::Ready(Ok(())) => Poll::Ready(RelayEnd::ChangeUser(payload)),
                Poll::Ready(Err(e)) => Poll::Ready(RelayEnd::Failed(e)),
                Poll::Pending => {
                    this.pause = Some(payload);
                    Poll::Pending
                }
            };
        }
        // The unparsed direction never pauses.
        let down = r.down.poll(cx, &mut *this.server, &mut *this.client, this.lookup);
        r.note_close();
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(RelayEnd::Failed(e));
        }
        if r.up.done && r.down.done { Poll::Ready(RelayEnd::Closed) } else { Poll::Pending }
    }
}

/// What a direction does with the bytes it reads.
trait Filter {
    /// The next step for `data`, the unconsumed rest of a chunk (never empty).
    fn step(&mut self, data: &[u8], lookup: Lookup<'_>) -> Step;
}

/// Server → client: every byte passes as it is.
#[derive(Debug)]
struct Unparsed;

impl Filter for Unparsed {
    fn step(&mut self, data: &[u8], _: Lookup<'_>) -> Step {
        Step::Pass(data.len())
    }
}

impl Filter for Scanner {
    fn step(&mut self, data: &[u8], lookup: Lookup<'_>) -> Step {
        Scanner::step(self, data, lookup)
    }
}

/// The outcome of feeding bytes through the filter.
enum Fed {
    /// Everything was written, kept or emitted.
    All,
    /// The writer fell behind after `consumed` bytes; the unwritten output is in `out`.
    Stalled { consumed: usize },
    /// A change-user ended after `consumed` bytes.
    Paused { payload: Vec<u8>, consumed: usize },
}

/// One direction of the relay: reads from the `from` peer, writes to the other.
#[derive(Debug)]
struct Direction<F> {
    filter: F,
    from: Side,
    /// Output that must be written before anything else.
    out: Option<(Vec<u8>, usize)>,
    /// Bytes read but not yet filtered.
    input: Option<(Vec<u8>, usize)>,
    /// A change-user filtered while the writer was behind: the pause waits for `out`.
    paused: Option<Vec<u8>>,
    read_done: bool,
    done: bool,
    need_flush: bool,
    bytes: u64,
    /// The listener's byte counter for this direction: one relaxed add per write, so that
    /// the metric moves while a long session runs.
    counter: Counter,
}

impl<F: Filter> Direction<F> {
    fn new(filter: F, from: Side, counter: Counter) -> Self {
        Self {
            filter,
            from,
            out: None,
            input: None,
            paused: None,
            read_done: false,
            done: false,
            need_flush: false,
            bytes: 0,
            counter,
        }
    }

    fn read_err(&self, source: io::Error) -> RelayError {
        RelayError { side: self.from, source }
    }

    fn write_err(&self, source: io::Error) -> RelayError {
        RelayError { side: self.from.other(), source }
    }

    /// `Ready(Ok(None))` at EOF (passed on as a write shutdown), `Ready(Ok(Some(payload)))` at
    /// a change-user.
    #[inline]
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        lookup: Lookup<'_>,
    ) -> Poll<Result<Option<Vec<u8>>, RelayError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        loop {
            ready!(self.poll_write_out(cx, writer))?;
            if let Some(payload) = self.paused.take() {
                return Poll::Ready(Ok(Some(payload)));
            }
            if let Some((buf, pos)) = self.input.take() {
                match self.feed(cx, &buf[pos..], writer, lookup)? {
                    Fed::All => {}
                    Fed::Stalled { consumed } => {
                        self.input = Some((buf, pos + consumed)).filter(|(b, p)| *p < b.len());
                        continue;
                    }
                    Fed::Paused { payload, consumed } => {
                        self.input = Some((buf, pos + consumed)).filter(|(b, p)| *p < b.len());
                        return Poll::Ready(Ok(Some(payload)));
                    }
                }
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(|e| self.write_err(e))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(|e| self.write_err(e))?;
                self.done = true;
                return Poll::Ready(Ok(None));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.read_err(e))),
                Poll::Pending => {
                    // Nothing more to read now: push out what was written (TLS buffers it).
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(|e| self.write_err(e))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let data = rb.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let (consumed, pause) = match self.feed(cx, data, writer, lookup)? {
                Fed::All => continue,
                Fed::Stalled { consumed } => (consumed, None),
                Fed::Paused { payload, consumed } => (consumed, Some(payload)),
            };
            if consumed < data.len() {
                self.input = Some((data[consumed..].to_vec(), 0));
            }
            if let Some(payload) = pause {
                return Poll::Ready(Ok(Some(payload)));
            }
        }
    }

    /// Writes out what is queued, then flushes; reads nothing.
    fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<(), RelayError>> {
        ready!(self.poll_write_out(cx, writer))?;
        if self.need_flush {
            ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(|e| self.write_err(e))?;
            self.need_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what is queued in `out`, if anything.
    fn poll_write_out<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<(), RelayError>> {
        let Some((buf, pos)) = &mut self.out else { return Poll::Ready(Ok(())) };
        while *pos < buf.len() {
            let n = match ready!(Pin::new(&mut *writer).poll_write(cx, &buf[*pos..])) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                r => r,
            };
            let n = n.map_err(|e| RelayError { side: self.from.other(), source: e })?;
            *pos += n;
            self.bytes += n as u64;
            self.counter.inc_by(n as u64);
            self.need_flush = true;
        }
        self.out = None;
        Poll::Ready(Ok(()))
    }

    /// Filters `data` and writes what passes, straight from `data` where it can.
    fn feed<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        writer: &mut W,
        lookup: Lookup<'_>,
    ) -> Result<Fed, RelayError> {
        // Consecutive passed bytes go out in one write: pipelined commands in one read cost
        // one syscall, not one per packet.
        let (mut pos, mut span_start) = (0, 0);
        while pos < data.len() {
            let step = match self.filter.step(&data[pos..], lookup) {
                Step::Pass(n) => {
                    pos += n;
                    continue;
                }
                other => other,
            };
            // The filter has moved past this step: it is carried out even if the writer is
            // behind, by queueing its output (or its pause) after what is already queued.
            let mut stalled = self.write_or_queue(cx, &data[span_start..pos], writer)?;
            match step {
                Step::Pass(n) | Step::Keep(n) => pos += n,
                Step::Emit { bytes, consumed } => {
                    pos += consumed;
                    if stalled {
                        if let Some((queued, _)) = &mut self.out {
                            queued.extend_from_slice(&bytes);
                        }
                    } else if let Some(written) = self.write(cx, &bytes, writer)? {
                        self.out = Some((bytes, written));
                        stalled = true;
                    }
                }
                Step::ChangeUser { payload, consumed } => {
                    pos += consumed;
                    if !stalled {
                        return Ok(Fed::Paused { payload, consumed: pos });
                    }
                    self.paused = Some(payload);
                }
                Step::Refuse(e) => return Err(self.read_err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
            if stalled {
                return Ok(Fed::Stalled { consumed: pos });
            }
            span_start = pos;
        }
        if self.write_or_queue(cx, &data[span_start..pos], writer)? {
            return Ok(Fed::Stalled { consumed: pos });
        }
        Ok(Fed::All)
    }

    /// Writes `span` or, past what the writer takes now, queues it; `true` if it queued.
    fn write_or_queue<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        span: &[u8],
        writer: &mut W,
    ) -> Result<bool, RelayError> {
        match self.write(cx, span, writer)? {
            Some(written) => {
                self.out = Some((span[written..].to_vec(), 0));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Writes as much of `span` as the writer takes now; `Some(n)` if it stalled after `n`.
    fn write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        span: &[u8],
        writer: &mut W,
    ) -> Result<Option<usize>, RelayError> {
        let mut off = 0;
        while off < span.len() {
            match Pin::new(&mut *writer).poll_write(cx, &span[off..]) {
                Poll::Ready(Ok(0)) => return Err(self.write_err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    off += n;
                    self.bytes += n as u64;
                    self.counter.inc_by(n as u64);
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Err(self.write_err(e)),
                // The waker is registered: the caller's retry returns Pending.
                Poll::Pending => return Ok(Some(off)),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{com, write_packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn no_lookup(_: u32) -> Option<u32> {
        None
    }

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

    /// Client traffic made of well-formed packets of every size class, including one that
    /// spans the 16 MiB continuation boundary.
    fn client_stream() -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..2000u32 {
            let len = (i * 37) as usize % 300;
            let mut p = vec![0x03];
            p.extend((0..len).map(|j| (i as usize * 7 + j) as u8));
            write_packet(&mut out, 0, &p);
        }
        out
    }

    /// Both directions at once, through pipes smaller than a chunk, so that writes fall behind
    /// and the pending paths run; the bytes arrive intact and are counted.
    #[tokio::test]
    async fn copies_both_ways_through_slow_writers() {
        let (client_far, mut client_near) = duplex(1000);
        let (mut server_near, server_far) = duplex(777);
        let relay = tokio::spawn(async move {
            let mut r = Relay::new(1 << 16, Default::default());
            let end = r.run(&mut client_near, &mut server_near, &no_lookup, &mut std::future::pending()).await;
            (r.moved(), end)
        });
        let up = client_stream();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i * 13) as u8).collect();
        let client = tokio::spawn(send_and_receive(client_far, up.clone()));
        let server = tokio::spawn(send_and_receive(server_far, down.clone()));
        let at_client = client.await.ok().and_then(Result::ok).unwrap_or_default();
        let at_server = server.await.ok().and_then(Result::ok).unwrap_or_default();
        let (moved, end) = relay.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert!(at_server == up, "client bytes changed in transit");
        assert_eq!(at_client, down);
        assert_eq!(moved, Transferred { from_client: up.len() as u64, to_client: down.len() as u64 });
    }

    /// Pipelined commands with a KILL among them, through a writer far slower than the
    /// reader: the kill is translated wherever the stalls fall, and a change-user that comes
    /// while output is still queued pauses only after that output has gone out.
    #[tokio::test]
    async fn translates_and_pauses_behind_a_slow_writer() {
        fn lookup(id: u32) -> Option<u32> {
            (id == 2_147_483_649).then_some(17)
        }
        let (mut client_far, mut client_near) = duplex(1 << 20);
        let (mut server_near, mut server_far) = duplex(7);
        let (mut stream, mut want) = (Vec::new(), Vec::new());
        for i in 0..300 {
            let sql = if i == 150 { "\x03KILL QUERY 2147483649".to_string() } else { format!("\x03SELECT {i}") };
            write_packet(&mut stream, 0, sql.as_bytes());
            let sql = if i == 150 { "\x03KILL QUERY 17".to_string() } else { format!("\x03SELECT {i}") };
            write_packet(&mut want, 0, sql.as_bytes());
        }
        write_packet(&mut stream, 0, &[com::CHANGE_USER, b'u', 0, 0, 0]);
        client_far.write_all(&stream).await.unwrap_or_else(|e| panic!("{e}"));
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; want.len()];
            server_far.read_exact(&mut got).await.map(|_| got == want)
        });
        let mut r = Relay::new(1 << 16, Default::default());
        let end = r.run(&mut client_near, &mut server_near, &lookup, &mut std::future::pending()).await;
        assert!(matches!(&end, RelayEnd::ChangeUser(p) if p == &[com::CHANGE_USER, b'u', 0, 0, 0]), "{end:?}");
        assert!(reader.await.ok().and_then(Result::ok) == Some(true), "server saw other bytes");
    }

    #[tokio::test]
    async fn pauses_at_change_user_and_resumes() {
        let (mut client_far, mut client_near) = duplex(64);
        let (mut server_near, mut server_far) = duplex(64);
        let mut stream = Vec::new();
        write_packet(&mut stream, 0, b"\x03SELECT 1");
        write_packet(&mut stream, 0, &[com::CHANGE_USER, b'u', 0, 0, 0]);
        let mut after = Vec::new();
        write_packet(&mut after, 0, &[com::QUIT]);
        let writer = tokio::spawn(async move {
            client_far.write_all(&stream).await?;
            client_far.flush().await?;
            Ok::<_, io::Error>(client_far)
        });
        let mut r = Relay::new(1 << 16, Default::default());
        let end = r.run(&mut client_near, &mut server_near, &no_lookup, &mut std::future::pending()).await;
        assert!(matches!(&end, RelayEnd::ChangeUser(p) if p == &[com::CHANGE_USER, b'u', 0, 0, 0]), "{end:?}");
        let mut got = [0u8; 13];
        server_far.read_exact(&mut got).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got[4..], b"\x03SELECT 1");
        let mut client_far = writer.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
        client_far.write_all(&after).await.unwrap_or_else(|e| panic!("{e}"));
        drop(client_far);
        drop(server_far);
        let end = r.run(&mut client_near, &mut server_near, &no_lookup, &mut std::future::pending()).await;
        assert!(r.client_quit(), "{end:?}");
    }

    #[tokio::test]
    async fn an_interrupt_ends_an_idle_relay() {
        let (mut client_near, _client_far) = tokio::io::duplex(1024);
        let (mut server_near, _server_far) = tokio::io::duplex(1024);
        let mut r = Relay::new(1024, (Counter::default(), Counter::default()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let mut interrupt = Box::pin(async move {
            let _ = (&mut rx).await;
        });
        let run = r.run(&mut client_near, &mut server_near, &no_lookup, &mut interrupt);
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), run).await;
        assert!(matches!(end, Ok(RelayEnd::Interrupted)), "{end:?}");
        sender.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
