use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap_or_else(|e| panic!("write: {e}"));
        }
        Self { dir }
    }
    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &self.dir.path().join("flexgate.toml"))
    }
}

const MINIMAL: &str = r#"
[backend]
address = "127.0.0.1:3306"
[tls]
cert = "cert.pem"
key = "key.pem"
min_version = "1.2"
[[listener]]
name = "public"
address = "0.0.0.0:3307"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let f = Fixture::new();
    let c = f.parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.backend.address, BackendAddress::Tcp { host: "127.0.0.1".into(), port: 3306 });
    assert_eq!(c.backend.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.backend.tls.mode, BackendTlsMode::Disabled);
    assert_eq!(c.tls.min_version, TlsVersion::Tls12);
    assert!(c.tls.require_secure_transport);
    assert_eq!(c.listeners[0].handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.listeners[0].greeting, GreetingMode::Flexgate);
    // Relative paths are resolved against the config file's directory.
    assert_eq!(c.tls.identity.map(|i| i.cert), Some(f.dir.path().join("cert.pem")));
}

#[test]
fn full_config_parses() {
    let f = Fixture::new();
    let c = f
        .parse(
            r#"
[backend]
address = "unix:/run/mysqld/mysqld.sock"
connect_timeout = "500ms"
[tls]
cert = "cert.pem"
key = "key.pem"
min_version = "1.3"
require_secure_transport = false
[[listener]]
name = "public"
address = "[::]:3307"
handshake_timeout = "5m"
[[listener]]
name = "private"
address = "127.0.0.1:3308"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.backend.address, BackendAddress::Unix("/run/mysqld/mysqld.sock".into()));
    assert_eq!(c.backend.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.tls.min_version, TlsVersion::Tls13);
    assert!(!c.tls.require_secure_transport);
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].handshake_timeout, Duration::from_secs(300));
}

