//! The HTTPS client that flexgate's outbound checks share: the key breaker's `http` provider,
//! the Entra key set and Microsoft Graph.
//!
//! Each asks one service a question, so the client refuses redirects (an answer comes from
//! where it was asked) and plain HTTP, and a CA file, when given, replaces the system roots.

use std::path::Path;
use std::time::Duration;

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The CA bundle could not be used.
    #[error("{}: {detail}", path.display())]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// reqwest refused the settings.
    #[error("{0}")]
    Build(String),
}

/// A client for `purpose` (its user agent), trusting `ca` instead of the system roots if set.
pub fn client(ca: Option<&Path>, connect_timeout: Duration, purpose: &str) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .user_agent(format!("flexgate/{} {purpose}", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca {
        let err = |detail: String| ClientError::Ca { path: path.to_path_buf(), detail };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in the file".into()));
        }
        b = b.tls_certs_only(certs);
    }
    b.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// A successful answer's body, at most `max` bytes.
pub async fn body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("HTTP {status}: the body is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes: reqwest's top level alone ("error sending request") hides
/// whether it was DNS, TLS or a timeout.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
