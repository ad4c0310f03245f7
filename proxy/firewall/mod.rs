//! Network access control: which client addresses may reach a listener.
//!
//! - [`ipset`]: prefix sets with logarithmic lookup;
//! - [`feeds`]: named IP sets from files (CIDR lists, Azure Service Tags);
//! - [`dns`]: hostnames, re-resolved by their TTLs.

pub mod dns;
pub mod feeds;
pub mod ipset;

pub use feeds::{FeedError, IpSetFormat};
pub use ipset::{IpSet, canonical};
