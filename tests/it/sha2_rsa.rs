//! `caching_sha2_password` against a scripted MySQL 8 peer.
//!
//! MySQL 8 cannot be installed here (Debian 12 ships MariaDB 10.11, which has no server-side
//! caching_sha2_password), so a scripted server replays the documented exchange byte for byte
//! (mysql-server `sql/auth/sha2_password.cc`, "caching_sha2_authentication_exchanges") and
//! records what it receives. The client is real: PyMySQL over TLS to flexgate.
//!
//! flexgate greets the client itself, so the scripted server first sees flexgate's startup
//! probe (a connection that closes after the greeting), then a HandshakeResponse without auth
//! data under a plugin name no account uses. It answers, as MySQL does, with an auth switch to
//! caching_sha2_password carrying a fresh nonce, and the client's scramble must be over that.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine;
use flexgate::protocol::{Capabilities, Greeting, MariaDbCapabilities};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

const NONCE: [u8; 20] = [6, 81, 96, 114, 14, 42, 50, 30, 76, 47, 1, 95, 126, 81, 62, 94, 83, 80, 52, 85];
/// The nonce of the scripted server's auth switch (MySQL makes one per caching_sha2 round).
const SWITCH_NONCE: [u8; 20] = [33, 5, 17, 99, 120, 7, 64, 45, 2, 88, 91, 13, 27, 101, 56, 70, 3, 44, 119, 61];
const USER: &str = "app";

/// What the scripted server received.
#[derive(Debug, Default)]
struct Transcript {
    /// The server received no auth data and the forced-switch plugin name.
    forced_switch: bool,
    /// The client's scramble was over the switch's nonce.
    scramble_ok: bool,
    /// Every client packet after the HandshakeResponse, in order.
    packets: Vec<Vec<u8>>,
    /// The password recovered from the RSA ciphertext, if one arrived.
    decrypted: Option<Vec<u8>>,
}

async fn read(s: &mut TcpStream, want_seq: u8) -> Result<Vec<u8>, String> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await.map_err(|e| format!("read header: {e}"))?;
    if h[3] != want_seq {
        return Err(format!("sequence id {} where {want_seq} was expected", h[3]));
    }
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await.map_err(|e| format!("read payload: {e}"))?;
    Ok(p)
}

async fn write(s: &mut TcpStream, seq: u8, payload: &[u8]) -> Result<(), String> {
    let mut out = Vec::new();
    flexgate::protocol::write_packet(&mut out, seq, payload);
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))
}

fn greeting() -> Vec<u8> {
    let caps = Capabilities(0x0000_0001 | 0x0008 | 0x0200 | 0x2000 | 0x8000 | 0x0008_0000 | 0x0010_0000 | 0x0020_0000);
    let mut part2 = NONCE[8..].to_vec();
    part2.push(0);
    let g = Greeting {
        server_version: b"8.0.40-scripted",
        connection_id: 7,
        auth_data_1: &NONCE[..8],
        capabilities: caps,
        charset: 255,
        status: 2,
        auth_data_len: 21,
        mariadb_capabilities: MariaDbCapabilities(0),
        auth_data_2: &part2,
        auth_plugin: Some(b"caching_sha2_password"),
    };
    let mut out = Vec::new();
    g.write(&mut out);
    out
}

/// Which documented exchange the scripted server replays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// `01 03`, then OK.
    FastAuth,
    /// `01 04`; on a key request, the PEM key; then OK.
    FullAuth,
    /// `01 04`; on a key request, something that is not a key.
    FullAuthBadKey,
}

