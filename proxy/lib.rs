//! flexgate: a security gateway for MySQL and MariaDB.
//!
//! A transparent proxy that gives a self-hosted MySQL-protocol server the envelope of a managed
//! one: TLS termination with a version floor and secure-transport enforcement, then untouched
//! pass-through of query traffic. See `README.md` for operation; this crate's modules follow
//! the concerns listed there, with the protocol core in the `mysql-wire` crate.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod tls;
