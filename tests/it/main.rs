//! Integration tests: real MariaDB, real clients, flexgate in between.

mod harness;

mod backend;
mod bounds;
mod breaker;
mod change_user;
mod cli;
mod compat;
mod data;
mod dns;
mod entra;
mod entra_support;
mod entra_support_selftest;
mod firewall;
mod isolation;
mod kill;
mod login;
mod ops;
mod outcomes;
mod proxy_protocol;
mod reload;
mod server_greeting;
mod service;
mod sha2_rsa;
mod tls;
