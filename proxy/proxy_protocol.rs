//! PROXY protocol v1 and v2 (HAProxy's `proxy-protocol.txt`), in both directions.
//!
//! In: a listener that trusts its peer (HAProxy, an AWS NLB) reads one header right after
//! accept, so that the firewall judges the client the header names rather than the balancer.
//! Out: flexgate can name its own client to a server that trusts it through MariaDB's
//! `proxy_protocol_networks`, so the server's grants and logs see the real host.
//!
//! [`parse`] is the sans-IO core (bytes in; a header, "need more" or an error out) and
//! [`read_header`] its thin driver. In MySQL the server speaks first, so a client's header is
//! followed by silence until we greet: the driver only ever asks the socket for bytes that are
//! certainly part of the header, never for one past it, and so never waits for input that will
//! not come. Parsing and building go through the `ppp` crate, behind checks of our own where
//! its answers on partial input cannot be relied on (see [`parse`]).

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included. The specification fixes it (its worst case is
/// `PROXY UNKNOWN` with two full IPv6 addresses and ports), so a longer line is not a header.
pub const MAX_V1_LEN: usize = 107;

/// Largest v2 payload (addresses plus TLVs) accepted. The format allows 65535 bytes, but what
/// real senders put there is far smaller: 216 bytes of Unix addresses at most, then TLVs such
/// as ALPN, the authority (a host name, at most 255 bytes), a unique ID (at most 128), the SSL
/// group (version, cipher, a certificate's CN), AWS's VPC endpoint ID or Azure's link ID. The
/// specification asks senders to fit a header in 536 bytes; 2048 leaves room for all of the
/// above while keeping what an unauthenticated peer can make us buffer small.
pub const MAX_V2_PAYLOAD: usize = 2048;

/// The start of every v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v1 protocol words; the addresses follow the first two, anything may follow the third.
const V1_TCP4: &[u8] = b"TCP4 ";
const V1_TCP6: &[u8] = b"TCP6 ";
const V1_UNKNOWN: &[u8] = b"UNKNOWN";
/// The 12-byte signature that starts every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol and the 16-bit payload length.
const V2_FIXED_LEN: usize = 16;
/// A v2 LOCAL header with no addresses: version 2, command LOCAL, family and protocol UNSPEC.
const V2_LOCAL: [u8; V2_FIXED_LEN] = *b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
/// Bytes read before telling v1, v2 and neither apart. No header is shorter (v1's
/// `PROXY UNKNOWN\r\n` has 15 bytes), so this read never goes past one.
const FIRST_READ: usize = 8;
/// How much of a header a prefix must show before [`looks_like_header`] believes it. Four bytes
/// already rule out a MySQL client's first packet: as a packet header, `PROX` and `\r\n\r\n`
/// carry sequence numbers `X` and `\n`, and a client's first packet has sequence 1.
const MIN_SNIFF: usize = 4;

/// Which header flexgate writes to the server; set per backend, since the server must be told to
/// expect one version or the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header, `PROXY TCP4 …\r\n`: readable in a packet capture.
    V1,
    /// The binary header: fixed layout, cheaper to parse, and it can carry a LOCAL command.
    V2,
}

impl Version {
    /// Reads the configuration spelling, `"v1"` or `"v2"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v1" => Some(Self::V1),
            "v2" => Some(Self::V2),
            _ => None,
        }
    }

    /// The configuration spelling, for messages that must echo what the operator wrote.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// What a header said about the connection it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// v1 `TCP4`/`TCP6`, or the v2 PROXY command over an INET/INET6 stream: the balancer
    /// relays a real client. IPv4-mapped IPv6 addresses arrive as plain IPv4, so that policy
    /// written for `192.0.2.0/24` matches however the balancer spelled the client.
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to (the balancer's front end).
        destination: SocketAddr,
    },
    /// v1 `UNKNOWN`, the v2 LOCAL command (the balancer's own health checks), or a v2 PROXY
    /// command whose family or protocol is unspecified, or a Unix socket: there is no client
    /// IP to take, so the socket's own peer address stands.
    Local,
}

