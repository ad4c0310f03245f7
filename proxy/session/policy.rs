//! The session's decisions, as plain functions over plain data so that they are tested without
//! sockets.

use crate::protocol::Capabilities;

/// Capabilities flexgate advertises to the client: the server's, with TLS offered exactly when
/// flexgate has a certificate, and protocol compression withdrawn. Compression would hide
/// command boundaries from flexgate (and costs CPU on both legs for little gain on the short hop
/// to the server), so clients are never offered it.
pub(super) fn greeting_capabilities(server: Capabilities, offer_tls: bool) -> Capabilities {
    let caps = server.without(Capabilities::COMPRESS).without(Capabilities::ZSTD_COMPRESSION);
    if offer_tls { caps.with(Capabilities::SSL) } else { caps.without(Capabilities::SSL) }
}

/// Capabilities sent to the server on the client's behalf: the client's own, with `CLIENT_SSL`
/// describing the flexgate → server leg rather than the client's.
pub(super) fn backend_capabilities(client: Capabilities, backend_tls: bool) -> Capabilities {
    if backend_tls { client.with(Capabilities::SSL) } else { client.without(Capabilities::SSL) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARIADB: Capabilities = Capabilities(0x81ff_f7fe | 0x0800 | 0x0020);

    #[test]
    fn greeting_offers_tls_only_with_a_certificate_and_never_compression() {
        for (server, tls) in [(MARIADB, true), (MARIADB, false), (MARIADB.without(Capabilities::SSL), true)] {
            let c = greeting_capabilities(server, tls);
            assert_eq!(c.contains(Capabilities::SSL), tls);
            assert!(!c.contains(Capabilities::COMPRESS));
            assert!(!c.contains(Capabilities::ZSTD_COMPRESSION));
            // Everything else is the server's.
            assert_eq!(c.without(Capabilities::SSL), server.without(Capabilities::SSL).without(Capabilities::COMPRESS));
        }
    }

    #[test]
    fn backend_ssl_flag_follows_the_backend_leg() {
        let client = Capabilities(0x000a_a20d).with(Capabilities::SSL);
        assert!(!backend_capabilities(client, false).contains(Capabilities::SSL));
        assert!(backend_capabilities(client.without(Capabilities::SSL), true).contains(Capabilities::SSL));
        assert_eq!(backend_capabilities(client, false).with(Capabilities::SSL), client);
    }
}
