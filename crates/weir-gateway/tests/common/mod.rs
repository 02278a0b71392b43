//! Shared helpers: a gateway served on 127.0.0.1:0 and a real WebSocket client over TCP.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use weir_config::Secret;
use weir_events::{ChangeBatch, ChangeEvent};
use weir_gateway::{
    AuthConfig, GatewayConfig, GatewayError, GatewayState, GraphNode, GraphReader, Ident,
    Neighbour, NeighbourQuery, NodeKey,
};

pub const TOKEN: &str = "test-key-0123456789";
pub const WAIT: Duration = Duration::from_secs(15);

/// For tests that exercise only subscriptions: any graph read is a test bug and fails loudly.
pub struct NoGraph;

#[async_trait]
impl GraphReader for NoGraph {
    async fn node(&self, _: &NodeKey) -> Result<Option<GraphNode>, GatewayError> {
        panic!("this test does not read the graph")
    }
    async fn neighbours(&self, _: &NeighbourQuery) -> Result<Vec<Neighbour>, GatewayError> {
        panic!("this test does not read the graph")
    }
    async fn count(&self, _: &Ident) -> Result<i64, GatewayError> {
        panic!("this test does not read the graph")
    }
    async fn ready(&self) -> bool {
        true
    }
}

pub fn config() -> GatewayConfig {
    GatewayConfig {
        auth: AuthConfig::ApiKeys {
            keys: vec![Secret::new(TOKEN)],
        },
        ..GatewayConfig::default()
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: GatewayState,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

pub async fn serve(config: GatewayConfig) -> Server {
    serve_with(config, Arc::new(NoGraph)).await
}

pub async fn serve_with(config: GatewayConfig, reader: Arc<dyn GraphReader>) -> Server {
    let state = GatewayState::new(config, reader).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(weir_gateway::serve(
        listener,
        state.clone(),
        shutdown.clone(),
    ));
    Server {
        addr,
        state,
        shutdown,
        task,
    }
}

impl Server {
    /// Waits until the registry and every per-connection structure are empty.
    pub async fn wait_empty(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.state.manager().snapshot();
            if s.subscriptions == 0
                && s.connections_with_subscriptions == 0
                && s.open_connections == 0
                && s.index_keys == 0
                && s.wildcard == 0
                && s.progress_jobs == 0
                && s.expiries == 0
                && s.held_bytes == 0
                && self.state.open_sockets() == 0
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "registry not empty: {s:?}, sockets {}",
                self.state.open_sockets()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens one connection with one subscription and waits until the manager counts it: the
    /// warm-up memory tests do first, so one-off allocations are not counted per socket.
    pub async fn warm_up(&self) -> Client {
        let mut warm = connect(self.addr, "graphql-transport-ws").await;
        warm.init().await;
        warm.subscribe("w", "subscription { graphChanges { key } }")
            .await;
        self.wait_active(1).await;
        warm
    }

    pub async fn wait_active(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.state.manager().active() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} subscriptions, have {}",
                self.state.manager().active()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Frame {
    Json(Value),
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Answer protocol pings automatically.
    pub answer_pings: bool,
}

pub async fn connect(addr: SocketAddr, protocol: &str) -> Client {
    connect_with_header(addr, protocol, None).await
}

pub async fn connect_with_header(addr: SocketAddr, protocol: &str, bearer: Option<&str>) -> Client {
    let mut req = format!("ws://{addr}/graphql/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    Client {
        ws,
        answer_pings: true,
    }
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next frame (protocol pings answered and skipped when `answer_pings`).
    pub async fn recv(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame from the gateway in time");
            match msg {
                None | Some(Err(_)) => return Frame::Ended,
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if self.answer_pings && v["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    if v["type"] == "ka" {
                        continue;
                    }
                    return Frame::Json(v);
                }
                Some(Ok(Message::Close(f))) => {
                    return match f {
                        Some(f) => Frame::Close(u16::from(f.code), f.reason.to_string()),
                        None => Frame::Close(1005, String::new()),
                    };
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Frame::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn expect_close(&mut self, code: u16) -> String {
        loop {
            match self.recv().await {
                Frame::Close(c, reason) => {
                    assert_eq!(c, code, "close reason: {reason}");
                    return reason;
                }
                Frame::Json(_) => continue,
                Frame::Ended => panic!("connection ended without close {code}"),
            }
        }
    }

    /// `connection_init` with the test token and wait for the ack.
    pub async fn init(&mut self) {
        self.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {TOKEN}")}}))
            .await;
        assert_eq!(self.recv_json().await["type"], "connection_ack");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str) {
        self.send(json!({"type": "subscribe", "id": id, "payload": {"query": query}}))
            .await;
    }

    /// Closes the TCP connection abruptly (RST, no close frame).
    pub fn drop_tcp(self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            #[allow(deprecated)] // linger 0 does not block: it resets at once.
            tcp.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(self);
    }
}

#[allow(unused_imports)] // Not every test uses it (like `dead_code` above).
pub use weir_events::fixture::event;

pub fn batch(events: Vec<ChangeEvent>) -> std::sync::Arc<ChangeBatch> {
    std::sync::Arc::new(weir_events::fixture::batch("job", "job-1", events))
}

pub async fn post(addr: SocketAddr, token: Option<&str>, body: String) -> (u16, Value) {
    // A minimal HTTP/1.1 client over TCP, to keep the test dependencies small.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a large body: ignore write errors.
    let _ = tcp.write_all(body.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = decode_chunked(body);
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

fn decode_chunked(body: &str) -> String {
    // axum answers JSON with a content-length; text bodies may come chunked.
    if body.starts_with('{') || body.starts_with('[') {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}
