//! Command boundaries in the client → server byte stream, found without copying it.
//!
//! Pure: the relay feeds each chunk it reads, and the scanner says what to do with the next
//! bytes of it. Almost always that is "pass these bytes as they are"; the relay then writes
//! straight from its read buffer. The exceptions are rare and small: a `KILL` whose id must be
//! translated, a `COM_CHANGE_USER` that pauses the relay, and the few header bytes of a packet
//! whose command byte has not arrived yet.
//!
//! A packet starts a command when its sequence id is 0 and it does not continue the previous
//! packet: a payload of exactly 16 MiB − 1 continues in the next packet, and a long stream of
//! `LOAD DATA LOCAL` file packets wraps its sequence id from 255 to 0 (that stream ends with an
//! empty packet).

use super::kill;
use crate::protocol::{HEADER_LEN, Header, MAX_PAYLOAD_LEN, com};

/// What to do with the bytes at the front of the chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Write the next `n` bytes of the chunk unchanged.
    Pass(usize),
    /// The scanner kept the next `n` bytes; write nothing now.
    Keep(usize),
    /// Write `bytes` in place of the next `consumed` bytes of the chunk (0: before them).
    Emit { bytes: Vec<u8>, consumed: usize },
    /// The client sent `COM_CHANGE_USER` (its payload, sequence id 0), which took the next
    /// `consumed` bytes: stop relaying and hand it to the session.
    ChangeUser { payload: Vec<u8>, consumed: usize },
    /// The client broke the framing rules the scanner relies on.
    Refuse(ScanError),
}

/// A command the scanner will not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScanError {
    /// A change-user larger than any real one; it would have to be buffered whole.
    #[error("COM_CHANGE_USER of {0} bytes exceeds the limit")]
    ChangeUserTooLarge(usize),
}

/// Which command a held packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Kill,
    ChangeUser,
}

#[derive(Debug)]
enum State {
    /// Between packets; `lead` holds the first bytes of the next one (header, command byte)
    /// when they arrived split across reads.
    Boundary { lead: [u8; HEADER_LEN + 1], have: usize },
    /// Inside a payload that passes unchanged.
    Passing { left: usize },
    /// Collecting a whole packet (header included) that may be rewritten.
    Holding { buf: Vec<u8>, want: usize, what: Held },
}

/// Where the client → server stream is, between two chunks.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// The next packet continues the current command rather than starting one.
    continues: bool,
    /// Largest change-user accepted (the pre-auth packet limit).
    max_change_user: usize,
    /// The client sent COM_QUIT.
    pub(crate) quit: bool,
}

impl Scanner {
    pub(crate) fn new(max_change_user: usize) -> Self {
        Self { state: boundary(), continues: false, max_change_user, quit: false }
    }

    /// The next step for `data`, the unconsumed rest of the current chunk (never empty).
    /// `lookup` maps a connection id that flexgate gave out to the server's thread id.
    pub(crate) fn step(&mut self, data: &[u8], lookup: &dyn Fn(u32) -> Option<u32>) -> Step {
        debug_assert!(!data.is_empty());
        match &mut self.state {
            State::Passing { left } => {
                let n = (*left).min(data.len());
                *left -= n;
                if *left == 0 {
                    self.state = boundary();
                }
                Step::Pass(n)
            }
            State::Holding { buf, want, what } => {
                let n = (*want - buf.len()).min(data.len());
                buf.extend_from_slice(&data[..n]);
                if buf.len() < *want {
                    return Step::Keep(n);
                }
                let (buf, what) = (std::mem::take(buf), *what);
                self.state = boundary();
                match what {
                    Held::ChangeUser => Step::ChangeUser { payload: buf[HEADER_LEN..].to_vec(), consumed: n },
                    Held::Kill => Step::Emit { bytes: rewrite_kill(&buf, lookup).unwrap_or(buf), consumed: n },
                }
            }
            State::Boundary { lead, have } if *have == 0 => match Lead::read(data) {
                Some(l) => self.classify(l, data, lookup),
                None => {
                    lead[..data.len()].copy_from_slice(data);
                    *have = data.len();
                    Step::Keep(data.len())
                }
            },
            State::Boundary { lead, have } => {
                // Complete the split lead from this chunk, then decide with it in front.
                let take = (lead.len() - *have).min(data.len());
                let mut joined = [0u8; HEADER_LEN + 1];
                joined[..*have].copy_from_slice(&lead[..*have]);
                joined[*have..*have + take].copy_from_slice(&data[..take]);
                let total = *have + take;
                match Lead::read(&joined[..total]) {
                    Some(l) => {
                        let prior = *have;
                        self.state = boundary();
                        self.classify_split(l, &joined[..prior], data, lookup)
                    }
                    None => {
                        lead[..total].copy_from_slice(&joined[..total]);
                        *have = total;
                        Step::Keep(take)
                    }
                }
            }
        }
    }