/// Why the start of a connection is not a PROXY header flexgate accepts.
#[derive(Debug, Error)]
pub enum HeaderError {
    /// The socket failed or closed (unexpected EOF) before the header was complete.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
    /// The bytes do not start a PROXY header at all: the peer is not a balancer, or the
    /// balancer is not configured to send one.
    #[error("expected a PROXY protocol v1 or v2 header from this trusted peer")]
    NotProxy,
    /// The header runs past what the format (v1) or our bound (v2) allows; refused before
    /// anything of that size is buffered.
    #[error("PROXY protocol header longer than {limit} bytes")]
    TooLong {
        /// The largest header accepted, in bytes.
        limit: usize,
    },
    /// A PROXY header that breaks the format; the text says where.
    #[error("malformed PROXY protocol header: {0}")]
    Invalid(String),
    /// A well-formed v2 header for something a MySQL connection cannot be: a datagram
    /// transport, or a version or command this protocol revision does not define.
    #[error("unsupported PROXY protocol v2 header: {what} (byte {byte:#04x})")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// The header byte that asked for it.
        byte: u8,
    },
}

/// Parses a complete header at the start of `buf`, which may hold more after it.
///
/// `Ok(None)` means: read more, then call again. `Ok(Some((header, n)))` means the header is
/// exactly `buf[..n]`. Bytes that cannot start a header fail at the first wrong byte, and a
/// v2 length above [`MAX_V2_PAYLOAD`] fails as soon as it is visible, so a caller buffering
/// until this answers never holds more than a header's bound.
///
/// `ppp` parses the bytes once they are complete, but completeness is decided here: on a v1
/// line still missing its CRLF, `ppp` can call a valid prefix invalid (one cut just after the
/// source port) and a complete line incomplete, so a v1 header is complete exactly when its CRLF
/// is in. v1 `UNKNOWN` is matched here too, because the specification says to ignore whatever
/// follows it up to the CRLF, and `ppp` rejects more than four fields there.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    Ok(match step(buf)? {
        Progress::Done(header, used) => Some((header, used)),
        Progress::Need(_) => None,
    })
}

/// Reads exactly one header from `stream`, never a byte more: the first MySQL bytes after it
/// are the client's, read by the session once we have greeted.
///
/// Bounded by [`MAX_V1_LEN`] and `16 + MAX_V2_PAYLOAD` bytes, so an over-long header is an error,
/// not an allocation. There is no timer here: the caller runs this under its pre-auth deadline.
/// It reads 8 bytes (shorter than any header) to tell v1 from v2 from garbage, then a v1 line a
/// byte at a time up to its CRLF, or v2's fixed 16 bytes and then exactly the payload length
/// they announce. On a raw socket a v1 byte is one `read` system call (about 40 for a typical
/// line, from trusted balancers only): the price of never reading past the header without a
/// buffer that the session would then have to own. Balancers that can send v2 should.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, HeaderError> {
    // A v1 line and v2's fixed part fit on the stack, which keeps this future small.
    let mut head = [0u8; MAX_V1_LEN];
    let mut filled = 0;
    let need = loop {
        match step(&head[..filled])? {
            Progress::Done(header, _) => return Ok(header),
            Progress::Need(n) => match head.get_mut(filled..filled + n) {
                Some(dst) => {
                    stream.read_exact(dst).await?;
                    filled += n;
                }
                None => break n,
            },
        }
    };
    // Only a v2 payload too big for the stack gets here, and `step` has already checked the
    // length it announced against MAX_V2_PAYLOAD: this allocation is bounded.
    let mut whole = Vec::with_capacity(filled + need);
    whole.extend_from_slice(&head[..filled]);
    let mut need = need;
    loop {
        let start = whole.len();
        whole.resize(start + need, 0);
        stream.read_exact(&mut whole[start..]).await?;
        match step(&whole)? {
            Progress::Done(header, _) => return Ok(header),
            Progress::Need(n) => need = n,
        }
    }
}

/// Whether these first bytes of what should have been a MySQL packet start a PROXY header
/// (`PROXY ` or the v2 signature, at least 4 bytes of it). A listener that does not trust its
/// peer uses it to log "PROXY header from an untrusted peer", the likely misconfiguration,
/// instead of "malformed packet".
pub fn looks_like_header(prefix: &[u8]) -> bool {
    prefix.len() >= MIN_SNIFF && (shares_prefix(prefix, V1_PREFIX) || shares_prefix(prefix, V2_SIGNATURE))
}

