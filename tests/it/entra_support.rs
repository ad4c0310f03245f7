//! Stand-ins for Microsoft Entra ID and for a MySQL 8 server, for the Entra login tests.
//!
//! No test may reach Microsoft, and Debian ships no MySQL 8, so each outside party is played
//! locally and records what it was sent:
//!
//! - [`Signer`] mints RS256 access tokens with a key made at test time (never committed), and
//!   [`forge_none`], [`forge_hs256`] and [`tamper`] make the classic forgeries of one;
//!   [`entra_claims`] and [`app_claims`] give realistic v1/v2 payloads (anchors-identity §2).
//! - [`JwksServer`] serves the signing keys over HTTPS (a certificate from the harness's test CA)
//!   as `login.microsoftonline.com/{tid}/discovery/v2.0/keys` does, and can fail on demand.
//! - [`GraphStandIn`] is the identity platform's client-credentials token endpoint plus Microsoft
//!   Graph's `checkMemberGroups`, on one origin, with JWKS too (so one `authority` serves all).
//! - [`Mysql8Peer`] is a scripted MySQL 8.0 that checks `caching_sha2_password` logins made with
//!   a held password (fast scramble, or full authentication by RSA or, over TLS, cleartext),
//!   then answers a minimal command phase. Formulas: anchors-identity §5.3.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use flexgate::protocol::{Capabilities, ChangeUser, Greeting, HandshakeResponse, MariaDbCapabilities};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::harness::Certs;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seconds since the epoch, as JWT times are written.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).unwrap_or_else(|e| panic!("rand: {e}"));
    b
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PEM block with the usual 64-column body.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// An RS256 token signer: an RSA-2048 key generated when the test runs, named by `kid` the way
/// Entra names its signing keys in the JWKS and in each token's header.
pub struct Signer {
    kid: String,
    key: aws_lc_rs::rsa::KeyPair,
    /// A self-signed certificate for the key: Microsoft's JWKS entries carry one as `x5c`.
    cert_der: Vec<u8>,
}

impl Signer {
    /// A fresh key. Generating RSA-2048 takes some tens of milliseconds; make one per test.
    pub fn new(kid: &str) -> Self {
        let key =
            aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("RSA key generation: {e}"));
        let pkcs8 = key.as_der().unwrap_or_else(|e| panic!("pkcs8: {e}"));
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(pkcs8.as_ref().to_vec().into());
        let rc = rcgen::KeyPair::from_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
            .unwrap_or_else(|e| panic!("rcgen key: {e}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(rcgen::DnType::CommonName, "accounts.accesscontrol.windows.net");
        let cert = params.self_signed(&rc).unwrap_or_else(|e| panic!("self-signed: {e}"));
        Self { kid: kid.to_owned(), key, cert_der: cert.der().to_vec() }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWKS entry in Microsoft's shape: base64url `n` and `e`, plus `x5t`
    /// (SHA-1 of the certificate), `x5c` (standard base64 DER) and the templated `issuer`.
    pub fn jwk(&self) -> Value {
        let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(self.key.public_key());
        let x5t = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.cert_der);
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": b64url(x5t.as_ref()),
            "n": b64url(&parts.n),
            "e": b64url(&parts.e),
            "x5c": [STANDARD.encode(&self.cert_der)],
            "alg": "RS256",
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
        })
    }

    /// An RS256 JWT of `claims`, with the header Entra writes (`typ`, `alg`, `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"typ": "JWT", "alg": "RS256", "kid": self.kid}), claims)
    }

    /// An RS256 signature over any header: for tests of a missing or wrong `kid`, or an `alg`
    /// that disagrees with the key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap_or_else(|e| panic!("sign: {e}"));
        format!("{input}.{}", b64url(&sig))
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        let spki = self.key.public_key().as_der().unwrap_or_else(|e| panic!("spki: {e}"));
        pem("PUBLIC KEY", spki.as_ref())
    }
}

/// `alg: none` with an empty signature: accepted by a verifier that trusts the header's `alg`.
pub fn forge_none(claims: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "none"});
    format!("{}.{}.", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
}

/// HS256 keyed with the bytes of `signer`'s public PEM, under `signer`'s `kid`: accepted by a
/// verifier that looks the key up by `kid` and then uses it as whatever the header's `alg` says
/// (key confusion).
pub fn forge_hs256(signer: &Signer, claims: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "HS256", "kid": signer.kid()});
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, signer.public_pem().as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// `token` with its payload replaced by `claims`, header and signature kept: a signature check
/// must refuse it.
pub fn tamper(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    let _payload = parts.next();
    let sig = parts.next().unwrap_or_default();
    format!("{header}.{}.{sig}", b64url(claims.to_string().as_bytes()))
}

