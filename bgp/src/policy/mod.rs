//! Route policy as data: prefix lists (`"203.0.113.0/24 le 32"`), a small ordered rule list
//! matching prefixes, AS paths and communities, max-prefix limits and what is exported.
//! Pure evaluation over one route's prefix and attributes; it never stores routes (the RIB
//! does) and never decides what a session does with a limit (the FSM does).

use std::fmt;
use std::net::IpAddr;

use crate::wire::{AsPath, Community, LargeCommunity, PathAttributes, Prefix, SegmentType};

#[cfg(test)]
pub(crate) mod tests;

/// One prefix-list entry: a route matches when its prefix lies inside `prefix` and its length
/// is in `ge..=le`. Without `ge`/`le` only `prefix` itself matches; `ge` alone means up to the
/// family's longest length, `le` alone means from the entry's own length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixListEntry {
    pub prefix: Prefix,
    pub ge: Option<u8>,
    pub le: Option<u8>,
}

impl PrefixListEntry {
    /// An entry matching exactly `prefix`.
    pub fn exact(prefix: Prefix) -> Self {
        PrefixListEntry { prefix, ge: None, le: None }
    }

    /// An entry matching `prefix` and everything more specific inside it.
    pub fn or_longer(prefix: Prefix) -> Self {
        PrefixListEntry { prefix, ge: None, le: Some(prefix.family().max_len()) }
    }

    /// The inclusive range of lengths this entry matches.
    pub fn length_range(&self) -> (u8, u8) {
        let (len, max) = (self.prefix.len(), self.prefix.family().max_len());
        (self.ge.unwrap_or(len), self.le.unwrap_or(if self.ge.is_some() { max } else { len }))
    }

    pub fn matches(&self, route: &Prefix) -> bool {
        let (lo, hi) = self.length_range();
        (lo..=hi).contains(&route.len()) && covers(&self.prefix, route)
    }
}

/// Whether `route` lies inside `net` (same family, at least as long, same leading bits).
pub(crate) fn covers(net: &Prefix, route: &Prefix) -> bool {
    match (net, route) {
        (Prefix::V4(n), Prefix::V4(r)) => {
            let shift = 32 - u32::from(n.len());
            r.len() >= n.len() && (shift == 32 || u32::from(r.addr()) >> shift == u32::from(n.addr()) >> shift)
        }
        (Prefix::V6(n), Prefix::V6(r)) => {
            let shift = 128 - u32::from(n.len());
            r.len() >= n.len() && (shift == 128 || u128::from(r.addr()) >> shift == u128::from(n.addr()) >> shift)
        }
        _ => false,
    }
}

impl fmt::Display for PrefixListEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.prefix)?;
        if let Some(ge) = self.ge {
            write!(f, " ge {ge}")?;
        }
        if let Some(le) = self.le {
            write!(f, " le {le}")?;
        }
        Ok(())
    }
}

/// An ordered list of entries; a route matches the list when it matches any entry. The empty
/// list matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PrefixList {
    pub entries: Vec<PrefixListEntry>,
}

impl PrefixList {
    /// Every IPv4 and IPv6 prefix (`0.0.0.0/0 le 32`, `::/0 le 128`).
    pub fn any() -> Self {
        let v4 = Prefix::new(IpAddr::from([0, 0, 0, 0]), 0).expect("0.0.0.0/0 is valid");
        let v6 = Prefix::new(IpAddr::from([0u16; 8]), 0).expect("::/0 is valid");
        PrefixList { entries: vec![PrefixListEntry::or_longer(v4), PrefixListEntry::or_longer(v6)] }
    }

    pub fn matches(&self, route: &Prefix) -> bool {
        self.entries.iter().any(|e| e.matches(route))
    }
}

/// A condition on a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    Any,
    /// The route's prefix matches the list.
    Prefix(PrefixList),
    /// The AS number appears anywhere in the AS_PATH (sequences and sets).
    AsPathContains(u32),
    /// The route was originated by this AS: the last AS of the AS_PATH. A path ending in an
    /// AS_SET (an aggregate) has no single origin and never matches.
    OriginAs(u32),
    Community(Community),
    LargeCommunity(LargeCommunity),
    /// Every condition holds (an empty list always holds).
    All(Vec<Match>),
    Not(Box<Match>),
}

impl Match {
    pub fn matches(&self, prefix: &Prefix, attrs: &PathAttributes) -> bool {
        match self {
            Match::Any => true,
            Match::Prefix(list) => list.matches(prefix),
            Match::AsPathContains(asn) => attrs.as_path.as_ref().is_some_and(|p| p.contains(*asn)),
            Match::OriginAs(asn) => attrs.as_path.as_ref().and_then(origin_as) == Some(*asn),
            Match::Community(c) => attrs.communities.contains(c),
            Match::LargeCommunity(c) => attrs.large_communities.contains(c),
            Match::All(all) => all.iter().all(|m| m.matches(prefix, attrs)),
            Match::Not(m) => !m.matches(prefix, attrs),
        }
    }

