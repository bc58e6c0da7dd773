//! Node-local persistent state in redb: what must survive a restart and cannot be re-derived.
//! Today that is the last accepted config (text, origin, generation) and graceful-restart
//! bookkeeping (when a process stopped for a restart, and for how long peers keep our routes);
//! later issues add identity and egress allocations. It never interprets a config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::{Accepted, Origin};

const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const LAST_ACCEPTED: &str = "last_accepted";
const GRACEFUL_RESTART: TableDefinition<&str, &[u8]> = TableDefinition::new("graceful_restart");
const PENDING_RESTART: &str = "pending";

/// A stop that left the forwarding state in place for the next process (graceful restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRestart {
    pub stopped_at_unix_ms: u64,
    /// The longest restart time advertised to a peer: after it, peers have dropped our routes.
    pub restart_time_s: u16,
}

impl PendingRestart {
    /// How much of the restart window is left at `now`; `None` when it is over.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        let end = UNIX_EPOCH
            + Duration::from_millis(self.stopped_at_unix_ms)
            + Duration::from_secs(self.restart_time_s.into());
        end.duration_since(now).ok().filter(|d| !d.is_zero())
    }
}

/// The stored form of an accepted config. The model is not stored: it is re-derived from the text
/// on load, through the same validation, so a newer binary never trusts an old serialisation.
#[derive(Debug, Serialize, Deserialize)]
struct StoredConfig {
    text: String,
    origin: Origin,
    generation: u64,
    accepted_at_unix_ms: u64,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| {
            format!(
                "cannot open the state store {} (is another ferrule daemon using it? pass --state to use another)",
                path.display()
            )
        })?;
        Ok(Store { db: Arc::new(db), path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn save_config(&self, accepted: &Accepted) -> Result<()> {
        let stored = StoredConfig {
            text: accepted.text.clone(),
            origin: accepted.origin.clone(),
            generation: accepted.generation,
            accepted_at_unix_ms: accepted
                .accepted_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let bytes = serde_json::to_vec(&stored)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CONFIG)?;
            table.insert(LAST_ACCEPTED, bytes.as_slice())?;
        }
        txn.commit().context("committing the accepted config to the state store")?;
        Ok(())
    }

    /// The stored record of the last accepted config, as JSON; `None` when there is none yet.
    fn stored_record(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(CONFIG) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Ok(table.get(LAST_ACCEPTED)?.map(|value| value.value().to_vec()))
    }

    /// The generation of the last accepted config, also when its text no longer validates (a
    /// newer binary's stricter checks) or the rest of the record cannot be read (an origin a
    /// newer binary wrote): generations on this node only ever grow.
    pub fn stored_generation(&self) -> Result<Option<u64>> {
        #[derive(Deserialize)]
        struct Generation {
            generation: u64,
        }
        let Some(record) = self.stored_record()? else { return Ok(None) };
        let stored: Generation =
            serde_json::from_slice(&record).context("the stored config record has no readable generation")?;
        Ok(Some(stored.generation))
    }

    /// The last accepted config, re-validated. `Ok(None)` when the store has none yet.
    pub fn load_config(&self) -> Result<Option<Accepted>> {
        let Some(record) = self.stored_record()? else { return Ok(None) };
        let stored: StoredConfig = serde_json::from_slice(&record)
            .context("the stored config record is unreadable (written by an incompatible version?)")?;
        let source_name = format!("{} (stored config)", self.path.display());
        let model = ferrule_config::parse(&source_name, &stored.text).map_err(|errors| {
            anyhow::anyhow!(
                "the config kept in the state store no longer validates; start with --config FILE instead of --resume:\n{errors}"
            )
        })?;
        Ok(Some(Accepted {
            model,
            text: stored.text,
            origin: stored.origin,
            generation: stored.generation,
            accepted_at: UNIX_EPOCH + Duration::from_millis(stored.accepted_at_unix_ms),
            resumed: true,
        }))
    }
}

