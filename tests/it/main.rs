//! Integration tests: real MariaDB, real clients, flexgate in between.

mod harness;

mod backend;
mod bounds;
mod cli;
mod data;
mod login;
mod sha2_rsa;
mod tls;
