//! A bounded pool of Bolt graph sessions with idle TTL, max lifetime, timeouts, readiness
//! gating and a circuit breaker.
//!
//! Each pooled session is one `neo4rs::Graph` limited to a single connection (neo4rs's own
//! connection type is private), held in a [`deadpool`] pool of at most
//! [`PoolConfig::max_size`] sessions. On top of deadpool:
//!
//! - **Expiry**: a session idle longer than `idle_ttl` or older than its jittered
//!   `max_lifetime` is closed at checkout and by a reaper task; a checkout of a session idle
//!   longer than `health_check_after_idle` first runs `RETURN 1`.
//! - **Readiness**: [`Pool::new`] starts a background task that keeps trying to connect; until
//!   one connection has succeeded every call fails fast with [`PoolError::NotReady`].
//! - **Circuit breaker**: `circuit_failure_threshold` consecutive connection failures (connect
//!   errors, I/O errors, connect or query timeouts) open the circuit: calls fail with
//!   [`PoolError::CircuitOpen`] for `circuit_cool_down`, then one probe decides.
//! - **Deadlines**: `acquire_timeout` on every checkout, `connect_timeout` on every new
//!   connection and health check, `query_timeout` on every query, transaction and stream fetch.
//!   They also bound neo4rs's internal retry loop (up to 60 s) from the outside.
//! - **Cancellation safety**: a session is marked in use-dirty while an operation runs; if the
//!   future is dropped (or the operation fails at the connection level), the session is closed
//!   as `broken` instead of returning to the pool.
//!
//! ```no_run
//! # async fn demo() -> Result<(), weir_pool::PoolError> {
//! use weir_pool::{Pool, PoolConfig, query};
//! let pool = Pool::new(weir_config::GraphSettings::default(), PoolConfig::default())?;
//! pool.wait_ready(std::time::Duration::from_secs(10)).await;
//! pool.run(query("CREATE (:Thing {id: $id})").param("id", 1)).await?;
//! let rows = pool.execute(query("MATCH (t:Thing) RETURN t.id AS id")).await?;
//! # let _ = rows;
//! pool.close().await;
//! # Ok(()) }
//! ```

mod circuit;
mod config;
mod core;
mod error;
pub mod nodelay;
mod stats;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
pub use neo4rs::{Query, Row, query};
use weir_config::GraphSettings;

pub use crate::circuit::CircuitState;
pub use crate::config::PoolConfig;
pub use crate::error::{PoolError, TimeoutStage};
pub use crate::stats::{ACQUIRE_WAIT_BUCKETS, AcquireWait, CloseReason, ClosedCounts, PoolStatus};

use crate::core::{Connector, Core, Lease};

/// Opens one Bolt connection per session, proves it with `RETURN 1` and (with
/// [`PoolConfig::tcp_nodelay`]) switches Nagle's algorithm off on it.
pub(crate) struct BoltConnector {
    config: neo4rs::Config,
    /// The server's URI when Nagle is to be switched off on new connections.
    nodelay_uri: Option<String>,
}

impl BoltConnector {
    fn new(settings: &GraphSettings, cfg: &PoolConfig) -> Result<Self, PoolError> {
        let config = neo4rs::ConfigBuilder::default()
            .uri(&settings.uri)
            .user(&settings.user)
            .password(settings.password.expose())
            .db(settings.database.as_str())
            .max_connections(1)
            .fetch_size(cfg.fetch_size)
            // neo4rs applies this to connecting and to every read; ours bound both already,
            // so give neo4rs the longer of the two rather than cut slow queries short.
            .connection_timeout(cfg.query_timeout.max(cfg.connect_timeout))
            .build()
            .map_err(|e| PoolError::InvalidConfig {
                field: "graph.uri",
                reason: e.to_string(),
            })?;
        Ok(Self {
            config,
            nodelay_uri: cfg.tcp_nodelay.then(|| settings.uri.clone()),
        })
    }
}

/// Switches Nagle off on the sockets to the server at `uri`. A failure costs latency, not
/// correctness, so it is logged and the connection kept.
async fn disable_nagle(uri: &str) {
    let result = match nodelay::resolve_bolt_peers(uri).await {
        Ok(peers) => nodelay::disable_nagle_to(&peers),
        Err(e) => Err(e),
    };
    match result {
        Ok(changed) => tracing::trace!(changed, "TCP_NODELAY set on new Bolt connections"),
        Err(error) => tracing::warn!(%error, "could not set TCP_NODELAY on the Bolt connection"),
    }
}

