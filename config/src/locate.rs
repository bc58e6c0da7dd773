//! Maps field paths to FILE:LINE:COL using a span-preserving parse of the same text (toml_edit).
//! serde forgets where values came from, so validation asks this index instead; it never decides
//! whether a value is valid.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use toml_edit::{Item, TableLike, Value};

use crate::error::ConfigError;

/// A field path such as `services[1].backends[0].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct FieldPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_owned()));
        p
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    pub(crate) fn parent(&self) -> Option<Self> {
        let mut p = self.clone();
        p.0.pop().map(|_| p)
    }

    /// The last key, for "unknown key `x`" messages.
    pub(crate) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The keys only, without indices: `services.backends` for `services[1].backends[0]`; used to
    /// know which table schema a path falls in.
    pub(crate) fn schema_keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    /// Converts serde_ignored's path (`services.0.foo`, with `?` for options) into ours.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        match path {
            Path::Root => Self::root(),
            Path::Seq { parent, index } => Self::from_ignored(parent).index(*index),
            Path::Map { parent, key } => Self::from_ignored(parent).key(key),
            Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
                Self::from_ignored(parent)
            }
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where each value and key of one document is.
pub(crate) struct Locator<'a> {
    source: &'a str,
    text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    values: HashMap<FieldPath, Range<usize>>,
    keys: HashMap<FieldPath, Range<usize>>,
}

impl<'a> Locator<'a> {
    /// If toml_edit cannot parse the text (it should accept whatever toml accepts) the index is
    /// empty and every location falls back to 1:1 rather than failing validation.
    pub(crate) fn new(source: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut loc = Locator { source, text, line_starts, values: HashMap::new(), keys: HashMap::new() };
        if let Ok(doc) = toml_edit::Document::parse(text) {
            loc.walk_item(&FieldPath::root(), doc.as_item());
        }
        loc
    }

    pub(crate) fn source(&self) -> &str {
        self.source
    }

    fn walk_item(&mut self, path: &FieldPath, item: &Item) {
        self.record_value(path, item.span());
        match item {
            Item::None => {}
            Item::Value(v) => self.walk_value(path, v),
            Item::Table(t) => self.walk_table(path, t),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = path.index(i);
                    self.record_value(&p, t.span());
                    self.walk_table(&p, t);
                }
            }
        }
    }

    fn walk_value(&mut self, path: &FieldPath, value: &Value) {
        self.record_value(path, value.span());
        match value {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.walk_value(&path.index(i), v);
                }
            }
            Value::InlineTable(t) => self.walk_table(path, t),
            _ => {}
        }
    }

    fn walk_table(&mut self, path: &FieldPath, table: &dyn TableLike) {
        for (name, _) in table.iter() {
            if let Some((key, item)) = table.get_key_value(name) {
                let p = path.key(name);
                if let Some(span) = key.span() {
                    self.keys.insert(p.clone(), span);
                }
                self.walk_item(&p, item);
            }
        }
    }

    fn record_value(&mut self, path: &FieldPath, span: Option<Range<usize>>) {
        if let Some(span) = span {
            self.values.entry(path.clone()).or_insert(span);
        }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters, as editors do.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let col = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    /// Position of the value at `path`; if the path is absent (a missing field), its key, else the
    /// nearest enclosing table that has a position, else the top of the file.
    pub(crate) fn value_pos(&self, path: &FieldPath) -> (usize, usize) {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(span) = self.values.get(&cur).or_else(|| self.keys.get(&cur)) {
                return self.line_col(span.start);
            }
            p = cur.parent();
        }
        (1, 1)
    }

    /// Position of the key at `path` (for unknown keys), falling back like `value_pos`.
    pub(crate) fn key_pos(&self, path: &FieldPath) -> (usize, usize) {
        match self.keys.get(path) {
            Some(span) => self.line_col(span.start),
            None => self.value_pos(path),
        }
    }

    /// `FILE:LINE:COL` of a value, for messages that point at a second place ("also used by ...").
    pub(crate) fn describe(&self, path: &FieldPath) -> String {
        let (line, col) = self.value_pos(path);
        format!("{}:{line}:{col}", self.source)
    }

    /// The innermost value whose span contains `offset`: names the field a serde type error is about.
    pub(crate) fn path_at(&self, offset: usize) -> Option<&FieldPath> {
        self.values
            .iter()
            .filter(|(p, span)| span.contains(&offset) && !p.0.is_empty())
            .min_by_key(|(p, span)| (span.len(), std::cmp::Reverse(p.0.len())))
            .map(|(p, _)| p)
    }

    pub(crate) fn error_at_value(&self, path: &FieldPath, message: String) -> ConfigError {
        let (line, col) = self.value_pos(path);
        self.error(line, col, path.to_string(), message)
    }

    pub(crate) fn error_at_key(&self, path: &FieldPath, message: String) -> ConfigError {
        let (line, col) = self.key_pos(path);
        self.error(line, col, path.to_string(), message)
    }

    pub(crate) fn error(&self, line: usize, col: usize, path: String, message: String) -> ConfigError {
        ConfigError { source: self.source.to_owned(), line, col, path, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_paths_with_indices_and_quotes_odd_keys() {
        let p = FieldPath::root().key("services").index(1).key("backends").index(0).key("weight");
        assert_eq!(p.to_string(), "services[1].backends[0].weight");
        assert_eq!(FieldPath::root().key("node").key("a.b").to_string(), "node.\"a.b\"");
    }

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        let loc = Locator::new("f", "a = 1\nbé = 2\n");
        assert_eq!(loc.line_col(0), (1, 1));
        assert_eq!(loc.line_col(6), (2, 1));
        // "bé" is 3 bytes; the `=` after it is the 4th character.
        assert_eq!(loc.line_col(10), (2, 4));
    }

    #[test]
    fn locates_values_in_tables_arrays_of_tables_and_inline_tables() {
        let text = "[node]\nasn = 1\n\n[[services]]\nname = \"a\"\nbackends = [ { address = \"x\", weight = 0 } ]\n";
        let loc = Locator::new("f", text);
        let asn = FieldPath::root().key("node").key("asn");
        assert_eq!(loc.value_pos(&asn), (2, 7));
        let weight = FieldPath::root().key("services").index(0).key("backends").index(0).key("weight");
        assert_eq!(loc.value_pos(&weight), (6, 40));
        assert_eq!(loc.key_pos(&weight), (6, 31));
    }

    #[test]
    fn missing_field_falls_back_to_enclosing_table() {
        let text = "x = 1\n[[services]]\nname = \"a\"\n";
        let loc = Locator::new("f", text);
        let port = FieldPath::root().key("services").index(0).key("port");
        assert_eq!(loc.value_pos(&port).0, 2);
        let nothing = FieldPath::root().key("node").key("asn");
        assert_eq!(loc.value_pos(&nothing), (1, 1));
    }

    #[test]
    fn finds_innermost_path_at_offset() {
        let text = "[node]\nasn = \"x\"\n";
        let loc = Locator::new("f", text);
        let offset = text.find("\"x\"").unwrap();
        assert_eq!(loc.path_at(offset).map(ToString::to_string).as_deref(), Some("node.asn"));
    }
}
