//! `KILL` statements and `COM_PROCESS_KILL`, rewritten to name the server's thread id.
//!
//! Pure: a payload and a lookup in, the payload to forward out. Only the forms that name a
//! connection id are touched: `KILL [HARD|SOFT] [CONNECTION|QUERY] <id>`. MariaDB's
//! `KILL QUERY ID <query id>` and `KILL USER <name>` name something else and pass unchanged,
//! as does every id the lookup does not know.

use crate::protocol::{com, process_kill_id};

/// The longest `COM_QUERY` payload that can be a connection-id `KILL`:
/// `KILL HARD CONNECTION 4294967295;` with generous room for whitespace.
pub(crate) const MAX_KILL_QUERY: usize = 96;

/// Where the id sits in a `KILL` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdSpan {
    start: usize,
    end: usize,
    id: u32,
}

/// The rewritten payload, if `payload` is a kill of an id that `lookup` translates.
pub(crate) fn translate(payload: &[u8], lookup: impl Fn(u32) -> Option<u32>) -> Option<Vec<u8>> {
    match payload.first() {
        Some(&com::PROCESS_KILL) => {
            let server = lookup(process_kill_id(payload).ok()?)?;
            let mut out = vec![com::PROCESS_KILL];
            out.extend_from_slice(&server.to_le_bytes());
            Some(out)
        }
        Some(&com::QUERY) => {
            let span = kill_statement(&payload[1..])?;
            let server = lookup(span.id)?;
            let (start, end) = (span.start + 1, span.end + 1);
            let mut out = Vec::with_capacity(payload.len() + 10);
            out.extend_from_slice(&payload[..start]);
            out.extend_from_slice(server.to_string().as_bytes());
            out.extend_from_slice(&payload[end..]);
            Some(out)
        }
        _ => None,
    }
}

/// Parses `KILL [HARD|SOFT] [CONNECTION|QUERY] <digits> [;]`, case-insensitively, with any
/// whitespace between words.
fn kill_statement(sql: &[u8]) -> Option<IdSpan> {
    let mut w = Words { sql, pos: 0 };
    if !w.next_word()?.eq_ignore_ascii_case(b"KILL") {
        return None;
    }
    let mut word = w.next_word()?;
    if word.eq_ignore_ascii_case(b"HARD") || word.eq_ignore_ascii_case(b"SOFT") {
        word = w.next_word()?;
    }
    if word.eq_ignore_ascii_case(b"CONNECTION") || word.eq_ignore_ascii_case(b"QUERY") {
        word = w.next_word()?;
    }
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return None; // `QUERY ID`, `USER`, an expression: not a connection id
    }
    let end = w.pos;
    let start = end - word.len();
    let id = std::str::from_utf8(word).ok()?.parse::<u32>().ok()?;
    // Nothing may follow but whitespace and one optional semicolon.
    let rest = &sql[end..];
    let rest = rest.trim_ascii();
    if !(rest.is_empty() || rest == b";") {
        return None;
    }
    Some(IdSpan { start, end, id })
}

struct Words<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Words<'a> {
    /// The next run of non-whitespace bytes, stopping before a semicolon.
    fn next_word(&mut self) -> Option<&'a [u8]> {
        while self.sql.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        while self.sql.get(self.pos).is_some_and(|b| !b.is_ascii_whitespace() && *b != b';') {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.sql[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(id: u32) -> Option<u32> {
        (id == 2_147_483_649).then_some(17)
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![com::QUERY];
        p.extend_from_slice(sql.as_bytes());
        p
    }

    #[test]
    fn translates_every_connection_id_form() {
        for (sql, want) in [
            ("KILL QUERY 2147483649", "KILL QUERY 17"),
            ("kill 2147483649", "kill 17"),
            ("KILL CONNECTION 2147483649;", "KILL CONNECTION 17;"),
            ("  KILL HARD QUERY\t2147483649 ", "  KILL HARD QUERY\t17 "),
            ("KILL SOFT 2147483649", "KILL SOFT 17"),
        ] {
            assert_eq!(translate(&query(sql), lookup), Some(query(want)), "{sql}");
        }
    }

    #[test]
    fn leaves_everything_else_alone() {
        for sql in [
            "KILL QUERY 17",            // a real thread id
            "KILL QUERY 2147483650",    // an unknown synthetic id
            "KILL QUERY ID 2147483649", // a query id
            "KILL USER bob",            // a user
            "KILL 2147483649 + 1",      // an expression
            "SELECT 'KILL 2147483649'", // not a kill
            "KILL",
            "KILL QUERY 99999999999", // beyond u32
            "KILLQUERY 2147483649",
        ] {
            assert_eq!(translate(&query(sql), lookup), None, "{sql}");
        }
        assert_eq!(translate(&[com::QUIT], lookup), None);
        assert_eq!(translate(&[], lookup), None);
    }

    #[test]
    fn translates_process_kill() {
        let p = [com::PROCESS_KILL, 0x01, 0x00, 0x00, 0x80];
        assert_eq!(translate(&p, lookup), Some(vec![com::PROCESS_KILL, 17, 0, 0, 0]));
        assert_eq!(translate(&[com::PROCESS_KILL, 17, 0, 0, 0], lookup), None);
        assert_eq!(translate(&[com::PROCESS_KILL, 1], lookup), None);
    }

    #[test]
    fn the_longest_kill_fits_the_bound() {
        assert!(query("KILL HARD CONNECTION 4294967295;").len() <= MAX_KILL_QUERY);
    }
}
