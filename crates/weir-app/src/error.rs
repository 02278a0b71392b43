//! The error type of the service helpers.

use std::path::PathBuf;

/// Errors of the service helpers.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this service.
    #[error("invalid config file {path}: {source}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The TOML error (names the field).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An environment variable holds a value of the wrong shape.
    #[error("invalid value of environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A setting is wrong.
    #[error("invalid setting `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `.weir/env` could not be read.
    #[error(transparent)]
    Settings(#[from] weir_config::ConfigError),
    /// The authentication settings are unusable.
    #[error("invalid auth settings: {0}")]
    Auth(String),
}
