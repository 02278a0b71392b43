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

mod backoff;

pub use backoff::Backoff;

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
#[derive(Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema, Default)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Finds `.weir/env` in `start`, or else in the project root above it: the nearest ancestor
/// holding a `.git` (where `scripts/dev.sh up` writes it). Directories above the project root
/// are never looked at, so a `.weir/env` planted higher up (in a shared `/tmp`, say) is not
/// picked up.
pub fn find_env_file(start: &Path) -> Option<PathBuf> {
    let here = start.join(".weir").join("env");
    if here.is_file() {
        return Some(here);
    }
    let root = start.ancestors().find(|d| d.join(".git").exists())?;
    Some(root.join(".weir").join("env")).filter(|p| p.is_file())
}

/// A size in bytes, written as a number of bytes or with a unit: `64MiB`, `512M`, `1GiB`,
/// `1048576` (K/M/G and KiB/MiB/GiB are all powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(ByteSize)
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(0) => Err(serde::de::Error::custom("a size must be above 0")),
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: bytes, or a number with a unit (KiB, MiB, GiB; K, M, G), e.g. \"64MiB\".",
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*([KkMmGg]([Ii]?[Bb])?|[Bb])?\\s*$"}
            ]
        })
    }
}

/// Parses sizes like `64MiB`, `512M`, `1GiB`, `1048576` (bytes); 0 is refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
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

/// A server address (or a comma-separated list of them, as NATS takes) with every credential
/// replaced by `***`: `nats://u:p@h:4222,tok@h2:4222` becomes `nats://***@h:4222,***@h2:4222`.
/// The one masking of URLs for logs, errors and `config show`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, one),
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let masked = match rest[..authority_end].rsplit_once('@') {
                Some((_, host)) => format!("***@{host}{}", &rest[authority_end..]),
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{masked}"),
                None => masked,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
    fn redact_url_masks_every_credential_of_every_server() {
        for (url, want) in [
            ("nats://user:pw@10.0.0.1:4222", "nats://***@10.0.0.1:4222"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("tok@host:4222", "***@host:4222"),
            (
                "nats://t@h:4222,nats://u:p@h2:4222",
                "nats://***@h:4222,nats://***@h2:4222",
            ),
            ("bolt://neo:s3cret@db:7687/x@y", "bolt://***@db:7687/x@y"),
            (
                "neo4j+s://a:b@c@db.example:7687",
                "neo4j+s://***@db.example:7687",
            ),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

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

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!("1GiB".parse::<ByteSize>().unwrap().to_string(), "1GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = serde_json::from_str(r#"{"a": 1073741824, "b": "512MiB"}"#).unwrap();
        assert_eq!((t.a.bytes(), t.b.bytes()), (1 << 30, 512 << 20));
    }

    #[test]
    fn the_env_file_is_read_from_here_or_the_project_root_only() {
        let top = tempfile::tempdir().unwrap();
        // A .weir/env above the project root is never read.
        std::fs::create_dir_all(top.path().join(".weir")).unwrap();
        std::fs::write(top.path().join(".weir/env"), "NEO4J_URI=bolt://planted:1\n").unwrap();
        let project = top.path().join("project");
        let sub = project.join("crates/x");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(
            find_env_file(&sub),
            None,
            "no project root: nothing above is read"
        );
        std::fs::create_dir_all(project.join(".git")).unwrap();
        assert_eq!(
            find_env_file(&sub),
            None,
            "the project root has no .weir/env"
        );
        std::fs::create_dir_all(project.join(".weir")).unwrap();
        std::fs::write(project.join(".weir/env"), "NEO4J_URI=bolt://mine:1\n").unwrap();
        assert_eq!(find_env_file(&sub), Some(project.join(".weir/env")));
        assert_eq!(find_env_file(&project), Some(project.join(".weir/env")));
    }
}
