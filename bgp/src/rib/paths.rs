//! The paths of one prefix, stored compactly: most prefixes of a full table have exactly one
//! path, so a single path lives inline and only a prefix learned from several sources pays
//! for a vector. Knows nothing of how the best path is chosen (`decision.rs`).

use std::sync::Arc;

use super::{RouteAttrs, Source};

/// Path flags.
pub(crate) const BEST: u8 = 1;
/// Member of the ECMP set (the best path is one).
pub(crate) const ECMP: u8 = 2;
/// Kept across a graceful restart of its peer, not yet refreshed.
pub(crate) const STALE: u8 = 4;

/// One route to a prefix from one source: a peer's Adj-RIB-In entry, or the node's own
/// announcement. 24 bytes; the attributes are shared with every prefix of the same UPDATE.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub source: Source,
    pub attrs: Arc<RouteAttrs>,
    /// Seconds since the RIB's epoch when this path was last changed.
    pub since: u32,
    pub flags: u8,
}

impl Path {
    pub fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Never empty: the table removes a prefix whose last path goes.
#[derive(Debug, Clone)]
pub(crate) enum PathSet {
    One(Path),
    /// At least two paths, kept in decision order: the best first, then the rest of the ECMP
    /// set, then every other path. Boxed so that the whole set is 24 bytes (the niche of
    /// `Path::source` holds the tag): a full table has over a million of these inline in the
    /// hash table, and only prefixes with several sources pay the indirection.
    #[allow(clippy::box_collection)] // the extra allocation is the point: see above
    Many(Box<Vec<Path>>),
}

/// What [`PathSet::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upsert {
    Inserted,
    /// The source's path was replaced by different attributes; `was_stale` tells whether the
    /// old one was waiting for a graceful-restart refresh.
    Replaced {
        was_stale: bool,
    },
    /// The same attributes again: only the stale mark (if any) was cleared.
    Refreshed {
        was_stale: bool,
    },
}

impl PathSet {
    pub fn as_slice(&self) -> &[Path] {
        match self {
            PathSet::One(p) => std::slice::from_ref(p),
            PathSet::Many(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [Path] {
        match self {
            PathSet::One(p) => std::slice::from_mut(p),
            PathSet::Many(v) => v,
        }
    }

    pub fn find(&self, source: Source) -> Option<&Path> {
        self.as_slice().iter().find(|p| p.source == source)
    }

    pub fn upsert(&mut self, path: Path) -> Upsert {
        if let Some(old) = self.as_mut_slice().iter_mut().find(|p| p.source == path.source) {
            let was_stale = old.is(STALE);
            old.flags &= !STALE;
            if Arc::ptr_eq(&old.attrs, &path.attrs) || old.attrs == path.attrs {
                return Upsert::Refreshed { was_stale };
            }
            old.attrs = path.attrs;
            old.since = path.since;
            return Upsert::Replaced { was_stale };
        }
        match self {
            PathSet::Many(v) => v.push(path),
            PathSet::One(_) => {
                let PathSet::One(first) = std::mem::replace(self, PathSet::Many(Box::new(Vec::with_capacity(2))))
                else {
                    unreachable!("matched One above")
                };
                if let PathSet::Many(v) = self {
                    v.extend([first, path]);
                }
            }
        }
        Upsert::Inserted
    }

    /// Removes the source's path. `Some(true)` when it was the last one: the caller must
    /// delete the whole set.
    pub fn remove(&mut self, source: Source) -> Option<(Path, bool)> {
        match self {
            PathSet::One(p) if p.source == source => Some((p.clone(), true)),
            PathSet::One(_) => None,
            PathSet::Many(v) => {
                let i = v.iter().position(|p| p.source == source)?;
                let removed = v.remove(i);
                if v.len() == 1 {
                    let last = v.pop().expect("one path left");
                    *self = PathSet::One(last);
                }
                Some((removed, false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_set_takes_no_more_room_than_one_path() {
        assert_eq!(std::mem::size_of::<Path>(), 24);
        assert_eq!(std::mem::size_of::<PathSet>(), 24);
    }
}
