//! The compiled set against a linear scan of the prefixes it came from, plus the edges where
//! range arithmetic goes wrong: the ends of each address space, adjacency, and mapped forms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn set(nets: &[&str]) -> IpSet {
    IpSet::from_nets(nets.iter().map(|s| net(s)))
}

/// The specification, written against ipnet's own `contains` rather than ranges: canonicalise
/// the address, then an IPv4 rule or a mapped IPv6 rule (/96 or longer) matches IPv4, and any
/// IPv6 rule matches a (necessarily unmapped) IPv6 address.
fn naive(nets: &[IpNet], addr: IpAddr) -> bool {
    let addr = canonical(addr);
    nets.iter().any(|n| match (n, addr) {
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V4(a)) => n.prefix_len() >= 96 && n.contains(&a.to_ipv6_mapped()),
        (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
        (IpNet::V4(_), IpAddr::V6(_)) => false,
    })
}

fn assert_invariant(s: &IpSet) {
    fn check<T: Copy + Ord + std::fmt::Debug>(r: &[(T, T)], succ: impl Fn(T) -> Option<T>) {
        for &(first, last) in r {
            assert!(first <= last, "{r:?}");
        }
        for w in r.windows(2) {
            let next = succ(w[0].1).unwrap_or_else(|| panic!("range after the top address: {r:?}"));
            assert!(w[1].0 > next, "overlapping or adjacent ranges left unmerged: {r:?}");
        }
    }
    check(&s.v4, |x: u32| x.checked_add(1));
    check(&s.v6, |x: u128| x.checked_add(1));
    assert_eq!(s.len(), s.ranges_v4().len() + s.ranges_v6().len());
}

/// An IPv4 address in the three forms a lookup can see it in.
fn push_v4(out: &mut Vec<IpAddr>, a: u32) {
    out.push(IpAddr::V4(Ipv4Addr::from(a)));
    out.push(IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()));
    out.push(IpAddr::V6(Ipv6Addr::from_bits(u128::from(a)))); // compatible form: not IPv4
}

/// Every address where a lookup could be off by one, in every form it can be asked in.
fn probes(nets: &[IpNet], random: &[u32]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for &n in nets {
        match n {
            IpNet::V4(n) => {
                let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
                for a in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
                    push_v4(&mut out, a);
                }
            }
            IpNet::V6(n) => {
                let (first, last) = (n.network().to_bits(), n.broadcast().to_bits());
                for a in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
                    out.push(IpAddr::V6(Ipv6Addr::from_bits(a)));
                    // The low half as IPv4, so that mapped rules get hits.
                    push_v4(&mut out, a as u32);
                }
            }
        }
    }
    for &a in random {
        push_v4(&mut out, a);
        out.push(IpAddr::V6(Ipv6Addr::from_bits(u128::from(a) << 96 | u128::from(a))));
    }
    out
}

fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        4 => (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(a), p))),
        // Crowded: many prefixes inside 10.0.0.0/16, so that merging is exercised.
        4 => (0u32..=0xffff, 16u8..=32)
            .prop_map(|(a, p)| IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(0x0a00_0000 | a), p))),
        2 => (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from_bits(a), p))),
        2 => (any::<u32>(), 96u8..=128)
            .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new_assert(Ipv4Addr::from(a).to_ipv6_mapped(), p))),
        1 => (any::<u32>(), 96u8..=128)
            .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from_bits(u128::from(a)), p))),
        1 => (0u8..=96).prop_map(|p| IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, p))),
    ]
}