    /// Whether the outcome can differ between prefixes sharing the same attributes; the RIB
    /// evaluates rules once per UPDATE when it cannot.
    fn uses_prefix(&self) -> bool {
        match self {
            Match::Prefix(_) => true,
            Match::All(all) => all.iter().any(Match::uses_prefix),
            Match::Not(m) => m.uses_prefix(),
            _ => false,
        }
    }
}

/// The AS that originated a path: the last AS of a trailing AS_SEQUENCE.
pub fn origin_as(path: &AsPath) -> Option<u32> {
    match path.segments.last() {
        Some(s) if s.kind == SegmentType::Sequence => s.asns.last().copied(),
        _ => None,
    }
}

/// What a matching rule does. `Accept` and `Reject` end the evaluation; the others change
/// the route and evaluation continues with the next rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
    SetLocalPref(u32),
    SetMed(u32),
    AddCommunity(Community),
    AddLargeCommunity(LargeCommunity),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub when: Match,
    pub action: Action,
}

impl PolicyRule {
    pub fn new(when: Match, action: Action) -> Self {
        PolicyRule { when, action }
    }
}

/// What to do when a peer's accepted prefixes of one address family exceed `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxPrefixAction {
    /// Report once when crossing the limit (again after falling back under it); keep the
    /// session and every route.
    Warn,
    /// Refuse the prefix that crosses the limit and everything after it, and ask the session
    /// to close with Cease / Maximum Number of Prefixes Reached (RFC 4486).
    Teardown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPrefix {
    pub limit: u32,
    pub action: MaxPrefixAction,
}

/// The outcome of the rule list for one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted; `Some` carries the attributes as rules changed them.
    Accept(Option<PathAttributes>),
    Reject,
}

/// Import policy of one peer.
///
/// A route is accepted when its prefix matches `prefixes` and the rules do not reject it.
/// Rules run in order: a matching `Accept`/`Reject` ends evaluation, a matching modifier
/// changes the route and evaluation continues; falling off the end accepts (the prefix list
/// is the gate). The default policy has an empty prefix list: a server takes nothing from a
/// peer unless configured to, and every rejected prefix is counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPolicy {
    pub prefixes: PrefixList,
    pub rules: Vec<PolicyRule>,
    pub max_prefix: Option<MaxPrefix>,
}

impl ImportPolicy {
    /// Accepts every IPv4 and IPv6 prefix unchanged, no limit (tests and benchmarks).
    pub fn accept_all() -> Self {
        ImportPolicy { prefixes: PrefixList::any(), ..ImportPolicy::default() }
    }

    /// Whether the prefix list lets `prefix` in.
    pub fn admits(&self, prefix: &Prefix) -> bool {
        self.prefixes.matches(prefix)
    }

    /// Whether some rule looks at the prefix (otherwise [`ImportPolicy::run_rules`] gives the
    /// same verdict for every prefix of an UPDATE).
    pub fn rules_use_prefix(&self) -> bool {
        self.rules.iter().any(|r| r.when.uses_prefix())
    }

    /// Runs the rule list (not the prefix list) on one route.
    pub fn run_rules(&self, prefix: &Prefix, attrs: &PathAttributes) -> Verdict {
        let mut changed: Option<PathAttributes> = None;
        for rule in &self.rules {
            let current = changed.as_ref().unwrap_or(attrs);
            if !rule.when.matches(prefix, current) {
                continue;
            }
            fn edit<'c>(changed: &'c mut Option<PathAttributes>, attrs: &PathAttributes) -> &'c mut PathAttributes {
                changed.get_or_insert_with(|| attrs.clone())
            }
            match rule.action {
                Action::Accept => break,
                Action::Reject => return Verdict::Reject,
                Action::SetLocalPref(lp) => edit(&mut changed, attrs).local_pref = Some(lp),
                Action::SetMed(med) => edit(&mut changed, attrs).med = Some(med),
                Action::AddCommunity(c) => {
                    let a = edit(&mut changed, attrs);
                    if !a.communities.contains(&c) {
                        a.communities.push(c);
                    }
                }
                Action::AddLargeCommunity(c) => {
                    let a = edit(&mut changed, attrs);
                    if !a.large_communities.contains(&c) {
                        a.large_communities.push(c);
                    }
                }
            }
        }
        Verdict::Accept(changed)
    }

    /// Prefix list then rules: the whole import decision for one route.
    pub fn evaluate(&self, prefix: &Prefix, attrs: &PathAttributes) -> Verdict {
        if !self.admits(prefix) {
            return Verdict::Reject;
        }
        self.run_rules(prefix, attrs)
    }
}

/// Export policy of one peer. Whatever it says, routes learned from peers are never exported:
/// a server is not a transit. Only the node's own announcements go out, all of them by default,
/// or those matching `prefixes` when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPolicy {
    pub prefixes: Option<PrefixList>,
}

impl ExportPolicy {
    pub fn exports(&self, prefix: &Prefix) -> bool {
        self.prefixes.as_ref().is_none_or(|l| l.matches(prefix))
    }
}