impl Store {
    /// Records (or with `None`, clears) a stop that kept the forwarding state.
    pub fn set_pending_restart(&self, pending: Option<PendingRestart>) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(GRACEFUL_RESTART)?;
            match pending {
                Some(p) => {
                    table.insert(PENDING_RESTART, serde_json::to_vec(&p)?.as_slice())?;
                }
                None => {
                    table.remove(PENDING_RESTART)?;
                }
            }
        }
        txn.commit().context("committing graceful-restart bookkeeping to the state store")?;
        Ok(())
    }

    /// Takes the record of a restart stop, clearing it: a process consumes it once.
    pub fn take_pending_restart(&self) -> Result<Option<PendingRestart>> {
        let pending = {
            let txn = self.db.begin_read()?;
            let table = match txn.open_table(GRACEFUL_RESTART) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(err) => return Err(err.into()),
            };
            let value = table.get(PENDING_RESTART)?;
            // A record this binary cannot read is treated as no restart: the safe default is
            // an ordinary start (routes are then rebuilt from the sessions).
            value.and_then(|v| serde_json::from_slice::<PendingRestart>(v.value()).ok())
        };
        if pending.is_some() {
            self.set_pending_restart(None)?;
        }
        Ok(pending)
    }
}

pub fn unix_time_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_TEXT: &str = "[node]\nname = \"node1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n";

    fn accepted(generation: u64) -> Accepted {
        Accepted {
            model: ferrule_config::parse("t.toml", CONFIG_TEXT).unwrap(),
            text: CONFIG_TEXT.to_owned(),
            origin: Origin::Api("t.toml".into()),
            generation,
            accepted_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            resumed: false,
        }
    }

    #[test]
    fn pending_restart_is_taken_once_and_its_window_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let pending = PendingRestart { stopped_at_unix_ms: unix_time_ms(at), restart_time_s: 120 };
        Store::open(&path).unwrap().set_pending_restart(Some(pending)).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.take_pending_restart().unwrap(), Some(pending));
        assert_eq!(store.take_pending_restart().unwrap(), None, "consumed by the first process");
        assert_eq!(pending.remaining(at + Duration::from_secs(20)), Some(Duration::from_secs(100)));
        assert_eq!(pending.remaining(at + Duration::from_secs(120)), None);
    }

    #[test]
    fn empty_store_has_no_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        assert!(store.load_config().unwrap().is_none());
    }

    #[test]
    fn saved_config_survives_reopen_with_origin_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.redb");
        Store::open(&path).unwrap().save_config(&accepted(7)).unwrap();
        let loaded = Store::open(&path).unwrap().load_config().unwrap().unwrap();
        assert_eq!(loaded.generation, 7);
        assert_eq!(loaded.text, CONFIG_TEXT);
        assert_eq!(loaded.origin, Origin::Api("t.toml".into()));
        assert_eq!(unix_time_ms(loaded.accepted_at), 1_700_000_000_123);
        assert!(loaded.resumed);
    }

    #[test]
    fn a_stored_config_that_no_longer_validates_keeps_its_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        assert_eq!(store.stored_generation().unwrap(), None);
        // As if accepted by a build whose validation was looser.
        let old = Accepted { text: "[node]\nname = \"node1\"\nasn = 0\n".into(), ..accepted(7) };
        store.save_config(&old).unwrap();
        let err = store.load_config().unwrap_err();
        assert!(format!("{err:#}").contains("no longer validates"), "{err:#}");
        assert_eq!(store.stored_generation().unwrap(), Some(7));

        // A record a newer build wrote, with an origin this one does not know.
        let txn = store.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(CONFIG).unwrap();
            let record = br#"{"text":"x","origin":{"kind":"operator-portal"},"generation":9,"accepted_at_unix_ms":0}"#;
            table.insert(LAST_ACCEPTED, record.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        assert!(format!("{:#}", store.load_config().unwrap_err()).contains("unreadable"));
        assert_eq!(store.stored_generation().unwrap(), Some(9));
    }

    #[test]
    fn second_open_of_the_same_store_fails_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().expect("redb locks the file");
        assert!(format!("{err:#}").contains("another ferrule daemon"), "{err:#}");
    }
}
