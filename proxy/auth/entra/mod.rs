//! Microsoft Entra ID token logins: the principal catalog, token validation against the
//! tenant's signing keys, and the identity check that ties a token to a principal.
//!
//! A principal is found by the login name the client sends, but authorised only by ids in a
//! verified token: `oid` for a user, membership of `oid` in the group for a group, the client
//! id (`appid`/`azp`) of an app-only token for an app. Names in the token are never read.

pub mod graph;
pub mod jwks;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

pub use graph::Graph;
pub use jwks::{JwksError, JwksStore};
pub use token::{KeySet, Rejected, Rules, Subject, TokenError, Verified};

use super::{Secret, SecretError};
use crate::config::{EntraConfig, OnTokenExpiry, PrincipalKind, SecretSource};
use crate::metrics::Metrics;

/// One catalog entry, with its server account's secret read in.
pub struct Principal {
    /// The login name.
    pub login: String,
    /// User, group or app.
    pub kind: PrincipalKind,
    /// The object id (user, group) or client id (app).
    pub object_id: String,
    /// The server account.
    pub backend_user: String,
    /// Its password.
    pub secret: Secret,
    /// The Entra administrator.
    pub admin: bool,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("login", &self.login)
            .field("kind", &self.kind)
            .field("object_id", &self.object_id)
            .field("backend_user", &self.backend_user)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Why an Entra login was refused: the token, or what it says about who holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraRefusal {
    /// The token itself.
    #[error(transparent)]
    Token(TokenError),
    /// A valid token for another user (or app).
    #[error("the token belongs to another identity than the one this login name is mapped to")]
    WrongIdentity,
    /// A user token for an app principal, or an app token for a user or group.
    #[error("this login name is mapped to {0}, and the token is not of that kind")]
    WrongKind(&'static str),
    /// Not a member of the principal's group.
    #[error("the token's identity is not a member of the group this login name is mapped to")]
    NotMember,
    /// A group login without `groups` in the token and no Graph to ask.
    #[error(
        "the token lists no groups and flexgate has no [auth.entra.graph] to ask Microsoft Graph; ask the operator to configure it"
    )]
    NoGroupClaim,
    /// Graph could not answer (the detail is logged, not sent to the client).
    #[error("group membership could not be checked with Microsoft Graph; try again later, or tell the operator")]
    GraphUnavailable(String),
    /// An Entra principal on a transport that would expose its token.
    #[error(
        "a Microsoft Entra token is sent as a cleartext password, so it needs TLS: connect with --ssl (or a driver's ssl option)"
    )]
    NeedsTls,
    /// A password login where only Entra logins are allowed.
    #[error(
        "password logins are disabled on this server; log in with a Microsoft Entra access token as the password (mysql_clear_password over TLS)"
    )]
    PasswordDisabled,
    /// The token went past its `exp` during the session (`on_token_expiry = "close-session"`).
    #[error("the Microsoft Entra token of this session expired at {}; reconnect with a new token", httpdate::fmt_http_date(*.0))]
    SessionExpired(SystemTime),
}

impl EntraRefusal {
    /// A short stable label for logs, events and metrics.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Token(t) => t.as_str(),
            Self::WrongIdentity => "wrong_identity",
            Self::WrongKind(_) => "wrong_kind",
            Self::NotMember => "not_member",
            Self::NoGroupClaim => "no_group_claim",
            Self::GraphUnavailable(_) => "graph_unavailable",
            Self::NeedsTls => "token_needs_tls",
            Self::PasswordDisabled => "password_disabled",
            Self::SessionExpired(_) => "session_expired",
        }
    }
}

/// A refusal with whom the token named, for the log and the login event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: EntraRefusal,
    /// Whom, if the token's signature verified.
    pub subject: Option<Subject>,
}

/// An accepted token login.
#[derive(Debug)]
pub struct Accepted {
    /// The principal it logs in as.
    pub principal: Arc<Principal>,
    /// The token's claims.
    pub claims: Verified,
}

/// Why the Entra part of a config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EntraSetupError {
    /// A held secret could not be read.
    #[error("{key}: {source}")]
    Secret {
        /// The config key.
        key: String,
        /// Cause.
        source: SecretError,
    },
    /// The key set.
    #[error("auth.entra.jwks: {0}")]
    Jwks(#[from] JwksError),
    /// The Graph client.
    #[error("auth.entra.graph: {0}")]
    Graph(crate::https::ClientError),
}

/// Reads a held secret.
pub fn read_secret(src: &SecretSource) -> Result<Secret, SecretError> {
    match src {
        SecretSource::File(p) => Secret::from_file(p),
        SecretSource::Env(v) => Secret::from_env(v),
    }
}

/// Counters of the Entra path; labels are fixed lists.
#[derive(Clone, Debug)]
pub struct EntraMetrics {
    logins: Family<ResultLabel, Counter>,
    jwks_fetches: Family<ResultLabel, Counter>,
    jwks_keys: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl EntraMetrics {
    /// Registers `flexgate_entra_logins_total{result}`, `flexgate_entra_jwks_fetches_total{result}`
    /// and `flexgate_entra_jwks_keys`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self { logins: Family::default(), jwks_fetches: Family::default(), jwks_keys: Gauge::default() };
        metrics.register(
            "entra_logins",
            "Microsoft Entra token logins and change-users, by result (ok, or the refusal reason)",
            m.logins.clone(),
        );
        metrics.register(
            "entra_jwks_fetches",
            "Fetches of the Entra signing key set, by result (ok, error, throttled)",
            m.jwks_fetches.clone(),
        );
        metrics.register("entra_jwks_keys", "Signing keys in the Entra key set now in use", m.jwks_keys.clone());
        m
    }