proptest! {
    #[test]
    fn agrees_with_a_linear_scan(nets in vec(any_net(), 0..40), random in vec(any::<u32>(), 0..16)) {
        let s = IpSet::from_nets(nets.iter().copied());
        assert_invariant(&s);
        for a in probes(&nets, &random) {
            prop_assert_eq!(s.contains(a), naive(&nets, a), "{} in {:?}", a, nets);
        }
    }

    #[test]
    fn mapped_address_behaves_like_its_ipv4_form(nets in vec(any_net(), 0..40), random in vec(any::<u32>(), 0..16)) {
        let s = IpSet::from_nets(nets.iter().copied());
        for a in probes(&nets, &random) {
            if let IpAddr::V4(v4) = a {
                prop_assert_eq!(s.contains(a), s.contains(IpAddr::V6(v4.to_ipv6_mapped())), "{}", a);
            }
        }
    }

    #[test]
    fn union_is_either_and_order_does_not_matter(a in vec(any_net(), 0..20), b in vec(any_net(), 0..20)) {
        let (sa, sb) = (IpSet::from_nets(a.iter().copied()), IpSet::from_nets(b.iter().copied()));
        let u = sa.union(&sb);
        assert_invariant(&u);
        prop_assert_eq!(&u, &IpSet::from_nets(b.iter().rev().chain(a.iter().rev()).copied()));
        prop_assert_eq!(&u, &sb.union(&sa));
        let all: Vec<IpNet> = a.iter().chain(&b).copied().collect();
        for x in probes(&all, &[]) {
            // Adding rules never takes an address out.
            prop_assert_eq!(u.contains(x), sa.contains(x) || sb.contains(x), "{}", x);
        }
    }
}

#[test]
fn empty_set_contains_nothing() {
    let s = IpSet::default();
    assert!(s.is_empty());
    assert_eq!(s.len(), 0);
    assert_eq!(s, IpSet::from_nets([]));
    for a in ["0.0.0.0", "255.255.255.255", "::", "::ffff:1.2.3.4", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
        assert!(!s.contains(ip(a)), "{a}");
    }
}

#[test]
fn everything_v4_is_not_everything_v6() {
    let s = set(&["0.0.0.0/0"]);
    assert_eq!(s.len(), 1);
    for a in ["0.0.0.0", "1.2.3.4", "255.255.255.255", "::ffff:1.2.3.4", "::ffff:0.0.0.0"] {
        assert!(s.contains(ip(a)), "{a}");
    }
    for a in ["::", "::1", "::1.2.3.4", "2001:db8::1"] {
        assert!(!s.contains(ip(a)), "{a}");
    }
}

#[test]
fn everything_v6_is_not_everything_v4() {
    let s = set(&["::/0"]);
    assert_eq!((s.ranges_v4().len(), s.ranges_v6().len()), (0, 1));
    for a in ["::", "::1", "::1.2.3.4", "2001:db8::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
        assert!(s.contains(ip(a)), "{a}");
    }
    // A mapped peer is an IPv4 client, and ::/0 is an IPv6 rule.
    for a in ["1.2.3.4", "::ffff:1.2.3.4"] {
        assert!(!s.contains(ip(a)), "{a}");
    }
}

#[test]
fn host_prefixes_hold_one_address() {
    let s =
        set(&["192.0.2.1/32", "2001:db8::1/128", "255.255.255.255/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"]);
    for (a, want) in [
        ("192.0.2.1", true),
        ("::ffff:192.0.2.1", true),
        ("192.0.2.0", false),
        ("192.0.2.2", false),
        ("2001:db8::1", true),
        ("2001:db8::", false),
        ("2001:db8::2", false),
        ("255.255.255.255", true),
        ("255.255.255.254", false),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", false),
    ] {
        assert_eq!(s.contains(ip(a)), want, "{a}");
    }
}

#[test]
fn a_bare_address_parses_as_a_host_prefix() {
    // What the feeds hand over for a line with no `/`.
    let s = IpSet::from_nets([IpNet::from(ip("198.51.100.7"))]);
    assert_eq!(s.ranges_v4().collect::<Vec<_>>(), [(Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(198, 51, 100, 7))]);
}

