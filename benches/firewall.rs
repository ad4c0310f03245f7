//! Firewall costs. A lookup runs for every accepted connection before anything else, so it
//! bounds what a large feed adds to each accept; a build runs once per feed per reload, so it
//! bounds how long a reload of Azure-sized feeds takes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use flexgate::firewall::IpSet;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// About the size of Azure's `AzureCloud` tag.
const NETS: usize = 10_000;

/// splitmix64: seeded, so that every run measures the same set.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Nine in ten IPv4 prefixes from /16 to /30, the rest IPv6 /32 to /64 in 2000::/3: the mix
/// of a cloud provider's published ranges.
fn nets(rng: &mut Rng) -> Vec<IpNet> {
    (0..NETS)
        .map(|i| {
            if i % 10 == 9 {
                let bits = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
                let len = 32 + (rng.next() % 33) as u8;
                IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from_bits(bits), len).trunc())
            } else {
                let len = 16 + (rng.next() % 15) as u8;
                IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(rng.next() as u32), len).trunc())
            }
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut rng = Rng(0x0f1e_6a7e);
    let nets = nets(&mut rng);
    let set = IpSet::from_nets(nets.iter().copied());

    // Addresses inside prefixes from the middle of the list, so that neither end of the
    // search is favoured.
    let v4_hit = nets[NETS / 2..]
        .iter()
        .find_map(|n| match n {
            IpNet::V4(n) => Some(Ipv4Addr::from(u32::from(n.network()) + 1)),
            IpNet::V6(_) => None,
        })
        .unwrap_or_else(|| panic!("no IPv4 prefix"));
    let v6_hit = nets[NETS / 2..]
        .iter()
        .find_map(|n| match n {
            IpNet::V6(n) => Some(Ipv6Addr::from_bits(n.network().to_bits() + 1)),
            IpNet::V4(_) => None,
        })
        .unwrap_or_else(|| panic!("no IPv6 prefix"));
    let v4_miss = std::iter::repeat_with(|| Ipv4Addr::from(rng.next() as u32))
        .find(|a| !set.contains(IpAddr::V4(*a)))
        .unwrap_or_else(|| panic!("no miss"));
    for (a, want) in
        [(IpAddr::V4(v4_hit), true), (IpAddr::V6(v4_hit.to_ipv6_mapped()), true), (IpAddr::V6(v6_hit), true)]
    {
        assert_eq!(set.contains(a), want, "{a}");
    }

    let mut g = c.benchmark_group("firewall");
    g.bench_function("contains/v4_hit", |b| b.iter(|| black_box(&set).contains(black_box(IpAddr::V4(v4_hit)))));
    g.bench_function("contains/v4_miss", |b| b.iter(|| black_box(&set).contains(black_box(IpAddr::V4(v4_miss)))));
    g.bench_function("contains/v4_mapped_v6_hit", |b| {
        b.iter(|| black_box(&set).contains(black_box(IpAddr::V6(v4_hit.to_ipv6_mapped()))))
    });
    g.bench_function("contains/v6_hit", |b| b.iter(|| black_box(&set).contains(black_box(IpAddr::V6(v6_hit)))));
    g.bench_function("build/10k_nets", |b| b.iter(|| IpSet::from_nets(black_box(&nets).iter().copied())));
    g.finish();
}

criterion_group!(firewall, benches);
criterion_main!(firewall);
