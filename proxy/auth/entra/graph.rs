//! Group membership from Microsoft Graph, for group logins whose token carries no `groups`
//! claim (tokens for Microsoft's `ossrdbms-aad` resource never do) or an overage.
//!
//! flexgate signs in as its own app registration (client credentials), then asks
//! `POST /v1.0/directoryObjects/{oid}/checkMemberGroups`, which is transitive and works for
//! users and service principals alike. Answers are cached per (object, group) for
//! `cache_ttl`; the app token until a minute before it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::auth::Secret;
use crate::config::GraphConfig;

/// Bound on one Graph exchange (token and query).
pub const GRAPH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 256 * 1024;
/// Cached answers kept at most, so that a stream of distinct objects cannot grow memory.
const MAX_CACHED: usize = 10_000;

/// A Microsoft Graph client for membership checks.
pub struct Graph {
    client_id: String,
    secret: Secret,
    token_url: String,
    endpoint: String,
    scope: String,
    ttl: Duration,
    client: reqwest::Client,
    app_token: tokio::sync::Mutex<Option<(Zeroizing<String>, Instant)>>,
    answers: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("client_id", &self.client_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct MemberAnswer {
    value: Vec<String>,
}

impl Graph {
    /// A client for `cfg` in `tenant`, holding `secret`.
    pub fn new(cfg: &GraphConfig, tenant: &str, secret: Secret) -> Result<Self, crate::https::ClientError> {
        Ok(Self {
            client_id: cfg.client_id.clone(),
            secret,
            token_url: format!("{}/{tenant}/oauth2/v2.0/token", cfg.authority),
            endpoint: cfg.endpoint.clone(),
            scope: format!("{}/.default", cfg.endpoint),
            ttl: cfg.cache_ttl,
            client: crate::https::client(cfg.ca.as_deref(), Duration::from_secs(5), "entra graph")?,
            app_token: tokio::sync::Mutex::new(None),
            answers: Mutex::default(),
        })
    }

    /// Whether `oid` is a member (directly or through nested groups) of `group`.
    pub async fn is_member(&self, oid: &str, group: &str) -> Result<bool, String> {
        let key = (oid.to_owned(), group.to_owned());
        if let Some((member, at)) = self.lock().get(&key).copied()
            && at.elapsed() < self.ttl
        {
            return Ok(member);
        }
        let member = match tokio::time::timeout(GRAPH_TIMEOUT, self.ask(oid, group)).await {
            Ok(r) => r?,
            Err(_) => return Err(format!("Microsoft Graph did not answer within {GRAPH_TIMEOUT:?}")),
        };
        let mut answers = self.lock();
        if answers.len() >= MAX_CACHED {
            let ttl = self.ttl;
            answers.retain(|_, (_, at)| at.elapsed() < ttl);
            if answers.len() >= MAX_CACHED {
                answers.clear();
            }
        }
        answers.insert(key, (member, Instant::now()));
        Ok(member)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (bool, Instant)>> {
        self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn ask(&self, oid: &str, group: &str) -> Result<bool, String> {
        let token = self.app_token().await?;
        let url = format!("{}/v1.0/directoryObjects/{oid}/checkMemberGroups", self.endpoint);
        let body = serde_json::json!({ "groupIds": [group] }).to_string();
        let resp = self
            .client
            .post(&url)
            .bearer_auth(token.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("Microsoft Graph: {}", crate::https::error_chain(&e)))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            // The app token was revoked or expired early: fetch a new one next time.
            *self.app_token.lock().await = None;
        }
        let body = crate::https::body(resp, MAX_ANSWER)
            .await
            .map_err(|e| format!("Microsoft Graph checkMemberGroups: {e}"))?;
        let answer: MemberAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("Microsoft Graph checkMemberGroups: not the expected answer ({e})"))?;
        Ok(answer.value.iter().any(|g| g.eq_ignore_ascii_case(group)))
    }

    async fn app_token(&self) -> Result<Zeroizing<String>, String> {
        let mut held = self.app_token.lock().await;
        if let Some((token, until)) = held.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let secret = std::str::from_utf8(self.secret.expose())
            .map_err(|_| "auth.entra.graph.client_secret is not UTF-8".to_owned())?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", secret),
            ("scope", self.scope.as_str()),
        ];
        let resp = self
            .client
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("Microsoft Entra token endpoint: {}", crate::https::error_chain(&e)))?;
        let body = crate::https::body(resp, MAX_ANSWER)
            .await
            .map_err(|e| format!("Microsoft Entra token endpoint (client credentials of auth.entra.graph): {e}"))?;
        let body = Zeroizing::new(body);
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| "Microsoft Entra token endpoint: the answer holds no access_token".to_owned())?;
        let token = Zeroizing::new(answer.access_token);
        // Entra's app tokens live about an hour; a larger claim is not believed.
        let life = Duration::from_secs(answer.expires_in.unwrap_or(3599).min(86_400));
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(60));
        *held = Some((token.clone(), until));
        Ok(token)
    }
}
