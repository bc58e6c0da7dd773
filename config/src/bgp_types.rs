//! Value types of the `[bgp]` keys that have a text form of their own: prefix-list entries
//! (`"203.0.113.0/24 le 32"`), communities (`"65101:100"`, `"no-export"`) and large communities
//! (`"65101:1:2"`). Each parses from and prints to that text, which is also its JSON form.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One entry of a prefix list: routes whose prefix lies inside `prefix` and whose length is in
/// `ge..=le` match. Without `ge`/`le` only `prefix` itself matches. Matching is the BGP policy's
/// business (`ferrule_bgp::policy::PrefixListEntry`); this is the validated text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixFilter {
    pub prefix: IpNet,
    pub ge: Option<u8>,
    pub le: Option<u8>,
}

impl FromStr for PrefixFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORM: &str =
            "write PREFIX/LEN, optionally followed by `ge N` and/or `le N`, e.g. \"203.0.113.0/24 le 32\"";
        let mut words = s.split_whitespace();
        let prefix_text = words.next().ok_or_else(|| format!("empty prefix-list entry; {FORM}"))?;
        let prefix: IpNet = prefix_text.parse().map_err(|_| format!("`{prefix_text}` is not an IP prefix; {FORM}"))?;
        if prefix.trunc() != prefix {
            return Err(format!("{prefix} has host bits set; did you mean {}?", prefix.trunc()));
        }
        let (mut ge, mut le) = (None, None);
        while let Some(word) = words.next() {
            let slot = match word {
                "ge" if ge.is_none() && le.is_none() => &mut ge,
                "le" if le.is_none() => &mut le,
                _ => return Err(format!("unexpected `{word}` in `{s}`; {FORM}")),
            };
            let value = words.next().ok_or_else(|| format!("`{word}` needs a length in `{s}`"))?;
            let value: u8 = value.parse().map_err(|_| format!("`{value}` is not a prefix length in `{s}`"))?;
            *slot = Some(value);
        }
        let (len, max) = (prefix.prefix_len(), prefix.max_prefix_len());
        for (word, value) in [("ge", ge), ("le", le)] {
            if let Some(v) = value {
                if v < len || v > max {
                    return Err(format!("`{word} {v}` must lie between the prefix length {len} and {max} in `{s}`"));
                }
            }
        }
        if let (Some(g), Some(l)) = (ge, le) {
            if g > l {
                return Err(format!("`ge {g}` is larger than `le {l}` in `{s}`; nothing would match"));
            }
        }
        Ok(PrefixFilter { prefix, ge, le })
    }
}

impl fmt::Display for PrefixFilter {
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

/// An RFC 1997 community, written `ASN:VALUE` or as a well-known name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

const WELL_KNOWN: [(&str, u32); 4] = [
    ("graceful-shutdown", 0xFFFF_0000),
    ("no-export", 0xFFFF_FF01),
    ("no-advertise", 0xFFFF_FF02),
    ("no-export-subconfed", 0xFFFF_FF03),
];

impl FromStr for Community {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((_, value)) = WELL_KNOWN.iter().find(|(name, _)| *name == s) {
            return Ok(Community(*value));
        }
        let bad = || {
            format!("`{s}` is not a community; write ASN:VALUE with both at most 65535 (e.g. \"65101:100\") or no-export / no-advertise / no-export-subconfed / graceful-shutdown")
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let a: u16 = a.parse().map_err(|_| bad())?;
        let b: u16 = b.parse().map_err(|_| bad())?;
        Ok(Community((u32::from(a) << 16) | u32::from(b)))
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match WELL_KNOWN.iter().find(|(_, value)| *value == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}:{}", self.0 >> 16, self.0 & 0xFFFF),
        }
    }
}

/// An RFC 8092 large community, written `GLOBAL:LOCAL1:LOCAL2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

impl FromStr for LargeCommunity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a large community; write GLOBAL:LOCAL1:LOCAL2, e.g. \"65101:1:2\"");
        let parts: Vec<&str> = s.split(':').collect();
        let [g, l1, l2] = parts.as_slice() else { return Err(bad()) };
        Ok(LargeCommunity {
            global: g.parse().map_err(|_| bad())?,
            local1: l1.parse().map_err(|_| bad())?,
            local2: l2.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

/// These types are strings in TOML and JSON alike.
macro_rules! serde_as_string {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_string!(PrefixFilter, Community, LargeCommunity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_malformed_entries_with_the_reason() {
        for (text, part) in [
            ("", "empty"),
            ("203.0.113.1/24", "host bits"),
            ("203.0.113.0/24 le 33", "between the prefix length 24 and 32"),
            ("203.0.113.0/24 le 16", "between"),
            ("203.0.113.0/24 ge 30 le 28", "larger than"),
            ("203.0.113.0/24 le", "needs a length"),
            ("203.0.113.0/24 upto 32", "unexpected `upto`"),
            ("203.0.113.0/24 le 32 ge 28", "unexpected `ge`"),
            ("not-a-prefix", "not an IP prefix"),
        ] {
            let err = text.parse::<PrefixFilter>().unwrap_err();
            assert!(err.contains(part), "{text:?}: {err}");
        }
    }

    #[test]
    fn prefix_filter_prints_as_written() {
        for text in ["0.0.0.0/0", "::/0", "203.0.113.0/24 le 32", "2001:db8::/32 ge 48 le 64", "10.0.0.0/8 ge 16"] {
            assert_eq!(text.parse::<PrefixFilter>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn communities_parse_numbers_and_well_known_names() {
        assert_eq!("65101:100".parse::<Community>().unwrap(), Community(0xFE4D_0064));
        assert_eq!("no-export".parse::<Community>().unwrap(), Community(0xFFFF_FF01));
        assert_eq!(Community(0xFFFF_FF01).to_string(), "no-export");
        assert_eq!(Community(0xFE4D_0064).to_string(), "65101:100");
        assert!("65536:1".parse::<Community>().unwrap_err().contains("ASN:VALUE"));
        assert!("65101".parse::<Community>().is_err());
    }

    #[test]
    fn large_communities_need_three_parts() {
        let lc: LargeCommunity = "4200000000:1:2".parse().unwrap();
        assert_eq!((lc.global, lc.local1, lc.local2), (4_200_000_000, 1, 2));
        assert_eq!(lc.to_string(), "4200000000:1:2");
        assert!("1:2".parse::<LargeCommunity>().unwrap_err().contains("GLOBAL:LOCAL1:LOCAL2"));
        assert!("1:2:3:4".parse::<LargeCommunity>().is_err());
    }
}
