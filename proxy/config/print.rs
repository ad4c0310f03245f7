//! `check-config --print`: the effective config, every default filled in, as TOML.
//!
//! Secrets never appear: the config names them by file, and only the path is printed. Any
//! value under a key that names a secret (`password`, `secret`, `token`, `key` material given
//! inline by a later section) is replaced by `"<redacted>"` as a last guard, whatever section
//! it is in.

use std::time::Duration;

use toml::{Table, Value};

use super::{
    AuthConfig, BackendAddress, BackendTlsMode, ClientTlsConfig, Config, GreetingMode, JwksSource, KeyGuardConfig,
    ListenAddress, ListenerConfig, ProviderKind, SecretSource, SourceRule,
};

/// Keys whose values are redacted if they are ever given inline.
const SECRET_KEYS: [&str; 5] = ["password", "secret", "token", "client_secret", "bearer_token"];

fn dur(d: Duration) -> Value {
    let ms = d.as_millis();
    Value::String(if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

fn s(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn path(p: &std::path::Path) -> Value {
    s(p.display())
}

fn rules(r: &[SourceRule]) -> Value {
    Value::Array(r.iter().map(s).collect())
}

fn tls(t: &ClientTlsConfig) -> Table {
    let mut out = Table::new();
    if let Some(id) = &t.identity {
        out.insert("cert".into(), path(&id.cert));
        out.insert("key".into(), path(&id.key));
    }
    out.insert("min_version".into(), s(t.min_version));
    out.insert("require_secure_transport".into(), Value::Boolean(t.require_secure_transport));
    out
}

fn listener(l: &ListenerConfig) -> Table {
    let mut out = Table::new();
    out.insert("name".into(), s(&l.name));
    match &l.address {
        ListenAddress::Tcp(a) => {
            out.insert("address".into(), s(a));
        }
        ListenAddress::Unix { path: p, mode } => {
            out.insert("address".into(), s(format!("unix:{}", p.display())));
            out.insert("socket_mode".into(), s(format!("{mode:04o}")));
        }
    }
    out.insert("handshake_timeout".into(), dur(l.handshake_timeout));
    let greeting = match l.greeting {
        GreetingMode::Flexgate => "flexgate",
        GreetingMode::Server => "server",
    };
    out.insert("greeting".into(), s(greeting));
    out.insert("allow".into(), rules(&l.allow));
    out.insert("deny".into(), rules(&l.deny));
    let lim = &l.limits;
    out.insert("max_connections".into(), Value::Integer(i64::from(lim.max_connections)));
    if let Some(n) = lim.max_connections_per_ip {
        out.insert("max_connections_per_ip".into(), Value::Integer(i64::from(n)));
    }
    out.insert("max_preauth_per_ip".into(), Value::Integer(i64::from(lim.max_preauth_per_ip)));
    if let Some(r) = &lim.connect_rate_per_ip {
        out.insert("connect_rate_per_ip".into(), s(r));
    }
    if let Some(p) = &l.proxy_protocol {
        let mut pp = Table::new();
        pp.insert("trusted".into(), Value::Array(p.trusted.iter().map(s).collect()));
        out.insert("proxy_protocol".into(), Value::Table(pp));
    }
    out.insert("auth_mode".into(), s(l.auth_mode.as_str()));
    out.insert("tls".into(), Value::Table(tls(&l.tls)));
    out
}

/// The effective config as a TOML table.
pub(super) fn effective(cfg: &Config) -> Table {
    let mut root = Table::new();
    let mut backend = Table::new();
    let b = &cfg.backend;
    backend.insert(
        "address".into(),
        match &b.address {
            BackendAddress::Unix(p) => s(format!("unix:{}", p.display())),
            a @ BackendAddress::Tcp { .. } => s(a),
        },
    );
    backend.insert("connect_timeout".into(), dur(b.connect_timeout));
    if let Some(v) = b.proxy_protocol {
        backend.insert("proxy_protocol".into(), s(format!("{v:?}").to_lowercase()));
    }
    let mut btls = Table::new();
    let mode = match b.tls.mode {
        BackendTlsMode::Disabled => "disabled",
        BackendTlsMode::Required => "required",
        BackendTlsMode::VerifyCa => "verify-ca",
        BackendTlsMode::VerifyIdentity => "verify-identity",
    };
    btls.insert("mode".into(), s(mode));
    if let Some(ca) = &b.tls.ca {
        btls.insert("ca".into(), path(ca));
    }
    if let Some(n) = &b.tls.server_name {
        btls.insert("server_name".into(), s(n));
    }
    backend.insert("tls".into(), Value::Table(btls));
    root.insert("backend".into(), Value::Table(backend));
    root.insert("tls".into(), Value::Table(tls(&cfg.tls)));
    root.insert("listener".into(), Value::Array(cfg.listeners.iter().map(|l| Value::Table(listener(l))).collect()));
    let mut sets = Table::new();
    for (name, set) in &cfg.ipsets {
        let mut t = Table::new();
        t.insert("file".into(), path(&set.file));
        t.insert("format".into(), s(format!("{:?}", set.format)));
        if !set.tags.is_empty() {
            t.insert("tags".into(), Value::Array(set.tags.iter().map(s).collect()));
        }
        sets.insert(name.clone(), Value::Table(t));
    }
    if !sets.is_empty() {
        root.insert("ipsets".into(), Value::Table(sets));
    }
    let mut dns = Table::new();
    dns.insert("nameservers".into(), Value::Array(cfg.dns.nameservers.iter().map(s).collect()));
    dns.insert("min_ttl".into(), dur(cfg.dns.min_ttl));
    dns.insert("max_ttl".into(), dur(cfg.dns.max_ttl));
    dns.insert("keep_stale".into(), dur(cfg.dns.keep_stale));
    root.insert("dns".into(), Value::Table(dns));
    if let Some(a) = &cfg.admin {
        let mut t = Table::new();
        t.insert("address".into(), s(a.address));
        if let Some(f) = &a.token_file {
            t.insert("token_file".into(), path(f));
        }
        t.insert("backend_retry".into(), dur(a.backend_retry));
        root.insert("admin".into(), Value::Table(t));
    }
    let mut shutdown = Table::new();
    shutdown.insert("drain_timeout".into(), dur(cfg.shutdown.drain_timeout));
    root.insert("shutdown".into(), Value::Table(shutdown));
    if let Some(k) = &cfg.key_guard {
        root.insert("key_guard".into(), Value::Table(key_guard(k)));
    }
    root.insert("auth".into(), Value::Table(auth(&cfg.auth)));
    redact(&mut root);
    root
}

fn secret(t: &mut Table, key: &str, src: &SecretSource) {
    match src {
        SecretSource::File(p) => t.insert(format!("{key}_file"), path(p)),
        SecretSource::Env(v) => t.insert(format!("{key}_env"), s(v)),
    };
}

fn auth(a: &AuthConfig) -> Table {
    let mut out = Table::new();
    out.insert("mode".into(), s(a.mode.as_str()));
    let Some(e) = &a.entra else { return out };
    let mut t = Table::new();
    t.insert("tenant_id".into(), s(&e.tenant_id));
    t.insert("audiences".into(), Value::Array(e.audiences.iter().map(s).collect()));
    match &e.jwks {
        JwksSource::Https { url, ca } => {
            t.insert("jwks".into(), s(url));
            if let Some(ca) = ca {
                t.insert("jwks_ca".into(), path(ca));
            }
        }
        JwksSource::File(p) => {
            t.insert("jwks".into(), s(format!("file:{}", p.display())));
        }
    }
    t.insert("clock_skew".into(), dur(e.clock_skew));
    t.insert("on_token_expiry".into(), s(e.on_token_expiry.as_str()));
    let principals = e.principals.iter().map(|p| {
        let mut pt = Table::new();
        pt.insert("login".into(), s(&p.login));
        pt.insert("kind".into(), s(p.kind.as_str()));
        pt.insert("object_id".into(), s(&p.object_id));
        pt.insert("backend_user".into(), s(&p.backend_user));
        secret(&mut pt, "backend_password", &p.backend_password);
        pt.insert("admin".into(), Value::Boolean(p.admin));
        Value::Table(pt)
    });
    t.insert("principal".into(), Value::Array(principals.collect()));
    if let Some(g) = &e.graph {
        let mut gt = Table::new();
        gt.insert("client_id".into(), s(&g.client_id));
        secret(&mut gt, "client_secret", &g.client_secret);
        gt.insert("authority".into(), s(&g.authority));
        gt.insert("endpoint".into(), s(&g.endpoint));
        if let Some(ca) = &g.ca {
            gt.insert("ca".into(), path(ca));
        }
        gt.insert("cache_ttl".into(), dur(g.cache_ttl));
        t.insert("graph".into(), Value::Table(gt));
    }
    out.insert("entra".into(), Value::Table(t));
    out
}

fn key_guard(k: &KeyGuardConfig) -> Table {
    let mut t = Table::new();
    t.insert("check_interval".into(), dur(k.check_interval));
    t.insert("timeout".into(), dur(k.timeout));
    t.insert("grace".into(), dur(k.grace));
    t.insert("recover_after".into(), Value::Integer(i64::from(k.recover_after)));
    t.insert("on_inaccessible".into(), s(k.on_inaccessible.as_str()));
    let providers = k.providers.iter().map(|p| {
        let mut out = Table::new();
        out.insert("name".into(), s(&p.name));
        out.insert("kind".into(), s(p.kind.as_str()));
        if let Some(d) = p.timeout {
            out.insert("timeout".into(), dur(d));
        }
        match &p.kind {
            ProviderKind::File { path: file, format, key_ids, sha256 } => {
                out.insert("path".into(), path(file));
                if format.is_some() {
                    out.insert("format".into(), s("mariadb-file-key-management"));
                }
                if !key_ids.is_empty() {
                    out.insert(
                        "key_ids".into(),
                        Value::Array(key_ids.iter().map(|i| Value::Integer(i64::from(*i))).collect()),
                    );
                }
                if let Some(d) = sha256 {
                    out.insert("sha256".into(), s(d.iter().map(|b| format!("{b:02x}")).collect::<String>()));
                }
            }
            ProviderKind::Command { argv } => {
                out.insert("command".into(), Value::Array(argv.iter().map(s).collect()));
            }
            ProviderKind::Http { url, bearer_token_file, ca, expect } => {
                out.insert("url".into(), s(url));
                if let Some(f) = bearer_token_file {
                    out.insert("bearer_token_file".into(), path(f));
                }
                if let Some(f) = ca {
                    out.insert("ca".into(), path(f));
                }
                if let Some(e) = expect {
                    let mut x = Table::new();
                    x.insert("pointer".into(), s(&e.pointer));
                    if let Ok(v) = Value::try_from(e.equals.0.clone()) {
                        x.insert("equals".into(), v);
                    }
                    out.insert("expect".into(), Value::Table(x));
                }
            }
        }
        Value::Table(out)
    });
    t.insert("provider".into(), Value::Array(providers.collect()));
    t
}

/// Replaces the value of every secret-named key, at any depth.
fn redact(t: &mut Table) {
    for (k, v) in t.iter_mut() {
        if SECRET_KEYS.contains(&k.as_str()) {
            *v = s("<redacted>");
            continue;
        }
        match v {
            Value::Table(inner) => redact(inner),
            Value::Array(items) => {
                for i in items {
                    if let Value::Table(inner) = i {
                        redact(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(dur(Duration::from_secs(600)), s("10m"));
        assert_eq!(dur(Duration::from_millis(1500)), s("1500ms"));
        assert_eq!(dur(Duration::from_secs(7200)), s("2h"));
        assert_eq!(dur(Duration::from_secs(45)), s("45s"));
    }

    #[test]
    fn secret_keys_are_redacted_at_any_depth() {
        let mut t: Table = toml::from_str(
            "password = \"hunter2\"\n[a]\ntoken = \"t\"\n[[a.b]]\nclient_secret = \"x\"\nname = \"n\"\n",
        )
        .unwrap_or_default();
        redact(&mut t);
        let text = toml::to_string(&t).unwrap_or_default();
        assert!(!text.contains("hunter2") && !text.contains("\"t\"") && !text.contains("\"x\""), "{text}");
        assert!(text.contains("name = \"n\""), "{text}");
    }
}
