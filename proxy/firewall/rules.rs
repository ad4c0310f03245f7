//! A listener's allow and deny lists, compiled for matching on the accept path.
//!
//! Addresses, CIDRs and `@sets` are merged into one [`IpSet`] per side when the config is
//! loaded, so a client costs one binary search per side however many entries and sets the
//! lists name. Hostnames are matched against what they resolve to now, without DNS on the
//! accept path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::dns::{HostEntry, Hostname};
use super::ipset::IpSet;
use crate::config::SourceRule;

/// What the lists say about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On the allow list and not on the deny list.
    Allow,
    /// On the deny list (which wins over the allow list).
    Denied,
    /// On neither: refused, because the default is to deny.
    NotAllowed,
}

/// One side of the rules.
#[derive(Default)]
struct Side {
    nets: IpSet,
    hosts: Vec<Arc<HostEntry>>,
}

impl Side {
    fn matches(&self, ip: IpAddr) -> bool {
        self.nets.contains(ip) || self.hosts.iter().any(|h| h.contains(ip))
    }
}

/// A listener's compiled rules. Immutable: a reload compiles new ones.
#[derive(Default)]
pub struct Rules {
    allow: Side,
    deny: Side,
}

impl Rules {
    /// Compiles `allow` and `deny`. `sets` holds every loaded `[ipsets]` entry (the config
    /// has checked that each reference names one); `host` gives the shared entry of a name.
    pub fn compile(
        allow: &[SourceRule],
        deny: &[SourceRule],
        sets: &BTreeMap<String, Arc<IpSet>>,
        host: &mut dyn FnMut(&Hostname) -> Arc<HostEntry>,
    ) -> Self {
        let mut side = |rules: &[SourceRule]| {
            let nets: Vec<IpNet> =
                rules.iter().filter_map(|r| if let SourceRule::Net(n) = r { Some(*n) } else { None }).collect();
            let mut set = IpSet::from_nets(nets);
            for r in rules {
                if let SourceRule::Set(name) = r
                    && let Some(s) = sets.get(name)
                {
                    set = set.union(s);
                }
            }
            let hosts =
                rules.iter().filter_map(|r| if let SourceRule::Host(h) = r { Some(host(h)) } else { None }).collect();
            Side { nets: set, hosts }
        };
        let allow = side(allow);
        let deny = side(deny);
        Self { allow, deny }
    }

    /// Decides `ip`. An IPv4-mapped IPv6 address is matched as the IPv4 address it carries:
    /// [`IpSet::contains`] and [`HostEntry::contains`] both see to that.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        if self.deny.matches(ip) {
            Verdict::Denied
        } else if self.allow.matches(ip) {
            Verdict::Allow
        } else {
            Verdict::NotAllowed
        }
    }

    /// Whether nobody is allowed now: no allow entries, or only empty sets. Startup and every
    /// reload warn about it, since such a listener refuses every connection.
    pub fn allows_nobody(&self) -> bool {
        self.allow.nets.is_empty() && self.allow.hosts.is_empty()
    }

    /// The hostnames the rules name, to wait for their first resolution at startup.
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<HostEntry>> {
        self.allow.hosts.iter().chain(&self.deny.hosts)
    }

    /// Sizes for the startup and reload log.
    pub fn summary(&self) -> String {
        format!(
            "allow {} range(s) and {} hostname(s), deny {} range(s) and {} hostname(s)",
            self.allow.nets.len(),
            self.allow.hosts.len(),
            self.deny.nets.len(),
            self.deny.hosts.len()
        )
    }
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> SourceRule {
        SourceRule::Net(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn compile(allow: &[SourceRule], deny: &[SourceRule], sets: &BTreeMap<String, Arc<IpSet>>) -> Rules {
        Rules::compile(allow, deny, sets, &mut |_| panic!("no hostnames in these tests"))
    }

    #[test]
    fn deny_by_default_and_deny_wins() {
        let none = BTreeMap::new();
        let empty = compile(&[], &[], &none);
        assert!(empty.allows_nobody());
        assert_eq!(empty.check(ip("127.0.0.1")), Verdict::NotAllowed);
        let r = compile(&[net("10.0.0.0/8"), net("2001:db8::/48")], &[net("10.9.0.0/16")], &none);
        assert_eq!(r.check(ip("10.1.2.3")), Verdict::Allow);
        assert_eq!(r.check(ip("10.9.1.1")), Verdict::Denied);
        assert_eq!(r.check(ip("11.0.0.1")), Verdict::NotAllowed);
        assert_eq!(r.check(ip("2001:db8::7")), Verdict::Allow);
        assert_eq!(r.check(ip("2001:db9::7")), Verdict::NotAllowed);
    }

    #[test]
    fn mapped_addresses_are_matched_as_ipv4_both_ways() {
        let none = BTreeMap::new();
        let r = compile(&[net("10.0.0.0/8")], &[net("10.9.0.0/16")], &none);
        assert_eq!(r.check(ip("::ffff:10.1.2.3")), Verdict::Allow);
        // A deny on the v4 form cannot be bypassed through the mapped form.
        assert_eq!(r.check(ip("::ffff:10.9.0.1")), Verdict::Denied);
        let everyone_v4 = compile(&[net("0.0.0.0/0")], &[], &none);
        assert_eq!(everyone_v4.check(ip("::ffff:192.0.2.1")), Verdict::Allow);
        assert_eq!(everyone_v4.check(ip("2001:db8::1")), Verdict::NotAllowed);
    }

    #[test]
    fn sets_join_their_side() {
        let mut sets = BTreeMap::new();
        sets.insert(
            "cloud".to_owned(),
            Arc::new(IpSet::from_nets(["13.64.0.0/11".parse().unwrap_or_else(|e| panic!("{e}"))])),
        );
        sets.insert(
            "bad".to_owned(),
            Arc::new(IpSet::from_nets(["13.65.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))])),
        );
        let r = compile(&[SourceRule::Set("cloud".into())], &[SourceRule::Set("bad".into())], &sets);
        assert_eq!(r.check(ip("13.64.0.1")), Verdict::Allow);
        assert_eq!(r.check(ip("13.65.0.1")), Verdict::Denied);
        assert_eq!(r.check(ip("13.96.0.1")), Verdict::NotAllowed);
        assert!(!r.allows_nobody());
    }
}
