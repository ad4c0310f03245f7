//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics` and `/status`.
//!
//! It runs on its own socket (loopback by default), apart from the MySQL listeners, and keeps
//! answering while flexgate drains, so that an orchestrator sees the drain. The probes are
//! open; `/metrics` and `/status` take the bearer token from `admin.token_file` when one is
//! set, re-read at each request so that a rotated token applies at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::runtime::Shared;
use crate::server::ReloadStatus;

/// The OpenMetrics content type that Prometheus negotiates for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    shared: Arc<Shared>,
    status: watch::Receiver<ReloadStatus>,
    token_file: Option<PathBuf>,
    started: Instant,
    started_at: SystemTime,
}

impl AdminState {
    /// The state of a running proxy.
    pub fn new(shared: Arc<Shared>, status: watch::Receiver<ReloadStatus>, token_file: Option<PathBuf>) -> Self {
        Self { shared, status, token_file, started: Instant::now(), started_at: SystemTime::now() }
    }
}

/// The routes, for `serve` and for tests that call them without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let addr = listener.local_addr().map_or_else(|_| "?".into(), |a: SocketAddr| a.to_string());
    info!(address = %addr, auth = state.token_file.is_some(), "admin API listening");
    let served =
        axum::serve(listener, router(state)).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    if let Err(e) = served {
        warn!(error = %e, "admin API stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let v = s.shared.readiness.check();
    let mut body = String::new();
    for (name, c) in &v.conditions {
        body.push_str(&format!("{name}: {} ({})\n", if c.ok { "ok" } else { "failing" }, c.detail));
    }
    if v.ready {
        (StatusCode::OK, format!("ready\n{body}"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{body}"))
    }
}

async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers).await {
        return r;
    }
    match s.shared.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n").into_response(),
    }
}

async fn status(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers).await {
        return r;
    }
    let body = status_json(&s);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], format!("{body:#}\n")).into_response()
}

/// Checks the bearer token, in constant time. No token file: open (loopback by default).
async fn authorize(s: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(path) = &s.token_file else { return Ok(()) };
    let path = path.clone();
    let expected = tokio::task::spawn_blocking(move || crate::config::read_token(&path)).await;
    let Ok(Ok(expected)) = expected else {
        warn!("admin.token_file cannot be read; refusing authenticated requests");
        return Err((StatusCode::SERVICE_UNAVAILABLE, "the admin token file cannot be read\n").into_response());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected.as_bytes()).is_ok() {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            "a bearer token is required (Authorization: Bearer <the token in admin.token_file>)\n",
        )
            .into_response())
    }
}

/// Unix seconds, as every time in `/status` is given.
pub(crate) fn unix(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The `/status` document.
pub fn status_json(s: &AdminState) -> Value {
    let shared = &s.shared;
    let st = s.status.borrow().clone();
    let readiness = shared.readiness.check();
    let conditions: serde_json::Map<String, Value> = readiness
        .conditions
        .iter()
        .map(|(n, c)| ((*n).to_owned(), json!({ "ok": c.ok, "detail": c.detail, "since_unix": unix(c.since) })))
        .collect();
    let certs = shared.metrics.certificates();
    let now = SystemTime::now();
    let listeners: Vec<Value> = st
        .listeners
        .iter()
        .map(|(name, address)| {
            let gate = shared.gate(name);
            let counts = shared.metrics.listener(name);
            let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let certificate = certs
                .get(name)
                .map(|t| json!({ "not_after_unix": unix(*t), "expires_in_seconds": (unix(*t) - unix(now)).round() }));
            json!({
                "name": name,
                "address": address,
                "sessions_active": counts.active_count(),
                "accepted": counts.accepted_count(),
                "refused": {
                    "firewall": load(&gate.refused_firewall),
                    "limit": load(&gate.refused_limit),
                    "proxy_header": load(&gate.refused_proxy),
                    "draining": load(&gate.refused_draining),
                    "key_unavailable": load(&gate.refused_key),
                },
                "certificate": certificate,
            })
        })
        .collect();
    let (last_ok, last_detail) = match &st.last {
        Ok(d) => (true, d.clone()),
        Err(e) => (false, e.clone()),
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started_unix": unix(s.started_at),
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "ready": readiness.ready,
        "readiness": conditions,
        "draining": shared.draining.is_cancelled(),
        "config": {
            "file": st.file,
            "generation": st.generation,
            "hash": st.hash,
            "reload_attempts": st.attempts,
            "last_reload": { "ok": last_ok, "detail": last_detail },
        },
        "backend": {
            "address": shared.backend.label(),
            "reachable": shared.dials.is_reachable(),
        },
        "listeners": listeners,
        "sessions": {
            "active": shared.metrics.active(),
            "accepted": shared.metrics.accepted_total(),
            "with_connection_id": shared.registry.len(),
        },
        "breaker": shared.key.report().to_json(),
        // Filled in by the Entra authentication when it exists.
        "jwks": Value::Null,
    })
}