/// A user's access token payload, as Entra issues it for a resource: v1 (`version` 1: the
/// `sts.windows.net` issuer, `appid`, `upn`, `unique_name`) or v2 (`login.microsoftonline.com/
/// {tid}/v2.0`, `azp`, `preferred_username`). `exp` and `nbf` are `now + exp_in` and
/// `now + nbf_in` seconds. The client application is the Azure CLI's, as in `az account
/// get-access-token`. `sub` is pairwise in real tokens; here it merely differs from `oid`.
pub fn entra_claims(tenant: &str, oid: &str, aud: &str, version: u8, exp_in: i64, nbf_in: i64) -> Value {
    let t = now();
    let short = oid.split('-').next().unwrap_or(oid);
    let upn = format!("user-{short}@contoso.onmicrosoft.com");
    let mut c = json!({
        "aud": aud,
        "tid": tenant,
        "oid": oid,
        "sub": format!("sub-{oid}"),
        "iat": t,
        "nbf": t + nbf_in,
        "exp": t + exp_in,
        "scp": "user_impersonation",
        "idtyp": "user",
        "name": format!("Test User {short}"),
        "aio": b64url(&random_bytes(24)),
        "uti": b64url(&random_bytes(16)),
        "rh": "0.AAAA-test.",
    });
    if version == 1 {
        c["iss"] = json!(format!("https://sts.windows.net/{tenant}/"));
        c["ver"] = json!("1.0");
        c["appid"] = json!(AZURE_CLI);
        c["appidacr"] = json!("0");
        c["upn"] = json!(upn);
        c["unique_name"] = json!(upn);
        c["amr"] = json!(["pwd", "mfa"]);
        c["acr"] = json!("1");
    } else {
        c["iss"] = json!(format!("https://login.microsoftonline.com/{tenant}/v2.0"));
        c["ver"] = json!("2.0");
        c["azp"] = json!(AZURE_CLI);
        c["azpacr"] = json!("0");
        c["preferred_username"] = json!(upn);
    }
    c
}

/// The Azure CLI's application id, the `appid`/`azp` of a user's `az account get-access-token`.
pub const AZURE_CLI: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

/// A service principal's or managed identity's app-only token (v1, as managed identities get
/// for Azure resources): `idtyp = "app"`, `appid` and `azp` both `app_id` (so code reading
/// either finds it), `oid` and `sub` the principal's object id, `roles`, no `scp`. Valid for
/// an hour from now.
pub fn app_claims(tenant: &str, app_id: &str, sp_oid: &str, aud: &str) -> Value {
    let t = now();
    json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "idp": format!("https://sts.windows.net/{tenant}/"),
        "ver": "1.0",
        "tid": tenant,
        "oid": sp_oid,
        "sub": sp_oid,
        "appid": app_id,
        "azp": app_id,
        "appidacr": "2",
        "idtyp": "app",
        "roles": ["Database.Access"],
        "iat": t,
        "nbf": t,
        "exp": t + 3600,
        "aio": b64url(&random_bytes(24)),
        "uti": b64url(&random_bytes(16)),
        "rh": "0.AAAA-test.",
    })
}

/// `claims` with a `groups` claim (object ids), as when the resource sets
/// `groupMembershipClaims`.
pub fn with_groups(mut claims: Value, groups: &[&str]) -> Value {
    claims["groups"] = json!(groups);
    claims
}

/// `claims` in the overage form (more than 200 groups): no `groups`, and `_claim_names` /
/// `_claim_sources` pointing at the legacy AAD Graph, which a consumer must not call.
pub fn with_group_overage(mut claims: Value) -> Value {
    if let Some(obj) = claims.as_object_mut() {
        obj.remove("groups");
    }
    let tid = claims["tid"].as_str().unwrap_or_default().to_owned();
    let oid = claims["oid"].as_str().unwrap_or_default().to_owned();
    claims["_claim_names"] = json!({"groups": "src1"});
    claims["_claim_sources"] =
        json!({"src1": {"endpoint": format!("https://graph.windows.net/{tid}/users/{oid}/getMemberObjects")}});
    claims
}

// ---------------------------------------------------------------------------------------------
// HTTPS stand-ins
// ---------------------------------------------------------------------------------------------

/// One HTTP request as a stand-in received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query, as sent.
    pub path: String,
    /// Every header, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length or chunked), as text.
    pub body: String,
}

impl GraphRequest {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as `application/x-www-form-urlencoded` pairs, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_form(&self.body)
    }

    /// The form field `name`, decoded.
    pub fn form_field(&self, name: &str) -> Option<String> {
        self.form().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The body as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a stand-in answers: status and JSON body.
type Answer = (u16, String);

/// Largest request head a stand-in reads; a real client's is well under a KiB.
const MAX_HEAD: usize = 64 * 1024;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

/// Reads one HTTP/1.1 request: the head up to the blank line, then exactly the body its
/// `content-length` announces (or its chunks), since a POST's body can arrive in a later read.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Option<GraphRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().ok()?;
        while rest.len() < len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(s, rest).await?
    } else {
        Vec::new()
    };
    Some(GraphRequest { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A chunked body, `have` being what followed the head in the first reads.
async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, mut have: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Enough bytes for the size line?
        let line_end = loop {
            if let Some(at) = have.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => have.extend_from_slice(&chunk[..n]),
            }
        };
        let size_text = String::from_utf8_lossy(&have[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16).ok()?;
        let need = line_end + 2 + size + 2;
        while have.len() < need {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => have.extend_from_slice(&chunk[..n]),
            }
        }
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&have[line_end + 2..line_end + 2 + size]);
        have.drain(..need);
    }
}

/// A rustls server config with the harness's leaf certificate and key.
fn tls_config(certs: &Certs) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
        .unwrap_or_else(|e| panic!("{e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap_or_else(|e| panic!("{e}"));
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("{e}"))
}

type Handler = Arc<dyn Fn(&GraphRequest) -> Answer + Send + Sync>;

