//! Process limits a proxy needs raised: every client costs a descriptor, and while it logs in a
//! second one for the server.

use std::io;

use rlimit::Resource;

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit at startup.
    pub before: u64,
    /// Soft limit now (the hard limit, if raising it worked).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit, as HAProxy and nginx do at startup.
/// The default soft limit (1024 on most distributions) would cap flexgate near 500 sessions.
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let (before, hard) = rlimit::getrlimit(Resource::NOFILE)?;
    if before < hard {
        rlimit::setrlimit(Resource::NOFILE, hard, hard)?;
    }
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE)?;
    Ok(NofileLimit { before, soft, hard })
}
