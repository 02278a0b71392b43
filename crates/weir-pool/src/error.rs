//! The pool's error type.

use std::time::Duration;

/// Which step ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutStage {
    /// Waiting for a session (pool exhausted or a new one slow to open): `acquire_timeout`.
    Acquire,
    /// Opening and proving one Bolt connection: `connect_timeout`.
    Connect,
    /// A query, transaction or stream fetch: `query_timeout`.
    Query,
}

impl std::fmt::Display for TimeoutStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Acquire => "acquire",
            Self::Connect => "connect",
            Self::Query => "query",
        })
    }
}

/// Everything the pool can fail with. Match on the variant; use [`PoolError::is_transient`]
/// and [`PoolError::is_data_error`] to decide between retrying and rejecting the data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A deadline passed.
    #[error("{stage} timed out after {after:?}")]
    Timeout {
        /// The step that ran out of time.
        stage: TimeoutStage,
        /// The deadline that passed.
        after: Duration,
    },
    /// The pool has not yet connected to the server once; nothing is queued.
    #[error("graph pool not ready: no connection to the graph server has succeeded yet")]
    NotReady,
    /// Too many consecutive connection failures: calls fail fast until a probe succeeds.
    #[error("graph circuit open: failing fast, next probe allowed in {retry_in:?}")]
    CircuitOpen {
        /// Time until a probe may be tried.
        retry_in: Duration,
    },
    /// The pool was closed.
    #[error("graph pool closed")]
    Closed,
    /// The server answered with a Neo4j error code (the session stays usable).
    #[error("graph database error {code}: {message}")]
    Database {
        /// Neo4j status code, e.g. `Neo.ClientError.Schema.ConstraintValidationFailed`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server refused the credentials.
    #[error("graph authentication failed: {message}")]
    Authentication {
        /// The server's message.
        message: String,
    },
    /// I/O or protocol failure: the session that saw it was discarded.
    #[error("graph connection failed: {source}")]
    Connection {
        /// The driver's error.
        #[source]
        source: neo4rs::Error,
    },
    /// The driver could not convert a value or the result had an unexpected shape; the
    /// session stays usable.
    #[error("graph driver error: {source}")]
    Driver {
        /// The driver's error.
        #[source]
        source: neo4rs::Error,
    },
    /// `execute` would have collected more rows than `max_collect_rows`; use `stream`.
    #[error("query returned more than {limit} rows; use stream() for large results")]
    TooManyRows {
        /// The configured limit.
        limit: usize,
    },
    /// A configuration value or combination is invalid.
    #[error("invalid pool config `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The pool needs a Tokio runtime to run its reaper and was created outside one.
    #[error("weir-pool must be created inside a Tokio runtime")]
    NoRuntime,
}

impl PoolError {
    /// Whether trying again later may succeed: timeouts, not ready, circuit open, connection
    /// failures and Neo4j `TransientError`s (and cluster "session expired" codes).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::NotReady
            | Self::CircuitOpen { .. }
            | Self::Connection { .. } => true,
            Self::Database { code, .. } => is_transient_code(code),
            _ => false,
        }
    }

    /// Whether the data or statement is at fault (syntax, schema constraint, type, invalid
    /// parameter): retrying the same input will fail again.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Database { code, .. } => {
                code.starts_with("Neo.ClientError.Statement.")
                    || code.starts_with("Neo.ClientError.Schema.")
                    || code.starts_with("Neo.ClientError.Request.Invalid")
            }
            Self::TooManyRows { .. } => true,
            _ => false,
        }
    }

    /// The Neo4j status code, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Database { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the session that produced this error must be discarded.
    pub(crate) fn breaks_session(&self) -> bool {
        matches!(self, Self::Connection { .. } | Self::Timeout { .. })
    }

    /// Whether this error counts as a connection failure for the circuit breaker.
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            Self::Connection { .. }
                | Self::Timeout {
                    stage: TimeoutStage::Connect | TimeoutStage::Query,
                    ..
                }
        )
    }

    /// Whether a write transaction may be retried after this error.
    pub(crate) fn is_retryable_in_txn(&self) -> bool {
        match self {
            Self::Connection { .. }
            | Self::Timeout {
                stage: TimeoutStage::Query | TimeoutStage::Connect,
                ..
            } => true,
            Self::Database { code, .. } => is_transient_code(code),
            _ => false,
        }
    }
}

fn is_transient_code(code: &str) -> bool {
    code.starts_with("Neo.TransientError.")
        || code == "Neo.ClientError.Cluster.NotALeader"
        || code == "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase"
}

impl From<neo4rs::Error> for PoolError {
    fn from(e: neo4rs::Error) -> Self {
        use neo4rs::Error as E;
        match e {
            E::Neo4j(n) => Self::Database {
                code: n.code().to_owned(),
                message: n.message().to_owned(),
            },
            E::AuthenticationError(message) => Self::Authentication { message },
            E::ConversionError
            | E::DeserializationError(_)
            | E::NoMoreRows
            | E::NotSingleResult
            | E::StringTooLong
            | E::MapTooBig
            | E::BytesTooBig
            | E::ListTooLong
            | E::InvalidInteger(..)
            | E::IntegerOverflow(..) => Self::Driver { source: e },
            other => Self::Connection { source: other },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> PoolError {
        PoolError::Database {
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn classifies_codes() {
        let c = db("Neo.ClientError.Schema.ConstraintValidationFailed");
        assert!(c.is_data_error() && !c.is_transient());
        assert_eq!(
            c.code(),
            Some("Neo.ClientError.Schema.ConstraintValidationFailed")
        );
        let s = db("Neo.ClientError.Statement.SyntaxError");
        assert!(s.is_data_error() && !s.is_transient());
        let t = db("Neo.TransientError.Transaction.DeadlockDetected");
        assert!(t.is_transient() && !t.is_data_error() && t.is_retryable_in_txn());
        assert!(!db("Neo.ClientError.Security.Unauthorized").is_transient());
        assert!(PoolError::NotReady.is_transient());
        assert!(!PoolError::Closed.is_transient());
        let io = PoolError::from(neo4rs::Error::ConnectionError);
        assert!(matches!(io, PoolError::Connection { .. }));
        assert!(io.is_transient() && io.breaks_session() && io.is_connection_failure());
        let conv = PoolError::from(neo4rs::Error::ConversionError);
        assert!(matches!(conv, PoolError::Driver { .. }) && !conv.breaks_session());
        let acq = PoolError::Timeout {
            stage: TimeoutStage::Acquire,
            after: Duration::from_secs(1),
        };
        assert!(acq.is_transient() && !acq.is_connection_failure() && !acq.is_retryable_in_txn());
    }
}
