//! [`Secret`]: a held password, which nothing can print.
//!
//! A `String` in a config struct ends up in a `Debug` dump sooner or later. A `Secret` has a
//! redacting `Debug`, no `Display`, no `Clone` and no `Serialize`, and its bytes are zeroed when
//! it is dropped, so that the only way to use it is to ask for its bytes where a scramble is
//! computed.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

/// The most a secret file may hold: a password, not a file.
const MAX_SECRET: u64 = 64 * 1024;

/// A password held for a server account.
pub struct Secret(Zeroizing<Vec<u8>>);

/// Why a secret could not be read. Never holds the secret.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read the secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is larger than a password can be.
    #[error("the secret file {path} is larger than {MAX_SECRET} bytes; it must hold only the password")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The environment variable is not set (or not UTF-8).
    #[error("the environment variable {name} is not set")]
    Env {
        /// The variable.
        name: String,
    },
    /// Empty: an account without a password is not a held credential.
    #[error("{origin} is empty")]
    Empty {
        /// The file or variable.
        origin: String,
    },
}

impl Secret {
    /// The secret in `path`: its content without one trailing newline (`\n` or `\r\n`), as
    /// `echo` and editors leave it. Files under `/run/secrets` and systemd credentials are
    /// written that way.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        use std::io::Read;
        let file_err = |source| SecretError::File { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(file_err)?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_SECRET + 1).read_to_end(&mut bytes).map_err(file_err)?;
        if bytes.len() as u64 > MAX_SECRET {
            return Err(SecretError::TooLarge { path: path.to_path_buf() });
        }
        for end in [&b"\r\n"[..], b"\n"] {
            if bytes.ends_with(end) {
                let keep = bytes.len() - end.len();
                bytes.truncate(keep);
                break;
            }
        }
        Self::new(bytes, || path.display().to_string())
    }

    /// The secret in environment variable `name`, as it is.
    pub fn from_env(name: &str) -> Result<Self, SecretError> {
        let value = std::env::var(name).map_err(|_| SecretError::Env { name: name.to_owned() })?;
        Self::new(Zeroizing::new(value.into_bytes()), || format!("the environment variable {name}"))
    }

    fn new(bytes: Zeroizing<Vec<u8>>, origin: impl FnOnce() -> String) -> Result<Self, SecretError> {
        if bytes.is_empty() {
            return Err(SecretError::Empty { origin: origin() });
        }
        Ok(Self(bytes))
    }

    /// The bytes, for computing an auth response. Keep the borrow short.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    /// Constant time: a reload compares the old and new secret to say whether it changed.
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_secret_loses_one_trailing_newline_and_never_prints() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("alice");
        for (content, want) in [("S3cret-pw\n", "S3cret-pw"), ("S3cret-pw\r\n", "S3cret-pw"), ("a b \n\n", "a b \n")] {
            std::fs::write(&path, content).unwrap_or_else(|e| panic!("{e}"));
            let s = Secret::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.expose(), want.as_bytes());
            let shown = format!("{s:?} {:?}", Some(&s));
            assert!(!shown.contains("S3cret") && shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn problems_name_the_origin_and_not_the_secret() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing");
        let e = Secret::from_file(&missing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cannot read the secret file") && e.contains("missing"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap_or_else(|e| panic!("{e}"));
        let e = Secret::from_file(&empty).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.ends_with("empty is empty"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 70_000]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(Secret::from_file(&big), Err(SecretError::TooLarge { .. })));
        let e = Secret::from_env("FLEXGATE_TEST_SURELY_UNSET").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "the environment variable FLEXGATE_TEST_SURELY_UNSET is not set");
    }

    #[test]
    fn equality_compares_the_bytes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&b, "one").unwrap_or_else(|e| panic!("{e}"));
        let (sa, sb) = (Secret::from_file(&a), Secret::from_file(&b));
        assert!(matches!((sa, sb), (Ok(x), Ok(y)) if x == y));
    }
}
