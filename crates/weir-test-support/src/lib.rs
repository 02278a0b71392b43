//! Test support for Weir's integration tests.
//!
//! Every test gets its own namespace: graph labels made with [`TestGraph::label`] and NATS
//! names made with [`TestNats::name`] carry a unique prefix, so tests run in parallel against
//! one server without seeing each other's data, and what they made is deleted when the handle
//! drops. When a service is not reachable the helpers panic with a message that says how to
//! start it: a test that needs a service never passes by skipping.

pub mod graph_server;
pub mod kafka_broker;
pub mod nats_server;
pub mod process;
pub mod proxy;
pub mod ws;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use weir_config::{GraphSettings, NatsSettings, START_HINT, ServiceSettings};

/// How long a helper waits for a service before it gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The settings tests use: defaults, then `.weir/env`, then the environment.
pub fn settings() -> ServiceSettings {
    ServiceSettings::from_env().unwrap_or_else(|e| panic!("reading Weir settings: {e}"))
}

/// A fresh namespace: letters, digits and `_` only, unique across processes and calls.
pub fn unique_namespace() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// Builds a neo4rs `Graph` for `settings` (at most `max_connections` connections).
pub fn graph_config(settings: &GraphSettings, max_connections: usize) -> neo4rs::Config {
    neo4rs::ConfigBuilder::default()
        .uri(&settings.uri)
        .user(&settings.user)
        .password(settings.password.expose())
        .db(settings.database.as_str())
        .max_connections(max_connections)
        .build()
        .unwrap_or_else(|e| panic!("invalid graph settings for {}: {e}", settings.uri))
}