/// A rustls HTTPS server on 127.0.0.1 with the harness's leaf certificate (valid for
/// `localhost`, `db.internal` and 127.0.0.1; clients trust `certs.ca`). One request per
/// connection, answered with `connection: close`, so a pooling client never races a reuse
/// against our close. Returns the port and the accept loop's task.
async fn serve_https(certs: &Certs, handler: Handler) -> (u16, tokio::task::JoinHandle<()>) {
    let mut config = tls_config(certs);
    // reqwest offers h2 and http/1.1 by ALPN; we only speak the latter.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                    return;
                };
                let Ok(Some(req)) = tokio::time::timeout(Duration::from_secs(10), read_request(&mut tls)).await else {
                    return;
                };
                let (status, body) = handler(&req);
                let resp = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\
                     cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
                    reason(status),
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, task)
}

/// What the JWKS routes serve.
#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Value>>,
    failing: AtomicBool,
    hits: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

/// Graph and token-endpoint state.
struct GraphState {
    tenant: String,
    client_id: String,
    client_secret: String,
    /// Access tokens issued and still honoured.
    tokens: Mutex<BTreeSet<String>>,
    expires_in: AtomicU32,
    /// Group id -> member object ids.
    members: Mutex<BTreeMap<String, BTreeSet<String>>>,
    requests: Mutex<Vec<GraphRequest>>,
    failing: AtomicBool,
}

/// Everything one stand-in origin can answer; graph routes exist once a [`GraphStandIn`] is
/// started on it.
#[derive(Default)]
struct Origin {
    port: OnceLock<u16>,
    jwks: JwksState,
    graph: OnceLock<GraphState>,
}

impl Origin {
    fn base(&self) -> String {
        format!("https://localhost:{}", self.port.get().copied().unwrap_or(0))
    }

    fn answer(&self, req: &GraphRequest) -> Answer {
        if req.method == "GET" {
            return self.answer_get(req);
        }
        match self.graph.get() {
            Some(g) if req.method == "POST" => g.answer(req),
            _ => (404, json!({"error": "not_found"}).to_string()),
        }
    }

    /// JWKS for any path, except OpenID discovery documents, which point back at this origin.
    fn answer_get(&self, req: &GraphRequest) -> Answer {
        let j = &self.jwks;
        j.hits.fetch_add(1, Ordering::SeqCst);
        lock(&j.paths).push(req.path.clone());
        if j.failing.load(Ordering::SeqCst) {
            return (503, json!({"error": "temporarily_unavailable"}).to_string());
        }
        let path = req.path.split('?').next().unwrap_or_default();
        if let Some(prefix) = path.strip_suffix("/.well-known/openid-configuration") {
            let (tenant, v2) = match prefix.trim_start_matches('/').split_once('/') {
                Some((t, "v2.0")) => (t.to_owned(), true),
                _ => (prefix.trim_start_matches('/').to_owned(), false),
            };
            let (issuer, keys) = if v2 {
                (format!("https://login.microsoftonline.com/{tenant}/v2.0"), format!("{tenant}/discovery/v2.0/keys"))
            } else {
                (format!("https://sts.windows.net/{tenant}/"), format!("{tenant}/discovery/keys"))
            };
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{}/{keys}", self.base()),
                "token_endpoint": format!("{}/{tenant}/oauth2/v2.0/token", self.base()),
                "id_token_signing_alg_values_supported": ["RS256"],
            });
            return (200, doc.to_string());
        }
        (200, json!({"keys": lock(&j.keys).clone()}).to_string())
    }
}

async fn start_origin(certs: &Certs) -> (Arc<Origin>, tokio::task::JoinHandle<()>) {
    let origin = Arc::new(Origin::default());
    let o = origin.clone();
    let (port, task) = serve_https(certs, Arc::new(move |r| o.answer(r))).await;
    let _ = origin.port.set(port);
    (origin, task)
}

/// A local HTTPS JWKS endpoint: `GET` of any path answers `{"keys": [...]}` (the keys set last),
/// except `.../.well-known/openid-configuration`, which answers a discovery document whose
/// `jwks_uri` points here. Stops when dropped.
pub struct JwksServer {
    origin: Arc<Origin>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Starts on a free port with no keys; `certs` is the harness's (clients trust `certs.ca`).
    pub async fn start(certs: &Certs) -> Self {
        let (origin, task) = start_origin(certs).await;
        Self { origin, task }
    }

    /// Replaces the served keys (takes effect for the next request): rotation, or removal.
    pub fn set_keys(&self, keys: Vec<Value>) {
        *lock(&self.origin.jwks.keys) = keys;
    }

    /// GET requests served so far, failed ones included.
    pub fn hits(&self) -> usize {
        self.origin.jwks.hits.load(Ordering::SeqCst)
    }

    /// The paths (with query) of those requests, in order.
    pub fn paths(&self) -> Vec<String> {
        lock(&self.origin.jwks.paths).clone()
    }