/// One connection of the scripted server.
async fn serve_one(
    listener: TcpListener,
    key: PrivateDecryptingKey,
    pem: String,
    script: Script,
) -> Result<Transcript, String> {
    let fast = script == Script::FastAuth;
    // The first connection that closes after the greeting is flexgate's profile probe.
    let (mut s, resp) = loop {
        let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
        write(&mut s, 0, &greeting()).await?;
        if let Ok(resp) = read(&mut s, 1).await {
            break (s, resp);
        }
    };
    let mut t = Transcript::default();
    let parsed = flexgate::protocol::HandshakeResponse::parse(&resp).map_err(|e| e.to_string())?;
    if parsed.username != USER.as_bytes() {
        return Err(format!("unexpected response {parsed:?}"));
    }
    t.forced_switch = parsed.auth_response.is_empty() && parsed.auth_plugin == Some(&b"flexgate_switch_me"[..]);
    if parsed.capabilities.contains(Capabilities::SSL) {
        return Err("CLIENT_SSL set on a plaintext server leg".into());
    }
    let mut switch = b"\xfecaching_sha2_password\0".to_vec();
    switch.extend_from_slice(&SWITCH_NONCE);
    switch.push(0);
    write(&mut s, 2, &switch).await?;
    let scramble = read(&mut s, 3).await?;
    let expected = mysql_common::scramble::scramble_sha256(&SWITCH_NONCE, PASSWORD.as_bytes()).unwrap_or_default();
    t.scramble_ok = scramble == expected;
    if fast {
        write(&mut s, 4, &[0x01, 0x03]).await?;
        write(&mut s, 5, &OK).await?;
        command_phase(&mut s).await;
        return Ok(t);
    }
    // perform_full_authentication
    write(&mut s, 4, &[0x01, 0x04]).await?;
    let p = read(&mut s, 5).await?;
    t.packets.push(p.clone());
    if p != [0x02] {
        // Anything but a key request means the password was sent in the clear; stop here.
        return Ok(t);
    }
    let mut more = vec![0x01];
    if script == Script::FullAuthBadKey {
        more.extend_from_slice(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n");
        write(&mut s, 6, &more).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), read(&mut s, 7)).await;
        return Ok(t);
    }
    more.extend_from_slice(pem.as_bytes());
    write(&mut s, 6, &more).await?;
    let ciphertext = read(&mut s, 7).await?;
    t.packets.push(ciphertext.clone());
    let oaep = OaepPrivateDecryptingKey::new(key).map_err(|e| e.to_string())?;
    let mut plain = vec![0u8; oaep.min_output_size()];
    let plain =
        oaep.decrypt(&OAEP_SHA1_MGF1SHA1, &ciphertext, &mut plain, None).map_err(|e| format!("decrypt: {e}"))?;
    t.decrypted = Some(plain.iter().zip(SWITCH_NONCE.iter().cycle()).map(|(a, b)| a ^ b).collect());
    write(&mut s, 8, &OK).await?;
    command_phase(&mut s).await;
    Ok(t)
}

const OK: [u8; 7] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];

/// Answers OK to every command (PyMySQL may send `SET NAMES`) until COM_QUIT or EOF.
async fn command_phase(s: &mut TcpStream) {
    while let Ok(Ok(cmd)) = tokio::time::timeout(Duration::from_secs(5), read(s, 0)).await {
        if cmd.first() == Some(&0x01) || write(s, 1, &OK).await.is_err() {
            break;
        }
    }
}

fn rsa_key() -> (PrivateDecryptingKey, String) {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
    let der = key.public_key().as_der().unwrap_or_else(|e| panic!("{e}"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    (key, format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", body.join("\n")))
}

async fn login_through_flexgate(script: Script) -> (String, Transcript) {
    let db = mariadb(); // only for its certificates
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let backend = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (key, pem) = rsa_key();
    let server = tokio::spawn(serve_one(listener, key, pem, script));
    let proxy = ProxyConfig { backend: backend.to_string(), ..ProxyConfig::to(db) }.start(&db.certs).await;
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, ssl={'ca': ca}, autocommit=None)\n\
                print('logged in', c._sock.version())\nc.close()";
    let out = pymysql(proxy.port(), USER, "", PASSWORD, &db.certs, body).await;
    let transcript = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap_or_else(|_| panic!("scripted server hung"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("scripted server: {e}"));
    (out, transcript)
}

#[tokio::test(flavor = "multi_thread")]
async fn caching_sha2_full_auth_over_plaintext_backend_uses_rsa_scripted_peer() {
    let (out, t) = login_through_flexgate(Script::FullAuth).await;
    assert_eq!(out.trim(), "logged in TLSv1.3");
    assert!(t.forced_switch, "the server must get no auth data and the forced-switch plugin");
    assert!(t.scramble_ok, "the client's fast-auth scramble was not over the switch's nonce");
    // The cleartext password the client sent over TLS never reached the plaintext leg:
    // flexgate asked for the key (0x02) and sent only ciphertext.
    assert_eq!(t.packets.first().map(Vec::as_slice), Some(&[0x02u8][..]), "first packet after 01 04");
    assert_eq!(t.packets.get(1).map(Vec::len), Some(256), "RSA-2048 ciphertext expected");
    for p in &t.packets {
        assert!(!p.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()), "cleartext password on the server leg");
    }
    assert_eq!(t.decrypted.as_deref(), Some(format!("{PASSWORD}\0").as_bytes()));
}

#[tokio::test(flavor = "multi_thread")]
async fn caching_sha2_fast_auth_scripted_peer() {
    let (out, t) = login_through_flexgate(Script::FastAuth).await;
    assert_eq!(out.trim(), "logged in TLSv1.3");
    assert!(t.forced_switch);
    assert!(t.scramble_ok, "PyMySQL's scramble after the switch was not over the switch's nonce");
    assert!(t.packets.is_empty(), "no client packet is expected after fast-auth success");
}

#[tokio::test(flavor = "multi_thread")]
async fn caching_sha2_full_auth_with_a_bad_server_key_is_refused_scripted_peer() {
    let (out, t) = login_through_flexgate(Script::FullAuthBadKey).await;
    assert!(out.starts_with("ERR 1045") && out.contains("could not encrypt the password"), "{out}");
    assert_eq!(t.packets, vec![vec![0x02]], "only the key request may reach the server");
}
