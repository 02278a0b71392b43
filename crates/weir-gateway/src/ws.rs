//! The two GraphQL-over-WebSocket protocols, over axum's socket.
//!
//! One task per connection reads client frames, writes server frames (each write bounded by
//! `websocket.write_timeout`) and runs the timers (connection_init deadline, pings, pong
//! deadline). Each operation runs in its own task inside the connection's `JoinSet`, sending
//! its results through a bounded channel; when the connection task ends, for whatever reason,
//! the `JoinSet` drops and aborts every operation, which drops every subscription handle and
//! so removes every subscription from the registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use weir_subscriptions::{Connection, EndReason};

use crate::auth::{self, Principal};
use crate::schema::OpContext;
use crate::{GatewayState, http_token};

/// WebSocket close codes the gateway sends.
pub mod close_codes {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client stayed behind too long (slow-consumer policy).
    pub const SLOW_CONSUMER: u16 = 1008;
    /// A message was larger than `limits.max_ws_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// A message that is not valid for the protocol.
    pub const BAD_REQUEST: u16 = 4400;
    /// An operation before `connection_ack`.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Authentication in `connection_init` failed.
    pub const FORBIDDEN: u16 = 4403;
    /// `connection_init` did not come within `websocket.connection_init_timeout`.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// An operation id that is already running on this connection.
    pub const DUPLICATE_ID: u16 = 4409;
    /// A second `connection_init`.
    pub const TOO_MANY_INIT: u16 = 4429;
    /// No frame from the client within `websocket.pong_timeout` after a ping.
    pub const PONG_TIMEOUT: u16 = 4499;
}

