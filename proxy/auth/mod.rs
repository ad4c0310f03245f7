//! Authentication with credentials flexgate holds: Microsoft Entra ID token logins, and
//! flexgate's own login to the server as the account a principal maps to.
//!
//! The responses each auth plugin expects are computed in [`crate::protocol::scramble`]; the
//! exchange that uses them is [`login`]; the secrets live in a type that cannot reach a log.

pub mod entra;
pub mod login;
mod secret;

pub use secret::{Secret, SecretError};
