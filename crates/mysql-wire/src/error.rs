use thiserror::Error;

/// Why a byte sequence is not a valid packet of the kind the caller expected.
///
/// Each variant names the field that failed so that a log line can say what the peer got wrong
/// without echoing the (possibly secret) bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The header announces a payload larger than the caller is willing to buffer.
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
    /// A field runs past the end of the payload, or is otherwise not what the protocol allows.
    #[error("malformed {packet}: bad or truncated {field}")]
    Malformed {
        /// Which packet was being parsed.
        packet: &'static str,
        /// Which field failed.
        field: &'static str,
    },
    /// Bytes are left over after the last field of a packet.
    #[error("malformed {packet}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Which packet was being parsed.
        packet: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// The peer speaks a protocol revision we do not support.
    #[error("unsupported protocol: {0}")]
    Unsupported(&'static str),
}