    /// `https://localhost:{port}/{tenant}/discovery/v2.0/keys`: `localhost` because the
    /// harness's certificate names it (and 127.0.0.1) and reqwest checks the name.
    pub fn url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/discovery/v2.0/keys", self.origin.base())
    }

    /// `https://localhost:{port}`: the origin, to stand in for `https://login.microsoftonline.com`.
    pub fn authority(&self) -> String {
        self.origin.base()
    }

    pub fn port(&self) -> u16 {
        self.origin.port.get().copied().unwrap_or(0)
    }

    /// While `yes`, every GET answers 503 (an outage of the key endpoint).
    pub fn fail(&self, yes: bool) {
        self.origin.jwks.failing.store(yes, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The identity platform's token endpoint and Microsoft Graph's `checkMemberGroups`, on one
/// HTTPS origin that also serves JWKS ([`GraphStandIn::jwks`]), so one authority override can
/// point flexgate at all three:
///
/// - `POST /{tenant}/oauth2/v2.0/token`, form `grant_type=client_credentials`, `client_id`,
///   `client_secret`, `scope=https://graph.microsoft.com/.default` -> a fresh random bearer
///   token. A wrong secret is 401 `invalid_client`; a wrong tenant, client id, grant or scope
///   is 400, with Entra's error codes.
/// - `POST /v1.0/directoryObjects/{oid}/checkMemberGroups` (also `/users/` and
///   `/servicePrincipals/`) with `Authorization: Bearer <issued token>` and
///   `{"groupIds": [...]}` -> `{"value": [the ids `oid` is a member of]}`; a bad bearer is
///   401, more than 20 ids 400, as Graph does.
pub struct GraphStandIn {
    server: JwksServer,
}

impl GraphStandIn {
    /// Starts on a free port, for one tenant and one confidential client.
    pub async fn start(certs: &Certs, tenant: &str, client_id: &str, client_secret: &str) -> Self {
        let server = JwksServer::start(certs).await;
        let _ = server.origin.graph.set(GraphState {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            tokens: Mutex::new(BTreeSet::new()),
            expires_in: AtomicU32::new(3599),
            members: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(Vec::new()),
            failing: AtomicBool::new(false),
        });
        Self { server }
    }

    fn state(&self) -> &GraphState {
        self.server.origin.graph.get().unwrap_or_else(|| panic!("graph routes not set up"))
    }

    /// `https://localhost:PORT`, for flexgate's `authority` override.
    pub fn authority(&self) -> String {
        self.server.authority()
    }

    /// `https://localhost:PORT` too, for flexgate's Graph `endpoint` override.
    pub fn graph_endpoint(&self) -> String {
        self.server.authority()
    }

    /// The JWKS routes of this same origin.
    pub fn jwks(&self) -> &JwksServer {
        &self.server
    }

    /// Makes `oids` the members of `group` (replacing earlier ones; transitive membership is
    /// the test's to flatten, as Graph does).
    pub fn set_members(&self, group: &str, oids: &[&str]) {
        let set = oids.iter().map(|s| (*s).to_owned()).collect();
        lock(&self.state().members).insert(group.to_owned(), set);
    }

    /// Every POST received (token and Graph), in order.
    pub fn requests(&self) -> Vec<GraphRequest> {
        lock(&self.state().requests).clone()
    }

    /// Access tokens issued so far and still honoured.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state().tokens).iter().cloned().collect()
    }

    /// Forgets every issued token: Graph then answers 401 until a new one is fetched.
    pub fn revoke_tokens(&self) {
        lock(&self.state().tokens).clear();
    }

    /// The `expires_in` of tokens issued from now on (default 3599).
    pub fn set_expires_in(&self, secs: u32) {
        self.state().expires_in.store(secs, Ordering::SeqCst);
    }

    /// While `yes`, the token endpoint and Graph answer 503 (JWKS is [`JwksServer::fail`]).
    pub fn fail(&self, yes: bool) {
        self.state().failing.store(yes, Ordering::SeqCst);
    }
}

impl GraphState {
    fn answer(&self, req: &GraphRequest) -> Answer {
        lock(&self.requests).push(req.clone());
        if self.failing.load(Ordering::SeqCst) {
            return (503, json!({"error": "temporarily_unavailable"}).to_string());
        }
        let path = req.path.split('?').next().unwrap_or_default();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            [tenant, "oauth2", "v2.0", "token"] => self.token(tenant, req),
            ["v1.0", "directoryObjects" | "users" | "servicePrincipals", oid, "checkMemberGroups"] => {
                self.check_member_groups(oid, req)
            }
            _ => (404, graph_error("Request_ResourceNotFound", "no such route in the stand-in")),
        }
    }

    fn token(&self, tenant: &str, req: &GraphRequest) -> Answer {
        let err = |status: u16, error: &str, code: &str| {
            (
                status,
                json!({"error": error, "error_description": format!("{code}: stand-in"), "error_codes": [code]})
                    .to_string(),
            )
        };
        if tenant != self.tenant {
            return err(400, "invalid_request", "AADSTS90002");
        }
        if req.form_field("grant_type").as_deref() != Some("client_credentials") {
            return err(400, "unsupported_grant_type", "AADSTS70003");
        }
        if req.form_field("client_id").as_deref() != Some(self.client_id.as_str()) {
            return err(400, "unauthorized_client", "AADSTS700016");
        }
        if req.form_field("client_secret").as_deref() != Some(self.client_secret.as_str()) {
            return err(401, "invalid_client", "AADSTS7000215");
        }
        // Graph's own scope, or this stand-in's (flexgate derives it from the endpoint, as
        // sovereign clouds need).
        let scope = req.form_field("scope").unwrap_or_default();
        if scope != "https://graph.microsoft.com/.default"
            && !(scope.starts_with("https://localhost:") && scope.ends_with("/.default"))
        {
            return err(400, "invalid_scope", "AADSTS70011");
        }
        let token = format!("graph-{}", b64url(&random_bytes(24)));
        lock(&self.tokens).insert(token.clone());
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        (200, json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}).to_string())
    }

    fn check_member_groups(&self, oid: &str, req: &GraphRequest) -> Answer {
        let bearer = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        if !bearer.is_some_and(|t| lock(&self.tokens).contains(t)) {
            return (401, graph_error("InvalidAuthenticationToken", "Access token is empty or invalid."));
        }
        let Some(ids) = req.json().and_then(|v| v["groupIds"].as_array().cloned()) else {
            return (400, graph_error("Request_BadRequest", "a groupIds array is required"));
        };
        if ids.len() > 20 {
            return (400, graph_error("Request_BadRequest", "at most 20 groupIds per request"));
        }
        let members = lock(&self.members);
        let value: Vec<&Value> =
            ids.iter().filter(|id| id.as_str().and_then(|g| members.get(g)).is_some_and(|m| m.contains(oid))).collect();
        let body = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
            "value": value,
        });
        (200, body.to_string())
    }
}

