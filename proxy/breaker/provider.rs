//! The providers: the I/O that asks whether the key is available.
//!
//! Each check is bounded in time and size, and none reads a secret into a message: a key
//! file's content is parsed for its ids and hashed, never quoted; a command's output is
//! truncated and long token-like runs are masked; an HTTP body is parsed, never logged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::AsyncReadExt;

use crate::config::{Expect, KeyFileFormat, ProviderConfig, ProviderKind};
use crate::https::error_chain;

/// MariaDB's `MAX_KEY_FILE_SIZE`: a larger key file does not load, so it does not pass.
pub const MAX_KEY_FILE: u64 = 1024 * 1024;
/// The most of a command's output, or of an HTTP body, that is read.
const MAX_OUTPUT: usize = 64 * 1024;
/// The most of a command's output that reaches a log line or `/status`.
const SHOWN_OUTPUT: usize = 200;

/// A provider that cannot be built from its config.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// The CA bundle.
    #[error("key_guard provider \"{name}\": ca {path}: {detail}")]
    Ca {
        /// The provider.
        name: String,
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The HTTP client.
    #[error("key_guard provider \"{name}\": cannot build its HTTP client: {detail}")]
    Client {
        /// The provider.
        name: String,
        /// What is wrong.
        detail: String,
    },
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `Ok` with what was seen, or why the key counts as unavailable.
    pub result: Result<String, String>,
    /// How long it took.
    pub took: Duration,
    /// For a key file: a digest of its content, to notice rotation (never shown).
    pub digest: Option<[u8; 32]>,
}

/// A provider ready to check.
#[derive(Debug)]
pub struct Provider {
    /// Its name.
    pub name: String,
    /// Its config.
    pub config: ProviderConfig,
    timeout: Duration,
    http: Option<reqwest::Client>,
}

impl Provider {
    /// Builds a provider; `timeout` is `[key_guard] timeout`, used unless it has its own.
    pub fn build(config: &ProviderConfig, timeout: Duration) -> Result<Self, ProviderError> {
        let timeout = config.timeout.unwrap_or(timeout);
        let http = match &config.kind {
            ProviderKind::Http { ca, .. } => Some(http_client(&config.name, ca.as_deref(), timeout)?),
            _ => None,
        };
        Ok(Self { name: config.name.clone(), config: config.clone(), timeout, http })
    }

    /// The kind's label.
    pub fn kind(&self) -> &'static str {
        self.config.kind.as_str()
    }

    /// Runs one check, bounded by the provider's timeout.
    pub async fn check(&self) -> Checked {
        let started = Instant::now();
        let run = async {
            match &self.config.kind {
                ProviderKind::File { path, format, key_ids, sha256 } => {
                    check_file(path, *format, key_ids, sha256.as_ref()).await
                }
                ProviderKind::Command { argv } => (check_command(argv, self.timeout).await, None),
                ProviderKind::Http { url, bearer_token_file, expect, .. } => {
                    let client = self.http.as_ref();
                    let r = match client {
                        Some(c) => check_http(c, url, bearer_token_file.as_deref(), expect.as_ref()).await,
                        None => Err("no HTTP client (this is a bug)".to_owned()),
                    };
                    (r, None)
                }
            }
        };
        // A command enforces its own deadline, so that it is killed before the check returns.
        let bound = match self.config.kind {
            ProviderKind::Command { .. } => self.timeout + Duration::from_millis(500),
            _ => self.timeout,
        };
        let (result, digest) = match tokio::time::timeout(bound, run).await {
            Ok(r) => r,
            Err(_) => (Err(format!("no answer within {:?}", self.timeout)), None),
        };
        Checked { result, took: started.elapsed(), digest }
    }
}

fn http_client(name: &str, ca: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    // The whole check is bounded by the provider's timeout around it, which names itself in
    // the cause; reqwest's own bound is only on connecting.
    crate::https::client(ca, timeout, "key_guard").map_err(|e| match e {
        crate::https::ClientError::Ca { path, detail } => ProviderError::Ca { name: name.to_owned(), path, detail },
        crate::https::ClientError::Build(detail) => ProviderError::Client { name: name.to_owned(), detail },
    })
}

