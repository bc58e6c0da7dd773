use super::*;
use crate::wire::AsSegment;

fn p(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

/// The config crate owns the text form ("P/L ge N le M"); the policy takes typed entries.
pub(crate) fn entry(s: &str) -> PrefixListEntry {
    let f: ferrule_config::PrefixFilter = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    PrefixListEntry { prefix: Prefix::new(f.prefix.addr(), f.prefix.prefix_len()).unwrap(), ge: f.ge, le: f.le }
}

pub(crate) fn list(entries: &[&str]) -> PrefixList {
    PrefixList { entries: entries.iter().map(|s| entry(s)).collect() }
}

fn attrs_with_path(asns: &[u32]) -> PathAttributes {
    PathAttributes { as_path: Some(AsPath::sequence(asns)), ..PathAttributes::default() }
}

#[test]
fn parses_the_four_entry_forms() {
    assert_eq!(entry("203.0.113.0/24"), PrefixListEntry { prefix: p("203.0.113.0/24"), ge: None, le: None });
    assert_eq!(entry("203.0.113.0/24 le 32").le, Some(32));
    assert_eq!(entry("2001:db8::/32 ge 48").ge, Some(48));
    let both = entry("2001:db8::/32 ge 48 le 64");
    assert_eq!((both.ge, both.le), (Some(48), Some(64)));
    assert_eq!(both.length_range(), (48, 64));
    assert_eq!(entry("2001:db8::/32 ge 48").length_range(), (48, 128));
    assert_eq!(entry("203.0.113.0/24 le 28").length_range(), (24, 28));
}

#[test]
fn entry_prints_as_written() {
    for text in ["0.0.0.0/0", "::/0", "203.0.113.0/24 le 32", "2001:db8::/32 ge 48 le 64", "10.0.0.0/8 ge 16"] {
        assert_eq!(entry(text).to_string(), text);
    }
}

#[test]
fn exact_entry_matches_only_itself() {
    let e = entry("203.0.113.0/24");
    assert!(e.matches(&p("203.0.113.0/24")));
    assert!(!e.matches(&p("203.0.113.0/25")));
    assert!(!e.matches(&p("203.0.112.0/23")));
    assert!(!e.matches(&p("198.51.100.0/24")));
}

#[test]
fn ge_and_le_bounds_are_inclusive() {
    let e = entry("203.0.113.0/24 ge 26 le 28");
    assert!(!e.matches(&p("203.0.113.0/25")));
    assert!(e.matches(&p("203.0.113.64/26")));
    assert!(e.matches(&p("203.0.113.240/28")));
    assert!(!e.matches(&p("203.0.113.240/29")));
    // Right length, outside the covering prefix.
    assert!(!e.matches(&p("198.51.100.64/26")));
    let le = entry("203.0.113.0/24 le 32");
    assert!(le.matches(&p("203.0.113.0/24")) && le.matches(&p("203.0.113.7/32")));
}

#[test]
fn default_route_entries_match_only_the_default_unless_widened() {
    let v4 = entry("0.0.0.0/0");
    assert!(v4.matches(&p("0.0.0.0/0")));
    assert!(!v4.matches(&p("203.0.113.0/24")));
    assert!(!v4.matches(&p("::/0")), "families never mix");
    let all6 = entry("::/0 le 128");
    assert!(all6.matches(&p("2001:db8::/32")) && all6.matches(&p("::/0")));
    assert!(!all6.matches(&p("0.0.0.0/0")));
}

#[test]
fn ipv6_coverage_checks_the_leading_bits() {
    let e = entry("2001:db8::/32 ge 48 le 64");
    assert!(e.matches(&p("2001:db8:ffff::/48")));
    assert!(!e.matches(&p("2001:db9::/48")));
    assert!(!e.matches(&p("2001:db8:1:2::/65")));
}

#[test]
fn empty_import_policy_rejects_everything() {
    let policy = ImportPolicy::default();
    assert_eq!(policy.evaluate(&p("0.0.0.0/0"), &PathAttributes::default()), Verdict::Reject);
    assert_eq!(policy.evaluate(&p("::/0"), &PathAttributes::default()), Verdict::Reject);
}

#[test]
fn as_path_terms_match_contains_and_origin() {
    let a = attrs_with_path(&[65000, 64500, 64496]);
    let any = p("203.0.113.0/24");
    assert!(Match::AsPathContains(64500).matches(&any, &a));
    assert!(!Match::AsPathContains(1).matches(&any, &a));
    assert!(Match::OriginAs(64496).matches(&any, &a));
    assert!(!Match::OriginAs(65000).matches(&any, &a));
    let aggregate = PathAttributes {
        as_path: Some(AsPath {
            segments: vec![
                AsSegment { kind: SegmentType::Sequence, asns: vec![65000] },
                AsSegment { kind: SegmentType::Set, asns: vec![64496, 64497] },
            ],
        }),
        ..PathAttributes::default()
    };
    assert!(!Match::OriginAs(64496).matches(&any, &aggregate), "an AS_SET has no single origin");
    assert!(Match::AsPathContains(64497).matches(&any, &aggregate));
}

#[test]
fn rules_run_in_order_and_modifiers_continue() {
    let tagged = Community::new(65000, 666);
    let policy = ImportPolicy {
        prefixes: PrefixList::any(),
        rules: vec![
            PolicyRule::new(Match::AsPathContains(64500), Action::SetLocalPref(50)),
            PolicyRule::new(Match::Community(tagged), Action::Reject),
            PolicyRule::new(Match::Any, Action::AddCommunity(Community::new(65101, 1))),
        ],
        max_prefix: None,
    };
    let route = p("203.0.113.0/24");
    let mut a = attrs_with_path(&[65000, 64500]);
    let Verdict::Accept(Some(changed)) = policy.evaluate(&route, &a) else { panic!("accepted with changes") };
    assert_eq!(changed.local_pref, Some(50));
    assert_eq!(changed.communities, vec![Community::new(65101, 1)]);
    a.communities.push(tagged);
    assert_eq!(policy.evaluate(&route, &a), Verdict::Reject);
}

#[test]
fn accept_rule_stops_later_rules() {
    let policy = ImportPolicy {
        prefixes: PrefixList::any(),
        rules: vec![
            PolicyRule::new(Match::Prefix(list(&["203.0.113.0/24"])), Action::Accept),
            PolicyRule::new(Match::Any, Action::Reject),
        ],
        max_prefix: None,
    };
    assert!(policy.rules_use_prefix());
    let a = attrs_with_path(&[65000]);
    assert_eq!(policy.evaluate(&p("203.0.113.0/24"), &a), Verdict::Accept(None));
    assert_eq!(policy.evaluate(&p("198.51.100.0/24"), &a), Verdict::Reject);
}

#[test]
fn combined_terms_and_negation() {
    let m = Match::All(vec![
        Match::LargeCommunity(LargeCommunity { global_admin: 65000, local_data1: 1, local_data2: 2 }),
        Match::Not(Box::new(Match::OriginAs(64496))),
    ]);
    let mut a = attrs_with_path(&[65000, 64497]);
    let route = p("2001:db8::/32");
    assert!(!m.matches(&route, &a));
    a.large_communities.push(LargeCommunity { global_admin: 65000, local_data1: 1, local_data2: 2 });
    assert!(m.matches(&route, &a));
    a.as_path = Some(AsPath::sequence(&[65000, 64496]));
    assert!(!m.matches(&route, &a));
}

#[test]
fn export_policy_defaults_to_every_local_announcement() {
    assert!(ExportPolicy::default().exports(&p("198.51.100.0/24")));
    let only = ExportPolicy { prefixes: Some(list(&["2001:db8::/32 le 64"])) };
    assert!(only.exports(&p("2001:db8:100::/64")));
    assert!(!only.exports(&p("198.51.100.0/24")));
}
