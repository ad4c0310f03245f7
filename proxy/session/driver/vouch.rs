//! The token path's I/O: take the client's Entra token (asking for it with an auth switch to
//! `mysql_clear_password` if the client did not send one), validate it, and only then dial
//! the server and log in as the mapped account with the secret flexgate holds. A refused token
//! never reaches the server, nor costs it a connection.
//!
//! The same steps serve a `COM_CHANGE_USER` to an Entra principal, on the session's own server
//! connection.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;
use zeroize::Zeroizing;

use super::{Ended, Exchanged, Identified, Phase, Session, framed};
use crate::auth::entra::{Accepted, Entra, EntraRefusal, Principal, Refused};
use crate::auth::login::{BackendLogin, Step};
use crate::backend::BackendStream;
use crate::config::OnTokenExpiry;
use crate::events::{EntraLogin, loggable};
use crate::protocol::{ChangeUser, codes};
use crate::session::SessionError;
use crate::session::admission::Denial;
use crate::session::handshake::{self, As, Identity};

/// The plugin that carries a token: the client sends it as a cleartext password.
pub(super) const CLEAR_PASSWORD: &[u8] = b"mysql_clear_password";

impl<C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Session<C> {
    /// Vouching → Ended.
    pub(super) async fn token_login(&mut self, i: Identified) -> Result<Phase, SessionError> {
        let Identified { promised, backend, identity, raw, cleartext } = i;
        drop(raw);
        let (entra, principal) = self.principal_for(&identity.user)?;
        let token = match cleartext {
            Some(t) => t,
            None => self.ask_token().await?,
        };
        self.vouch(&entra, &principal, &token).await?;
        drop(token);
        let live = match self.server(backend).await? {
            Ok(live) => live,
            Err(code) => return Ok(Phase::Ended(Ended::BackendRefused { code })),
        };
        let backend_tls = self.ctx.backend.uses_tls();
        let mut seq = 1;
        let caps = handshake::response_capabilities(&identity, live.capabilities, backend_tls);
        let mut stream = self.secure_backend(live.stream, live.capabilities, caps, &identity, &mut seq).await?;
        let (mut login, plugin, first) =
            BackendLogin::start(&principal.secret, &live.plugin, &live.nonce, stream.leg());
        let user = principal.backend_user.as_bytes();
        let response = handshake::response_as(
            &identity,
            promised,
            live.capabilities,
            live.mariadb_capabilities,
            backend_tls,
            &As { user, plugin, auth: &first },
        )
        .map_err(|m| SessionError::ServerChanged {
            backend: self.ctx.backend.label().to_owned(),
            missing: m.missing.0,
        })?;
        let response = Zeroizing::new(response);
        drop(first);
        self.send_backend(&mut stream, &mut seq, &response).await?;
        drop(response);
        self.follow_login(&mut stream, seq, &mut login, &principal).await?;
        self.identity = Some(identity);
        Ok(Phase::Ended(Ended::Authenticated(stream)))
    }

    /// A `COM_CHANGE_USER` to an Entra principal: the token is checked as at login, then the
    /// server leg changes to the mapped account.
    pub(super) async fn change_user_token(
        &mut self,
        backend: &mut BackendStream,
        cu: &ChangeUser<'_>,
        next: Identity,
    ) -> Result<Exchanged, SessionError> {
        let (entra, principal) = self.principal_for(&next.user)?;
        // A COM_CHANGE_USER's auth data has a one-byte length: at most 255 bytes, shorter than
        // any Entra token (mysql_async sends it cut off). The token is always asked for.
        let token = self.ask_token().await?;
        self.vouch(&entra, &principal, &token).await?;
        drop(token);
        let forwarded =
            Zeroizing::new(handshake::change_user_as(cu, next.capabilities, principal.backend_user.as_bytes()));
        let mut seq = 0;
        self.send_backend(backend, &mut seq, &forwarded).await?;
        drop(forwarded);
        // No nonce yet: the server answers the forced-switch plugin name with its own.
        let (mut login, _, _) = BackendLogin::start(&principal.secret, b"", &[], backend.leg());
        self.follow_login(backend, seq, &mut login, &principal).await?;
        if let Some(who) = self.attempt.take() {
            self.who = who;
        }
        self.identity = Some(next);
        Ok(Exchanged::Accepted)
    }

    /// The catalog entry for a login name the admission decision sent down the token path.
    fn principal_for(&self, user: &[u8]) -> Result<(Arc<Entra>, Arc<Principal>), SessionError> {
        let found = self.ctx.entra.as_ref().and_then(|e| Some((e.clone(), e.principal(user)?.clone())));
        found.ok_or_else(|| self.backend_protocol("token path without an Entra principal".into()))
    }