    /// A token login ended: `ok` or a refusal reason.
    pub fn login(&self, result: &'static str) {
        self.logins.get_or_create(&ResultLabel { result }).inc();
    }

    fn jwks_fetch(&self, result: &'static str) {
        self.jwks_fetches.get_or_create(&ResultLabel { result }).inc();
    }

    fn jwks_keys(&self, n: usize) {
        self.jwks_keys.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The Entra part of one config generation.
#[derive(Debug)]
pub struct Entra {
    rules: Rules,
    jwks: Arc<JwksStore>,
    graph: Option<Graph>,
    principals: HashMap<Vec<u8>, Arc<Principal>>,
    /// What happens at a session's token expiry.
    pub on_token_expiry: OnTokenExpiry,
    /// Where results are counted.
    pub metrics: EntraMetrics,
}

impl Entra {
    /// Builds the catalog (reading every secret) around a key store the caller keeps across
    /// reloads.
    pub fn build(cfg: &EntraConfig, jwks: Arc<JwksStore>, metrics: EntraMetrics) -> Result<Self, EntraSetupError> {
        let mut principals = HashMap::with_capacity(cfg.principals.len());
        for (i, p) in cfg.principals.iter().enumerate() {
            let secret = read_secret(&p.backend_password).map_err(|source| EntraSetupError::Secret {
                key: format!("auth.entra.principal[{i}].backend_password"),
                source,
            })?;
            principals.insert(
                p.login.as_bytes().to_vec(),
                Arc::new(Principal {
                    login: p.login.clone(),
                    kind: p.kind,
                    object_id: p.object_id.clone(),
                    backend_user: p.backend_user.clone(),
                    secret,
                    admin: p.admin,
                }),
            );
        }
        let graph = match &cfg.graph {
            Some(g) => {
                let secret = read_secret(&g.client_secret).map_err(|source| EntraSetupError::Secret {
                    key: "auth.entra.graph.client_secret".into(),
                    source,
                })?;
                Some(Graph::new(g, &cfg.tenant_id, secret).map_err(EntraSetupError::Graph)?)
            }
            None => None,
        };
        Ok(Self {
            rules: Rules { tenant: cfg.tenant_id.clone(), audiences: cfg.audiences.clone(), skew: cfg.clock_skew },
            jwks,
            graph,
            principals,
            on_token_expiry: cfg.on_token_expiry,
            metrics,
        })
    }

    /// The principal a login name maps to.
    pub fn principal(&self, login: &[u8]) -> Option<&Arc<Principal>> {
        self.principals.get(login)
    }

    /// The allowed clock skew.
    pub fn skew(&self) -> Duration {
        self.rules.skew
    }

    /// The key store.
    pub fn jwks(&self) -> &Arc<JwksStore> {
        &self.jwks
    }

    /// Validates `token` for `principal` at `now`.
    pub async fn authenticate(
        &self,
        principal: &Arc<Principal>,
        token: &[u8],
        now: SystemTime,
    ) -> Result<Accepted, Refused> {
        let keys = self.jwks.current();
        let verified = match token::validate(token, &keys, &self.rules, now) {
            Err(Rejected { error: TokenError::UnknownKey(kid), .. }) => {
                // A rotated key: fetch the set again (throttled), then retry once.
                let keys = self.jwks.forced_refresh(&kid).await;
                token::validate(token, &keys, &self.rules, now)
            }
            other => other,
        };
        let claims = verified.map_err(|r| Refused { reason: EntraRefusal::Token(r.error), subject: r.subject })?;
        let subject = Subject { tid: claims.tid.clone(), oid: Some(claims.oid.clone()), appid: claims.appid.clone() };
        let refuse = |reason| Refused { reason, subject: Some(subject.clone()) };
        match principal.kind {
            PrincipalKind::User if claims.is_app() => return Err(refuse(EntraRefusal::WrongKind("a user"))),
            PrincipalKind::User if claims.oid != principal.object_id => {
                return Err(refuse(EntraRefusal::WrongIdentity));
            }
            PrincipalKind::User => {}
            PrincipalKind::App if !claims.is_app() => {
                return Err(refuse(EntraRefusal::WrongKind("an application (app-only token, idtyp = app)")));
            }
            PrincipalKind::App if claims.appid.as_deref() != Some(principal.object_id.as_str()) => {
                return Err(refuse(EntraRefusal::WrongIdentity));
            }
            PrincipalKind::App => {}
            PrincipalKind::Group => {
                let member = match (&claims.groups, &self.graph) {
                    (Some(groups), _) => groups.iter().any(|g| *g == principal.object_id),
                    (None, Some(graph)) => match graph.is_member(&claims.oid, &principal.object_id).await {
                        Ok(member) => member,
                        Err(e) => {
                            tracing::warn!(principal = %principal.login, oid = %claims.oid, error = %e, "Microsoft Graph membership check failed");
                            return Err(refuse(EntraRefusal::GraphUnavailable(e)));
                        }
                    },
                    (None, None) => return Err(refuse(EntraRefusal::NoGroupClaim)),
                };
                if !member {
                    return Err(refuse(EntraRefusal::NotMember));
                }
            }
        }
        Ok(Accepted { principal: principal.clone(), claims })
    }
}
