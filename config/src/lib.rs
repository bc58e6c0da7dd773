//! Ferrule's declarative model: the TOML contract, parsing, validation and diff.
//! Every source turns its input into a `Model` through `parse`, so validation happens once, here,
//! with errors naming FILE:LINE:COL and the field. No I/O beyond reading one file in `load_file`.

mod bgp_types;
mod diff;
mod error;
mod locate;
mod model;
mod raw;
mod redact;
mod validate;

use std::path::Path;

pub use bgp_types::{Community, LargeCommunity, PrefixFilter};
pub use diff::{diff, ModelDiff};
pub use error::{ConfigError, ConfigErrors, LoadError};
pub use model::{
    Announce, AnnounceWhen, Backend, Bfd, Bgp, Decap, GracefulRestart, HealthCheck, HealthKind, ImportAction,
    ImportRule, Listen, MaxPrefix, MaxPrefixAction, Mode, Model, Node, Password, Peer, PeerOptions, PortRange,
    Protocol, Service,
};
pub use redact::redact_secrets;
pub use validate::{MAX_BACKENDS, MAX_MAGLEV_TABLE_SIZE, MAX_SERVICES};

use locate::{FieldPath, Locator};
use raw::RawModel;
use validate::Validator;

/// Parses and validates a config. `source` names the text in errors: a path, or e.g.
/// `PUT /v1/config`. Returns every problem found, not only the first, except that a TOML syntax
/// or type error stops the checks that need the parsed values.
pub fn parse(source: &str, text: &str) -> Result<Model, ConfigErrors> {
    let loc = Locator::new(source, text);
    let mut unknown = Vec::new();
    let raw = toml::Deserializer::parse(text).and_then(|de| {
        serde_ignored::deserialize::<_, _, RawModel>(de, |path| unknown.push(FieldPath::from_ignored(&path)))
    });

    let mut v = Validator::new(&loc);
    for path in &unknown {
        v.unknown_key(path);
    }
    let (model, mut errors) = match raw {
        Ok(raw) => {
            let model = v.model(raw);
            (model, v.into_errors())
        }
        Err(e) => {
            let mut errors = v.into_errors();
            errors.push(toml_error(&loc, &e));
            (None, errors)
        }
    };

    match model {
        Some(model) if errors.is_empty() => Ok(model),
        _ => {
            // Unknown keys are found during deserialization, the rest afterwards: present them
            // in the order a reader meets them in the file.
            errors.sort_by_key(|e| (e.line, e.col));
            Err(ConfigErrors { errors })
        }
    }
}

/// Reads and parses a config file; returns the text too, so the caller can store exactly what
/// was accepted.
pub fn load_file(path: &Path) -> Result<(Model, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    let model = parse(&path.display().to_string(), &text)?;
    Ok((model, text))
}

/// A syntax or type error from toml/serde, located by its span. Syntax errors have no field path
/// (the document did not parse); type errors get the path of the value they point at.
fn toml_error(loc: &Locator<'_>, e: &toml::de::Error) -> ConfigError {
    let (line, col, path) = match e.span() {
        Some(span) => {
            let (line, col) = loc.line_col(span.start);
            let path = loc.path_at(span.start).map(ToString::to_string).unwrap_or_default();
            (line, col, path)
        }
        None => (1, 1, String::new()),
    };
    ConfigError { source: loc.source().to_owned(), line, col, path, message: describe_toml_message(e.message()) }
}

/// serde's messages name Rust types (`i64`, `a sequence`); say it in TOML terms instead.
fn describe_toml_message(message: &str) -> String {
    message
        .trim()
        .replace('\n', "; ")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: map", "invalid type: table")
}

#[cfg(test)]
mod tests;