/// Builds the header flexgate sends to the server about its client.
///
/// Without both addresses (a client on a Unix socket) the header says so: v1 `UNKNOWN`, v2
/// LOCAL, and the server falls back to flexgate's own address. Addresses are sent canonical
/// (IPv4-mapped IPv6 as IPv4), and when one side is IPv4 and the other IPv6, the IPv4 one is
/// mapped into IPv6 so both fit the single family a header has, as HAProxy does.
pub fn encode(version: Version, source: Option<SocketAddr>, destination: Option<SocketAddr>) -> Vec<u8> {
    let pair = match (source, destination) {
        (Some(s), Some(d)) => Some(one_family(s, d)),
        _ => None,
    };
    match version {
        Version::V1 => match pair {
            Some(pair) => v1::Addresses::from(pair).to_string().into_bytes(),
            None => v1::Addresses::Unknown.to_string().into_bytes(),
        },
        Version::V2 => {
            let built = match pair {
                Some(pair) => v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Stream,
                    v2::Addresses::from(pair),
                )
                .build(),
                None => return V2_LOCAL.to_vec(),
            };
            // `build` fails only for a payload over 65535 bytes; ours is at most 36. Were it
            // ever to fail, LOCAL (the server sees flexgate) beats a panic in the session.
            built.unwrap_or_else(|_| V2_LOCAL.to_vec())
        }
    }
}

/// How far [`step`] got.
enum Progress {
    /// The header, and how many bytes it took.
    Done(Header, usize),
    /// At least this many more bytes belong to the header: reading them cannot over-read.
    Need(usize),
}

/// The whole parser: [`parse`] drops the count from `Need`, [`read_header`] reads exactly it.
fn step(buf: &[u8]) -> Result<Progress, HeaderError> {
    if buf.len() < FIRST_READ {
        if shares_prefix(buf, V1_PREFIX) || shares_prefix(buf, V2_SIGNATURE) {
            return Ok(Progress::Need(FIRST_READ - buf.len()));
        }
        return Err(HeaderError::NotProxy);
    }
    if buf.starts_with(V1_PREFIX) {
        v1_step(buf)
    } else if shares_prefix(buf, V2_SIGNATURE) {
        v2_step(buf)
    } else {
        Err(HeaderError::NotProxy)
    }
}

/// Whether `buf` and `start` agree on their common length.
fn shares_prefix(buf: &[u8], start: &[u8]) -> bool {
    buf.iter().zip(start).all(|(a, b)| a == b)
}

/// A v1 line, `buf` starting with `PROXY `.
fn v1_step(buf: &[u8]) -> Result<Progress, HeaderError> {
    let Some(cr) = buf.iter().position(|&b| b == b'\r') else {
        if buf.len() >= MAX_V1_LEN - 1 {
            return Err(HeaderError::TooLong { limit: MAX_V1_LEN }); // no room left for the CRLF
        }
        v1_plausible(buf)?;
        return Ok(Progress::Need(1));
    };
    let end = cr + 2;
    if end > MAX_V1_LEN {
        return Err(HeaderError::TooLong { limit: MAX_V1_LEN });
    }
    v1_plausible(&buf[..cr])?;
    let Some(line) = buf.get(..end) else { return Ok(Progress::Need(end - buf.len())) };
    if !line.ends_with(b"\r\n") {
        return Err(invalid_v1("carriage return not followed by a line feed"));
    }
    if line.starts_with(b"PROXY UNKNOWN") {
        return Ok(Progress::Done(Header::Local, end)); // what follows was checked by v1_plausible
    }
    let parsed = v1::Header::try_from(line).map_err(|e| HeaderError::Invalid(format!("v1: {e}")))?;
    if parsed.header.len() != end {
        return Err(invalid_v1("ppp and flexgate disagree on where the line ends"));
    }
    Ok(Progress::Done(
        match parsed.addresses {
            v1::Addresses::Tcp4(a) => {
                proxied((a.source_address, a.source_port), (a.destination_address, a.destination_port))
            }
            v1::Addresses::Tcp6(a) => {
                proxied((a.source_address, a.source_port), (a.destination_address, a.destination_port))
            }
            v1::Addresses::Unknown => Header::Local,
        },
        end,
    ))
}