    /// Decides for a packet whose lead is at the front of `data` (nothing kept before it).
    fn classify(&mut self, l: Lead, data: &[u8], lookup: &dyn Fn(u32) -> Option<u32>) -> Step {
        let total = HEADER_LEN + l.header.len;
        match self.command(l) {
            Some(Held::ChangeUser) => self.hold(Held::ChangeUser, &[], data, total, lookup),
            Some(Held::Kill) if data.len() >= total => match rewrite_kill(&data[..total], lookup) {
                Some(bytes) => Step::Emit { bytes, consumed: total },
                None => Step::Pass(total),
            },
            Some(Held::Kill) => self.hold(Held::Kill, &[], data, total, lookup),
            None => self.pass(data.len(), total),
        }
    }

    /// Decides for a packet whose first `kept.len()` bytes the scanner kept from earlier
    /// chunks; `data` holds the rest of it (and maybe more).
    fn classify_split(&mut self, l: Lead, kept: &[u8], data: &[u8], lookup: &dyn Fn(u32) -> Option<u32>) -> Step {
        let total = HEADER_LEN + l.header.len;
        match self.command(l) {
            Some(what) => self.hold(what, kept, data, total, lookup),
            None => {
                // The kept bytes go out first; the rest of the packet passes from `data`.
                self.state = State::Passing { left: total - kept.len() };
                Step::Emit { bytes: kept.to_vec(), consumed: 0 }
            }
        }
    }

    /// Whether the packet starts a command the scanner must look at; also tracks quit and
    /// continuation.
    fn command(&mut self, l: Lead) -> Option<Held> {
        let starts = l.header.seq == 0 && !self.continues;
        self.continues = l.header.len == MAX_PAYLOAD_LEN || (l.header.seq == 0xff && l.header.len != 0);
        if !starts {
            return None;
        }
        match (l.command, l.header.len) {
            (Some(com::QUIT), _) => {
                self.quit = true;
                None
            }
            (Some(com::CHANGE_USER), _) => Some(Held::ChangeUser),
            (Some(com::QUERY), n) if n <= kill::MAX_KILL_QUERY => Some(Held::Kill),
            (Some(com::PROCESS_KILL), 5) => Some(Held::Kill),
            _ => None,
        }
    }

    fn hold(
        &mut self,
        what: Held,
        kept: &[u8],
        data: &[u8],
        total: usize,
        lookup: &dyn Fn(u32) -> Option<u32>,
    ) -> Step {
        if what == Held::ChangeUser && total - HEADER_LEN > self.max_change_user {
            return Step::Refuse(ScanError::ChangeUserTooLarge(total - HEADER_LEN));
        }
        let mut buf = Vec::with_capacity(total);
        buf.extend_from_slice(kept);
        let n = (total - kept.len()).min(data.len());
        buf.extend_from_slice(&data[..n]);
        if buf.len() == total {
            return match what {
                Held::ChangeUser => Step::ChangeUser { payload: buf[HEADER_LEN..].to_vec(), consumed: n },
                // Only reached for a kill that arrived split; decide now.
                Held::Kill => Step::Emit { bytes: rewrite_kill(&buf, lookup).unwrap_or(buf), consumed: n },
            };
        }
        self.state = State::Holding { buf, want: total, what };
        Step::Keep(n)
    }

    fn pass(&mut self, available: usize, total: usize) -> Step {
        if available >= total {
            Step::Pass(total)
        } else {
            self.state = State::Passing { left: total - available };
            Step::Pass(available)
        }
    }
}

fn boundary() -> State {
    State::Boundary { lead: [0; HEADER_LEN + 1], have: 0 }
}

/// A packet's header and, if it has a payload, its first byte.
#[derive(Debug, Clone, Copy)]
struct Lead {
    header: Header,
    command: Option<u8>,
}

