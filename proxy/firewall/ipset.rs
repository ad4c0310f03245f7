//! A set of IP prefixes, answered in O(log n) per address.
//!
//! Feeds such as Azure's Service Tags or a FireHOL blocklist hold tens of thousands of
//! prefixes, and every accepted connection asks about one address, so the set is compiled once
//! (at load or reload) into sorted, merged, non-overlapping inclusive ranges, one list per
//! family, and a lookup is a binary search.
//!
//! Addresses are compared in their canonical form (see [`canonical`]): a dual-stack listener
//! reports an IPv4 client as `::ffff:a.b.c.d`, and that client must meet exactly the IPv4
//! rules, neither escaping a blocklist nor missing an allow-list because of how the socket was
//! bound. Rules are canonicalised the same way: `::ffff:10.0.0.0/104` is stored as
//! `10.0.0.0/8`. Any other IPv6 prefix only ever matches IPv6 clients, even one as wide as
//! `::/0`, which therefore means "every IPv6 client" and not "every client": an operator who
//! writes it to admit IPv6 must not thereby admit the whole IPv4 Internet.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

/// Prefixes of both families, compiled for lookup.
///
/// Immutable once built: a reload builds a new set and swaps it, so a lookup never waits on a
/// writer. Equality compares the merged ranges, so two files that spell the same addresses
/// differently compare equal and a reload can tell that nothing changed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Sorted by start; any two are separated by at least one address not in the set.
    v4: Vec<(u32, u32)>,
    /// Same invariant. May cover parts of `::ffff:0:0/96` (from a wide prefix such as `::/0`),
    /// which [`IpSet::contains`] never asks about, since mapped addresses are looked up as IPv4.
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// Compiles prefixes into a set. Overlapping and adjacent prefixes merge, so the cost of a
    /// lookup depends on how fragmented the covered space is, not on how many lines a feed has.
    ///
    /// Host bits are ignored (`10.1.2.3/8` is `10.0.0.0/8`): the prefix length is what the
    /// writer meant, and rejecting such lines is the parser's decision, not the set's.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => match mapped_range(n) {
                    Some(range) => v4.push(range),
                    None => v6.push((n.network().to_bits(), n.broadcast().to_bits())),
                },
            }
        }
        Self { v4: coalesce(v4), v6: coalesce(v6) }
    }

    /// Whether `ip` is in the set, after [`canonical`]: an IPv4-mapped IPv6 address is asked
    /// about as the IPv4 address it carries.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => covers(&self.v4, u32::from(a)),
            IpAddr::V6(a) => covers(&self.v6, a.to_bits()),
        }
    }

    /// Every address in either set. Used to combine several feeds (or a feed and inline rules)
    /// into the one set a listener consults.
    #[must_use]
    pub fn union(&self, other: &IpSet) -> IpSet {
        let v4 = self.v4.iter().chain(&other.v4).copied().collect();
        let v6 = self.v6.iter().chain(&other.v6).copied().collect();
        Self { v4: coalesce(v4), v6: coalesce(v6) }
    }

    /// True when no address at all is in the set. An empty allow-list admits nobody, which a
    /// caller may want to warn about.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of merged ranges across both families: the size a lookup searches, which is what
    /// a log line or a metric about a feed should report, not the number of lines it had.
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The IPv4 ranges, first and last address inclusive, in ascending order; for summaries
    /// in logs and for tests.
    pub fn ranges_v4(&self) -> impl ExactSizeIterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.v4.iter().map(|&(first, last)| (Ipv4Addr::from(first), Ipv4Addr::from(last)))
    }

    /// The IPv6 ranges, as [`IpSet::ranges_v4`]. Mapped prefixes are not here: they were
    /// stored as IPv4.
    pub fn ranges_v6(&self) -> impl ExactSizeIterator<Item = (Ipv6Addr, Ipv6Addr)> + '_ {
        self.v6.iter().map(|&(first, last)| (Ipv6Addr::from_bits(first), Ipv6Addr::from_bits(last)))
    }
}

/// Counts only: a feed can hold tens of thousands of ranges, and a `{:?}` of a config
/// snapshot must stay readable in a log.
impl fmt::Debug for IpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpSet").field("v4_ranges", &self.v4.len()).field("v6_ranges", &self.v6.len()).finish()
    }
}

/// The form an address is matched in: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, which a
/// dual-stack socket reports for an IPv4 peer) becomes that IPv4 address; anything else is
/// returned unchanged.
///
/// The deprecated IPv4-compatible form `::a.b.c.d` stays IPv6 (hence `to_ipv4_mapped`, not
/// `to_ipv4`): no socket produces it for an IPv4 peer, and `::1` would otherwise be read as
/// `0.0.0.1`. This is the same mapping as std's `IpAddr::to_canonical`, spelt out because the
/// firewall's correctness rests on it.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The IPv4 range an IPv6 prefix names, if it lies wholly inside `::ffff:0:0/96`. A prefix
/// shorter than /96 never does: it would reach outside the mapped block.
fn mapped_range(n: Ipv6Net) -> Option<(u32, u32)> {
    if n.prefix_len() < 96 {
        return None;
    }
    let first = n.network().to_ipv4_mapped()?;
    let last = n.broadcast().to_ipv4_mapped()?;
    Some((u32::from(first), u32::from(last)))
}

/// An address width the range lists are kept in.
trait Bits: Copy + Ord {
    fn successor(self) -> Option<Self>;
}

impl Bits for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Bits for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Sorts ranges and merges every pair that overlaps or touches, which establishes the
/// invariant [`covers`] relies on.
fn coalesce<T: Bits>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            // `None` from `successor`: the previous range already reaches the top address.
            Some(prev) if prev.1.successor().is_none_or(|next| first <= next) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out.shrink_to_fit();
    out
}

/// Binary search: the only candidate is the last range starting at or before `x`.
fn covers<T: Bits>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(first, _)| first <= x);
    after.checked_sub(1).and_then(|i| ranges.get(i)).is_some_and(|&(_, last)| x <= last)
}

#[cfg(test)]
mod tests;
