//! `graphChanges(since:)` over a real WebSocket, with the real in-process bus behind
//! `BusReplay` (what `weir serve` runs): a client that comes back with the last seq it saw
//! gets every matching change after it once, in order, then the live ones; a `since` the bus
//! no longer retains, or one from the future, is refused with its own error code; at most
//! `limits.max_replays` catch-ups hold a bus subscription at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use weir_app::{BusReplay, BusSlot};
use weir_bus::{Bus, InProcessBus, InProcessConfig};
use weir_config::Secret;
use weir_events::fixture::{self, event};
use weir_events::{ChangeBatch, EntityKind, Operation};
use weir_gateway::{
    AuthConfig, ChangeReplay, GatewayConfig, GatewayError, GatewayState, GraphNode, GraphReader,
    Ident, Neighbour, NeighbourQuery, NodeKey, Replay, ReplayError,
};

const TOKEN: &str = "replay-test-key-0123456789";
const WAIT: Duration = Duration::from_secs(15);

/// These tests read no graph; any read is a test bug.
struct NoGraph;

#[async_trait::async_trait]
impl GraphReader for NoGraph {
    async fn node(&self, _: &NodeKey) -> Result<Option<GraphNode>, GatewayError> {
        panic!("no graph reads here")
    }
    async fn neighbours(&self, _: &NeighbourQuery) -> Result<Vec<Neighbour>, GatewayError> {
        panic!("no graph reads here")
    }
    async fn count(&self, _: &Ident) -> Result<i64, GatewayError> {
        panic!("no graph reads here")
    }
    async fn ready(&self) -> bool {
        true
    }
}

fn config(max_replays: usize) -> GatewayConfig {
    let mut c = GatewayConfig {
        auth: AuthConfig::ApiKeys {
            keys: vec![Secret::new(TOKEN)],
        },
        ..GatewayConfig::default()
    };
    c.limits.max_replays = max_replays;
    c
}

fn batch(n: u64, labels: &[&str]) -> ChangeBatch {
    let events = labels
        .iter()
        .enumerate()
        .map(|(i, l)| event(EntityKind::Node, l, &format!("{n}-{i}"), Operation::Created))
        .collect();
    fixture::batch("job", &format!("job-{n}"), events)
}

struct Gateway {
    addr: SocketAddr,
    state: GatewayState,
    bus: InProcessBus,
    stop: CancellationToken,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Gateway {
    /// A gateway over an in-process bus retaining `capacity` batches, fed like `weir serve`
    /// feeds it (the bus's live stream into the subscription manager).
    async fn start(capacity: usize, replay: Option<Arc<dyn ChangeReplay>>) -> Self {
        let bus = InProcessBus::new(&InProcessConfig {
            capacity,
            ..InProcessConfig::default()
        })
        .unwrap();
        let replay = replay
            .unwrap_or_else(|| Arc::new(BusReplay(BusSlot::ready(Bus::InProcess(bus.clone())))));
        Self::start_with(bus, config(4), Some(replay)).await
    }

    async fn start_with(
        bus: InProcessBus,
        config: GatewayConfig,
        replay: Option<Arc<dyn ChangeReplay>>,
    ) -> Self {
        let state = GatewayState::with_replay(config, Arc::new(NoGraph), replay).unwrap();
        let stop = CancellationToken::new();
        let mut live = bus.subscribe_changes(None).unwrap();
        let manager = state.manager().clone();
        let feed_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    b = live.next() => match b {
                        Some(Ok(b)) => manager.publish(b),
                        _ => return,
                    },
                    () = feed_stop.cancelled() => return,
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(weir_gateway::serve(listener, state.clone(), stop.clone()));
        Self {
            addr,
            state,
            bus,
            stop,
        }
    }

    /// Publishes and waits until the manager has it (so "live" means live).
    async fn publish(&self, b: ChangeBatch) -> u64 {
        let seq = self.bus.publish_changes(b).seq;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.state.manager().last_seq() < seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "feed never saw {seq}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seq
    }
}

struct Client(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let mut req = format!("ws://{addr}/graphql/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut c = Self(ws);
        c.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {TOKEN}")}}))
            .await;
        assert_eq!(c.recv().await["type"], "connection_ack");
        c
    }

    async fn send(&mut self, v: Value) {
        self.0
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("nothing from the gateway in time")
                .expect("socket ended")
                .expect("socket error");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "ping" {
                    self.send(json!({"type": "pong"})).await;
                    continue;
                }
                return v;
            }
        }
    }

    async fn subscribe(&mut self, id: &str, args: &str) {
        let q = format!("subscription {{ graphChanges({args}) {{ seq index label key }} }}");
        self.send(json!({"type": "subscribe", "id": id, "payload": {"query": q}}))
            .await;
    }

    /// The next `n` changes of operation `id`: (seq, index, key).
    async fn changes(&mut self, id: &str, n: usize) -> Vec<(u64, u64, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self.recv().await;
            assert_eq!(v["type"], "next", "{v}");
            assert_eq!(v["id"], id, "{v}");
            let c = &v["payload"]["data"]["graphChanges"];
            out.push((
                c["seq"].as_u64().unwrap(),
                c["index"].as_u64().unwrap(),
                c["key"].as_str().unwrap().to_owned(),
            ));
        }
        out
    }

    /// The error code of the `error` message for operation `id`.
    async fn error_code(&mut self, id: &str) -> String {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["id"], id, "{v}");
        v["payload"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code: {v}"))
            .to_owned()
    }

    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.0.next()).await {
            panic!("unexpected message: {t}");
        }
    }
}

fn keys(v: &[(u64, u64, String)]) -> Vec<&str> {
    v.iter().map(|e| e.2.as_str()).collect()
}