/// Each broken config must be refused with an error that names the key (and the file).
#[test]
fn errors_name_the_key() {
    let f = Fixture::new();
    let cases: &[(&str, &str, &str)] = &[
        (r#"min_version = "1.2""#, r#"min_version = "1.1""#, "tls.min_version"),
        (r#"min_version = "1.2""#, r#"min_version = "1.0""#, "insecure and not supported"),
        (r#"min_version = "1.2""#, r#"min_version = "2""#, "tls.min_version"),
        (r#"address = "127.0.0.1:3306""#, r#"address = "127.0.0.1""#, "backend.address"),
        (r#"address = "127.0.0.1:3306""#, r#"address = "unix:""#, "backend.address"),
        (r#"address = "0.0.0.0:3307""#, r#"address = "nowhere""#, "listener[0].address"),
        (
            r#"address = "0.0.0.0:3307""#,
            "address = \"0.0.0.0:3307\"\nhandshake_timeout = \"10\"",
            "listener[0].handshake_timeout",
        ),
        (
            r#"address = "0.0.0.0:3307""#,
            "address = \"0.0.0.0:3307\"\nhandshake_timeout = \"0s\"",
            "listener[0].handshake_timeout",
        ),
        (r#"address = "0.0.0.0:3307""#, "address = \"0.0.0.0:3307\"\nhandshake_timout = \"1s\"", "handshake_timout"),
        (r#"cert = "cert.pem""#, r#"cert = "missing.pem""#, "tls.cert"),
        (r#"key = "key.pem""#, "", "tls.key"),
        (r#"address = "127.0.0.1:3306""#, "address = \"127.0.0.1:3306\"\nconnect_timeout = 5", "connect_timeout"),
        (
            r#"address = "127.0.0.1:3306""#,
            "address = \"127.0.0.1:3306\"\n[backend.tls]\nmode = \"verify-identity\"",
            "backend.tls.ca",
        ),
        (
            r#"address = "127.0.0.1:3306""#,
            "address = \"127.0.0.1:3306\"\n[backend.tls]\nmode = \"preferred\"",
            "backend.tls.mode",
        ),
        (
            r#"address = "127.0.0.1:3306""#,
            "address = \"unix:/tmp/s\"\n[backend.tls]\nmode = \"required\"",
            "backend.tls.mode",
        ),
        (
            "[[listener]]\nname = \"public\"\naddress = \"0.0.0.0:3307\"",
            "[[listener]]\nname = \"a\"\naddress = \"0.0.0.0:3307\"\n[[listener]]\nname = \"a\"\naddress = \"0.0.0.0:3308\"",
            "listener[1].name",
        ),
    ];
    for (from, to, expect) in cases {
        assert!(MINIMAL.contains(from), "fixture lacks {from}");
        let text = MINIMAL.replacen(from, to, 1);
        match f.parse(&text) {
            Ok(_) => panic!("accepted a config with {to:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(expect), "error for {to:?} does not mention {expect:?}: {msg}");
                assert!(msg.contains("flexgate.toml"), "error does not name the file: {msg}");
            }
        }
    }
}

#[test]
fn plaintext_only_needs_no_certificate_but_secure_transport_does() {
    let f = Fixture::new();
    let no_tls = MINIMAL.replace("cert = \"cert.pem\"\nkey = \"key.pem\"", "");
    let e = f.parse(&no_tls).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("tls.cert") && e.contains("require_secure_transport"), "{e}");
    let plaintext = no_tls.replace("[tls]", "[tls]\nrequire_secure_transport = false");
    assert!(f.parse(&plaintext).is_ok_and(|c| c.tls.identity.is_none()));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "s", "10", "1.5s", "-1s", "10 s", "0ms", "99999999999999999999s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn greeting_mode_is_per_listener() {
    let f = Fixture::new();
    let c = f.parse(&format!("{MINIMAL}greeting = \"server\"\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].greeting, GreetingMode::Server);
    let e = f.parse(&format!("{MINIMAL}greeting = \"router\"\n")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("listener[0].greeting") && e.contains("\"flexgate\" or \"server\""), "{e}");
}

#[test]
fn key_guard_gets_its_defaults_and_every_provider_kind() {
    let f = Fixture::new();
    let c = f
        .parse(&format!(
            r#"{MINIMAL}
[key_guard]
check_interval = "200ms"
[[key_guard.provider]]
kind = "file"
path = "keys/keyfile"
format = "mariadb-file-key-management"
key_ids = [1, 2]
[[key_guard.provider]]
name = "vault"
kind = "command"
command = ["vault-check", "--key", "db"]
timeout = "2s"
[[key_guard.provider]]
kind = "http"
url = "https://myvault.vault.azure.net/keys/db-cmk?api-version=7.4"
bearer_token_file = "ca.pem"
ca = "ca.pem"
expect = {{ pointer = "/attributes/enabled", equals = true }}
"#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let k = c.key_guard.unwrap_or_else(|| panic!("no key_guard"));
    assert_eq!(k.check_interval, Duration::from_millis(200));
    assert_eq!((k.grace, k.recover_after, k.timeout), (MAX_GRACE, 2, DEFAULT_CHECK_TIMEOUT));
    assert_eq!(k.on_inaccessible, OnInaccessible::RefuseNew);
    let names: Vec<&str> = k.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["file-0", "vault", "http-2"]);
    // The key file need not exist: a missing key is the breaker's state, not a config error.
    assert!(matches!(&k.providers[0].kind, ProviderKind::File { path, key_ids, .. }
        if path == &f.dir.path().join("keys/keyfile") && key_ids == &[1, 2]));
    assert_eq!(k.providers[1].timeout, Some(Duration::from_secs(2)));
    assert!(matches!(&k.providers[2].kind, ProviderKind::Http { expect: Some(e), .. }
        if e.pointer == "/attributes/enabled" && e.equals == JsonValue(serde_json::Value::Bool(true))));
}

#[test]
fn key_guard_mistakes_name_their_key() {
    let f = Fixture::new();
    let file = "[[key_guard.provider]]\nkind = \"file\"\npath = \"k\"\n";
    for (extra, key, says) in [
        (format!("[key_guard]\ngrace = \"11m\"\n{file}"), "key_guard.grace", "10m limit"),
        ("[key_guard]\n".to_owned(), "key_guard.provider", "at least one"),
        (format!("[key_guard]\nrecover_after = 0\n{file}"), "key_guard.recover_after", "at least 1"),
        (format!("[key_guard]\non_inaccessible = \"panic\"\n{file}"), "key_guard.on_inaccessible", "close-existing"),
        ("[[key_guard.provider]]\nkind = \"kms\"\n".to_owned(), "key_guard.provider[0].kind", "not a provider kind"),
        ("[[key_guard.provider]]\nkind = \"file\"\n".to_owned(), "key_guard.provider[0].path", "required"),
        (
            "[[key_guard.provider]]\nkind = \"file\"\npath = \"k\"\nurl = \"https://x\"\n".to_owned(),
            "key_guard.provider[0].url",
            "does not apply",
        ),
        (
            "[[key_guard.provider]]\nkind = \"file\"\npath = \"k\"\nkey_ids = [1]\n".to_owned(),
            "key_guard.provider[0].key_ids",
            "needs format",
        ),
        (
            "[[key_guard.provider]]\nkind = \"file\"\npath = \"k\"\nsha256 = \"abc\"\n".to_owned(),
            "key_guard.provider[0].sha256",
            "64 digits",
        ),
        ("[[key_guard.provider]]\nkind = \"command\"\ncommand = []\n".to_owned(), "key_guard.provider[0].command", "required"),
        (
            "[[key_guard.provider]]\nkind = \"command\"\ncommand = [\"/nonexistent/check\"]\n".to_owned(),
            "key_guard.provider[0].command",
            "cannot read",
        ),
        (
            "[[key_guard.provider]]\nkind = \"http\"\nurl = \"http://vault.internal/key\"\n".to_owned(),
            "key_guard.provider[0].url",
            "must be https",
        ),
        (
            "[[key_guard.provider]]\nkind = \"http\"\nurl = \"https://v/k\"\nexpect = { pointer = \"attributes\", equals = 1 }\n"
                .to_owned(),
            "key_guard.provider[0].expect.pointer",
            "JSON pointer",
        ),
        (
            format!("{file}[[key_guard.provider]]\nname = \"file-0\"\nkind = \"file\"\npath = \"j\"\n"),
            "key_guard.provider[1].name",
            "used twice",
        ),
    ] {
        let text = format!("{MINIMAL}\n{extra}");
        let e = f.parse(&text).err().unwrap_or_else(|| panic!("accepted:\n{extra}"));
        assert_eq!(e.key, key, "{extra}: {e}");
        assert!(e.problem.contains(says), "{extra}: {e}");
    }
}

const ENTRA: &str = r#"
[auth]
mode = "both"
[auth.entra]
tenant_id = "72F988BF-86F1-41AF-91AB-2D7CD011DB47"
[[auth.entra.principal]]
login = "alice@contoso.com"
kind = "user"
object_id = "9a3b7c2e-1f4d-4e6a-8b5c-0d2e4f6a8b1c"
backend_user = "alice"
backend_password_file = "ca.pem"
admin = true
"#;

#[test]
fn auth_gets_its_defaults_and_a_listener_may_override_the_mode() {
    let f = Fixture::new();
    let c = f.parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.auth.mode, AuthMode::Password);
    assert_eq!(c.listeners[0].auth_mode, AuthMode::Password);
    let text = format!("{MINIMAL}auth_mode = \"password\"\n{ENTRA}");
    let c = f.parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.auth.mode, AuthMode::Both);
    assert_eq!(c.listeners[0].auth_mode, AuthMode::Password, "the listener's own mode wins");
    let e = c.auth.entra.as_ref().unwrap_or_else(|| panic!("no [auth.entra]"));
    assert_eq!(e.tenant_id, "72f988bf-86f1-41af-91ab-2d7cd011db47", "GUIDs are lower-cased");
    assert_eq!(e.audiences, [DEFAULT_AUDIENCE]);
    assert_eq!(
        e.jwks,
        JwksSource::Https {
            url: "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/discovery/v2.0/keys".into(),
            ca: None
        }
    );
    assert_eq!(e.clock_skew, DEFAULT_CLOCK_SKEW);
    assert_eq!(e.on_token_expiry, OnTokenExpiry::KeepSession);
    assert!(matches!(e.principals[0].backend_password, SecretSource::File(_)));
    // The effective config names the secret's file, never a secret.
    let printed = c.effective_toml();
    assert!(printed.contains("backend_password_file") || printed.contains("<redacted>"), "{printed}");
    // A secret file is watched, so that a rotated password is re-read.
    assert!(c.referenced_files().iter().any(|p| p.ends_with("ca.pem")));
}

#[test]
fn auth_mistakes_name_their_key() {
    let f = Fixture::new();
    let second_admin = "[[auth.entra.principal]]\nlogin = \"dbas\"\nkind = \"group\"\n\
                        object_id = \"5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9\"\nbackend_user = \"dba\"\n\
                        backend_password_env = \"DBA_PW\"\nadmin = true\n";
    for (extra, key, says) in [
        (second_admin.to_owned(), "auth.entra.principal[1].admin", "at most one"),
        (
            ENTRA.replace("\"ca.pem\"", "\"missing-secret\""),
            "auth.entra.principal[0].backend_password_file",
            "missing-secret",
        ),
        (ENTRA.replace("9a3b7c2e-1f4d-4e6a-8b5c-0d2e4f6a8b1c", "alice"), "auth.entra.principal[0].object_id", "GUID"),
        (ENTRA.replace("kind = \"user\"", "kind = \"robot\""), "auth.entra.principal[0].kind", "robot"),
        (ENTRA.replace("mode = \"both\"", "mode = \"sometimes\""), "auth.mode", "sometimes"),
    ] {
        let text =
            if key.ends_with("[1].admin") { format!("{MINIMAL}{ENTRA}{extra}") } else { format!("{MINIMAL}{extra}") };
        let err = f.parse(&text).err().unwrap_or_else(|| panic!("{key}: accepted"));
        assert_eq!(err.key, key, "{err}");
        assert!(err.problem.contains(says), "{key}: {err}");
    }
    // entra mode without [auth.entra], on the whole server or on a listener.
    let err = f.parse(&format!("{MINIMAL}[auth]\nmode = \"entra\"\n")).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(err.key, "auth.mode");
    let err = f.parse(&format!("{MINIMAL}auth_mode = \"entra\"\n")).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(err.key, "listener[0].auth_mode");
}