async fn check_file(
    path: &Path,
    format: Option<KeyFileFormat>,
    key_ids: &[u32],
    pinned: Option<&[u8; 32]>,
) -> (Result<String, String>, Option<[u8; 32]>) {
    let shown = path.display();
    let content = match read_bounded(path).await {
        Ok(c) => zeroize::Zeroizing::new(c),
        Err(e) => return (Err(format!("{shown}: {e}")), None),
    };
    if content.is_empty() {
        return (Err(format!("{shown} is empty")), None);
    }
    let digest = sha256(&content);
    if let Some(pin) = pinned
        && pin != &digest
    {
        return (Err(format!("{shown}: its SHA-256 is not the pinned key_guard sha256 (was the key replaced?)")), None);
    }
    let detail = match format {
        None => format!("{shown}: readable, {} bytes", content.len()),
        Some(KeyFileFormat::MariadbFileKeyManagement) => match mariadb_key_ids(&content) {
            Ok(ids) => {
                if let Some(missing) = key_ids.iter().find(|id| !ids.contains(id)) {
                    return (Err(format!("{shown}: key id {missing} is not in the file")), Some(digest));
                }
                format!("{shown}: {} key(s), ids {}", ids.len(), list(&ids))
            }
            Err(e) => return (Err(format!("{shown}: {e}")), Some(digest)),
        },
    };
    (Ok(detail), Some(digest))
}

async fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    // Looked at before it is opened: opening a FIFO put in the key's place would block a
    // thread until a writer came, beyond the reach of the check's timeout.
    let meta = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
    if meta.len() > MAX_KEY_FILE {
        return Err(format!("{} bytes, more than the 1 MiB that MariaDB loads", meta.len()));
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The bound holds even if the file grows while it is read.
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut content).await.map_err(|e| e.to_string())?;
    if content.len() as u64 > MAX_KEY_FILE {
        return Err("more than the 1 MiB that MariaDB loads".into());
    }
    Ok(content)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn list(ids: &BTreeSet<u32>) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(u32::to_string).collect();
    if ids.len() > 10 { format!("{}, ...", shown.join(", ")) } else { shown.join(", ") }
}

/// The key ids of a MariaDB `file_key_management` file, parsed as its plugin does
/// (`plugin/file_key_management/parser.cc`): leading blanks, `#` comments, `id;hex` with an id
/// from 1 to 2³²−1 and a 16-, 24- or 32-byte key, the rest of the line ignored, key id 1
/// required. Errors name the line, never its content.
pub fn mariadb_key_ids(content: &[u8]) -> Result<BTreeSet<u32>, String> {
    if content.len() > 8 && content.starts_with(b"Salted__") {
        return Err("the key file is encrypted (openssl enc); flexgate cannot read its key ids. Drop `format` and \
                    `key_ids`, or pin its `sha256`"
            .into());
    }
    let mut ids = BTreeSet::new();
    for (n, line) in content.split(|&b| b == b'\n').enumerate() {
        let line_no = n + 1;
        let at = |what: &str| format!("line {line_no}: {what}");
        let rest = line.trim_ascii_start();
        if rest.is_empty() || rest[0] == b'#' {
            continue;
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(at("syntax error (expected a key id)"));
        }
        let id: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&id| (1..=u64::from(u32::MAX)).contains(&id))
            .ok_or_else(|| at("invalid key id"))?;
        if rest.get(digits) != Some(&b';') {
            return Err(at("syntax error (expected ';' after the key id)"));
        }
        let hex = &rest[digits + 1..];
        let pairs = hex.iter().take(64).take_while(|b| b.is_ascii_hexdigit()).count() / 2;
        let next_is_hex = hex.get(pairs * 2).is_some_and(u8::is_ascii_hexdigit);
        if next_is_hex || ![16, 24, 32].contains(&pairs) {
            return Err(at("invalid key (it must be 32, 48 or 64 hex digits)"));
        }
        ids.insert(u32::try_from(id).map_err(|_| at("invalid key id"))?);
    }
    if !ids.contains(&1) {
        return Err("system key id 1 is missing (MariaDB refuses such a file)".into());
    }
    Ok(ids)
}

/// Runs the program on a blocking thread with std's process API, not tokio's: tokio's
/// process support reaps orphans at every park of the I/O driver, a cost every relayed
/// packet would pay (about 130 instructions a query, measured with callgrind).
async fn check_command(argv: &[String], timeout: Duration) -> Result<String, String> {
    let argv = argv.to_vec();
    tokio::task::spawn_blocking(move || run_command(&argv, timeout))
        .await
        .map_err(|e| format!("the check ended unexpectedly ({e})"))?
}

