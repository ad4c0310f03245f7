//! Self-tests of `entra_support`, with independent implementations on the other side (reqwest,
//! jsonwebtoken, mysql_async, and a hand-written MySQL client), so that an Entra login test that
//! fails later is failing because of flexgate, not because a stand-in is wrong. None needs
//! MariaDB or flexgate's Entra code.

use std::time::Duration;

use flexgate::protocol::{Capabilities, Greeting, HandshakeResponse, MariaDbCapabilities};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::entra_support::*;
use crate::harness::{Certs, eventually, make_certs_named, read_packet};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OID: &str = "5b2b0f3e-8a3c-4c43-9d0e-5a1e2f3a4b5c";
const AUD: &str = "https://ossrdbms-aad.database.windows.net";

fn certs() -> (tempfile::TempDir, Certs) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = make_certs_named(dir.path(), "localhost");
    (dir, certs)
}

/// A reqwest client trusting only the test CA, built as `proxy/breaker/provider.rs` builds its
/// own.
fn client(certs: &Certs) -> reqwest::Client {
    let pem = std::fs::read(&certs.ca).unwrap_or_else(|e| panic!("{e}"));
    let ca = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_else(|e| panic!("{e}"));
    reqwest::Client::builder()
        .https_only(true)
        .tls_certs_only(ca)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_else(|e| panic!("{e}"));
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

async fn post(c: &reqwest::Client, url: &str, headers: &[(&str, &str)], body: String) -> (u16, Value) {
    let mut req = c.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_else(|e| panic!("{e}"));
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn validation(iss: &str) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[AUD]);
    v.set_issuer(&[iss]);
    v.validate_nbf = true;
    v
}

fn verify(token: &str, key: &DecodingKey, iss: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    jsonwebtoken::decode::<Value>(token, key, &validation(iss)).map(|d| d.claims)
}