use close_codes as cc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws` (the graphql-ws library).
    Transport,
    /// `graphql-ws` (the legacy subscriptions-transport-ws library).
    Legacy,
}

pub(crate) async fn upgrade(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if state.manager().is_shut_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // A token on the upgrade request is checked now; without one, `connection_init` must carry it.
    let pre_auth = match http_token(&headers) {
        Some(t) => match state.inner.auth.check(Some(t)) {
            Ok(p) => Some(p),
            Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
        },
        None => None,
    };
    let ws = ws.protocols(["graphql-transport-ws", "graphql-ws"]);
    let protocol = match ws.selected_protocol().map(|v| v.as_bytes()) {
        Some(b"graphql-ws") => Protocol::Legacy,
        _ => Protocol::Transport,
    };
    let limit = state.inner.config.limits.max_ws_message_bytes;
    let tracker = state.inner.sockets.clone();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(state.inner.config.websocket.read_buffer_bytes)
        .on_upgrade(move |socket| tracker.track_future(run(socket, state, protocol, pre_auth)))
}

enum Out {
    Next {
        id: String,
        generation: u64,
        payload: Value,
    },
    Error {
        id: String,
        generation: u64,
        payload: Value,
    },
    Done {
        id: String,
        generation: u64,
        complete: bool,
    },
    Disconnect {
        code: u16,
        reason: &'static str,
    },
}

enum Flow {
    Continue,
    Close(u16, &'static str),
    Drop,
}

struct Op {
    generation: u64,
    abort: AbortHandle,
    ctx: Arc<OpContext>,
}

struct Bucket {
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.cap;
        self.tokens = (self.tokens + refill).min(self.cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Conn {
    state: GatewayState,
    protocol: Protocol,
    sink: SplitSink<WebSocket, Message>,
    conn: Arc<Connection>,
    ops: HashMap<String, Op>,
    tasks: JoinSet<()>,
    out_tx: mpsc::Sender<Out>,
    next_gen: u64,
    init_received: bool,
    principal: Option<Principal>,
    pre_auth: Option<Principal>,
    bucket: Bucket,
}

/// Counts an open socket for as long as it lives.
struct SocketCount(GatewayState);

impl Drop for SocketCount {
    fn drop(&mut self) {
        self.0.inner.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(
    socket: WebSocket,
    state: GatewayState,
    protocol: Protocol,
    pre_auth: Option<Principal>,
) {
    state.inner.open_sockets.fetch_add(1, Ordering::Relaxed);
    let _count = SocketCount(state.clone());
    let cfg = state.inner.config.websocket.clone();
    let (sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel(cfg.outbound_queue);
    let rate = f64::from(state.inner.config.limits.subscription_starts_per_sec);
    let mut c = Conn {
        conn: Arc::new(state.manager().connect()),
        state: state.clone(),
        protocol,
        sink,
        ops: HashMap::new(),
        tasks: JoinSet::new(),
        out_tx,
        next_gen: 0,
        init_received: false,
        principal: None,
        pre_auth,
        bucket: Bucket {
            tokens: rate,
            cap: rate,
            last: Instant::now(),
        },
    };
    let closing = state.inner.closing.clone();
    let force = state.inner.force.clone();
    let init_deadline = tokio::time::sleep(cfg.connection_init_timeout);
    tokio::pin!(init_deadline);
    let pong_deadline = tokio::time::sleep(cfg.pong_timeout);
    tokio::pin!(pong_deadline);
    let mut awaiting_pong = false;
    let mut pings = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        let acked = c.principal.is_some();
        let flow = tokio::select! {
            biased;
            _ = force.cancelled() => Flow::Drop,
            _ = closing.cancelled() => {
                c.complete_all_ops().await;
                Flow::Close(cc::GOING_AWAY, "server shutting down")
            }
            _ = &mut init_deadline, if !acked => {
                Flow::Close(cc::INIT_TIMEOUT, "Connection initialisation timeout")
            }
            _ = &mut pong_deadline, if awaiting_pong => Flow::Close(cc::PONG_TIMEOUT, "pong timeout"),
            _ = pings.tick(), if acked => {
                let sent = match c.protocol {
                    Protocol::Transport => c.send_json(json!({"type": "ping"})).await,
                    Protocol::Legacy => match c.send(Message::Ping(Default::default())).await {
                        Flow::Continue => c.send_json(json!({"type": "ka"})).await,
                        other => other,
                    },
                };
                if !awaiting_pong {
                    awaiting_pong = true;
                    pong_deadline.as_mut().reset(Instant::now() + cfg.pong_timeout);
                }
                sent
            }
            Some(out) = out_rx.recv() => c.on_out(out).await,
            msg = stream.next() => {
                awaiting_pong = false;
                match msg {
                    None => Flow::Drop,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("Space limit") || text.contains("too long") || text.contains("too big") {
                            Flow::Close(cc::TOO_BIG, "message too big")
                        } else {
                            tracing::debug!(error = %text, "websocket read failed");
                            Flow::Drop
                        }
                    }
                    Some(Ok(Message::Text(t))) => c.on_text(t.as_str()).await,
                    Some(Ok(Message::Binary(_))) => Flow::Close(cc::BAD_REQUEST, "binary messages are not supported"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                    Some(Ok(Message::Close(_))) => Flow::Drop,
                }
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = c.send(Message::Close(Some(frame))).await;
                break;
            }
            Flow::Drop => break,
        }
    }
    // Dropping the JoinSet aborts every operation task, which drops its subscription handle.
    c.tasks.abort_all();
    while c.tasks.join_next().await.is_some() {}
}

impl Conn {
    async fn send(&mut self, msg: Message) -> Flow {
        let timeout = self.state.inner.config.websocket.write_timeout;
        let force = self.state.inner.force.clone();
        // A write blocked on a client that reads nothing ends at the write timeout, or at once
        // when the shutdown grace period is over.
        tokio::select! {
            biased;
            _ = force.cancelled() => Flow::Drop,
            res = tokio::time::timeout(timeout, self.sink.send(msg)) => match res {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(_)) => Flow::Drop,
                Err(_) => {
                    tracing::debug!("websocket write timed out: dropping the client");
                    Flow::Drop
                }
            },
        }
    }

    async fn send_json(&mut self, v: Value) -> Flow {
        self.send(Message::Text(v.to_string().into())).await
    }

    async fn complete_all_ops(&mut self) {
        let ids: Vec<String> = self.ops.keys().cloned().collect();
        for id in ids {
            if let Some(op) = self.ops.remove(&id) {
                op.abort.abort();
                if let Flow::Drop = self.send_json(json!({"type": "complete", "id": id})).await {
                    return;
                }
            }
        }
    }

    async fn on_out(&mut self, out: Out) -> Flow {
        let live = |ops: &HashMap<String, Op>, id: &str, generation: u64| {
            ops.get(id).is_some_and(|o| o.generation == generation)
        };
        match out {
            Out::Next {
                id,
                generation,
                payload,
            } => {
                if !live(&self.ops, &id, generation) {
                    return Flow::Continue;
                }
                let ty = match self.protocol {
                    Protocol::Transport => "next",
                    Protocol::Legacy => "data",
                };
                self.send_json(json!({"type": ty, "id": id, "payload": payload}))
                    .await
            }
            Out::Error {
                id,
                generation,
                payload,
            } => {
                if !live(&self.ops, &id, generation) {
                    return Flow::Continue;
                }
                self.send_json(json!({"type": "error", "id": id, "payload": payload}))
                    .await
            }
            Out::Done {
                id,
                generation,
                complete,
            } => {
                if !live(&self.ops, &id, generation) {
                    return Flow::Continue;
                }
                self.ops.remove(&id);
                if complete {
                    self.send_json(json!({"type": "complete", "id": id})).await
                } else {
                    Flow::Continue
                }
            }
            Out::Disconnect { code, reason } => Flow::Close(code, reason),
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return Flow::Close(cc::BAD_REQUEST, "Invalid message received");
        };
        let ty = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match (self.protocol, ty) {
            (_, "connection_init") => {
                self.on_init(msg.get("payload").unwrap_or(&Value::Null))
                    .await
            }
            (Protocol::Transport, "ping") => self.send_json(json!({"type": "pong"})).await,
            (Protocol::Transport, "pong") => Flow::Continue,
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                self.on_subscribe(&msg).await
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                if let Some(id) = msg.get("id").and_then(Value::as_str)
                    && let Some(op) = self.ops.remove(id)
                {
                    let sub = *op.ctx.subscription.lock();
                    if let Some(sub) = sub {
                        self.state.manager().end(sub, EndReason::Client);
                    }
                    op.abort.abort();
                }
                Flow::Continue
            }
            (Protocol::Legacy, "connection_terminate") => Flow::Close(1000, "terminated"),
            _ => Flow::Close(cc::BAD_REQUEST, "Invalid message received"),
        }
    }

    async fn on_init(&mut self, payload: &Value) -> Flow {
        if self.init_received {
            return match self.protocol {
                Protocol::Transport => {
                    Flow::Close(cc::TOO_MANY_INIT, "Too many initialisation requests")
                }
                Protocol::Legacy => Flow::Continue,
            };
        }
        self.init_received = true;
        let auth = &self.state.inner.auth;
        let result = match (auth::token_from_init(payload), &self.pre_auth) {
            (None, Some(p)) => Ok(p.clone()),
            (token, _) => auth.check(token),
        };
        match result {
            Ok(p) => {
                self.principal = Some(p);
                match self.send_json(json!({"type": "connection_ack"})).await {
                    Flow::Continue if self.protocol == Protocol::Legacy => {
                        self.send_json(json!({"type": "ka"})).await
                    }
                    other => other,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, required = auth.required(), "websocket authentication failed");
                if self.protocol == Protocol::Legacy {
                    let _ = self
                        .send_json(json!({"type": "connection_error", "payload": {"message": e.to_string()}}))
                        .await;
                }
                Flow::Close(cc::FORBIDDEN, "Forbidden")
            }
        }
    }

    async fn op_error(&mut self, id: &str, code: &str, message: &str) -> Flow {
        self.send_json(json!({
            "type": "error",
            "id": id,
            "payload": [{"message": message, "extensions": {"code": code}}],
        }))
        .await
    }

    async fn on_subscribe(&mut self, msg: &Value) -> Flow {
        let Some(principal) = self.principal.clone() else {
            return Flow::Close(cc::UNAUTHORIZED, "Unauthorized");
        };
        let Some(id) = msg
            .get("id")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty() && i.len() <= 128)
        else {
            return Flow::Close(cc::BAD_REQUEST, "Invalid message received");
        };
        let id = id.to_owned();
        if self.ops.contains_key(&id) {
            return Flow::Close(cc::DUPLICATE_ID, "Subscriber for this id already exists");
        }
        let Ok(request) = serde_json::from_value::<async_graphql::Request>(
            msg.get("payload").cloned().unwrap_or(Value::Null),
        ) else {
            return Flow::Close(cc::BAD_REQUEST, "Invalid message received");
        };
        let limit = self.state.inner.config.subscriptions.max_per_connection;
        if self.ops.len() >= limit {
            let m = format!("too many operations on this connection (limit {limit})");
            return self.op_error(&id, "LIMIT_EXCEEDED", &m).await;
        }
        if !self.bucket.take() {
            let m = format!(
                "too many subscriptions started per second (limit {})",
                self.state.inner.config.limits.subscription_starts_per_sec
            );
            return self.op_error(&id, "RATE_LIMITED", &m).await;
        }
        self.next_gen += 1;
        let generation = self.next_gen;
        let ctx = Arc::new(OpContext {
            conn: self.conn.clone(),
            subscription: Mutex::new(None),
            ended: Mutex::new(None),
        });
        let mut responses = self
            .state
            .inner
            .schema
            .execute_stream(request.data(ctx.clone()).data(principal));
        let out = self.out_tx.clone();
        let task_ctx = ctx.clone();
        let task_id = id.clone();
        let abort = self.tasks.spawn(async move {
            let id = task_id;
            let mut complete = true;
            while let Some(resp) = responses.next().await {
                if resp.is_err() && resp.data == async_graphql::Value::Null {
                    let payload = serde_json::to_value(&resp.errors).unwrap_or(Value::Null);
                    let _ = out.send(Out::Error { id: id.clone(), generation, payload }).await;
                    complete = false;
                    break;
                }
                let payload = serde_json::to_value(&resp).unwrap_or(Value::Null);
                if out.send(Out::Next { id: id.clone(), generation, payload }).await.is_err() {
                    return;
                }
            }
            drop(responses);
            let lagged = *task_ctx.ended.lock() == Some(EndReason::Lagged);
            if lagged {
                let _ = out
                    .send(Out::Error {
                        id: id.clone(),
                        generation,
                        payload: json!([{"message": "slow consumer: too far behind, disconnecting", "extensions": {"code": "SLOW_CONSUMER"}}]),
                    })
                    .await;
                let _ = out
                    .send(Out::Disconnect {
                        code: cc::SLOW_CONSUMER,
                        reason: "slow consumer",
                    })
                    .await;
                return;
            }
            let _ = out.send(Out::Done { id, generation, complete }).await;
        });
        self.ops.insert(
            id,
            Op {
                generation,
                abort,
                ctx,
            },
        );
        Flow::Continue
    }
}
