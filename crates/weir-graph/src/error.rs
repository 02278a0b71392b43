//! The crate's error type.

use crate::ident::IdentError;
use crate::mapping::{MappingError, RecordError};

/// Everything that can go wrong in `weir-graph`, by kind a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The mapping file is invalid.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// An identifier (label, type, property, prefix) was rejected.
    #[error("invalid identifier: {0}")]
    Identifier(#[from] IdentError),
    /// A record could not be mapped (dead-letter it).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Worth retrying: connection lost, timeout, deadlock, concurrent modification.
    #[error("transient graph error: {message}")]
    Transient {
        /// Server code or error kind.
        code: String,
        /// What happened.
        message: String,
    },
    /// The server refused the data (constraint, type): retrying will not help; isolate the
    /// record and dead-letter it.
    #[error("graph refused the data ({code}): {message}")]
    Data {
        /// Server code, e.g. `Neo.ClientError.Schema.ConstraintValidationFailed`.
        code: String,
        /// Server message.
        message: String,
    },
    /// Anything else (authentication, syntax, protocol): stop the job.
    #[error("graph error ({code}): {message}")]
    Fatal {
        /// Server code or error kind.
        code: String,
        /// What happened.
        message: String,
    },
}

impl GraphError {
    /// Whether retrying the same write may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Whether the server failed the statement without a reason a client can act on
    /// (`Neo.DatabaseError.*`: the database failed to serve the request). ArcadeDB reports its
    /// write conflicts between concurrent writers this way (a multi-page record read while
    /// another transaction rewrites it: "broken chunk chain", gone on the next read), so the
    /// sink retries such a write a few times, then isolates its records (see
    /// [`crate::GraphSink`]).
    pub fn is_unexplained(&self) -> bool {
        matches!(self, Self::Fatal { code, .. } if code.starts_with("Neo.DatabaseError."))
    }

    /// Whether the data itself was refused (isolate and dead-letter the record).
    pub fn is_data_error(&self) -> bool {
        matches!(self, Self::Data { .. } | Self::Record(_))
    }

    /// Classifies a neo4rs error.
    pub fn from_neo4rs(e: &neo4rs::Error) -> Self {
        use neo4rs::Error as E;
        match e {
            E::Neo4j(n) => Self::from_server(n.code(), n.message()),
            E::IOError { .. }
            | E::ConnectionError
            | E::ConnectionTimedOut
            | E::IncompleteBoltExchange
            | E::RequestIgnoredError
            | E::Ignored(_)
            | E::ServerUnavailableError(_) => Self::Transient {
                code: "connection".into(),
                message: e.to_string(),
            },
            E::StringTooLong | E::MapTooBig | E::ListTooLong | E::BytesTooBig => Self::Data {
                code: "client.encoding".into(),
                message: e.to_string(),
            },
            _ => Self::Fatal {
                code: "client".into(),
                message: e.to_string(),
            },
        }
    }

    /// Classifies a server failure by its status code and message.
    pub fn from_server(code: &str, message: &str) -> Self {
        let (code, message) = (code.to_owned(), message.to_owned());
        let lower = message.to_ascii_lowercase();
        let concurrency = ["deadlock", "concurrent", "lock", "timeout", "retry"]
            .iter()
            .any(|w| lower.contains(w));
        if code.starts_with("Neo.TransientError") {
            Self::Transient { code, message }
        } else if code.starts_with("Neo.ClientError.Security")
            || code.starts_with("Neo.ClientError.Statement.SyntaxError")
            || code.starts_with("Neo.ClientError.Request")
        {
            Self::Fatal { code, message }
        } else if code.starts_with("Neo.ClientError") {
            if concurrency && !lower.contains("constraint") && !code.contains("Constraint") {
                Self::Transient { code, message }
            } else {
                Self::Data { code, message }
            }
        } else if concurrency {
            Self::Transient { code, message }
        } else {
            Self::Fatal { code, message }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_codes() {
        assert!(
            GraphError::from_server("Neo.TransientError.Transaction.DeadlockDetected", "x")
                .is_transient()
        );
        assert!(
            GraphError::from_server(
                "Neo.ClientError.Schema.ConstraintValidationFailed",
                "already exists with lock"
            )
            .is_data_error()
        );
        assert!(
            GraphError::from_server("Neo.ClientError.Statement.TypeError", "bad").is_data_error()
        );
        assert!(matches!(
            GraphError::from_server("Neo.ClientError.Security.Unauthorized", "no"),
            GraphError::Fatal { .. }
        ));
        assert!(matches!(
            GraphError::from_server("Neo.ClientError.Statement.SyntaxError", "no"),
            GraphError::Fatal { .. }
        ));
        assert!(
            GraphError::from_server(
                "Neo.DatabaseError.General.UnknownError",
                "ConcurrentModificationException"
            )
            .is_transient()
        );
        assert!(
            !GraphError::from_server("Neo.DatabaseError.General.UnknownError", "boom")
                .is_transient()
        );
        assert!(GraphError::from_neo4rs(&neo4rs::Error::ConnectionError).is_transient());
        // What ArcadeDB sends for a conflict between concurrent writers.
        let unexplained = GraphError::from_server(
            "Neo.DatabaseError.General.UnknownError",
            "Error executing Cypher command: UNWIND $rows AS row MERGE (a:`P` {`id`: row.s0})",
        );
        assert!(unexplained.is_unexplained() && !unexplained.is_transient());
        assert!(
            !GraphError::from_server("Neo.ClientError.Statement.SyntaxError", "no")
                .is_unexplained()
        );
    }
}