/// Tokens from `Signer` verify with the key the JWKS server hands out over HTTPS; the three
/// forgeries do not (and the HS256 one is a well-formed HS256 token, so the refusal is the
/// algorithm pinning, not a broken forgery).
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_tokens_verify_against_the_served_jwks() {
    let (_dir, certs) = certs();
    let signer = Signer::new("key-1");
    let jwks = JwksServer::start(&certs).await;
    jwks.set_keys(vec![signer.jwk()]);
    let c = client(&certs);
    let (status, body) = get(&c, &jwks.url(TENANT)).await;
    assert_eq!(status, 200, "{body}");
    let served = body["keys"][0].clone();
    assert_eq!(served["kid"], "key-1");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(served).unwrap_or_else(|e| panic!("{e}"));
    let key = DecodingKey::from_jwk(&jwk).unwrap_or_else(|e| panic!("{e}"));

    let v2 = entra_claims(TENANT, OID, AUD, 2, 3600, 0);
    let token = signer.sign(&v2);
    let header = jsonwebtoken::decode_header(&token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::RS256, Some("key-1")));
    let iss2 = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
    let got = verify(&token, &key, &iss2).unwrap_or_else(|e| panic!("v2 token: {e}"));
    assert_eq!(
        (got["oid"].as_str(), got["ver"].as_str(), got["idtyp"].as_str()),
        (Some(OID), Some("2.0"), Some("user"))
    );
    assert!(got["preferred_username"].is_string() && got["azp"].is_string() && got.get("upn").is_none());

    let iss1 = format!("https://sts.windows.net/{TENANT}/");
    let v1 = verify(&signer.sign(&entra_claims(TENANT, OID, AUD, 1, 3600, 0)), &key, &iss1)
        .unwrap_or_else(|e| panic!("v1 token: {e}"));
    assert!(v1["upn"].is_string() && v1["unique_name"].is_string() && v1["appid"].is_string());
    let app = verify(&signer.sign(&app_claims(TENANT, "app-id-1", "sp-oid-1", AUD)), &key, &iss1)
        .unwrap_or_else(|e| panic!("app token: {e}"));
    assert_eq!((app["idtyp"].as_str(), app["appid"].as_str()), (Some("app"), Some("app-id-1")));
    assert!(app.get("scp").is_none() && app["roles"].is_array());

    // The PEM form is the same key.
    let from_pem = DecodingKey::from_rsa_pem(signer.public_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    verify(&token, &from_pem, &iss2).unwrap_or_else(|e| panic!("via PEM: {e}"));

    // Expired, and not yet valid (beyond jsonwebtoken's default 60 s leeway).
    assert!(verify(&signer.sign(&entra_claims(TENANT, OID, AUD, 2, -600, -700)), &key, &iss2).is_err());
    assert!(verify(&signer.sign(&entra_claims(TENANT, OID, AUD, 2, 3600, 600)), &key, &iss2).is_err());

    // Forgeries.
    assert!(verify(&forge_none(&v2), &key, &iss2).is_err(), "alg none");
    let hs = forge_hs256(&signer, &v2);
    assert!(verify(&hs, &key, &iss2).is_err(), "HS256 key confusion");
    let mut hs_validation = validation(&iss2);
    hs_validation.algorithms = vec![Algorithm::HS256];
    let confused = DecodingKey::from_secret(signer.public_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    jsonwebtoken::decode::<Value>(&hs, &confused, &hs_validation)
        .unwrap_or_else(|e| panic!("the HS256 forgery must be valid HS256 over the PEM: {e}"));
    let mut other = v2.clone();
    other["oid"] = json!("00000000-0000-0000-0000-000000000001");
    assert!(verify(&tamper(&token, &other), &key, &iss2).is_err(), "tampered payload");
    assert_eq!(tamper(&token, &v2), token, "tamper with the same claims changes nothing");
    // A key the JWKS does not serve.
    let stranger = Signer::new("key-1");
    assert!(verify(&stranger.sign(&v2), &key, &iss2).is_err(), "another key under the same kid");

    // Groups helpers.
    let g = with_groups(v2.clone(), &["g1", "g2"]);
    assert_eq!(g["groups"], json!(["g1", "g2"]));
    let o = with_group_overage(g);
    assert!(o.get("groups").is_none() && o["_claim_names"]["groups"] == "src1", "{o}");
}

/// The JWKS server survives many sequential requests over one pooling client, replaces its
/// keys, answers 503 while failing, and serves discovery documents.
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_jwks_server_rotates_fails_and_keeps_serving() {
    let (_dir, certs) = certs();
    let jwks = JwksServer::start(&certs).await;
    let c = client(&certs);
    let (a, b) = (Signer::new("a"), Signer::new("b"));
    jwks.set_keys(vec![a.jwk()]);
    for i in 0..25 {
        let (status, body) = get(&c, &jwks.url(TENANT)).await;
        assert_eq!((status, body["keys"][0]["kid"].as_str()), (200, Some("a")), "request {i}");
    }
    jwks.set_keys(vec![a.jwk(), b.jwk()]);
    let (_, body) = get(&c, &jwks.url(TENANT)).await;
    assert_eq!(body["keys"].as_array().map(Vec::len), Some(2));
    jwks.fail(true);
    let (status, _) = get(&c, &jwks.url(TENANT)).await;
    assert_eq!(status, 503);
    jwks.fail(false);
    let (status, _) = get(&c, &jwks.url(TENANT)).await;
    assert_eq!(status, 200);
    let (status, doc) = get(&c, &format!("{}/{TENANT}/v2.0/.well-known/openid-configuration", jwks.authority())).await;
    assert_eq!(status, 200);
    assert_eq!(doc["issuer"], format!("https://login.microsoftonline.com/{TENANT}/v2.0"));
    assert_eq!(doc["jwks_uri"], jwks.url(TENANT));
    assert_eq!(jwks.hits(), 29);
    assert_eq!(jwks.paths()[0], format!("/{TENANT}/discovery/v2.0/keys"));
}

/// Client credentials, then checkMemberGroups, as flexgate will do them; every request is
/// recorded as sent.
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_graph_stand_in_issues_tokens_and_checks_membership() {
    let (_dir, certs) = certs();
    let graph = GraphStandIn::start(&certs, TENANT, "client-1", "s3cret+/=").await;
    graph.set_members("g1", &[OID, "someone-else"]);
    graph.set_members("g2", &["someone-else"]);
    let c = client(&certs);
    let token_url = format!("{}/{TENANT}/oauth2/v2.0/token", graph.authority());
    let form = |secret: &str| {
        format!(
            "grant_type=client_credentials&client_id=client-1&client_secret={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
            secret.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
        )
    };
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let (status, body) = post(&c, &token_url, &ct, form("wrong")).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    let (status, body) = post(&c, &token_url, &ct, form("s3cret+/=")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("Bearer"), Some(3599)));
    let access = body["access_token"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert_eq!(graph.issued_tokens(), vec![access.clone()]);

    let check = format!("{}/v1.0/directoryObjects/{OID}/checkMemberGroups", graph.graph_endpoint());
    let groups = json!({"groupIds": ["g1", "g2", "g3"]}).to_string();
    let bearer = format!("Bearer {access}");
    let json_ct = ("content-type", "application/json");
    let (status, body) = post(&c, &check, &[json_ct, ("authorization", &bearer)], groups.clone()).await;
    assert_eq!((status, &body["value"]), (200, &json!(["g1"])), "{body}");
    let (status, body) = post(&c, &check, &[json_ct, ("authorization", "Bearer forged")], groups.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("InvalidAuthenticationToken")));
    let many = json!({"groupIds": (0..21).map(|i| format!("g{i}")).collect::<Vec<_>>()}).to_string();
    let (status, _) = post(&c, &check, &[json_ct, ("authorization", &bearer)], many).await;
    assert_eq!(status, 400, "Graph takes at most 20 ids");
    graph.revoke_tokens();
    let (status, _) = post(&c, &check, &[json_ct, ("authorization", &bearer)], groups.clone()).await;
    assert_eq!(status, 401, "a revoked token");

    let reqs = graph.requests();
    assert_eq!(reqs.len(), 6);
    let t = &reqs[1];
    assert_eq!((t.method.as_str(), t.path.clone()), ("POST", format!("/{TENANT}/oauth2/v2.0/token")));
    assert_eq!(t.header("Content-Type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(t.form_field("client_secret").as_deref(), Some("s3cret+/="));
    assert_eq!(t.form_field("scope").as_deref(), Some("https://graph.microsoft.com/.default"));
    let g = &reqs[2];
    assert_eq!(g.path, format!("/v1.0/directoryObjects/{OID}/checkMemberGroups"));
    assert_eq!(g.header("authorization"), Some(bearer.as_str()));
    assert_eq!(g.json(), Some(json!({"groupIds": ["g1", "g2", "g3"]})));

    // The same origin serves keys, so one authority override covers both.
    graph.jwks().set_keys(vec![Signer::new("k").jwk()]);
    let (status, body) = get(&c, &graph.jwks().url(TENANT)).await;
    assert_eq!((status, body["keys"][0]["kid"].as_str()), (200, Some("k")));
    assert_eq!(graph.requests().len(), 6, "GETs are the JWKS's, not recorded as Graph requests");
}

fn peer_opts(peer: &Mysql8Peer, user: &str, password: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(peer.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some("appdb"))
        .prefer_socket(false)
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Fast mode with mysql_async: the right password logs in (queries return the user), a wrong
/// one gets 1045; change-user goes through an auth switch.
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_mysql8_peer_fast_auth_with_mysql_async() {
    let peer = Mysql8Peer::start("app", "held-Pa55", Sha2Mode::Fast).await;
    let attrs = std::collections::HashMap::from([("program_name".to_owned(), "selftest".to_owned())]);
    let mut conn = mysql_async::Conn::new(peer_opts(&peer, "app", "held-Pa55").connect_attributes(attrs))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(who.as_deref(), Some("app"));
    conn.ping().await.unwrap_or_else(|e| panic!("{e}"));
    conn.query_drop("SET @x = 1").await.unwrap_or_else(|e| panic!("{e}"));
    conn.change_user(Default::default()).await.unwrap_or_else(|e| panic!("change user: {e}"));
    let who: Option<String> = conn.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(who.as_deref(), Some("app"));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));

    let e = mysql_async::Conn::new(peer_opts(&peer, "app", "wrong")).await.err().unwrap_or_else(|| panic!("logged in"));
    assert_eq!(server_code(&e), Some(1045), "{e}");

    // The peer records a refused login just after sending its ERR.
    eventually("the refused login to be recorded", || peer.logins().len() == 3).await;
    let logins = peer.logins();
    assert_eq!(logins.len(), 3, "{logins:#?}");
    let first = &logins[0];
    assert_eq!((first.user.as_str(), first.database.as_deref()), ("app", Some("appdb")));
    assert_eq!(first.plugin.as_deref(), Some("caching_sha2_password"));
    assert!(!first.switched && first.scramble_ok && first.accepted && first.path == AuthPath::Fast, "{first:?}");
    assert!(first.attrs.contains(&("program_name".into(), "selftest".into())), "{:?}", first.attrs);
    assert_eq!(first.capabilities & 0x800, 0, "no CLIENT_SSL over plain TCP");
    let cu = &logins[1];
    assert!(cu.change_user && cu.switched && cu.scramble_ok && cu.accepted, "{cu:?}");
    let bad = &logins[2];
    assert!(!bad.scramble_ok && !bad.accepted && bad.path == AuthPath::Fast, "{bad:?}");
    assert_eq!(peer.connections(), 2);
}

/// Full mode over plain TCP: mysql_async asks for the key and sends RSA-OAEP; Cached mode
/// needs full authentication once and is fast afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_mysql8_peer_full_auth_by_rsa_with_mysql_async() {
    let peer = Mysql8Peer::start("app", "held-Pa55", Sha2Mode::Full).await;
    let mut conn =
        mysql_async::Conn::new(peer_opts(&peer, "app", "held-Pa55")).await.unwrap_or_else(|e| panic!("login: {e}"));
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(who.as_deref(), Some("app"));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    let e = mysql_async::Conn::new(peer_opts(&peer, "app", "wrong")).await.err().unwrap_or_else(|| panic!("logged in"));
    assert_eq!(server_code(&e), Some(1045), "{e}");
    eventually("the refused login to be recorded", || peer.logins().len() == 2).await;
    let l = peer.logins();
    assert!(l[0].path == AuthPath::FullRsa && l[0].password_ok && l[0].accepted, "{:?}", l[0]);
    assert!(l[1].path == AuthPath::FullRsa && !l[1].password_ok && !l[1].accepted, "{:?}", l[1]);

    // The successful full login above filled the cache, as on a real server.
    peer.set_mode(Sha2Mode::Cached);
    peer.flush_cache();
    for _ in 0..2 {
        let conn = mysql_async::Conn::new(peer_opts(&peer, "app", "held-Pa55")).await.unwrap_or_else(|e| panic!("{e}"));
        conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let paths: Vec<AuthPath> = peer.logins()[2..].iter().map(|l| l.path).collect();
    assert_eq!(paths, [AuthPath::FullRsa, AuthPath::Fast]);
}

/// Over TLS the full path takes the password in the clear, as MySQL does.
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_mysql8_peer_full_auth_over_tls() {
    let (_dir, certs) = certs();
    let peer = Mysql8Peer::start_tls("app", "held-Pa55", Sha2Mode::Full, &certs).await;
    let ssl = mysql_async::SslOpts::default().with_root_certs(vec![certs.ca.clone().into()]);
    let conn = mysql_async::Conn::new(peer_opts(&peer, "app", "held-Pa55").ssl_opts(ssl))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    let l = &peer.logins()[0];
    assert!(l.tls && l.path == AuthPath::FullCleartext && l.password_ok && l.accepted, "{l:?}");
}

async fn send(s: &mut tokio::net::TcpStream, seq: u8, payload: &[u8]) {
    let mut out = Vec::new();
    flexgate::protocol::write_packet(&mut out, seq, payload);
    s.write_all(&out).await.unwrap_or_else(|e| panic!("{e}"));
}

async fn recv(s: &mut tokio::net::TcpStream, want_seq: u8) -> Vec<u8> {
    let (seq, p) = read_packet(s).await.unwrap_or_else(|| panic!("closed waiting for packet {want_seq}"));
    assert_eq!(seq, want_seq, "sequence id of {p:?}");
    p
}

/// The exchange flexgate's own backend login will make, by hand: a probe that closes after the
/// greeting, then a HandshakeResponse with a plugin no account uses and no auth data, the auth
/// switch, full authentication by RSA with flexgate's own `encrypt_password`, a query. And the
/// leak the peer must catch: the password in the clear over plain TCP.
#[tokio::test(flavor = "multi_thread")]
async fn entra_support_mysql8_peer_hand_written_full_auth_and_cleartext_leak() {
    use flexgate::protocol::scramble::{caching_sha2_fast, encrypt_password};
    let peer = Mysql8Peer::start("app", "held-Pa55", Sha2Mode::Full).await;
    // The probe.
    let mut probe = tokio::net::TcpStream::connect(peer.addr()).await.unwrap_or_else(|e| panic!("{e}"));
    let g = recv(&mut probe, 0).await;
    drop(probe);
    let greeting = Greeting::parse(&g).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(greeting.server_version, PEER_VERSION.as_bytes());
    assert_eq!((greeting.charset, greeting.auth_plugin), (255, Some(&b"caching_sha2_password"[..])));
    assert!(
        !greeting.capabilities.contains(Capabilities::SSL)
            && greeting.capabilities.contains(Capabilities::CLIENT_MYSQL)
    );
    assert_eq!(greeting.nonce().len(), 20);

    for leak in [false, true] {
        let mut s = tokio::net::TcpStream::connect(peer.addr()).await.unwrap_or_else(|e| panic!("{e}"));
        let g = recv(&mut s, 0).await;
        let caps = Capabilities(0x0000_0001 | 0x0200 | 0x8000 | 0x0008_0000 | 0x0020_0000);
        let hr = HandshakeResponse {
            capabilities: caps,
            max_packet_size: 1 << 24,
            charset: 45,
            mariadb_capabilities: MariaDbCapabilities(0),
            username: b"app",
            auth_response: b"",
            database: None,
            auth_plugin: Some(b"flexgate_switch_me"),
            connect_attrs: None,
        };
        let mut resp = Vec::new();
        hr.write(&mut resp);
        send(&mut s, 1, &resp).await;
        let switch = recv(&mut s, 2).await;
        let nonce = switch.strip_prefix(b"\xfecaching_sha2_password\0").unwrap_or_else(|| panic!("{switch:?}"));
        let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce).to_vec();
        assert_eq!(nonce.len(), 20);
        assert_ne!(nonce, Greeting::parse(&g).unwrap_or_else(|e| panic!("{e}")).nonce(), "a fresh nonce");
        send(&mut s, 3, &caching_sha2_fast(b"held-Pa55", &nonce)).await;
        assert_eq!(recv(&mut s, 4).await, [0x01, 0x04]);
        if leak {
            send(&mut s, 5, b"held-Pa55\0").await;
            assert_eq!(crate::harness::err_code(&recv(&mut s, 6).await), Some(1045));
            continue;
        }
        send(&mut s, 5, &[0x02]).await;
        let key = recv(&mut s, 6).await;
        let pem = key.strip_prefix(&[0x01]).unwrap_or_else(|| panic!("{key:?}"));
        assert_eq!(pem, peer.public_key_pem().as_bytes());
        let ct = encrypt_password(b"held-Pa55\0", &nonce, pem).unwrap_or_else(|e| panic!("{e}"));
        send(&mut s, 7, &ct).await;
        assert_eq!(recv(&mut s, 8).await.first(), Some(&0x00), "OK");
        send(&mut s, 0, b"\x03SELECT CURRENT_USER()").await;
        assert_eq!(recv(&mut s, 1).await, [1], "one column");
        let _coldef = recv(&mut s, 2).await;
        assert_eq!(recv(&mut s, 3).await.first(), Some(&0xfe), "EOF without CLIENT_DEPRECATE_EOF");
        assert_eq!(recv(&mut s, 4).await, b"\x03app");
        assert_eq!(recv(&mut s, 5).await.first(), Some(&0xfe));
        send(&mut s, 0, &[0x0e]).await;
        assert_eq!(recv(&mut s, 1).await.first(), Some(&0x00), "ping");
        send(&mut s, 0, &[0x01]).await;
        assert!(read_packet(&mut s).await.is_none(), "closed after COM_QUIT");
    }
    let l = peer.logins();
    assert_eq!(l.len(), 2, "the probe is not a login: {l:#?}");
    assert!(l[0].switched && l[0].scramble_ok && l[0].initial_auth_len == 0, "{:?}", l[0]);
    assert_eq!((l[0].plugin.as_deref(), l[0].charset), (Some("flexgate_switch_me"), 45));
    assert!(l[0].path == AuthPath::FullRsa && l[0].password_ok && l[0].accepted, "{:?}", l[0]);
    assert!(l[1].path == AuthPath::FullCleartext && l[1].password_ok && !l[1].accepted, "{:?}", l[1]);
    assert_eq!(peer.connections(), 3);
}

#[test]
fn entra_support_write_secret_is_private_and_newline_terminated() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = write_secret(dir.path(), "graph-secret", "abc~123");
    assert_eq!(std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{e}")), "abc~123\n");
    let mode = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{e}")).permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
