//! Both formats from the samples in `tests/data` and `config/ipsets` (shaped like the real feeds; the Azure
//! prefixes are illustrative, not a current copy), and every way a file can be refused.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).collect()
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The sample that `config/public-access.toml` uses: the example config and these tests read
/// the same file.
const SERVICE_TAGS: &str = "../../config/ipsets/ServiceTags_Public.sample.json";

fn service_tags_text() -> String {
    std::fs::read_to_string(data(SERVICE_TAGS)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn format_names_round_trip() {
    for f in [IpSetFormat::CidrList, IpSetFormat::AzureServiceTags] {
        assert_eq!(IpSetFormat::parse(f.as_str()), Some(f));
        assert_eq!(f.to_string(), f.as_str());
    }
    for s in ["", "cidr", "CIDR-LIST", "azure", "service-tags", " cidr-list"] {
        assert_eq!(IpSetFormat::parse(s), None, "{s:?}");
    }
}

#[test]
fn cidr_list_accepts_comments_blanks_and_bare_addresses() {
    let text = "\u{feff}# header\r\n\r\n  10.0.0.0/8  \r\n192.0.2.7\n2001:db8::/32 # trailing\n::1\n\
                198.18.0.0/15 ; SBL123\n; Spamhaus header\n   \t\n#only a comment; with a semicolon\n";
    let got = parse_cidr_list(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, nets(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128", "198.18.0.0/15"]));
    assert_eq!(parse_cidr_list("").unwrap_or_else(|e| panic!("{e}")), []);
    assert_eq!(parse_cidr_list("# nothing but comments\n;\n").unwrap_or_else(|e| panic!("{e}")), []);
}

#[test]
fn cidr_list_keeps_host_bits_for_the_set_to_ignore() {
    let got = parse_cidr_list("10.1.2.3/8").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, nets(&["10.1.2.3/8"]));
    assert!(IpSet::from_nets(got).contains(ip("10.200.0.1")));
}

#[test]
fn bad_lines_are_located_and_explained() {
    for (text, line, quoted, problem) in [
        ("10.0.0.0/8\nexample.com\n", 2, "example.com", "not an IP address"),
        (
            "\n\n10.0.0.0/33 # too long\n",
            3,
            "10.0.0.0/33 # too long",
            "prefix length \"33\" is not a number from 0 to 32 (IPv4)",
        ),
        ("2001:db8::/129", 1, "2001:db8::/129", "from 0 to 128 (IPv6)"),
        ("10.0.0.0/+8", 1, "10.0.0.0/+8", "prefix length \"+8\""),
        ("10.0.0.0/", 1, "10.0.0.0/", "prefix length \"\""),
        ("10.0.0.0/255.0.0.0", 1, "10.0.0.0/255.0.0.0", "prefix length \"255.0.0.0\""),
        ("10.0.0/8", 1, "10.0.0/8", "\"10.0.0\" is not an IP address"),
        ("10.0.0.1 10.0.0.2", 1, "10.0.0.1 10.0.0.2", "not an IP address"),
        ("fe80::1%eth0", 1, "fe80::1%eth0", "not an IP address"),
        ("1.2.3.4/24/8", 1, "1.2.3.4/24/8", "prefix length \"24/8\""),
    ] {
        let e = parse_cidr_list(text).err().unwrap_or_else(|| panic!("{text:?} accepted"));
        let FeedError::Line { path, line: l, text: t, problem: p } = &e else { panic!("{text:?}: {e:?}") };
        assert_eq!((path, *l, t.as_str()), (&None, line, quoted), "{text:?}");
        assert!(p.contains(problem), "{text:?}: {p}");
        assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
    }
}

#[test]
fn long_bad_lines_are_cut_in_the_message() {
    let long = format!("{}é{}", "x".repeat(79), "y".repeat(500));
    let Err(FeedError::Line { text, .. }) = parse_cidr_list(&long) else { panic!("accepted") };
    assert_eq!(text.chars().count(), 81);
    assert!(text.ends_with("é…"), "{text}");
}

#[test]
fn blocklist_sample_loads() {
    let s = load(&data("blocklist_sample.txt"), IpSetFormat::CidrList, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s.ranges_v4().len(), s.ranges_v6().len()), (4, 2));
    for a in ["192.0.2.1", "::ffff:192.0.2.255", "198.51.100.7", "203.0.113.200", "198.19.255.255", "2001:db8:bad::1"] {
        assert!(s.contains(ip(a)), "{a}");
    }
    for a in ["198.51.100.8", "203.0.113.127", "2001:db8::dead:beee", "2001:db8:bae::1"] {
        assert!(!s.contains(ip(a)), "{a}");
    }
    assert!(s.contains(ip("2001:db8::dead:beef")));
}

#[test]
fn service_tags_select_the_named_tags() {
    let json = service_tags_text();
    let sql = parse_service_tags(&json, &tags(&["Sql.WestEurope"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sql.len(), 6);
    let sql = IpSet::from_nets(sql);
    assert!(sql.contains(ip("13.69.105.31")));
    assert!(!sql.contains(ip("13.69.105.32")));
    assert!(sql.contains(ip("2603:1020:201::29f")));

    let cloud = load(&data(SERVICE_TAGS), IpSetFormat::AzureServiceTags, &tags(&["AzureCloud"]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cloud.contains(ip("13.64.0.1")));
    assert!(cloud.contains(ip("::ffff:40.127.255.255")));
    assert!(cloud.contains(ip("2a01:111:f00d::1")));
    assert!(!cloud.contains(ip("8.8.8.8")));
    // The regional tag is inside the global one; Storage is not.
    let region = load(&data(SERVICE_TAGS), IpSetFormat::AzureServiceTags, &tags(&["AzureCloud.westeurope"]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cloud.union(&region), cloud);
    assert_ne!(region, cloud);

    // Several tags are their union.
    let both = load(&data(SERVICE_TAGS), IpSetFormat::AzureServiceTags, &tags(&["Storage", "AzureCloud.westeurope"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let storage =
        load(&data(SERVICE_TAGS), IpSetFormat::AzureServiceTags, &tags(&["Storage"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(both, storage.union(&region));
    assert!(both.contains(ip("52.239.128.9")));
    assert!(both.contains(ip("13.80.1.1")));
}

#[test]
fn service_tags_match_the_id_too() {
    let json =
        r#"{"values":[{"name":"Display Name","id":"Tag.Id","properties":{"addressPrefixes":["192.0.2.0/24"]}}]}"#;
    for t in ["Display Name", "Tag.Id"] {
        assert_eq!(parse_service_tags(json, &tags(&[t])).unwrap_or_else(|e| panic!("{e}")), nets(&["192.0.2.0/24"]));
    }
    // A tag with no prefixes (or none listed) is known and contributes nothing.
    let json = r#"{"values":[{"name":"Empty","id":"Empty","properties":{"addressPrefixes":[]}},{"name":"Bare","properties":{}}]}"#;
    assert_eq!(parse_service_tags(json, &tags(&["Empty", "Bare"])).unwrap_or_else(|e| panic!("{e}")), []);
}

#[test]
fn unknown_tags_are_errors_with_a_hint() {
    let json = service_tags_text();
    match parse_service_tags(&json, &tags(&["AzureCloud", "sql.westeurope"])) {
        Err(e @ FeedError::UnknownTag { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(r#"service tag "sql.westeurope" is not in the file (did you mean "Sql.WestEurope"?)"#),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let path = data(SERVICE_TAGS);
    match load(&path, IpSetFormat::AzureServiceTags, &tags(&["AzureCloud.WestEurop"])) {
        Err(e @ FeedError::UnknownTag { suggestion: None, .. }) => {
            assert!(
                e.to_string().starts_with(&format!(
                    "{}: service tag \"AzureCloud.WestEurop\" is not in the file;",
                    path.display()
                )),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn service_tags_need_a_tag() {
    let e = parse_service_tags(&service_tags_text(), &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::NoTags { path: None }), "{e:?}");
    let e = load(&data(SERVICE_TAGS), IpSetFormat::AzureServiceTags, &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::NoTags { path: Some(_) }), "{e:?}");
}

#[test]
fn malformed_service_tags_are_refused() {
    let t = tags(&["AzureCloud"]);
    for json in ["", "{", "[]", r#"{"values": {}}"#, r#"{"values":[{"name":"AzureCloud"}]}"#] {
        match parse_service_tags(json, &t) {
            Err(e @ FeedError::Json { .. }) => assert!(e.to_string().starts_with("not Azure Service Tags JSON"), "{e}"),
            other => panic!("{json:?}: {other:?}"),
        }
    }
    // Truncated downloads stop mid-file.
    let text = service_tags_text();
    let cut = text.get(..text.len() / 2).unwrap_or_else(|| panic!("cut"));
    assert!(matches!(parse_service_tags(cut, &t), Err(FeedError::Json { .. })));

    let json = r#"{"values":[{"name":"AzureCloud","id":"AzureCloud","properties":{"addressPrefixes":["192.0.2.0/24","192.0.2.0/40"]}}]}"#;
    match parse_service_tags(json, &t) {
        Err(e @ FeedError::Prefix { .. }) => {
            assert!(
                e.to_string().starts_with(r#"service tag "AzureCloud": address prefix "192.0.2.0/40": prefix length"#),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));

    let missing = dir.path().join("missing.txt");
    let e = load(&missing, IpSetFormat::CidrList, &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::Read { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("{}: cannot read IP set file: ", missing.display())), "{e}");

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "10.0.0.0/8\n10.0.0.0/99\n").unwrap_or_else(|e| panic!("{e}"));
    let e = load(&bad, IpSetFormat::CidrList, &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(e.to_string().starts_with(&format!("{}: line 2: prefix length", bad.display())), "{e}");

    let binary = dir.path().join("binary");
    std::fs::write(&binary, b"10.0.0.0/8\n\xff\xfe").unwrap_or_else(|e| panic!("{e}"));
    let e = load(&binary, IpSetFormat::CidrList, &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::NotText { offset: 11, .. }), "{e:?}");

    let e = load(&data(SERVICE_TAGS), IpSetFormat::CidrList, &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::Line { line: 1, path: Some(_), .. }), "{e:?}");

    let e = load(&data("blocklist_sample.txt"), IpSetFormat::CidrList, &tags(&["AzureCloud"]))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::TagsNotApplicable { format: IpSetFormat::CidrList, .. }), "{e:?}");

    let e = load(dir.path(), IpSetFormat::CidrList, &[]).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, FeedError::Read { .. }), "a directory: {e:?}");

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing blocked yet\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(load(&empty, IpSetFormat::CidrList, &[]).unwrap_or_else(|e| panic!("{e}")).is_empty());
}

#[test]
fn oversized_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("big.txt");
    std::fs::write(&f, "10.0.0.0/8\n".repeat(10)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(read_text(&f, 109), Err(FeedError::TooLarge { max: 109, .. })));
    assert_eq!(read_text(&f, 110).unwrap_or_else(|e| panic!("{e}")).len(), 110);
}