fn graph_error(code: &str, message: &str) -> String {
    json!({"error": {"code": code, "message": message, "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}})
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Scripted MySQL 8
// ---------------------------------------------------------------------------------------------

/// How the scripted server answers a `caching_sha2_password` scramble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha2Mode {
    /// The account is in the server's cache: a right scramble gets `01 03` and OK, a wrong one
    /// ERR 1045 (real MySQL would fall back to full authentication; this keeps tests exact).
    Fast,
    /// Never cached: every login gets `01 04` (perform full authentication).
    Full,
    /// As after a restart or `FLUSH PRIVILEGES`: full authentication until one succeeds, fast
    /// afterwards ([`Mysql8Peer::flush_cache`] empties the cache again).
    Cached,
}

/// Which exchange a login went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPath {
    /// The client closed (or broke the protocol) before the exchange finished.
    Aborted,
    /// Fast path: the scramble decided.
    Fast,
    /// Full authentication with the RSA key requested (`02`) and the password encrypted.
    FullRsa,
    /// Full authentication with the password sent in the clear: over TLS that is normal; over
    /// plain TCP it is a leak (recorded, and refused with ERR 1045).
    FullCleartext,
}

/// One login (HandshakeResponse or COM_CHANGE_USER) as the scripted server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLogin {
    /// Which connection (1-based, in accept order).
    pub connection: usize,
    /// A COM_CHANGE_USER, not a HandshakeResponse.
    pub change_user: bool,
    /// The login went over TLS.
    pub tls: bool,
    pub user: String,
    pub database: Option<String>,
    /// Collation id (one byte in a HandshakeResponse, two in a change-user).
    pub charset: u16,
    /// The client's capability flags (0 for a change-user, which has none).
    pub capabilities: u32,
    /// The plugin the client named, if any.
    pub plugin: Option<String>,
    /// Connection attributes, decoded.
    pub attrs: Vec<(String, String)>,
    /// Length of the auth data in the HandshakeResponse / change-user itself.
    pub initial_auth_len: usize,
    /// The server sent an AuthSwitchRequest (the client's plugin or data would not do).
    pub switched: bool,
    /// The caching_sha2 scramble (after any switch) was right for the configured password
    /// and the nonce of that round.
    pub scramble_ok: bool,
    pub path: AuthPath,
    /// The password recovered by full authentication matched (false on the fast path).
    pub password_ok: bool,
    /// The server answered OK.
    pub accepted: bool,
}

struct PeerShared {
    user: String,
    password: String,
    mode: Mutex<Sha2Mode>,
    cached: AtomicBool,
    rsa: OaepPrivateDecryptingKey,
    rsa_pem: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    logins: Mutex<Vec<PeerLogin>>,
    connections: AtomicUsize,
}

/// A scripted MySQL 8.0.40 on 127.0.0.1 with one `caching_sha2_password` account: for logins
/// flexgate makes itself with a held password. It accepts any number of connections (flexgate's
/// startup probe closes right after the greeting; that and any abrupt close are quiet), checks
/// each login per its [`Sha2Mode`], records it, and then answers COM_PING, COM_QUERY (one row:
/// the logged-in user; `SELECT @@var` gets NULLs; `SET`/`USE`/transactions get OK), COM_INIT_DB,
/// COM_RESET_CONNECTION, COM_CHANGE_USER (a new login with an auth switch) and COM_QUIT.
/// Stops accepting when dropped.
pub struct Mysql8Peer {
    shared: Arc<PeerShared>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// MySQL 8.0's capabilities without `CLIENT_SSL`, `CLIENT_COMPRESS`, session tracking and query
/// attributes (which change packet layouts this script does not write); bit 0 set
/// (`CLIENT_LONG_PASSWORD`), i.e. no MariaDB extended capabilities.
const PEER_CAPS: u32 = 0x0000_0001 // LONG_PASSWORD (= CLIENT_MYSQL)
    | 0x0000_0002 // FOUND_ROWS
    | 0x0000_0004 // LONG_FLAG
    | 0x0000_0008 // CONNECT_WITH_DB
    | 0x0000_0010 // NO_SCHEMA
    | 0x0000_0040 // ODBC
    | 0x0000_0080 // LOCAL_FILES
    | 0x0000_0100 // IGNORE_SPACE
    | 0x0000_0200 // PROTOCOL_41
    | 0x0000_0400 // INTERACTIVE
    | 0x0000_1000 // IGNORE_SIGPIPE
    | 0x0000_2000 // TRANSACTIONS
    | 0x0000_8000 // SECURE_CONNECTION
    | 0x0001_0000 // MULTI_STATEMENTS
    | 0x0002_0000 // MULTI_RESULTS
    | 0x0004_0000 // PS_MULTI_RESULTS
    | 0x0008_0000 // PLUGIN_AUTH
    | 0x0010_0000 // CONNECT_ATTRS
    | 0x0020_0000 // PLUGIN_AUTH_LENENC_CLIENT_DATA
    | 0x0040_0000 // CAN_HANDLE_EXPIRED_PASSWORDS
    | 0x0100_0000; // DEPRECATE_EOF

const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const CACHING_SHA2: &[u8] = b"caching_sha2_password";
/// OK: no rows, autocommit.
const OK: [u8; 7] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];
/// The version the peer announces.
pub const PEER_VERSION: &str = "8.0.40-scripted";

impl Mysql8Peer {
    /// Starts on a free port, plain TCP only.
    pub async fn start(user: &str, password: &str, mode: Sha2Mode) -> Self {
        Self::start_with(user, password, mode, None).await
    }

    /// Starts with `CLIENT_SSL` offered, using the harness's certificate; logins that switch to
    /// TLS may then send the password in the clear on full authentication, as MySQL allows.
    pub async fn start_tls(user: &str, password: &str, mode: Sha2Mode, certs: &Certs) -> Self {
        let config = tls_config(certs);
        Self::start_with(user, password, mode, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(user: &str, password: &str, mode: Sha2Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let rsa = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
        let der = rsa.public_key().as_der().unwrap_or_else(|e| panic!("{e}"));
        let rsa_pem = pem("PUBLIC KEY", der.as_ref());
        let rsa = OaepPrivateDecryptingKey::new(rsa).unwrap_or_else(|e| panic!("{e}"));
        let shared = Arc::new(PeerShared {
            user: user.to_owned(),
            password: password.to_owned(),
            mode: Mutex::new(mode),
            cached: AtomicBool::new(false),
            rsa,
            rsa_pem,
            tls,
            logins: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let sh = sh.clone();
                tokio::spawn(async move {
                    // Errors are a client closing or misbehaving; what it did is in `logins`.
                    let _ = serve_peer(tcp, sh, n).await;
                });
            }
        });
        Self { shared, port, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Logins so far, in the order they finished. A refused login is recorded just after its
    /// ERR is sent, so a client may see the ERR first: wait for the count.
    pub fn logins(&self) -> Vec<PeerLogin> {
        lock(&self.shared.logins).clone()
    }

    /// TCP connections accepted so far (flexgate's probe included).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Changes how later logins are answered.
    pub fn set_mode(&self, mode: Sha2Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Empties the fast-auth cache ([`Sha2Mode::Cached`]): the next login needs full auth.
    pub fn flush_cache(&self) {
        self.shared.cached.store(false, Ordering::SeqCst);
    }

    /// The PEM public key the server hands out on a key request.
    pub fn public_key_pem(&self) -> String {
        self.shared.rsa_pem.clone()
    }
}

impl Drop for Mysql8Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A MySQL nonce as `generate_user_salt` makes it: 7-bit, no NUL and no `$`.
fn new_nonce() -> [u8; 20] {
    let mut n = [0u8; 20];
    for (o, r) in n.iter_mut().zip(random_bytes(20)) {
        let b = r & 0x7f;
        *o = if b == 0 || b == b'$' { b + 1 } else { b };
    }
    n
}

/// Packet reader/writer that keeps the sequence id: each packet's id must be the one after
/// the previous packet's, whichever side sent it.
struct Wire<S> {
    s: S,
    seq: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    async fn read(&mut self) -> Result<Vec<u8>, String> {
        let mut h = [0u8; 4];
        self.s.read_exact(&mut h).await.map_err(|e| format!("read header: {e}"))?;
        if h[3] != self.seq {
            return Err(format!("sequence id {} where {} was expected", h[3], self.seq));
        }
        self.seq = self.seq.wrapping_add(1);
        let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
        let mut p = vec![0; len];
        self.s.read_exact(&mut p).await.map_err(|e| format!("read payload: {e}"))?;
        Ok(p)
    }

    async fn write(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::new();
        flexgate::protocol::write_packet(&mut out, self.seq, payload);
        self.seq = self.seq.wrapping_add(1);
        self.s.write_all(&out).await.map_err(|e| format!("write: {e}"))
    }

    /// Several packets in one write, as a server sends a result set.
    async fn write_all(&mut self, payloads: &[Vec<u8>]) -> Result<(), String> {
        let mut out = Vec::new();
        for p in payloads {
            flexgate::protocol::write_packet(&mut out, self.seq, p);
            self.seq = self.seq.wrapping_add(1);
        }
        self.s.write_all(&out).await.map_err(|e| format!("write: {e}"))
    }

    async fn err(&mut self, code: u16, state: &[u8; 5], msg: &str) -> Result<(), String> {
        let mut out = Vec::new();
        flexgate::protocol::write_err(&mut out, self.seq, code, state, msg, true);
        self.seq = self.seq.wrapping_add(1);
        self.s.write_all(&out).await.map_err(|e| format!("write: {e}"))
    }
}

fn peer_greeting(nonce: &[u8; 20], connection_id: u32, ssl: bool) -> Vec<u8> {
    let caps = if ssl { PEER_CAPS | CLIENT_SSL } else { PEER_CAPS };
    let mut part2 = nonce[8..].to_vec();
    part2.push(0);
    let g = Greeting {
        server_version: PEER_VERSION.as_bytes(),
        connection_id,
        auth_data_1: &nonce[..8],
        capabilities: Capabilities(caps),
        charset: 255,
        status: 2,
        auth_data_len: 21,
        mariadb_capabilities: MariaDbCapabilities(0),
        auth_data_2: &part2,
        auth_plugin: Some(CACHING_SHA2),
    };
    let mut out = Vec::new();
    g.write(&mut out);
    out
}

async fn serve_peer(mut tcp: tokio::net::TcpStream, sh: Arc<PeerShared>, n: usize) -> Result<(), String> {
    let nonce = new_nonce();
    let id = u32::try_from(n).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    flexgate::protocol::write_packet(&mut out, 0, &peer_greeting(&nonce, id, sh.tls.is_some()));
    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut w = Wire { s: tcp, seq: 1 };
    let first = w.read().await?;
    let ssl_request = first.len() == flexgate::protocol::SSL_REQUEST_LEN
        && u32::from_le_bytes([first[0], first[1], first[2], first[3]]) & CLIENT_SSL != 0;
    match (&sh.tls, ssl_request) {
        (Some(acceptor), true) => {
            let tls = acceptor.accept(w.s).await.map_err(|e| format!("TLS: {e}"))?;
            let mut w = Wire { s: tls, seq: w.seq };
            let resp = w.read().await?;
            login_and_serve(&mut w, &sh, n, nonce, &resp, true).await
        }
        (None, true) => Err("SSLRequest, but the peer offered no SSL".into()),
        (_, false) => login_and_serve(&mut w, &sh, n, nonce, &first, false).await,
    }
}

async fn login_and_serve<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Wire<S>,
    sh: &PeerShared,
    n: usize,
    nonce: [u8; 20],
    resp: &[u8],
    tls: bool,
) -> Result<(), String> {
    let hr = HandshakeResponse::parse(resp).map_err(|e| e.to_string())?;
    let caps = hr.capabilities.0 & (PEER_CAPS | CLIENT_SSL);
    let mut login = PeerLogin {
        connection: n,
        change_user: false,
        tls,
        user: String::from_utf8_lossy(hr.username).into_owned(),
        database: hr.database.map(|d| String::from_utf8_lossy(d).into_owned()),
        charset: u16::from(hr.charset),
        capabilities: hr.capabilities.0,
        plugin: hr.auth_plugin.map(|p| String::from_utf8_lossy(p).into_owned()),
        attrs: decode_attrs(hr.connect_attrs),
        initial_auth_len: hr.auth_response.len(),
        switched: false,
        scramble_ok: false,
        path: AuthPath::Aborted,
        password_ok: false,
        accepted: false,
    };
    let use_initial = hr.auth_plugin == Some(CACHING_SHA2) && !hr.auth_response.is_empty();
    let initial = use_initial.then(|| hr.auth_response.to_vec());
    let result = authenticate(w, sh, &mut login, nonce, initial, tls).await;
    let accepted = login.accepted;
    let mut user = login.user.clone();
    lock(&sh.logins).push(login);
    result?;
    if !accepted {
        return Ok(());
    }
    // Command phase.
    loop {
        w.seq = 0;
        let Ok(cmd) = w.read().await else { return Ok(()) };
        match cmd.first().copied() {
            Some(0x01) => return Ok(()),                     // COM_QUIT
            Some(0x0e | 0x02 | 0x1f) => w.write(&OK).await?, // PING, INIT_DB, RESET_CONNECTION
            Some(0x03) => query(w, caps, &cmd[1..], &user).await?,
            Some(0x11) => {
                let cu = ChangeUser::parse(&cmd, Capabilities(caps)).map_err(|e| e.to_string())?;
                let mut login = PeerLogin {
                    connection: n,
                    change_user: true,
                    tls,
                    user: String::from_utf8_lossy(cu.username).into_owned(),
                    database: (!cu.database.is_empty()).then(|| String::from_utf8_lossy(cu.database).into_owned()),
                    charset: cu.charset.unwrap_or_default(),
                    capabilities: 0,
                    plugin: cu.auth_plugin.map(|p| String::from_utf8_lossy(p).into_owned()),
                    attrs: decode_attrs(cu.connect_attrs),
                    initial_auth_len: cu.auth_response.len(),
                    switched: false,
                    scramble_ok: false,
                    path: AuthPath::Aborted,
                    password_ok: false,
                    accepted: false,
                };
                // Always a fresh nonce by auth switch, as MySQL does for caching_sha2.
                let result = authenticate(w, sh, &mut login, new_nonce(), None, tls).await;
                let accepted = login.accepted;
                let new_user = login.user.clone();
                lock(&sh.logins).push(login);
                result?;
                if !accepted {
                    return Ok(());
                }
                user = new_user;
            }
            _ => w.err(1047, b"08S01", "Unknown command").await?,
        }
    }
}

fn decode_attrs(raw: Option<&[u8]>) -> Vec<(String, String)> {
    raw.map(|a| {
        flexgate::protocol::connect_attrs(a)
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// The caching_sha2 exchange after the HandshakeResponse or change-user. `initial` is the
/// client's scramble when it was made with caching_sha2 over the greeting's nonce; otherwise
/// the server switches to caching_sha2 with a fresh nonce. Fills in `login`.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Wire<S>,
    sh: &PeerShared,
    login: &mut PeerLogin,
    nonce: [u8; 20],
    initial: Option<Vec<u8>>,
    tls: bool,
) -> Result<(), String> {
    let (nonce, scramble) = match initial {
        Some(s) => (nonce, s),
        None => {
            let fresh = new_nonce();
            let mut switch = vec![0xfe];
            switch.extend_from_slice(CACHING_SHA2);
            switch.push(0);
            switch.extend_from_slice(&fresh);
            switch.push(0);
            w.write(&switch).await?;
            login.switched = true;
            (fresh, w.read().await?)
        }
    };
    let pw = sh.password.as_bytes();
    let expected = flexgate::protocol::scramble::caching_sha2_fast(pw, &nonce);
    login.scramble_ok = scramble.as_slice() == expected.as_slice();
    let user_ok = login.user == sh.user;
    let denied = format!("Access denied for user '{}'@'localhost' (using password: YES)", login.user);
    let mode = *lock(&sh.mode);
    let fast = match mode {
        Sha2Mode::Fast => true,
        Sha2Mode::Full => false,
        Sha2Mode::Cached => sh.cached.load(Ordering::SeqCst),
    };
    if fast {
        login.path = AuthPath::Fast;
        if login.scramble_ok && user_ok {
            w.write(&[0x01, 0x03]).await?;
            w.write(&OK).await?;
            login.accepted = true;
        } else {
            w.err(1045, b"28000", &denied).await?;
        }
        return Ok(());
    }
    // perform_full_authentication
    w.write(&[0x01, 0x04]).await?;
    let p = w.read().await?;
    let mut want = pw.to_vec();
    want.push(0);
    let recovered = if p == [0x02] {
        login.path = AuthPath::FullRsa;
        let mut more = vec![0x01];
        more.extend_from_slice(sh.rsa_pem.as_bytes());
        w.write(&more).await?;
        let ciphertext = w.read().await?;
        rsa_decrypt(&sh.rsa, &ciphertext)
            .map(|plain| plain.iter().zip(nonce.iter().cycle()).map(|(a, b)| a ^ b).collect::<Vec<u8>>())
    } else {
        login.path = AuthPath::FullCleartext;
        Some(p)
    };
    // The server takes the password up to its first NUL.
    login.password_ok = recovered.is_some_and(|r| {
        let end = r.iter().position(|&b| b == 0).map_or(r.len(), |i| i + 1);
        r[..end] == want[..]
    });
    // Cleartext is only acceptable on a secure transport.
    let secure_enough = login.path == AuthPath::FullRsa || tls;
    if login.password_ok && user_ok && secure_enough {
        w.write(&OK).await?;
        login.accepted = true;
        sh.cached.store(true, Ordering::SeqCst);
    } else {
        w.err(1045, b"28000", &denied).await?;
    }
    Ok(())
}

fn rsa_decrypt(oaep: &OaepPrivateDecryptingKey, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let mut plain = vec![0u8; oaep.min_output_size()];
    let n = oaep.decrypt(&OAEP_SHA1_MGF1SHA1, ciphertext, &mut plain, None).ok()?.len();
    plain.truncate(n);
    Some(plain)
}

fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    // Short strings only (names and values here are well under 251 bytes).
    out.push(u8::try_from(s.len()).unwrap_or(250).min(250));
    out.extend_from_slice(&s[..s.len().min(250)]);
}

fn column_def(name: &str) -> Vec<u8> {
    let mut c = Vec::new();
    lenenc_str(&mut c, b"def");
    lenenc_str(&mut c, b"");
    lenenc_str(&mut c, b"");
    lenenc_str(&mut c, b"");
    lenenc_str(&mut c, name.as_bytes());
    lenenc_str(&mut c, b"");
    c.push(0x0c);
    c.extend_from_slice(&255u16.to_le_bytes()); // utf8mb4_0900_ai_ci
    c.extend_from_slice(&1024u32.to_le_bytes());
    c.push(0xfd); // VAR_STRING
    c.extend_from_slice(&0u16.to_le_bytes());
    c.push(0);
    c.extend_from_slice(&[0, 0]);
    c
}

/// COM_QUERY: statements that return no rows get OK; `SELECT @@a, @@b` (client drivers'
/// settings probes) gets one row of NULLs; anything else one row, one column: the user.
async fn query<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Wire<S>,
    caps: u32,
    sql: &[u8],
    user: &str,
) -> Result<(), String> {
    let text = String::from_utf8_lossy(sql).trim().to_owned();
    let upper = text.to_ascii_uppercase();
    let first = upper.split_whitespace().next().unwrap_or_default();
    if matches!(first, "SET" | "USE" | "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "DO") {
        return w.write(&OK).await;
    }
    let (names, values): (Vec<String>, Vec<Option<String>>) = if first == "SELECT" && text.contains("@@") {
        let items = text[6..].split(',').map(|s| s.trim().to_owned()).collect::<Vec<_>>();
        let values = items.iter().map(|_| None).collect();
        (items, values)
    } else {
        (vec!["CURRENT_USER()".to_owned()], vec![Some(user.to_owned())])
    };
    let deprecate_eof = caps & CLIENT_DEPRECATE_EOF != 0;
    let eof = vec![0xfe, 0x00, 0x00, 0x02, 0x00];
    let end = if deprecate_eof { vec![0xfe, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00] } else { eof.clone() };
    let mut packets = vec![vec![u8::try_from(names.len()).unwrap_or(1)]];
    packets.extend(names.iter().map(|n| column_def(n)));
    if !deprecate_eof {
        packets.push(eof);
    }
    let mut row = Vec::new();
    for v in &values {
        match v {
            Some(v) => lenenc_str(&mut row, v.as_bytes()),
            None => row.push(0xfb),
        }
    }
    packets.push(row);
    packets.push(end);
    w.write_all(&packets).await
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Writes `value` and a newline to `dir/name` with mode 0600 (as a secret file should be; the
/// trailing newline is what `echo` and editors leave, which a reader must trim).
pub fn write_secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(format!("{value}\n").as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}