async fn ping(graph: &neo4rs::Graph) -> Result<(), PoolError> {
    let mut rows = graph.execute(query("RETURN 1 AS x")).await?;
    match rows.next().await? {
        Some(row) if row.get::<i64>("x").ok() == Some(1) => Ok(()),
        other => Err(PoolError::Connection {
            source: neo4rs::Error::UnexpectedMessage(format!("liveness check answered {other:?}")),
        }),
    }
}

impl Connector for BoltConnector {
    type Conn = neo4rs::Graph;

    async fn connect(&self) -> Result<neo4rs::Graph, PoolError> {
        let graph = neo4rs::Graph::connect(self.config.clone())?;
        ping(&graph).await?;
        if let Some(uri) = &self.nodelay_uri {
            disable_nagle(uri).await;
        }
        Ok(graph)
    }

    async fn ping(&self, graph: &neo4rs::Graph) -> Result<(), PoolError> {
        ping(graph).await
    }
}

/// A bounded pool of graph sessions. Cheap to clone; clones share one pool.
#[derive(Clone)]
pub struct Pool {
    core: Arc<Core<BoltConnector>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.status())
            .finish()
    }
}

impl Pool {
    /// Creates the pool and starts its background task (first connection with back-off,
    /// then the reaper). Returns at once without touching the network; must be called inside
    /// a Tokio runtime. The password is never logged.
    pub fn new(settings: GraphSettings, config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        let connector = BoltConnector::new(&settings, &config)?;
        Ok(Self {
            core: Core::new(connector, config)?,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PoolConfig {
        &self.core.shared().config
    }

    /// Whether a connection has succeeded at least once.
    pub fn ready(&self) -> bool {
        self.core.is_ready()
    }

    /// Waits until the pool is ready or `timeout` passes; returns readiness.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.core.wait_ready(timeout).await
    }

    /// A snapshot of sizes, counters, the acquire-wait histogram and the circuit state.
    pub fn status(&self) -> PoolStatus {
        self.core.status()
    }

    /// Checks out a session (bounded by `acquire_timeout`). Fails fast with `NotReady`,
    /// `CircuitOpen` or `Closed`.
    pub async fn get(&self) -> Result<Session, PoolError> {
        Ok(Session {
            lease: self.core.checkout().await?,
        })
    }

    /// Runs one parameterised query, discarding its result.
    pub async fn run(&self, q: Query) -> Result<(), PoolError> {
        self.get().await?.run(q).await
    }

    /// Runs one query and collects its rows (at most `max_collect_rows`, else `TooManyRows`).
    pub async fn execute(&self, q: Query) -> Result<Vec<Row>, PoolError> {
        self.get().await?.execute(q).await
    }

    /// Runs `queries` in one write transaction. Retries the whole transaction on transient
    /// errors (connection failures, query timeouts, Neo4j `TransientError`s) up to
    /// `txn_max_attempts` times with exponential back-off and jitter. **For idempotent work
    /// only** (e.g. `MERGE`): a commit whose answer was lost is retried. Returns the number
    /// of attempts made. Takes a `Vec`, an array or a borrowed slice; attempts reuse the same
    /// list (each statement is copied only as it is sent, see [`Session::write_txn`]).
    pub async fn write_txn(&self, queries: impl AsRef<[Query]> + Send) -> Result<u32, PoolError> {
        let queries = queries.as_ref();
        self.txn_attempts(|_| Statements::Borrowed(queries)).await
    }

    /// Like [`Pool::write_txn`], but the statements are handed to the driver by value, never
    /// copied: `first` for the first attempt, and `rebuild()` makes them again for each retry.
    /// For large parameter lists built just before (a batch's rows), this saves copying them.
    pub async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        rebuild: impl Fn() -> Vec<Query> + Send + Sync,
    ) -> Result<u32, PoolError> {
        let mut first = Some(first);
        self.txn_attempts(|_| Statements::Owned(first.take().unwrap_or_else(&rebuild)))
            .await
    }

    /// Runs `statements` in one write transaction, **once**: no retry, for callers that retry
    /// themselves (the graph writer and the stream pipeline, which must see every transient
    /// failure to lower their write concurrency). Handed to the driver by value, never copied.
    pub async fn write_txn_once(&self, statements: Vec<Query>) -> Result<(), PoolError> {
        self.get()
            .await?
            .write_statements(Statements::Owned(statements))
            .await
    }

    /// Runs one transaction per attempt with the statements `next(attempt)` gives, retrying as
    /// [`Pool::write_txn`] describes.
    async fn txn_attempts<'q>(
        &self,
        mut next: impl FnMut(u32) -> Statements<'q> + Send,
    ) -> Result<u32, PoolError> {
        let policy = self.config().txn_retry();
        let mut attempt = 1;
        loop {
            let statements = next(attempt);
            let result = async { self.get().await?.write_statements(statements).await }.await;
            match result {
                Ok(()) => return Ok(attempt),
                Err(e) if e.is_retryable_in_txn() && policy.may_retry(attempt) => {
                    let delay = policy.jittered(attempt);
                    tracing::debug!(attempt, ?delay, error = %e, "retrying graph transaction");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Streams the rows of a (large) read, `fetch_size` rows per round trip, so memory stays
    /// bounded. A session is taken on first poll and held until the stream ends; dropping the
    /// stream early closes that session rather than return it half read. Each fetch is
    /// bounded by `query_timeout`.
    pub fn stream(&self, q: Query) -> RowStream {
        RowStream::new(self.clone(), q)
    }

    /// Stops the reaper, closes idle sessions (in-use ones close when returned) and makes
    /// later calls fail with `Closed`. Waits for the background task to end.
    pub async fn close(&self) {
        self.core.close().await;
    }

    /// Whether the background task has stopped (after [`Pool::close`]).
    pub fn background_stopped(&self) -> bool {
        self.core.maintenance_stopped()
    }
}

/// The statements of one transaction attempt.
enum Statements<'q> {
    /// Copied one at a time as they are sent (the caller keeps them for a retry).
    Borrowed(&'q [Query]),
    /// Handed to the driver as they are.
    Owned(Vec<Query>),
}

/// A checked-out graph session. Dropping it returns it to the pool, unless an operation on
/// it was interrupted or failed at the connection level: then it is closed.
pub struct Session {
    lease: Lease<BoltConnector>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("dirty", &self.lease.dirty)
            .finish_non_exhaustive()
    }
}

fn deadline<T>(
    after: Duration,
    r: Result<Result<T, PoolError>, tokio::time::error::Elapsed>,
) -> Result<T, PoolError> {
    r.unwrap_or(Err(PoolError::Timeout {
        stage: TimeoutStage::Query,
        after,
    }))
}

impl Session {
    fn query_timeout(&self) -> Duration {
        self.lease.shared.config.query_timeout
    }

    /// Runs one parameterised query, discarding its result (bounded by `query_timeout`).
    pub async fn run(&mut self, q: Query) -> Result<(), PoolError> {
        let t = self.query_timeout();
        self.lease.dirty = true;
        let graph = &self.lease.slot().conn;
        let r = tokio::time::timeout(t, async {
            graph.run(q).await?;
            Ok(())
        })
        .await;
        self.lease.finish(deadline(t, r))
    }

    /// Runs one query and collects its rows (at most `max_collect_rows`).
    pub async fn execute(&mut self, q: Query) -> Result<Vec<Row>, PoolError> {
        let t = self.query_timeout();
        let limit = self.lease.shared.config.max_collect_rows;
        self.lease.dirty = true;
        let graph = &self.lease.slot().conn;
        let r = tokio::time::timeout(t, async {
            let mut rows = graph.execute(q).await?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await? {
                if out.len() == limit {
                    return Err(PoolError::TooManyRows { limit });
                }
                out.push(row);
            }
            Ok(out)
        })
        .await;
        self.lease.finish(deadline(t, r))
    }

    /// Runs `queries` in one write transaction, once (no retry; see [`Pool::write_txn`]).
    /// The whole transaction is bounded by `query_timeout`; on error it is not committed.
    /// The driver takes each statement by value, so each is cloned just before it is sent
    /// and dropped once sent: one statement's copy at a time, never the whole list.
    pub async fn write_txn(&mut self, queries: &[Query]) -> Result<(), PoolError> {
        self.write_statements(Statements::Borrowed(queries)).await
    }

    async fn write_statements(&mut self, statements: Statements<'_>) -> Result<(), PoolError> {
        let t = self.query_timeout();
        self.lease.dirty = true;
        let graph = &self.lease.slot().conn;
        let r = tokio::time::timeout(t, async {
            let mut txn = graph.start_txn().await?;
            match statements {
                Statements::Borrowed(queries) => txn.run_queries(queries.iter().cloned()).await?,
                Statements::Owned(queries) => txn.run_queries(queries).await?,
            }
            txn.commit().await?;
            Ok(())
        })
        .await;
        self.lease.finish(deadline(t, r))
    }

    /// Streams a query's rows on this session (see [`Pool::stream`]).
    pub fn into_stream(self, q: Query) -> RowStream {
        RowStream {
            inner: Box::pin(futures::stream::unfold(
                StreamState::Open(self, q),
                stream_step,
            )),
        }
    }

    /// Marks this session as unusable: it is closed instead of returned.
    pub fn discard(&mut self) {
        self.lease.dirty = true;
    }
}

enum StreamState {
    Start(Pool, Query),
    Open(Session, Query),
    Rows(Session, Box<neo4rs::DetachedRowStream>),
    Done,
}

async fn open_stream(
    mut session: Session,
    q: Query,
) -> Result<(Session, Box<neo4rs::DetachedRowStream>), PoolError> {
    let t = session.query_timeout();
    session.lease.dirty = true;
    let graph = &session.lease.slot().conn;
    let r = tokio::time::timeout(t, async { Ok(graph.execute(q).await?) }).await;
    match deadline(t, r) {
        // The session stays dirty until the stream is fully read.
        Ok(rows) => Ok((session, Box::new(rows))),
        Err(e) => session.lease.finish(Err(e)),
    }
}

async fn stream_step(state: StreamState) -> Option<(Result<Row, PoolError>, StreamState)> {
    let opened = match state {
        StreamState::Done => return None,
        StreamState::Start(pool, q) => match pool.get().await {
            Ok(session) => open_stream(session, q).await,
            Err(e) => Err(e),
        },
        StreamState::Open(session, q) => open_stream(session, q).await,
        StreamState::Rows(session, rows) => Ok((session, rows)),
    };
    let (mut session, mut rows) = match opened {
        Ok(x) => x,
        Err(e) => return Some((Err(e), StreamState::Done)),
    };
    let t = session.query_timeout();
    let r = tokio::time::timeout(t, async { Ok(rows.next().await?) }).await;
    match deadline(t, r) {
        Ok(Some(row)) => Some((Ok(row), StreamState::Rows(session, rows))),
        Ok(None) => {
            drop(rows);
            // Fully read: the session goes back to the pool clean.
            let _ = session.lease.finish(Ok(()));
            None
        }
        Err(e) => {
            drop(rows);
            let e = session.lease.finish::<()>(Err(e)).err()?;
            Some((Err(e), StreamState::Done))
        }
    }
}

/// Rows of a streamed query; see [`Pool::stream`]. Ends after the first error.
pub struct RowStream {
    inner: BoxStream<'static, Result<Row, PoolError>>,
}

impl RowStream {
    fn new(pool: Pool, q: Query) -> Self {
        Self {
            inner: Box::pin(futures::stream::unfold(
                StreamState::Start(pool, q),
                stream_step,
            )),
        }
    }
}

impl Stream for RowStream {
    type Item = Result<Row, PoolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowStream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_bad_config_and_missing_runtime() {
        let bad = PoolConfig {
            max_size: 0,
            ..PoolConfig::default()
        };
        let e = Pool::new(GraphSettings::default(), bad).unwrap_err();
        assert!(
            matches!(
                e,
                PoolError::InvalidConfig {
                    field: "max_size",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = Pool::new(GraphSettings::default(), PoolConfig::default()).unwrap_err();
        assert!(matches!(e, PoolError::NoRuntime), "{e:?}");
    }

    #[test]
    fn txn_backoff_doubles_with_jitter_and_is_capped() {
        let cfg = PoolConfig {
            txn_backoff_min: Duration::from_millis(100),
            txn_backoff_max: Duration::from_millis(1000),
            ..PoolConfig::default()
        };
        let policy = cfg.txn_retry();
        assert!(policy.may_retry(2) && !policy.may_retry(3));
        for _ in 0..200 {
            let b1 = policy.jittered(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = policy.jittered(3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b30 = policy.jittered(30);
            assert!(b30 >= Duration::from_millis(500) && b30 <= Duration::from_millis(1000));
        }
    }
}
