//! The model store: the one place where a config becomes the running config. Every source (file at
//! start, SIGHUP, `PUT /v1/config`) goes through [`ModelStore::accept`], which validates, persists to
//! the state store and only then publishes; a rejected config changes nothing.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferrule_config::{ConfigErrors, Model, ModelDiff};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::Store;

/// Where an accepted config came from, as shown by `ferrule show status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "detail")]
pub enum Origin {
    /// The `--config` file read at start.
    File(String),
    /// The `--config` file re-read on SIGHUP.
    Sighup(String),
    /// A `PUT /v1/config` request (detail: the client's name for it, e.g. the file it sent).
    Api(String),
}

impl Origin {
    pub fn label(&self) -> &'static str {
        match self {
            Origin::File(_) => "file",
            Origin::Sighup(_) => "sighup",
            Origin::Api(_) => "api",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "file {p}"),
            Origin::Sighup(p) => write!(f, "file {p} (SIGHUP)"),
            Origin::Api(name) => write!(f, "PUT /v1/config ({name})"),
        }
    }
}

/// A config that passed validation and is (or was) the running one.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub model: Model,
    /// The TOML text exactly as received, comments included: `GET /v1/config` returns it.
    pub text: String,
    pub origin: Origin,
    /// Increases by one with every accepted change; survives restarts through the state store.
    pub generation: u64,
    pub accepted_at: SystemTime,
    /// True when this process started from the state store (`--resume`) rather than a source.
    pub resumed: bool,
}

/// Why a config was not accepted. (`thiserror` is for the libraries; the binary writes Display.)
#[derive(Debug)]
pub enum AcceptError {
    Invalid(ConfigErrors),
    NodeRenamed { running: String, requested: String },
    Store(anyhow::Error),
}

impl std::fmt::Display for AcceptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcceptError::Invalid(errors) => write!(f, "{errors}"),
            AcceptError::NodeRenamed { running, requested } => write!(
                f,
                "node.name: cannot change from `{running}` to `{requested}` while the daemon runs \
                 (its datapath is pinned under that name); restart the daemon with the new config"
            ),
            AcceptError::Store(err) => write!(f, "state store: {err:#}"),
        }
    }
}

impl std::error::Error for AcceptError {}

/// What a successful accept did.
#[derive(Debug)]
pub enum Outcome {
    Changed { accepted: Arc<Accepted>, diff: Box<ModelDiff> },
    Unchanged(Arc<Accepted>),
}

#[derive(Clone)]
pub struct ModelStore {
    tx: watch::Sender<Arc<Accepted>>,
    store: Store,
    metrics: Metrics,
    /// Serialises accepts so generations are dense and the store and channel agree.
    lock: Arc<Mutex<()>>,
}

impl ModelStore {
    pub fn new(initial: Arc<Accepted>, store: Store, metrics: Metrics) -> Self {
        metrics.config_generation.set(initial.generation as i64);
        let (tx, _) = watch::channel(initial);
        ModelStore { tx, store, metrics, lock: Arc::new(Mutex::new(())) }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Accepted>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Accepted> {
        self.tx.borrow().clone()
    }

    /// Validates `text` (errors name `source_name`), persists it and publishes it. Blocking: it
    /// writes the state store, so async callers run it under `spawn_blocking`.
    pub fn accept(&self, origin: Origin, source_name: &str, text: String) -> Result<Outcome, AcceptError> {
        let result = self.accept_inner(origin.clone(), source_name, text);
        let verdict = match &result {
            Ok(Outcome::Changed { .. }) => "accepted",
            Ok(Outcome::Unchanged(_)) => "unchanged",
            Err(_) => "rejected",
        };
        self.metrics.config_change(origin.label(), verdict);
        result
    }

    /// Counts a change that failed before it could be validated (e.g. an unreadable file).
    pub fn metrics_rejected(&self, source: &str) {
        self.metrics.config_change(source, "rejected");
    }

    fn accept_inner(&self, origin: Origin, source_name: &str, text: String) -> Result<Outcome, AcceptError> {
        let model = ferrule_config::parse(source_name, &text).map_err(AcceptError::Invalid)?;
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current();
        if model.node.name != current.model.node.name {
            return Err(AcceptError::NodeRenamed {
                running: current.model.node.name.clone(),
                requested: model.node.name.clone(),
            });
        }
        if model == current.model && text == current.text {
            return Ok(Outcome::Unchanged(current));
        }
        let diff = ferrule_config::diff(&current.model, &model);
        let accepted = Arc::new(Accepted {
            model,
            text,
            origin,
            generation: current.generation + 1,
            accepted_at: SystemTime::now(),
            resumed: false,
        });
        self.store.save_config(&accepted).map_err(AcceptError::Store)?;
        self.metrics.config_generation.set(accepted.generation as i64);
        self.tx.send_replace(accepted.clone());
        Ok(Outcome::Changed { accepted, diff: Box::new(diff) })
    }
}