fn run_command(argv: &[String], timeout: Duration) -> Result<String, String> {
    use std::io::Read;
    let Some((program, args)) = argv.split_first() else {
        return Err("no program".into());
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // Each pipe is read on its own thread, bounded, then drained, so that a chatty program
    // never blocks on a full pipe. A reader ends when the pipe closes.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.by_ref().take(MAX_OUTPUT as u64).read_to_end(&mut kept);
                let _ = std::io::copy(&mut p, &mut std::io::sink());
            }
            kept
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    // A program that left a child holding its pipes still ends here: the readers are not
    // waited for past the deadline.
    let collect = |h: std::thread::JoinHandle<Vec<u8>>| {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if h.is_finished() { h.join().unwrap_or_default() } else { Vec::new() }
    };
    let mut text = collect(out);
    let stderr = collect(err);
    if !stderr.is_empty() {
        text.extend_from_slice(b" | ");
        text.extend_from_slice(&stderr);
    }
    let shown = shown_output(&text);
    match status.code() {
        Some(0) => Ok(if shown.is_empty() { "exit 0".into() } else { format!("exit 0: {shown}") }),
        Some(code) => Err(format!("{program} exited with {code}: {shown}")),
        None => Err(format!("{program} was killed by a signal: {shown}")),
    }
}

