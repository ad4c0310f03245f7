//! flexgate: a security gateway for MySQL and MariaDB.
//!
//! A transparent proxy that gives a self-hosted MySQL-protocol server the envelope of a managed
//! one: TLS termination with a version floor and secure-transport enforcement, then untouched
//! pass-through of query traffic. See `README.md` for operation; this crate's modules follow
//! the concerns listed there, with the protocol core in the `mysql-wire` crate.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

/// Implements tokio's `AsyncRead` and `AsyncWrite` for an enum of streams by delegating to the
/// live variant (each variant holds one `Unpin` stream). Static dispatch: the relay's per-call
/// cost is one match. An enum generic over its transport is written `Name<C>`.
macro_rules! delegate_async_io {
    ($ty:ident $(<$g:ident>)? { $($variant:ident),+ }) => {
        impl$(<$g: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncRead for $ty$(<$g>)? {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => std::pin::Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
        impl$(<$g: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncWrite for $ty$(<$g>)? {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(s) => std::pin::Pin::new(s).poll_write(cx, buf),)+ }
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),)+ }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $(Self::$variant(s) => s.is_write_vectored(),)+ }
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => std::pin::Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => std::pin::Pin::new(s).poll_shutdown(cx),)+ }
            }
        }
    };
}

pub mod admin;
pub mod auth;
pub mod backend;
pub mod breaker;
pub mod config;
pub mod events;
pub mod firewall;
pub mod health;
pub mod https;
pub mod limits;
pub mod metrics;
pub mod profile;
pub mod protocol;
pub mod proxy_protocol;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod session;
pub mod systemd;
pub mod tls;
pub mod watch;