    /// Sends an AuthSwitchRequest to `mysql_clear_password` and reads the client's answer.
    async fn ask_token(&mut self) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let mut switch = Vec::with_capacity(2 + CLEAR_PASSWORD.len());
        switch.push(0xfe);
        switch.extend_from_slice(CLEAR_PASSWORD);
        switch.push(0);
        let packet = framed(self.client_seq, &switch);
        self.client_seq = self.client_seq.wrapping_add(1);
        self.write_client(&packet).await?;
        self.read_client().await?;
        Ok(Zeroizing::new(std::mem::take(&mut self.buf)))
    }

    /// Validates the token and records the attempt (event, metric, session expiry).
    async fn vouch(
        &mut self,
        entra: &Entra,
        principal: &Arc<Principal>,
        token: &[u8],
    ) -> Result<Accepted, SessionError> {
        self.plugin = Some(CLEAR_PASSWORD.to_vec());
        // Clients end a cleartext password with NUL.
        let token = token.strip_suffix(&[0]).unwrap_or(token);
        let mut event = entra_login(principal);
        let result = entra.authenticate(principal, token, SystemTime::now()).await;
        match result {
            Ok(accepted) => {
                let c = &accepted.claims;
                (event.tid, event.oid, event.appid) = (Some(c.tid.clone()), Some(c.oid.clone()), c.appid.clone());
                entra.metrics.login("ok");
                self.token_expiry = match entra.on_token_expiry {
                    OnTokenExpiry::KeepSession => None,
                    OnTokenExpiry::CloseSession => {
                        let at = c.exp + entra.skew();
                        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                        Some((c.exp, tokio::time::Instant::now() + left))
                    }
                };
                self.entra_login = Some(event);
                Ok(accepted)
            }
            Err(refused) => {
                if let Some(s) = &refused.subject {
                    (event.tid, event.oid, event.appid) = (Some(s.tid.clone()), s.oid.clone(), s.appid.clone());
                }
                event.reason = Some(refused.reason.as_str());
                entra.metrics.login(refused.reason.as_str());
                self.entra_login = Some(event);
                Err(SessionError::Entra { user: loggable(principal.login.as_bytes(), 80), refused: Box::new(refused) })
            }
        }
    }

    /// The admission decision's refusals that belong to the auth step carry the login name.
    pub(super) fn denied(&mut self, d: Denial, user: &[u8]) -> SessionError {
        let reason = match d {
            Denial::TokenNeedsTls => EntraRefusal::NeedsTls,
            Denial::PasswordDisabled => EntraRefusal::PasswordDisabled,
            other => return SessionError::Denied(other),
        };
        if let Some(entra) = &self.ctx.entra {
            entra.metrics.login(reason.as_str());
            self.entra_login =
                entra.principal(user).map(|p| EntraLogin { reason: Some(reason.as_str()), ..entra_login(p) });
        }
        SessionError::Entra { user: loggable(user, 80), refused: Box::new(Refused { reason, subject: None }) }
    }

    /// Runs flexgate's login exchange with the server to its end; on success relays the
    /// server's OK to the client as the answer to its last packet.
    async fn follow_login(
        &mut self,
        backend: &mut BackendStream,
        mut seq: u8,
        login: &mut BackendLogin<'_>,
        principal: &Principal,
    ) -> Result<(), SessionError> {
        let failed = |this: &Self, code: Option<u16>, detail: String| SessionError::MappedLogin {
            user: loggable(principal.login.as_bytes(), 80),
            backend_user: principal.backend_user.clone(),
            backend: this.ctx.backend.label().to_owned(),
            code,
            detail,
        };
        loop {
            self.read_backend(backend, &mut seq).await?;
            match login.on_server(&self.buf) {
                Ok(Step::Send(packet)) => self.send_backend(backend, &mut seq, &packet).await?,
                Ok(Step::Read) => {}
                Ok(Step::Done) => return self.relay_to_client().await,
                Ok(Step::Refused { code, message }) => {
                    warn!(
                        listener = %self.ctx.listener,
                        principal = %principal.login,
                        backend_user = %principal.backend_user,
                        code,
                        server_message = %message,
                        "the server refused the mapped account's login; check the principal's backend_user and its \
                         password"
                    );
                    return Err(failed(self, Some(code), message));
                }
                Err(e) => return Err(failed(self, None, e.to_string())),
            }
        }
    }

    /// `on_token_expiry = "close-session"`: the token's `exp` plus the skew has passed. The
    /// client gets ERR 1045 saying so, the server a `COM_QUIT`.
    pub(super) async fn close_for_expiry(&mut self, backend: &mut BackendStream, exp: SystemTime) {
        let user = self.who.user.clone().unwrap_or_default();
        let message = format!("Access denied for user '{user}': {}", EntraRefusal::SessionExpired(exp));
        self.close_with(backend, codes::ACCESS_DENIED, codes::STATE_ACCESS, &message).await;
        if let Some(entra) = &self.ctx.entra {
            entra.metrics.login("session_expired");
        }
        warn!(
            listener = %self.ctx.listener,
            client = %self.peer,
            user = %user,
            "session closed: its Microsoft Entra token expired (on_token_expiry = close-session)"
        );
    }
}

/// A login event's Entra part for `p`, before anything is known of the token.
fn entra_login(p: &Principal) -> EntraLogin {
    EntraLogin {
        principal: p.login.clone(),
        kind: p.kind.as_str(),
        backend_user: p.backend_user.clone(),
        tid: None,
        oid: None,
        appid: None,
        reason: None,
    }
}
