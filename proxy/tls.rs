//! rustls configurations built from validated settings: the client-facing acceptor with its
//! version floor, and the connector for the flexgate → server leg.
//!
//! This module knows nothing of MySQL packets: the SSLRequest exchange belongs to the session.
//! Configs are built once per process (never per connection) and shared through `Arc`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;

use crate::config::{BackendAddress, BackendConfig, BackendTlsMode, ClientTlsConfig, TlsVersion};

/// Why a TLS configuration could not be built. Each names the file and the config key.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{key}: {path}: {problem}")]
    Pem {
        /// Config key that named the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        problem: String,
    },
    /// rustls refused the assembled configuration (for example, a key that does not match its
    /// certificate).
    #[error("{key}: {source}")]
    Rustls {
        /// Config key the problem is attributed to.
        key: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        TlsVersion::Tls13 => TLS13_ONLY,
    }
}

/// A listener's TLS: the rustls config, and when its certificate expires (for the metrics and
/// `/status`; `None` if the certificate's validity could not be read).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// rustls server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate's `notAfter`.
    pub not_after: Option<std::time::SystemTime>,
}

/// The client-facing server config, or `None` when no certificate is configured (then flexgate
/// does not advertise `CLIENT_SSL`).
pub fn server_config(cfg: &ClientTlsConfig) -> Result<Option<ServerTls>, TlsSetupError> {
    let Some(identity) = &cfg.identity else { return Ok(None) };
    let chain = load_certs("tls.cert", &identity.cert)?;
    let not_after = chain.first().and_then(|c| not_after(c));
    let key = PrivateKeyDer::from_pem_file(&identity.key).map_err(|e| TlsSetupError::Pem {
        key: "tls.key",
        path: identity.key.clone(),
        problem: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {e}"),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(cfg.min_version))
        .map_err(|source| TlsSetupError::Rustls { key: "tls.min_version", source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsSetupError::Rustls { key: "tls.key", source })?;
    Ok(Some(ServerTls { config: Arc::new(config), not_after }))
}

/// A certificate's `notAfter`. rustls does not check a server's own certificate, so this is
/// the only place its validity is read.
fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    let d = std::time::Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        std::time::SystemTime::UNIX_EPOCH.checked_add(d)
    } else {
        std::time::SystemTime::UNIX_EPOCH.checked_sub(d)
    }
}

/// What the backend connector needs: a client config and the name to verify (or just to send
/// as SNI in `required` mode).
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// rustls client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// Name checked against the server's certificate.
    pub server_name: ServerName<'static>,
}

/// The backend connector, or `None` when `backend.tls.mode = "disabled"`.
pub fn backend_config(cfg: &BackendConfig) -> Result<Option<BackendTls>, TlsSetupError> {
    let tls = &cfg.tls;
    if tls.mode == BackendTlsMode::Disabled {
        return Ok(None);
    }
    let name = match (&tls.server_name, &cfg.address) {
        (Some(n), _) => n.clone(),
        (None, BackendAddress::Tcp { host, .. }) => host.clone(),
        (None, BackendAddress::Unix(_)) => "localhost".to_owned(),
    };
    let server_name = ServerName::try_from(name).map_err(|e| TlsSetupError::Rustls {
        key: "backend.tls.server_name",
        source: rustls::Error::General(format!("invalid server name: {e}")),
    })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|source| TlsSetupError::Rustls { key: "backend.tls.mode", source })?;
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, &tls.ca) {
        (BackendTlsMode::Required, _) => Arc::new(RelaxedVerifier { chain: None, provider: provider() }),
        (mode, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs("backend.tls.ca", ca)? {
                roots.add(cert).map_err(|source| TlsSetupError::Rustls { key: "backend.tls.ca", source })?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsSetupError::Rustls {
                    key: "backend.tls.ca",
                    source: rustls::Error::General(e.to_string()),
                })?;
            if mode == BackendTlsMode::VerifyCa {
                Arc::new(RelaxedVerifier { chain: Some(webpki), provider: provider() })
            } else {
                webpki
            }
        }
        (_, None) => {
            return Err(TlsSetupError::Rustls {
                key: "backend.tls.ca",
                source: rustls::Error::General("a CA is required to verify the server".into()),
            });
        }
    };
    let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(Some(BackendTls { config: Arc::new(config), server_name }))
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = |problem: String| TlsSetupError::Pem { key, path: path.to_path_buf(), problem };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The version as MySQL's `Ssl_version` and OpenSSL name it.
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

/// Human reason for a failed client handshake, for the log. rustls' own wording names protocol
/// internals; operators want to know which side has to change.
pub fn describe_handshake_failure(e: &io::Error, min: TlsVersion) -> String {
    use rustls::PeerIncompatible as P;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return format!("transport error during TLS handshake: {e}");
    };
    match tls {
        rustls::Error::PeerIncompatible(P::Tls12NotOffered) => {
            "client offered only TLS 1.1 or older, which are insecure and not accepted".into()
        }
        rustls::Error::PeerIncompatible(P::Tls12NotOfferedOrEnabled | P::SupportedVersionsExtensionRequired)
            if min == TlsVersion::Tls13 =>
        {
            "client did not offer TLS 1.3, which this listener requires (tls.min_version = \"1.3\")".into()
        }
        rustls::Error::PeerIncompatible(P::NoCipherSuitesInCommon) => "client offered no cipher suite in common".into(),
        rustls::Error::InvalidMessage(_) => format!("client sent something that is not TLS: {tls}"),
        other => other.to_string(),
    }
}

/// The two relaxed modes, as MySQL's `--ssl-mode` names them:
/// - `required` (`chain: None`): encrypt, but accept any certificate;
/// - `verify-ca` (`chain: Some`): the chain must lead to the configured CA, but the name is not
///   checked.
///
/// Handshake signatures are checked in both, so the handshake itself is sound.
#[derive(Debug)]
struct RelaxedVerifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for RelaxedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_say_which_side_must_change() {
        let old = wrapped(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered));
        assert!(describe_handshake_failure(&old, TlsVersion::Tls12).contains("only TLS 1.1 or older"));
        for p in [
            rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        ] {
            let msg = describe_handshake_failure(&wrapped(rustls::Error::PeerIncompatible(p)), TlsVersion::Tls13);
            assert!(msg.contains("did not offer TLS 1.3"), "{msg}");
        }
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert!(describe_handshake_failure(&eof, TlsVersion::Tls12).starts_with("transport error"));
    }

    #[test]
    fn version_names_match_mysql() {
        assert_eq!(version_name(rustls::ProtocolVersion::TLSv1_3), "TLSv1.3");
        assert_eq!(version_name(rustls::ProtocolVersion::TLSv1_2), "TLSv1.2");
    }
}