/// Connects to the graph server and proves it answers `RETURN 1`, or says why not and how to
/// start it.
pub async fn try_connect_graph(settings: &GraphSettings) -> Result<neo4rs::Graph, String> {
    let fail = |why: String| {
        format!(
            "graph server not reachable at {} as {}: {why}\n  -> {START_HINT}",
            settings.uri, settings.user
        )
    };
    let graph =
        neo4rs::Graph::connect(graph_config(settings, 8)).map_err(|e| fail(e.to_string()))?;
    let probe = async {
        let mut rows = graph.execute(neo4rs::query("RETURN 1 AS x")).await?;
        let row = rows.next().await?;
        Ok::<_, neo4rs::Error>(row.and_then(|r| r.get::<i64>("x").ok()))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
        Ok(Ok(Some(1))) => Ok(graph),
        Ok(Ok(other)) => Err(fail(format!("RETURN 1 answered {other:?}"))),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// Connects to NATS and checks that JetStream answers, or says why not and how to start it.
pub async fn try_connect_nats(
    settings: &NatsSettings,
) -> Result<(async_nats::Client, async_nats::jetstream::Context), String> {
    let fail = |why: String| {
        format!(
            "NATS (with JetStream) not reachable at {}: {why}\n  -> {START_HINT}",
            settings.url
        )
    };
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .retry_on_initial_connect()
        .max_reconnects(Some(3))
        .connect(settings.url.as_str());
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Err(_) => return Err(fail(format!("no connection within {CONNECT_TIMEOUT:?}"))),
    };
    // A raw account-info request: typed parsing differs across server versions.
    match tokio::time::timeout(CONNECT_TIMEOUT, client.request("$JS.API.INFO", "".into())).await {
        Ok(Ok(msg)) if !String::from_utf8_lossy(&msg.payload).contains("\"error\"") => {
            let js = async_nats::jetstream::new(client.clone());
            Ok((client, js))
        }
        Ok(Ok(msg)) => Err(fail(format!(
            "JetStream: {}",
            String::from_utf8_lossy(&msg.payload)
        ))),
        Ok(Err(e)) => Err(fail(format!("JetStream: {e}"))),
        Err(_) => Err(fail(format!(
            "JetStream no answer within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// A connected graph handle with a private namespace; what it labelled is deleted on drop.
pub struct TestGraph {
    /// The connected graph (a small neo4rs pool).
    pub graph: neo4rs::Graph,
    /// The settings it connected with.
    pub settings: GraphSettings,
    /// This test's namespace.
    pub namespace: String,
    labels: Mutex<Vec<String>>,
}

/// Connects to the configured graph server; panics with a how-to-start message when it is not
/// reachable.
pub async fn graph() -> TestGraph {
    let settings = settings().graph;
    let graph = try_connect_graph(&settings)
        .await
        .unwrap_or_else(|msg| panic!("{msg}"));
    TestGraph {
        graph,
        settings,
        namespace: unique_namespace(),
        labels: Mutex::new(Vec::new()),
    }
}

impl TestGraph {
    /// A label private to this test, e.g. `Person` -> `t123_0_456_Person`. Nodes with it are
    /// deleted when this handle drops.
    pub fn label(&self, base: &str) -> String {
        let label = format!("{}_{base}", self.namespace);
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        if !labels.contains(&label) {
            labels.push(label.clone());
        }
        label
    }

    /// A relationship type private to this test (relationships go with their nodes on drop).
    pub fn rel_type(&self, base: &str) -> String {
        format!("{}_{base}", self.namespace.to_uppercase())
    }

    /// Counts nodes with a label made by [`TestGraph::label`].
    pub async fn count(&self, label: &str) -> i64 {
        let q = format!("MATCH (n:`{label}`) RETURN count(n) AS c");
        let mut rows = self.graph.execute(neo4rs::query(&q)).await.unwrap();
        rows.next()
            .await
            .unwrap()
            .and_then(|r| r.get::<i64>("c").ok())
            .unwrap_or(0)
    }
}

impl Drop for TestGraph {
    fn drop(&mut self) {
        let labels = std::mem::take(self.labels.get_mut().unwrap_or_else(|e| e.into_inner()));
        if labels.is_empty() {
            return;
        }
        let settings = self.settings.clone();
        // A thread of its own with its own runtime: works whether or not we are inside one.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let Ok(graph) = try_connect_graph(&settings).await else {
                    return;
                };
                for label in labels {
                    let q = format!("MATCH (n:`{label}`) DETACH DELETE n");
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), graph.run(neo4rs::query(&q)))
                            .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A NATS client and JetStream context with a private namespace; streams it named are
/// deleted on drop.
pub struct TestNats {
    /// The core NATS client.
    pub client: async_nats::Client,
    /// The JetStream context.
    pub jetstream: async_nats::jetstream::Context,
    /// The settings it connected with.
    pub settings: NatsSettings,
    /// This test's namespace.
    pub namespace: String,
    streams: Mutex<Vec<String>>,
}

/// Connects to the configured NATS; panics with a how-to-start message when it is not
/// reachable or has no JetStream.
pub async fn nats() -> TestNats {
    let settings = settings().nats;
    let (client, jetstream) = try_connect_nats(&settings)
        .await
        .unwrap_or_else(|msg| panic!("{msg}"));
    TestNats {
        client,
        jetstream,
        settings,
        namespace: unique_namespace(),
        streams: Mutex::new(Vec::new()),
    }
}

impl TestNats {
    /// A stream or subject prefix private to this test, e.g. `EVENTS` -> `t123_0_456_EVENTS`.
    /// A JetStream stream with this name is deleted when this handle drops.
    pub fn name(&self, base: &str) -> String {
        let name = format!("{}_{base}", self.namespace);
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if !streams.contains(&name) {
            streams.push(name.clone());
        }
        name
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let streams = std::mem::take(self.streams.get_mut().unwrap_or_else(|e| e.into_inner()));
        if streams.is_empty() {
            return;
        }
        let settings = self.settings.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let Ok((_client, js)) = try_connect_nats(&settings).await else {
                    return;
                };
                for s in streams {
                    let _ = js.delete_stream(&s).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