/// A command's output as it may be shown: one line, at most [`SHOWN_OUTPUT`] characters, and
/// every run of 24 or more token-like characters (base64, hex, JWT) masked, so that a program
/// that prints its key or token does not put it in flexgate's log.
pub fn shown_output(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut run = String::new();
    let token_like = |c: char| c.is_ascii_alphanumeric() || "+/=_-.".contains(c);
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 24 {
            out.push_str("[masked]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.trim().chars() {
        if token_like(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut run, &mut out);
    if out.chars().count() > SHOWN_OUTPUT {
        out = out.chars().take(SHOWN_OUTPUT).collect::<String>() + "…";
    }
    out
}

async fn check_http(
    client: &reqwest::Client,
    url: &str,
    token_file: Option<&Path>,
    expect: Option<&Expect>,
) -> Result<String, String> {
    let mut req = client.get(url).header(reqwest::header::ACCEPT, "application/json");
    if let Some(path) = token_file {
        let token = crate::config::read_token(path)?;
        req = req.bearer_auth(token.as_str());
    }
    // reqwest's errors name the URL, which is configuration, not a secret.
    let resp = req.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let Some(expect) = expect else {
        return Ok(format!("HTTP {status}"));
    };
    let body = crate::https::body(resp, MAX_OUTPUT).await?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("HTTP {status}: the body is not JSON ({e})"))?;
    match json.pointer(&expect.pointer) {
        Some(v) if *v == expect.equals.0 => Ok(format!("HTTP {status}, {} = {v}", expect.pointer)),
        Some(v) => Err(format!("HTTP {status}, {} = {v}, expected {}", expect.pointer, expect.equals.0)),
        None => Err(format!("HTTP {status}, {} is absent", expect.pointer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    const KEY32: &str = "a7addd9adea9978fda19f21e6be987880e68ac92632ca052e5bb42b1a506939a";

    #[test]
    fn parses_a_mariadb_key_file_like_the_plugin() {
        let file = format!("# keys\n\n1;{KEY32}\n  2;{}\n100;{} trailing words\n", &KEY32[..32], &KEY32[..48]);
        let ids = mariadb_key_ids(file.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![1, 2, 100]);
    }

    #[test]
    fn refuses_what_the_plugin_refuses_without_quoting_the_key() {
        let cases = [
            (format!("2;{KEY32}\n"), "key id 1 is missing"),
            (format!("0;{KEY32}\n"), "line 1: invalid key id"),
            (format!("4294967296;{KEY32}\n"), "invalid key id"),
            (format!("1{KEY32}\n"), "expected ';'"),
            (format!("x;{KEY32}\n"), "expected a key id"),
            ("1;abcd\n".to_owned(), "invalid key"),
            (format!("1;{KEY32}ab\n"), "invalid key"),
            (format!("1;{KEY32}\n2;{}\n", &KEY32[..40]), "line 2: invalid key"),
            ("".to_owned(), "key id 1 is missing"),
        ];
        for (file, want) in cases {
            let err = mariadb_key_ids(file.as_bytes()).err().unwrap_or_else(|| panic!("accepted {file:?}"));
            assert!(err.contains(want), "{file:?}: {err}");
            assert!(!err.contains(&KEY32[..16]), "the key leaked into {err}");
        }
    }

    #[test]
    fn an_encrypted_key_file_says_what_to_do() {
        let err = mariadb_key_ids(b"Salted__12345678garbage").err().unwrap_or_default();
        assert!(err.contains("encrypted") && err.contains("sha256"), "{err}");
    }

    #[test]
    fn output_is_one_short_line_with_tokens_masked() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let shown = shown_output(format!("key ok\ntoken={jwt}\n{KEY32}").as_bytes());
        assert!(!shown.contains(&jwt[..20]) && !shown.contains(&KEY32[..20]), "{shown}");
        assert_eq!(shown, "key ok [masked] [masked]");
        assert!(!shown.contains('\n'));
        let long = shown_output("ab ".repeat(500).as_bytes());
        assert!(long.chars().count() <= SHOWN_OUTPUT + 1, "{}", long.len());
    }

    #[tokio::test]
    async fn file_checks_exist_nonempty_parse_and_pin() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys");
        let (r, _) = check_file(&path, None, &[], None).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("No such file")), "{r:?}");
        std::fs::write(&path, "").unwrap_or_else(|e| panic!("{e}"));
        let (r, _) = check_file(&path, None, &[], None).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("empty")), "{r:?}");
        std::fs::write(&path, format!("1;{KEY32}\n2;{KEY32}\n")).unwrap_or_else(|e| panic!("{e}"));
        let fmt = Some(KeyFileFormat::MariadbFileKeyManagement);
        let (r, digest) = check_file(&path, fmt, &[1, 2], None).await;
        assert!(r.as_ref().is_ok_and(|d| d.contains("ids 1, 2")), "{r:?}");
        let digest = digest.unwrap_or_else(|| panic!("no digest"));
        let (r, _) = check_file(&path, fmt, &[3], None).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("key id 3")), "{r:?}");
        let (r, _) = check_file(&path, None, &[], Some(&digest)).await;
        assert!(r.is_ok(), "{r:?}");
        let (r, _) = check_file(&path, None, &[], Some(&[0; 32])).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("pinned")), "{r:?}");
    }

    #[tokio::test]
    async fn commands_run_without_a_shell_and_report_their_status() {
        let ok = check_command(&["true".into()], T).await;
        assert_eq!(ok, Ok("exit 0".into()));
        let failed = check_command(&["sh".into(), "-c".into(), "echo vault sealed >&2; exit 3".into()], T).await;
        assert!(
            failed.as_ref().is_err_and(|e| e.contains("exited with 3") && e.contains("vault sealed")),
            "{failed:?}"
        );
        // No shell: the metacharacters are one argument to echo.
        let literal = check_command(&["echo".into(), "a;b$(id)".into()], T).await;
        assert_eq!(literal, Ok("exit 0: a;b$(id)".into()));
        let missing = check_command(&["/nonexistent/check-key".into()], T).await;
        assert!(missing.is_err_and(|e| e.contains("cannot run")));
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_at_the_timeout() {
        let config = ProviderConfig {
            name: "slow".into(),
            timeout: Some(Duration::from_millis(200)),
            kind: ProviderKind::Command { argv: vec!["sleep".into(), "30".into()] },
        };
        let p = Provider::build(&config, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let c = p.check().await;
        assert!(c.result.as_ref().is_err_and(|e| e.contains("no answer within")), "{c:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The program was killed, not left behind.
        let o = std::process::Command::new("pgrep").args(["-f", "^sleep 30$"]).output();
        assert!(o.is_ok_and(|o| o.stdout.is_empty()), "sleep 30 still runs");
    }

    #[tokio::test]
    async fn a_chatty_command_does_not_block_on_its_pipe() {
        let c = check_command(&["sh".into(), "-c".into(), "head -c 1000000 /dev/zero | tr '\\0' x; exit 0".into()], T)
            .await;
        assert!(c.as_ref().is_ok_and(|d| d.starts_with("exit 0: [masked]")), "{c:?}");
    }
}