#[test]
fn adjacent_and_overlapping_prefixes_merge() {
    for (nets, want) in [
        (&["10.0.0.0/25", "10.0.0.128/25"][..], 1),
        (&["10.0.1.0/24", "10.0.0.0/24"], 1),
        (&["10.0.0.0/24", "10.0.2.0/24"], 2),
        (&["10.0.0.0/8", "10.20.0.0/16", "10.255.255.255/32"], 1),
        (&["255.255.255.254/32", "255.255.255.255/32"], 1),
        (&["0.0.0.0/0", "255.255.255.255/32", "0.0.0.0/32"], 1),
        (&["2001:db8::/33", "2001:db8:8000::/33"], 1),
        (&["::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"], 1),
        // Mapped and plain IPv4 spellings of adjacent ranges are one range.
        (&["10.0.0.0/9", "::ffff:10.128.0.0/105"], 1),
    ] {
        let s = set(nets);
        assert_invariant(&s);
        assert_eq!(s.len(), want, "{nets:?}: {:?}", s.ranges_v4().collect::<Vec<_>>());
    }
    let s = set(&["10.0.0.0/25", "10.0.0.128/25"]);
    assert_eq!(s.ranges_v4().collect::<Vec<_>>(), [(Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 255))]);
}

#[test]
fn host_bits_are_ignored() {
    let s = set(&["10.1.2.3/8", "2001:db8:1:2::3/32"]);
    assert_eq!(s, set(&["10.0.0.0/8", "2001:db8::/32"]));
    assert!(s.contains(ip("10.0.0.0")));
    assert!(s.contains(ip("10.255.255.255")));
    assert!(s.contains(ip("2001:db8:ffff::1")));
}

#[test]
fn ipv4_rule_matches_the_mapped_form() {
    let s = set(&["10.0.0.0/8"]);
    assert!(s.contains(ip("::ffff:10.9.9.9")));
    assert!(!s.contains(ip("::ffff:11.0.0.0")));
    // The compatible form is an ordinary IPv6 address, not 10.0.0.1.
    assert!(!s.contains(ip("::10.0.0.1")));
}

#[test]
fn mapped_rule_is_stored_as_ipv4() {
    let s = set(&["::ffff:10.0.0.0/104"]);
    assert_eq!(s, set(&["10.0.0.0/8"]));
    assert_eq!(s.ranges_v4().collect::<Vec<_>>(), [(Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 255, 255, 255))]);
    assert_eq!(s.ranges_v6().len(), 0);
    assert!(s.contains(ip("10.1.1.1")));
    assert!(s.contains(ip("::ffff:10.1.1.1")));
    // The whole mapped block is the whole IPv4 space; a mapped host is an IPv4 host.
    assert_eq!(set(&["::ffff:0:0/96"]), set(&["0.0.0.0/0"]));
    assert_eq!(set(&["::ffff:192.0.2.1/128"]), set(&["192.0.2.1/32"]));
    // Not mapped: one bit short of the block, or the compatible form.
    assert_eq!(set(&["::fffe:0:0/96"]).ranges_v6().len(), 1);
    let compat = set(&["::10.0.0.0/104"]);
    assert_eq!((compat.ranges_v4().len(), compat.ranges_v6().len()), (0, 1));
    assert!(!compat.contains(ip("10.0.0.1")));
    assert!(compat.contains(ip("::10.0.0.1")));
}

#[test]
fn canonical_maps_only_the_mapped_form() {
    for (a, want) in [
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::ffff:0.0.0.0", "0.0.0.0"),
        ("::ffff:255.255.255.255", "255.255.255.255"),
        ("1.2.3.4", "1.2.3.4"),
        ("::1.2.3.4", "::1.2.3.4"),
        ("::1", "::1"),
        ("::", "::"),
        ("2001:db8::ffff:1.2.3.4", "2001:db8::ffff:1.2.3.4"),
    ] {
        assert_eq!(canonical(ip(a)), ip(want), "{a}");
        assert_eq!(canonical(ip(a)), ip(a).to_canonical(), "{a}");
    }
}

#[test]
fn debug_prints_counts_not_contents() {
    let s = set(&["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]);
    assert_eq!(format!("{s:?}"), "IpSet { v4_ranges: 2, v6_ranges: 1 }");
}