impl Lead {
    /// `None` until the header and (for a non-empty payload) the command byte are present.
    fn read(b: &[u8]) -> Option<Self> {
        let hdr: [u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        let header = Header::parse(hdr);
        if header.len == 0 {
            return Some(Self { header, command: None });
        }
        Some(Self { header, command: Some(*b.get(HEADER_LEN)?) })
    }
}

/// The kill packet (header included) rewritten to the server's id, if it names one of ours.
fn rewrite_kill(packet: &[u8], lookup: &dyn Fn(u32) -> Option<u32>) -> Option<Vec<u8>> {
    let seq = *packet.get(3)?;
    let payload = kill::translate(packet.get(HEADER_LEN..)?, lookup)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    crate::protocol::write_packet(&mut out, seq, &payload);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::write_packet;

    const OURS: u32 = 2_147_483_649;

    fn lookup(id: u32) -> Option<u32> {
        (id == OURS).then_some(17)
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_packet(&mut out, seq, payload);
        out
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![com::QUERY];
        p.extend_from_slice(sql.as_bytes());
        packet(0, &p)
    }

    /// Feeds `stream` in chunks of `chunk` bytes; returns what would reach the server and any
    /// change-user payloads, in order.
    fn run(stream: &[u8], chunk: usize) -> (Vec<u8>, Vec<Vec<u8>>, Scanner) {
        let mut s = Scanner::new(1 << 16);
        let (mut out, mut paused) = (Vec::new(), Vec::new());
        for c in stream.chunks(chunk) {
            let mut pos = 0;
            while pos < c.len() {
                match s.step(&c[pos..], &lookup) {
                    Step::Pass(n) => {
                        out.extend_from_slice(&c[pos..pos + n]);
                        pos += n;
                    }
                    Step::Keep(n) => pos += n,
                    Step::Emit { bytes, consumed } => {
                        out.extend_from_slice(&bytes);
                        pos += consumed;
                    }
                    Step::ChangeUser { payload, consumed } => {
                        paused.push(payload);
                        pos += consumed;
                    }
                    Step::Refuse(e) => panic!("{e}"),
                }
            }
        }
        (out, paused, s)
    }

    #[test]
    fn ordinary_traffic_passes_byte_for_byte_at_every_chunk_size() {
        let mut stream = query("SELECT 1");
        stream.extend(packet(0, &[0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0])); // COM_STMT_EXECUTE
        stream.extend(query("KILL QUERY 5")); // a real id: unchanged
        stream.extend(packet(0, &[]));
        for chunk in 1..=stream.len() {
            let (out, paused, s) = run(&stream, chunk);
            assert_eq!(out, stream, "chunk {chunk}");
            assert!(paused.is_empty() && !s.quit);
        }
    }

    #[test]
    fn kill_of_our_id_is_translated_at_every_split() {
        let mut stream = query("SELECT 1");
        stream.extend(query(&format!("KILL QUERY {OURS}")));
        let mut pk = vec![com::PROCESS_KILL];
        pk.extend_from_slice(&OURS.to_le_bytes());
        stream.extend(packet(0, &pk));
        let mut want = query("SELECT 1");
        want.extend(query("KILL QUERY 17"));
        want.extend(packet(0, &[com::PROCESS_KILL, 17, 0, 0, 0]));
        for chunk in 1..=stream.len() {
            assert_eq!(run(&stream, chunk).0, want, "chunk {chunk}");
        }
    }

    #[test]
    fn change_user_pauses_with_its_payload() {
        let cu = [com::CHANGE_USER, b'b', 0, 0, 0, 8, 0];
        let mut stream = query("SELECT 1");
        stream.extend(packet(0, &cu));
        for chunk in 1..=stream.len() {
            let (out, paused, _) = run(&stream, chunk);
            assert_eq!(out, query("SELECT 1"), "chunk {chunk}");
            assert_eq!(paused, vec![cu.to_vec()], "chunk {chunk}");
        }
    }

    #[test]
    fn oversized_change_user_is_refused() {
        let mut s = Scanner::new(10);
        let p = packet(0, &[com::CHANGE_USER; 20]);
        assert_eq!(s.step(&p, &lookup), Step::Refuse(ScanError::ChangeUserTooLarge(20)));
    }

    #[test]
    fn quit_is_seen() {
        let (_, _, s) = run(&packet(0, &[com::QUIT]), 1);
        assert!(s.quit);
    }

    #[test]
    fn continuation_packets_are_not_commands() {
        // A 16 MiB - 1 payload continues: the next packet has seq 1, but even a seq-0 packet
        // after a LOAD DATA stream that wrapped is data, not a command.
        let big = vec![b'x'; MAX_PAYLOAD_LEN];
        let mut stream = packet(0, &big);
        stream.extend(packet(1, &[com::CHANGE_USER, 0, 0, 0]));
        let mut load = Vec::new();
        for seq in 2..=255u8 {
            load.extend(packet(seq, b"row\n"));
        }
        load.extend(packet(0, &[com::CHANGE_USER, 0, 0, 0])); // file data that looks like one
        load.extend(packet(1, &[]));
        stream.extend(&load);
        let (out, paused, _) = run(&stream, 16 * 1024);
        assert!(paused.is_empty());
        assert_eq!(out.len(), stream.len());
        assert!(out == stream);
    }
}
