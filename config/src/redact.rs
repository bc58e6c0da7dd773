//! Config text safe to show: every TCP MD5 `password` in `[[bgp.peers]]` and `[[bgp.listen]]`
//! replaced by `<redacted>`, everything else (comments, layout) as written. For `GET /v1/config`
//! and anything else that prints an accepted config; the state store keeps the real text.

use toml_edit::{DocumentMut, Item, Value};

use crate::model::Password;

/// `text` with its passwords redacted. Text that does not parse is returned as `None`: an
/// accepted config always parses, so a caller gets `None` only for something it should not print.
pub fn redact_secrets(text: &str) -> Option<String> {
    let mut doc: DocumentMut = text.parse().ok()?;
    if let Some(bgp) = doc.get_mut("bgp").and_then(Item::as_table_like_mut) {
        for section in ["peers", "listen"] {
            let Some(item) = bgp.get_mut(section) else { continue };
            if let Some(tables) = item.as_array_of_tables_mut() {
                for table in tables.iter_mut() {
                    if let Some(p) = table.get_mut("password") {
                        redact(p);
                    }
                }
            } else if let Some(array) = item.as_array_mut() {
                // Inline form: peers = [ { address = …, password = … } ].
                for value in array.iter_mut() {
                    if let Some(t) = value.as_inline_table_mut() {
                        if let Some(p) = t.get_mut("password") {
                            *p = Value::from(Password::REDACTED);
                        }
                    }
                }
            }
        }
    }
    Some(doc.to_string())
}

fn redact(item: &mut Item) {
    if let Some(v) = item.as_value_mut() {
        let decor = v.decor().clone();
        *v = Value::from(Password::REDACTED);
        *v.decor_mut() = decor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        let text =
            "# node\n[node]\nname = \"n1\"\n\n[[bgp.peers]]\naddress = \"192.0.2.1\"\npassword = \"s3cret\" # md5\n\
                    [[bgp.listen]]\nrange = \"2001:db8:5::/64\"\npassword = 'other'\n";
        let out = redact_secrets(text).unwrap();
        assert!(!out.contains("s3cret") && !out.contains("other"), "{out}");
        assert_eq!(out.matches("password = \"<redacted>\"").count(), 2, "{out}");
        assert!(out.starts_with("# node\n[node]\nname = \"n1\"") && out.contains("# md5"), "{out}");
        let inline = "[bgp]\npeers = [ { address = \"192.0.2.1\", asn = 1, password = \"k\" } ]\n";
        assert!(redact_secrets(inline).unwrap().contains("password = \"<redacted>\""));
        assert_eq!(redact_secrets("[node]\nname = \"n1\"\n").unwrap(), "[node]\nname = \"n1\"\n");
        assert_eq!(redact_secrets("not = = toml"), None);
    }
}
