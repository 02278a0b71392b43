//! A graphql-transport-ws client for tests, over a real WebSocket (tokio-tungstenite): what a
//! browser or the `graphql-ws` library does, frame by frame.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the server sent.
#[derive(Debug)]
pub enum Frame {
    /// A protocol message (pings are answered and never returned).
    Json(Value),
    /// A close frame: code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

/// One change event as a test checks it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Bus sequence of its batch.
    pub seq: u64,
    /// Index within the batch.
    pub index: u64,
    /// Node label or relationship type.
    pub label: String,
    /// Canonical key.
    pub key: String,
}

/// A connected, initialised graphql-transport-ws client.
pub struct GraphqlWs {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl std::fmt::Debug for GraphqlWs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphqlWs").finish_non_exhaustive()
    }
}

/// The selection every change subscription of these helpers asks for.
pub const CHANGE_FIELDS: &str = "seq index label key operation missed";

impl GraphqlWs {
    /// Connects to `ws://addr/graphql/ws` and completes `connection_init` with `key`.
    pub async fn connect(addr: SocketAddr, key: &str) -> Self {
        let mut req = format!("ws://{addr}/graphql/ws")
            .into_client_request()
            .expect("a websocket request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("a header value"),
        );
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("websocket connect in time")
        .expect("websocket connect");
        let mut c = Self { ws };
        c.send(json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {key}")}}))
            .await;
        match c.recv(Duration::from_secs(30)).await {
            Some(Frame::Json(v)) if v["type"] == "connection_ack" => c,
            other => panic!("no connection_ack: {other:?}"),
        }
    }

    /// Sends one protocol message.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("websocket send");
    }

    /// Starts operation `id` with `query`.
    pub async fn subscribe(&mut self, id: &str, query: &str) {
        self.send(json!({"type": "subscribe", "id": id, "payload": {"query": query}}))
            .await;
    }

    /// Subscribes `id` to `graphChanges(<args>) { CHANGE_FIELDS }`.
    pub async fn subscribe_changes(&mut self, id: &str, args: &str) {
        let args = if args.is_empty() {
            String::new()
        } else {
            format!("({args})")
        };
        self.subscribe(
            id,
            &format!("subscription {{ graphChanges{args} {{ {CHANGE_FIELDS} }} }}"),
        )
        .await;
    }

    /// The next frame within `wait` (`None` when nothing came); pings are answered.
    pub async fn recv(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            match msg {
                None | Some(Err(_)) => return Some(Frame::Ended),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("a JSON message");
                    if v["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(Frame::Json(v));
                }
                Some(Ok(Message::Close(f))) => {
                    return Some(match f {
                        Some(f) => Frame::Close(u16::from(f.code), f.reason.to_string()),
                        None => Frame::Close(1005, String::new()),
                    });
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The change in a `next` frame (with [`CHANGE_FIELDS`]); panics on anything else, and on
    /// a non-zero `missed`.
    pub fn change_of(v: &Value) -> Change {
        assert_eq!(v["type"], "next", "expected a change: {v}");
        let c = &v["payload"]["data"]["graphChanges"];
        assert_eq!(c["missed"], 0, "the gateway reports missed changes: {v}");
        Change {
            seq: c["seq"].as_u64().expect("seq"),
            index: c["index"].as_u64().expect("index"),
            label: c["label"].as_str().expect("label").to_owned(),
            key: c["key"].as_str().expect("key").to_owned(),
        }
    }

    /// Reads changes until `done(&changes)` says enough, or nothing arrives for `idle`;
    /// panics on an error or close frame.
    pub async fn changes_until(
        &mut self,
        idle: Duration,
        mut done: impl FnMut(&[Change]) -> bool,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        while !done(&out) {
            match self.recv(idle).await {
                Some(Frame::Json(v)) => out.push(Self::change_of(&v)),
                None => break,
                Some(other) => panic!("after {} changes: {other:?}", out.len()),
            }
        }
        out
    }
}

/// Asserts `changes` are in strictly increasing `(seq, index)` order (so none came twice).
pub fn assert_in_order(changes: &[Change]) {
    for w in changes.windows(2) {
        assert!(
            (w[0].seq, w[0].index) < (w[1].seq, w[1].index),
            "out of order or repeated: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}
