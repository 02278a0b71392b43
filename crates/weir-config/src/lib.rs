//! Connection settings shared by every Weir binary and test.
//!
//! Settings come from, in rising order of precedence: the defaults below (which match what
//! `scripts/dev.sh up` starts), the file `.weir/env` written by `scripts/dev.sh up` in the
//! workspace (so `cargo test` finds the local services without extra exports), and the
//! environment variables `NEO4J_URI`, `NEO4J_USER`, `NEO4J_PASSWORD`, `NEO4J_DATABASE` and
//! `NATS_URL`. Binaries may override them again with CLI flags.
//!
//! Secrets are held in [`Secret`], whose `Debug`, `Display` and `Serialize` print `***`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default Bolt URI: the ArcadeDB server `scripts/dev.sh up` starts.
pub const DEFAULT_NEO4J_URI: &str = "bolt://127.0.0.1:17687";
/// Default graph user (ArcadeDB's root user).
pub const DEFAULT_NEO4J_USER: &str = "root";
/// Default password of the local development graph server (ArcadeDB needs 8+ characters).
pub const DEFAULT_NEO4J_PASSWORD: &str = "weir-local-dev";
/// Default database name.
pub const DEFAULT_NEO4J_DATABASE: &str = "neo4j";
/// Default NATS URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to start the local services; quoted by every "not reachable" error.
pub const START_HINT: &str = "start the local services with `./scripts/dev.sh up`, \
or point Weir at your own with NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD / NATS_URL";

/// A secret string (password, token). Never printed: `Debug`, `Display` and `Serialize` show `***`.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call only where it is handed to the party that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// Where the graph server is and how to log in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphSettings {
    /// Bolt URI. Default `bolt://127.0.0.1:17687`. Env `NEO4J_URI`.
    pub uri: String,
    /// User name. Default `root`. Env `NEO4J_USER`.
    pub user: String,
    /// Password. Default `weir-local-dev`. Env `NEO4J_PASSWORD`. Never logged.
    pub password: Secret,
    /// Database name. Default `neo4j`. Env `NEO4J_DATABASE`.
    pub database: String,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            uri: DEFAULT_NEO4J_URI.to_owned(),
            user: DEFAULT_NEO4J_USER.to_owned(),
            password: Secret::new(DEFAULT_NEO4J_PASSWORD),
            database: DEFAULT_NEO4J_DATABASE.to_owned(),
        }
    }
}

/// Where NATS is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// NATS URL. Default `nats://127.0.0.1:4222`. Env `NATS_URL`.
    pub url: String,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
        }
    }
}

/// Graph and NATS settings together, as resolved from defaults, `.weir/env` and the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// The graph server.
    pub graph: GraphSettings,
    /// The NATS server.
    pub nats: NatsSettings,
}

/// Errors reading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A settings file could not be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an env file is not `KEY=VALUE`.
    #[error("{path}:{line}: expected KEY=VALUE")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

impl ServiceSettings {
    /// Resolves settings from defaults, the nearest `.weir/env` above the current directory (if
    /// any) and the process environment, in that order of precedence (environment wins).
    pub fn from_env() -> Result<Self, ConfigError> {
        let file = match std::env::current_dir().ok().and_then(|d| find_env_file(&d)) {
            Some(path) => parse_env_file(&path)?,
            None => HashMap::new(),
        };
        let env: HashMap<String, String> = std::env::vars().collect();
        Ok(Self::from_maps(&file, &env))
    }

    /// Resolves settings from an env-file map and an environment map (environment wins).
    pub fn from_maps(file: &HashMap<String, String>, env: &HashMap<String, String>) -> Self {
        let get = |key: &str| {
            env.get(key)
                .filter(|v| !v.is_empty())
                .or_else(|| file.get(key).filter(|v| !v.is_empty()))
                .cloned()
        };
        let mut s = Self::default();
        if let Some(v) = get("NEO4J_URI") {
            s.graph.uri = v;
        }
        if let Some(v) = get("NEO4J_USER") {
            s.graph.user = v;
        }
        if let Some(v) = get("NEO4J_PASSWORD") {
            s.graph.password = Secret::new(v);
        }
        if let Some(v) = get("NEO4J_DATABASE") {
            s.graph.database = v;
        }
        if let Some(v) = get("NATS_URL") {
            s.nats.url = v;
        }
        s
    }
}

/// Finds `.weir/env` in `start` or one of its ancestors.
pub fn find_env_file(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(".weir").join("env"))
        .find(|p| p.is_file())
}

/// Parses a file of `KEY=VALUE` lines (blank lines and `#` comments allowed, an optional
/// `export ` prefix, values optionally in single or double quotes).
pub fn parse_env_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_env_text(&text).map_err(|line| ConfigError::Syntax {
        path: path.to_owned(),
        line,
    })
}

fn parse_env_text(text: &str) -> Result<HashMap<String, String>, usize> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=').ok_or(i + 1)?;
        let v = v.trim();
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
            .unwrap_or(v);
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = GraphSettings {
            password: Secret::new("hunter2-very-secret"),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
        assert_eq!(s.password.expose(), "hunter2-very-secret");
    }

    #[test]
    fn env_beats_file_beats_default() {
        let file =
            parse_env_text("# c\nexport NEO4J_URI='bolt://a:1'\nNATS_URL=nats://f:2\n").unwrap();
        let env: HashMap<_, _> = [("NATS_URL".to_owned(), "nats://e:3".to_owned())].into();
        let s = ServiceSettings::from_maps(&file, &env);
        assert_eq!(s.graph.uri, "bolt://a:1");
        assert_eq!(s.nats.url, "nats://e:3");
        assert_eq!(s.graph.user, DEFAULT_NEO4J_USER);
    }

    #[test]
    fn bad_line_is_reported_with_its_number() {
        assert_eq!(parse_env_text("A=1\nnot a pair\n"), Err(2));
    }
}