/// Fails a v1 line early, before its CRLF, once `text` (the line so far, without CR) can no
/// longer become a header, so a confused peer is not waited on up to 107 bytes.
fn v1_plausible(text: &[u8]) -> Result<(), HeaderError> {
    let rest = text.get(V1_PREFIX.len()..).unwrap_or_default();
    if let Some(addresses) = rest.strip_prefix(V1_TCP4).or_else(|| rest.strip_prefix(V1_TCP6)) {
        // IPv4, IPv6 (IPv4-mapped included) and ports are spelled with these alone.
        if addresses.iter().all(|&b| b.is_ascii_hexdigit() || b == b'.' || b == b':' || b == b' ') {
            return Ok(());
        }
        return Err(invalid_v1("unexpected byte in the addresses"));
    }
    if let Some(after) = rest.strip_prefix(V1_UNKNOWN) {
        if after.first().is_none_or(|&b| b == b' ') {
            return Ok(());
        }
        return Err(invalid_v1("unknown protocol; expected TCP4, TCP6 or UNKNOWN"));
    }
    if [V1_TCP4, V1_TCP6, V1_UNKNOWN].iter().any(|word| word.starts_with(rest)) {
        return Ok(());
    }
    Err(invalid_v1("unknown protocol; expected TCP4, TCP6 or UNKNOWN"))
}

fn invalid_v1(why: &str) -> HeaderError {
    HeaderError::Invalid(format!("v1: {why}"))
}

/// A v2 header, `buf` holding at least 8 bytes of its signature.
fn v2_step(buf: &[u8]) -> Result<Progress, HeaderError> {
    let Some(fixed) = buf.first_chunk::<V2_FIXED_LEN>() else {
        return Ok(Progress::Need(V2_FIXED_LEN - buf.len()));
    };
    if !fixed.starts_with(V2_SIGNATURE) {
        return Err(HeaderError::NotProxy);
    }
    // Version, command, family and protocol are all in the fixed part: check them before
    // waiting for a payload. `Partial` only says the payload has yet to come.
    match v2::Header::try_from(&fixed[..]) {
        Ok(_) | Err(v2::ParseError::Partial(..)) => {}
        Err(e) => return Err(v2_error(e, fixed)),
    }
    let payload = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if payload > MAX_V2_PAYLOAD {
        return Err(HeaderError::TooLong { limit: V2_FIXED_LEN + MAX_V2_PAYLOAD });
    }
    let total = V2_FIXED_LEN + payload;
    let Some(whole) = buf.get(..total) else { return Ok(Progress::Need(total - buf.len())) };
    let parsed = v2::Header::try_from(whole).map_err(|e| v2_error(e, fixed))?;
    // `ppp` reads TLVs lazily; a TLV running past the payload makes the header malformed, as
    // HAProxy's own receiver holds. Their contents are not used.
    if let Some(Err(e)) = parsed.tlvs().find(Result::is_err) {
        return Err(HeaderError::Invalid(format!("v2: {e}")));
    }
    let header = match parsed.command {
        v2::Command::Local => Header::Local,
        v2::Command::Proxy => match (parsed.protocol, parsed.addresses) {
            (v2::Protocol::Datagram, _) => {
                return Err(HeaderError::Unsupported { what: "datagram (UDP) transport", byte: fixed[13] });
            }
            (v2::Protocol::Stream, v2::Addresses::IPv4(a)) => {
                proxied((a.source_address, a.source_port), (a.destination_address, a.destination_port))
            }
            (v2::Protocol::Stream, v2::Addresses::IPv6(a)) => {
                proxied((a.source_address, a.source_port), (a.destination_address, a.destination_port))
            }
            // Unspecified protocol or family, or Unix sockets: no client IP to take.
            _ => Header::Local,
        },
    };
    Ok(Progress::Done(header, total))
}

/// `ppp`'s v2 errors, told apart by whether the header is broken or asks for something else.
fn v2_error(e: v2::ParseError, fixed: &[u8; V2_FIXED_LEN]) -> HeaderError {
    match e {
        v2::ParseError::Version(_) => HeaderError::Unsupported { what: "version other than 2", byte: fixed[12] },
        v2::ParseError::Command(_) => {
            HeaderError::Unsupported { what: "command other than LOCAL or PROXY", byte: fixed[12] }
        }
        other => HeaderError::Invalid(format!("v2: {other}")),
    }
}

fn proxied(source: impl Into<SocketAddr>, destination: impl Into<SocketAddr>) -> Header {
    Header::Proxied { source: canonical(source.into()), destination: canonical(destination.into()) }
}

/// IPv4-mapped IPv6 as IPv4; flow label and scope dropped, as no header carries them.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Both addresses in one family, as a header has only one: canonical first, then an IPv4
/// address next to an IPv6 one becomes IPv4-mapped.
fn one_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (canonical(source), canonical(destination));
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(s), v6(d))
}

#[cfg(test)]
mod tests;
