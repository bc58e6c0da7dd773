//! What the BGP daemon starters share: a small speaker description (router id, ASN, neighbors)
//! that each starter renders into its own config syntax, the session state normalised across
//! FRR, BIRD and GoBGP, and a bounded wait for a session to reach Established.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Result;

use crate::cmd;

/// One BGP speaker's configuration, deliberately small: later tests extend it or pass raw config
/// (`extra`, or the starters' `start_raw`).
#[derive(Debug, Clone)]
pub struct BgpConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub neighbors: Vec<Neighbor>,
    /// Daemon-specific text appended verbatim to the rendered config (policies, BFD, …).
    pub extra: String,
}

impl BgpConfig {
    pub fn new(router_id: Ipv4Addr, asn: u32) -> BgpConfig {
        BgpConfig { router_id, asn, neighbors: Vec::new(), extra: String::new() }
    }

    pub fn neighbor(mut self, neighbor: Neighbor) -> BgpConfig {
        self.neighbors.push(neighbor);
        self
    }

    pub fn extra(mut self, text: &str) -> BgpConfig {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }
}

#[derive(Debug, Clone)]
pub struct Neighbor {
    /// Used where a daemon wants a name (BIRD protocol name, GoBGP description). Letters, digits
    /// and underscores only, because BIRD accepts nothing else.
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    /// Source address for the TCP session; needed when a speaker has several addresses.
    pub local_address: Option<IpAddr>,
    pub families: Vec<Family>,
}

impl Neighbor {
    /// A neighbor exchanging the unicast family of its own address family.
    pub fn new(name: &str, address: IpAddr, asn: u32) -> Neighbor {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "neighbor name {name:?} must be letters, digits and underscores"
        );
        let family = match address {
            IpAddr::V4(_) => Family::Ipv4Unicast,
            IpAddr::V6(_) => Family::Ipv6Unicast,
        };
        Neighbor { name: name.to_string(), address, asn, local_address: None, families: vec![family] }
    }

    pub fn local_address(mut self, address: IpAddr) -> Neighbor {
        self.local_address = Some(address);
        self
    }

    pub fn families(mut self, families: &[Family]) -> Neighbor {
        self.families = families.to_vec();
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

/// RFC 4271 session states, as each daemon reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
    /// A word none of the above matches (BIRD's "Down", a daemon-specific state…).
    Other(String),
}

impl SessionState {
    /// Parses the state words of FRR (`Established`, `OpenSent`), BIRD (`Established`,
    /// `OpenSent`) and GoBGP (`BGP_FSM_ESTABLISHED`, `established`), case-insensitively.
    pub fn parse(word: &str) -> SessionState {
        let w = word.trim().to_ascii_lowercase();
        let w = w.strip_prefix("bgp_fsm_").unwrap_or(&w).replace('_', "");
        match w.as_str() {
            "idle" => SessionState::Idle,
            "connect" => SessionState::Connect,
            "active" => SessionState::Active,
            "opensent" => SessionState::OpenSent,
            "openconfirm" => SessionState::OpenConfirm,
            "established" => SessionState::Established,
            _ => SessionState::Other(word.trim().to_string()),
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionState::Other(word) => f.write_str(word),
            state => write!(f, "{state:?}"),
        }
    }
}

/// A running BGP daemon the harness can query.
pub trait BgpPeer {
    /// "FRR", "BIRD", "GoBGP": for messages.
    fn kind(&self) -> &'static str;
    /// The state of the session with `neighbor` as this daemon sees it.
    fn session_state(&self, neighbor: IpAddr) -> Result<SessionState>;
    /// The daemon's own summary of all sessions (its CLI output), for failure messages.
    fn sessions_summary(&self) -> String;
    /// The tail of the daemon's logs, for failure messages.
    fn log_tail(&self) -> String;
}

/// Waits (bounded by `timeout`) until `peer` reports the session with `neighbor` Established.
/// On timeout the error shows the states seen, the daemon's session summary and its log tail.
pub fn wait_established(peer: &dyn BgpPeer, neighbor: IpAddr, timeout: Duration) -> Result<()> {
    let mut seen: Vec<String> = Vec::new();
    let result = cmd::poll_until(
        &format!("{} session with {neighbor} to reach Established", peer.kind()),
        timeout,
        Duration::from_millis(500),
        || {
            let state = peer.session_state(neighbor)?;
            let word = state.to_string();
            if seen.last() != Some(&word) {
                seen.push(word);
            }
            Ok(state == SessionState::Established)
        },
    );
    result.map_err(|e| {
        e.context(format!(
            "{} session with {neighbor}: states seen {}\n{}\nlog tail:\n{}",
            peer.kind(),
            seen.join(" -> "),
            peer.sessions_summary(),
            peer.log_tail()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_parses_each_daemons_spelling() {
        assert_eq!(SessionState::parse("Established"), SessionState::Established);
        assert_eq!(SessionState::parse("BGP_FSM_ESTABLISHED"), SessionState::Established);
        assert_eq!(SessionState::parse("established"), SessionState::Established);
        assert_eq!(SessionState::parse("OpenSent"), SessionState::OpenSent);
        assert_eq!(SessionState::parse("BGP_FSM_OPENCONFIRM"), SessionState::OpenConfirm);
        assert_eq!(SessionState::parse("active"), SessionState::Active);
        assert_eq!(SessionState::parse("Down"), SessionState::Other("Down".into()));
    }

    #[test]
    fn neighbor_family_follows_its_address() {
        let v6 = Neighbor::new("a", "2001:db8::1".parse().unwrap(), 65000);
        assert_eq!(v6.families, vec![Family::Ipv6Unicast]);
        let v4 = Neighbor::new("b", "192.0.2.1".parse().unwrap(), 65000);
        assert_eq!(v4.families, vec![Family::Ipv4Unicast]);
    }

    #[test]
    #[should_panic(expected = "letters, digits and underscores")]
    fn neighbor_name_with_dash_is_rejected() {
        Neighbor::new("tor-1", "192.0.2.1".parse().unwrap(), 65000);
    }
}
