//! Authentication with credentials flexgate holds: the secrets of the server accounts that
//! Entra principals map to.
//!
//! The responses each auth plugin expects are computed in [`crate::protocol::scramble`]; this
//! module keeps the secrets themselves, in a type that cannot reach a log.

mod secret;

pub use secret::{Secret, SecretError};
