//! Capability flags, as newtypes so that the classic and the MariaDB-extended sets cannot be mixed up.

/// Classic capability flags (`CLIENT_*`), 32 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// `CLIENT_LONG_PASSWORD`; MariaDB calls this bit `CLIENT_MYSQL` and clears it to announce the
    /// extended capability word.
    pub const CLIENT_MYSQL: Self = Self(0x0000_0001);
    /// Database name in the handshake response.
    pub const CONNECT_WITH_DB: Self = Self(0x0000_0008);
    /// zlib protocol compression.
    pub const COMPRESS: Self = Self(0x0000_0020);
    /// `LOAD DATA LOCAL`.
    pub const LOCAL_FILES: Self = Self(0x0000_0080);
    /// The 4.1 protocol; the only one flexgate speaks.
    pub const PROTOCOL_41: Self = Self(0x0000_0200);
    /// TLS upgrade (SSLRequest).
    pub const SSL: Self = Self(0x0000_0800);
    /// Length-prefixed auth response (u8 length).
    pub const SECURE_CONNECTION: Self = Self(0x0000_8000);
    /// Multiple statements per `COM_QUERY`.
    pub const MULTI_STATEMENTS: Self = Self(0x0001_0000);
    /// Multiple result sets.
    pub const MULTI_RESULTS: Self = Self(0x0002_0000);
    /// Auth plugin names in the handshake.
    pub const PLUGIN_AUTH: Self = Self(0x0008_0000);
    /// Connection attributes in the handshake response.
    pub const CONNECT_ATTRS: Self = Self(0x0010_0000);
    /// Length-encoded auth response.
    pub const PLUGIN_AUTH_LENENC_DATA: Self = Self(0x0020_0000);
    /// zstd protocol compression (MySQL 8).
    pub const ZSTD_COMPRESSION: Self = Self(0x0400_0000);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the bits of `other` set.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    /// `self` with the bits of `other` cleared.
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
    /// The bits set in both.
    #[must_use]
    pub const fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
    /// Whether the peer announced MariaDB's extended capability word (bit 0 cleared).
    pub const fn has_mariadb_extension(self) -> bool {
        !self.contains(Self::CLIENT_MYSQL)
    }
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Capabilities({:#010x})", self.0)
    }
}

/// MariaDB's extended capability flags (`MARIADB_CLIENT_*`), carried in otherwise reserved bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MariaDbCapabilities(pub u32);

impl std::fmt::Debug for MariaDbCapabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MariaDbCapabilities({:#010x})", self.0)
    }
}