#[tokio::test]
async fn since_replays_what_was_missed_then_goes_live_once_in_order() {
    let gw = Gateway::start(64, None).await;
    for n in 1..=5 {
        gw.publish(batch(n, &["A", "B", "A"])).await;
    }
    let mut c = Client::connect(gw.addr).await;
    c.subscribe("1", "labels: [\"A\"], since: 2").await;
    let replayed = c.changes("1", 6).await;
    assert_eq!(keys(&replayed), ["3-0", "3-2", "4-0", "4-2", "5-0", "5-2"]);
    assert_eq!(
        replayed.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        [(3, 0), (3, 2), (4, 0), (4, 2), (5, 0), (5, 2)],
        "bus seq and index of each event"
    );
    gw.publish(batch(6, &["B", "A"])).await;
    gw.publish(batch(7, &["A"])).await;
    assert_eq!(keys(&c.changes("1", 2).await), ["6-1", "7-0"]);
    c.quiet_for(Duration::from_millis(200)).await;

    // `since` at the head: nothing to replay, straight to live.
    let mut d = Client::connect(gw.addr).await;
    d.subscribe("2", "labels: [\"A\"], since: 7").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.state.manager().active() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.publish(batch(8, &["A"])).await;
    assert_eq!(keys(&d.changes("2", 1).await), ["8-0"]);
    assert_eq!(keys(&c.changes("1", 1).await), ["8-0"]);
}

#[tokio::test]
async fn a_since_out_of_retention_or_from_the_future_is_refused_with_its_code() {
    let gw = Gateway::start(3, None).await;
    for n in 1..=6 {
        gw.publish(batch(n, &["A"])).await;
    }
    let mut c = Client::connect(gw.addr).await;
    c.subscribe("old", "since: 1").await;
    assert_eq!(c.error_code("old").await, "SINCE_TOO_OLD");
    c.subscribe("ahead", "since: 99").await;
    assert_eq!(c.error_code("ahead").await, "SINCE_AHEAD");
    // The connection is still usable, and the oldest retained batch can still be caught up.
    c.subscribe("ok", "since: 3").await;
    assert_eq!(keys(&c.changes("ok", 3).await), ["4-0", "5-0", "6-0"]);
    assert_eq!(gw.state.manager().active(), 1);
}

#[tokio::test]
async fn without_a_replay_source_since_is_refused_and_live_still_works() {
    let bus = InProcessBus::new(&InProcessConfig::default()).unwrap();
    let gw = Gateway::start_with(bus, config(4), None).await;
    let mut c = Client::connect(gw.addr).await;
    c.subscribe("1", "since: 0").await;
    assert_eq!(c.error_code("1").await, "REPLAY_UNAVAILABLE");
    c.subscribe("2", "labels: [\"A\"]").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.state.manager().active() < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.publish(batch(1, &["A"])).await;
    assert_eq!(keys(&c.changes("2", 1).await), ["1-0"]);
}

/// A replay source that never yields: each catch-up holds its slot until its client leaves.
struct Stalled;

impl ChangeReplay for Stalled {
    fn open(
        &self,
        _since: u64,
    ) -> futures::future::BoxFuture<'static, Result<Replay, ReplayError>> {
        Box::pin(async {
            Ok(Replay {
                batches: futures::stream::pending().boxed(),
                last_published: 2,
            })
        })
    }
}

#[tokio::test]
async fn catch_ups_are_bounded_and_a_disconnect_frees_the_slot() {
    let bus = InProcessBus::new(&InProcessConfig::default()).unwrap();
    let gw = Gateway::start_with(bus, config(2), Some(Arc::new(Stalled))).await;
    gw.publish(batch(1, &["A"])).await;
    gw.publish(batch(2, &["A"])).await;
    let mut a = Client::connect(gw.addr).await;
    let mut b = Client::connect(gw.addr).await;
    a.subscribe("1", "since: 0").await;
    b.subscribe("1", "since: 0").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.state.manager().active() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = Client::connect(gw.addr).await;
    c.subscribe("1", "since: 0").await;
    assert_eq!(c.error_code("1").await, "LIMIT_EXCEEDED");
    // A client leaving abruptly gives its slot back.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.subscribe("again", "since: 0").await;
        match tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
            Err(_) => break, // no error: the catch-up started and is waiting on the source
            Ok(v) => {
                assert_eq!(
                    v["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
                    "{v}"
                );
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
            }
        }
    }
    assert_eq!(gw.state.manager().active(), 2);
    drop(b);
}

#[tokio::test]
async fn a_gateway_that_started_after_the_changes_still_replays_them() {
    // Like a restarted weir-gatewayd: its feed reads the bus from the tip onwards, so its
    // subscription manager never saw the batches the client missed.
    let bus = InProcessBus::new(&InProcessConfig::default()).unwrap();
    for n in 1..=4 {
        bus.publish_changes(batch(n, &["A"]));
    }
    let replay = Arc::new(BusReplay(BusSlot::ready(Bus::InProcess(bus.clone()))));
    let gw = Gateway::start_with(bus, config(4), Some(replay)).await;
    assert_eq!(gw.state.manager().last_seq(), 0, "the feed saw nothing yet");
    let mut c = Client::connect(gw.addr).await;
    c.subscribe("1", "labels: [\"A\"], since: 1").await;
    assert_eq!(keys(&c.changes("1", 3).await), ["2-0", "3-0", "4-0"]);
    gw.publish(batch(5, &["A"])).await;
    assert_eq!(keys(&c.changes("1", 1).await), ["5-0"]);
    c.quiet_for(Duration::from_millis(200)).await;
}
