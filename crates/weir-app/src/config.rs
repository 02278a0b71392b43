//! Layered configuration: defaults, then a TOML file, then the environment, then flags.
//!
//! Each service defines a serde struct with a hand-written `Default`; [`load_file`] reads it
//! from TOML (unknown fields are errors when the struct says `deny_unknown_fields`),
//! [`Env::load`] collects the environment (the nearest `.weir/env`, then the process
//! environment, which wins), and the service applies the variables it documents. [`show`]
//! prints the result as TOML with every [`weir_config::Secret`] as `***`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_bus::BusConfig;
use weir_config::{GraphSettings, Secret};

use crate::ServiceError;

/// Reads a config file, or gives the defaults when `path` is `None`.
pub fn load_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ServiceError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ServiceError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Parses config text (`path` only names it in errors).
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ServiceError> {
    toml::from_str(text).map_err(|e| ServiceError::ParseConfig {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Prints a resolved config as TOML; secrets print as `***`.
pub fn show<T: Serialize>(config: &T) -> String {
    // Through JSON first: TOML cannot express `None`, JSON drops nothing we need.
    let value = match serde_json::to_value(config) {
        Ok(v) => strip_nulls(v),
        Err(e) => return format!("# cannot print the config: {e}\n"),
    };
    toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

/// The environment a service reads: `.weir/env` (nearest above the current directory) under
/// the process environment. Empty values count as unset.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Reads `.weir/env` (if any) and the process environment.
    pub fn load() -> Result<Self, ServiceError> {
        let mut vars = match std::env::current_dir()
            .ok()
            .and_then(|d| weir_config::find_env_file(&d))
        {
            Some(p) => weir_config::parse_env_file(&p)?,
            None => HashMap::new(),
        };
        vars.extend(std::env::vars());
        Ok(Self { vars })
    }

    /// An environment made of these pairs (for tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `key`, if set and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Parses `key` with `FromStr`, if set.
    pub fn parse<T: FromStr>(&self, key: &'static str) -> Result<Option<T>, ServiceError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| {
                v.parse::<T>().map_err(|e| ServiceError::Env {
                    var: key,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Parses `key` as a duration like `30s` or `5m`, if set.
    pub fn duration(&self, key: &'static str) -> Result<Option<Duration>, ServiceError> {
        self.get(key)
            .map(|v| {
                humantime::parse_duration(v).map_err(|e| ServiceError::Env {
                    var: key,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// A comma-separated list of secrets (e.g. API keys), if set.
    pub fn secrets(&self, key: &str) -> Option<Vec<Secret>> {
        self.get(key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::new)
                .collect()
        })
    }

    /// Applies `NEO4J_URI`, `NEO4J_USER`, `NEO4J_PASSWORD` and `NEO4J_DATABASE`.
    pub fn apply_graph(&self, graph: &mut GraphSettings) {
        if let Some(v) = self.get("NEO4J_URI") {
            graph.uri = v.to_owned();
        }
        if let Some(v) = self.get("NEO4J_USER") {
            graph.user = v.to_owned();
        }
        if let Some(v) = self.get("NEO4J_PASSWORD") {
            graph.password = Secret::new(v);
        }
        if let Some(v) = self.get("NEO4J_DATABASE") {
            graph.database = v.to_owned();
        }
    }

    /// Applies `NATS_URL`, `WEIR_BUS_STREAM` and `WEIR_BUS_SUBJECT_PREFIX` to a NATS bus (nothing
    /// for the in-process one).
    pub fn apply_bus(&self, bus: &mut BusConfig) {
        if let BusConfig::Nats(n) = bus {
            if let Some(v) = self.get("NATS_URL") {
                n.url = v.to_owned();
            }
            if let Some(v) = self.get("WEIR_BUS_STREAM") {
                n.stream = v.to_owned();
            }
            if let Some(v) = self.get("WEIR_BUS_SUBJECT_PREFIX") {
                n.subject_prefix = v.to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        name: String,
        graph: GraphSettings,
        limit: Option<u64>,
    }

    #[test]
    fn show_masks_secrets_and_drops_nones() {
        let mut d = Demo::default();
        d.graph.password = Secret::new("very-secret-password");
        let out = show(&d);
        assert!(!out.contains("very-secret-password"), "{out}");
        assert!(out.contains("***"), "{out}");
        assert!(!out.contains("limit"), "{out}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse_toml::<Demo>("nmae = \"x\"", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
    }

    #[test]
    fn env_overrides_graph_and_bus() {
        let env = Env::from_pairs([
            ("NEO4J_URI", "bolt://db:7687"),
            ("NEO4J_PASSWORD", "pw-from-env"),
            ("NATS_URL", "nats://bus:4222"),
            ("NEO4J_USER", ""),
        ]);
        let mut g = GraphSettings::default();
        env.apply_graph(&mut g);
        assert_eq!(g.uri, "bolt://db:7687");
        assert_eq!(g.password.expose(), "pw-from-env");
        assert_eq!(g.user, weir_config::DEFAULT_NEO4J_USER, "empty means unset");
        let mut bus = BusConfig::Nats(Default::default());
        env.apply_bus(&mut bus);
        match bus {
            BusConfig::Nats(n) => assert_eq!(n.url, "nats://bus:4222"),
            BusConfig::InProcess(_) => unreachable!(),
        }
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let env = Env::from_pairs([("WEIR_X", "soon")]);
        let e = env.duration("WEIR_X").unwrap_err();
        assert!(e.to_string().contains("WEIR_X"));
        assert_eq!(env.duration("WEIR_Y").unwrap(), None);
        let keys = Env::from_pairs([("K", "a, b,,c")]).secrets("K").unwrap();
        assert_eq!(keys.len(), 3);
    }
}
