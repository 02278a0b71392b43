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
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use futures::stream::{BoxStream, SplitSink};
use futures::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use weir_subscriptions::{Connection, EndReason, Item, Subscription};

use crate::projection::ChangePlan;

use crate::auth::{self, Principal};
use crate::listener::{Slot, Slots};
use crate::schema::{FastPath, Handoff, OpContext};
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

/// The client's address, when the listener recorded it (`ConnectInfo`).
pub(crate) struct Peer(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

pub(crate) async fn upgrade(
    State(state): State<GatewayState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if state.manager().is_shut_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let cfg = &state.inner.config;
    if !crate::origin::allowed(&headers, &cfg.allowed_origins) {
        return (
            StatusCode::FORBIDDEN,
            "WebSockets from this web page's origin are not allowed; list it in gateway.allowed_origins",
        )
            .into_response();
    }
    if state.open_sockets() >= cfg.websocket.max_sockets {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many WebSockets open (websocket.max_sockets)",
        )
            .into_response();
    }
    let ip_slot = match peer {
        Some(ip) => match state
            .inner
            .socket_ips
            .take(&ip, cfg.websocket.max_sockets_per_ip)
        {
            Some(slot) => Some(slot),
            None => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many WebSockets open from this address (websocket.max_sockets_per_ip)",
                )
                    .into_response();
            }
        },
        None => None,
    };
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
        .on_upgrade(move |socket| {
            tracker.track_future(run(socket, state, protocol, pre_auth, ip_slot))
        })
}

/// What an operation's task hands the connection task, boxed: the channel's blocks (32 slots
/// each, one allocated per connection from the start, idle or not) then cost 32 pointers, not 32
/// messages. Frames are serialised by the operation's task (in parallel, off the connection
/// task) and carry the operation's id as a shared `Arc<str>`.
enum Out {
    /// A `next` / `data` / `error` frame of operation `id`, serialised.
    Frame {
        id: Arc<str>,
        generation: u64,
        text: String,
    },
    /// Operation `id` ended; `complete` says whether to send `complete`.
    Done {
        id: Arc<str>,
        generation: u64,
        complete: bool,
    },
    Disconnect {
        code: u16,
        reason: &'static str,
    },
    /// A `graphChanges` operation on the fast path, for the connection to deliver itself.
    Adopt {
        id: Arc<str>,
        generation: u64,
        handoff: Handoff,
    },
}

/// A `graphChanges` subscription the connection delivers itself (the fast path): its changes
/// are rendered from the plan and written by the connection task, with no task or channel of
/// its own.
struct FastSub {
    sub: Subscription,
    plan: Arc<ChangePlan>,
    /// `{"type":"next","id":<id>,"payload":`
    prefix: Box<str>,
    ended: bool,
}

/// What a [`FastSub`] yields.
enum FastOut {
    Frame(String),
    Ended {
        reason: Option<EndReason>,
        last: Option<(u64, u32)>,
    },
}

impl Stream for FastSub {
    type Item = FastOut;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<FastOut>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(d)) => {
                    let Item::Change(event) = d.item else {
                        continue;
                    };
                    let mut text = String::with_capacity(this.prefix.len() + 384);
                    text.push_str(&this.prefix);
                    this.plan.render(&event, &mut text);
                    text.push('}');
                    return Poll::Ready(Some(FastOut::Frame(text)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(Some(FastOut::Ended {
                        reason: this.sub.end_reason(),
                        last: this.sub.last_delivered(),
                    }));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What an operation's end means for the client: an error frame to send, then `complete`, a
/// close, or nothing more.
enum EndAction {
    Complete,
    Nothing,
    Close(u16, &'static str),
}

/// The frames that end operation `id`, ended for `reason` after delivering `last`.
fn end_of(
    reason: Option<EndReason>,
    last: Option<(u64, u32)>,
    id: &str,
    complete: bool,
) -> (Option<String>, EndAction) {
    match reason {
        Some(EndReason::Lagged) => {
            // Where to resume: `graphChanges(since: lastSeq, sinceIndex: lastIndex)`.
            let (message, extensions) = match last {
                Some((seq, index)) => (
                    format!(
                        "slow consumer: too far behind, disconnecting; resume with since: {seq}, sinceIndex: {index}"
                    ),
                    json!({"code": "SLOW_CONSUMER", "lastSeq": seq, "lastIndex": index}),
                ),
                None => (
                    "slow consumer: too far behind, disconnecting; nothing was delivered yet: resume with the last seq you had".to_owned(),
                    json!({"code": "SLOW_CONSUMER"}),
                ),
            };
            let payload = json!([{"message": message, "extensions": extensions}]);
            (
                Some(frame("error", id, Some(&payload))),
                EndAction::Close(cc::SLOW_CONSUMER, "slow consumer"),
            )
        }
        Some(EndReason::Gap) => {
            // Changes were lost upstream of this gateway: say so, and where the client was.
            let (resume, extensions) = match last {
                Some((seq, index)) => (
                    format!("; the last change you received was seq {seq}, index {index}"),
                    json!({"code": "CHANGES_LOST", "lastSeq": seq, "lastIndex": index}),
                ),
                None => (String::new(), json!({"code": "CHANGES_LOST"})),
            };
            let message = format!(
                "changes were lost before reaching this gateway (the bus stream was reset, or its retention dropped changes not yet read){resume}: reload your view, then subscribe again"
            );
            let payload = json!([{"message": message, "extensions": extensions}]);
            (Some(frame("error", id, Some(&payload))), EndAction::Nothing)
        }
        _ if complete => (None, EndAction::Complete),
        _ => (None, EndAction::Nothing),
    }
}

/// The most frames written to a socket before one flush (one `sendto`).
const MAX_BATCH_FRAMES: usize = 16;
/// Past this many bytes fed, the batch is flushed (the WebSocket library keeps the capacity
/// its write buffer reached, so this also bounds that buffer at about this plus one frame).
const MAX_BATCH_BYTES: usize = 8 * 1024;

/// What the connection does with one [`Out`].
enum Step {
    Write(Message),
    Skip,
    End(Flow),
}

enum Flow {
    Continue,
    Close(u16, &'static str),
    Drop,
}

struct Op {
    generation: u64,
    /// The operation's task; `None` once the connection delivers it itself (an abort handle
    /// keeps a finished task's memory alive).
    abort: Option<AbortHandle>,
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
    ops: HashMap<Arc<str>, Op>,
    /// Operations on the fast path, delivered by this task (see [`FastSub`]).
    fast: StreamMap<Arc<str>, FastSub>,
    tasks: JoinSet<()>,
    /// The outbound channel of operations with tasks of their own, made on first use.
    out_tx: Option<mpsc::Sender<Box<Out>>>,
    /// Its receiver, just made, for the connection loop to take.
    new_out_rx: Option<mpsc::Receiver<Box<Out>>>,
    next_gen: u64,
    init_received: bool,
    principal: Option<Principal>,
    /// This connection's share of its principal's live operations, made on first use.
    principal_ops: Option<PrincipalOps>,
    pre_auth: Option<Principal>,
    bucket: Bucket,
}

/// A connection's live operations counted against its principal
/// (`limits.max_subscriptions_per_principal`); given back when the connection ends.
struct PrincipalOps {
    map: Arc<Slots<Arc<str>>>,
    key: Arc<str>,
    held: usize,
}

impl PrincipalOps {
    fn acquire(&mut self, cap: usize) -> bool {
        let ok = self.map.try_add(&self.key, cap);
        self.held += usize::from(ok);
        ok
    }

    fn release(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.map.sub(&self.key, n);
    }
}

impl Drop for PrincipalOps {
    fn drop(&mut self) {
        self.map.sub(&self.key, self.held);
    }
}

/// Counts an open socket for as long as it lives.
struct SocketCount(GatewayState);

impl Drop for SocketCount {
    fn drop(&mut self) {
        self.0.inner.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sets a connection up and returns the future that serves it. The setup runs here, outside
/// the future: an `async fn` keeps every argument in its state for the connection's whole life,
/// and the socket alone (moved into `split` at once) would be ~370 dead bytes per connection.
/// The returned block captures only what the loop uses, in place.
fn run(
    socket: WebSocket,
    state: GatewayState,
    protocol: Protocol,
    pre_auth: Option<Principal>,
    ip_slot: Option<Slot<std::net::IpAddr>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    state.inner.open_sockets.fetch_add(1, Ordering::Relaxed);
    let count = SocketCount(state.clone());
    let ws = &state.inner.config.websocket;
    let (init_timeout, ping_interval, pong_timeout) = (
        ws.connection_init_timeout,
        ws.ping_interval,
        ws.pong_timeout,
    );
    let (sink, stream) = socket.split();
    let rate = f64::from(state.inner.config.limits.subscription_starts_per_sec);
    // `force` implies `closing` (a child token), so the loop waits on one token.
    let closing = state.inner.closing.clone();
    let mut stream = stream;
    let mut c = Conn {
        conn: Arc::new(state.manager().connect()),
        state,
        protocol,
        sink,
        ops: HashMap::new(),
        // Most connections carry one subscription: room for exactly one, grown when needed.
        fast: StreamMap::with_capacity(1),
        tasks: JoinSet::new(),
        out_tx: None,
        new_out_rx: None,
        next_gen: 0,
        init_received: false,
        principal: None,
        principal_ops: None,
        pre_auth,
        bucket: Bucket {
            tokens: rate,
            cap: rate,
            last: Instant::now(),
        },
    };
    async move {
        let mut out_rx: Option<mpsc::Receiver<Box<Out>>> = None;
        // One timer for the three deadlines (connection_init, the next ping, the pong
        // awaited): an idle connection holds one timer, not three.
        let started = Instant::now();
        let init_due = started + init_timeout;
        let mut next_ping = started + ping_interval;
        let mut pong_due: Option<Instant> = None;
        let timer = tokio::time::sleep_until(init_due.min(next_ping));
        tokio::pin!(timer);

        loop {
            let acked = c.principal.is_some();
            let due = match (acked, pong_due) {
                (false, _) => init_due,
                (true, Some(p)) => p.min(next_ping),
                (true, None) => next_ping,
            };
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            let flow = tokio::select! {
                biased;
                _ = closing.cancelled() => {
                    if c.state.inner.force.is_cancelled() {
                        Flow::Drop
                    } else {
                        Box::pin(c.complete_all_ops()).await;
                        Flow::Close(cc::GOING_AWAY, "server shutting down")
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if !acked {
                        Flow::Close(cc::INIT_TIMEOUT, "Connection initialisation timeout")
                    } else if pong_due.is_some_and(|p| now >= p) {
                        Flow::Close(cc::PONG_TIMEOUT, "pong timeout")
                    } else {
                        next_ping = now + ping_interval;
                        pong_due.get_or_insert(now + pong_timeout);
                        match c.protocol {
                            Protocol::Transport => Box::pin(c.send_json(json!({"type": "ping"}))).await,
                            Protocol::Legacy => match Box::pin(c.send(Message::Ping(Default::default()))).await {
                                Flow::Continue => Box::pin(c.send_json(json!({"type": "ka"}))).await,
                                other => other,
                            },
                        }
                    }
                }
                // Boxed like every write below: the write's future (its timer, the sink's) lives only
                // while writing, instead of in the connection task for the socket's whole life.
                Some(out) = recv_opt(&mut out_rx) => {
                    let flow = Box::pin(c.write_outs(out, out_rx.as_mut())).await;
                    taking_writes(&flow, &mut pong_due, pong_timeout);
                    flow
                }
                Some((id, out)) = c.fast.next(), if !c.fast.is_empty() => {
                    let flow = Box::pin(c.write_fast(id, out)).await;
                    taking_writes(&flow, &mut pong_due, pong_timeout);
                    flow
                }
                // A finished operation task is reaped at once (the set keeps its memory until then).
                Some(_) = c.tasks.join_next(), if !c.tasks.is_empty() => Flow::Continue,
                msg = stream.next() => {
                    pong_due = None;
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
                        // Boxed: a client message is rare next to deliveries, and its future (the
                        // request being parsed, the operation being started) is large; inline, the
                        // connection task would carry its size for the socket's whole life.
                        Some(Ok(Message::Text(t))) => Box::pin(c.on_text(t.as_str())).await,
                        Some(Ok(Message::Binary(_))) => Flow::Close(cc::BAD_REQUEST, "binary messages are not supported"),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                        Some(Ok(Message::Close(_))) => Flow::Drop,
                    }
                }
            };
            if let Some(rx) = c.new_out_rx.take() {
                out_rx = Some(rx);
            }
            match flow {
                Flow::Continue => {}
                Flow::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = Box::pin(c.send(Message::Close(Some(frame)))).await;
                    break;
                }
                Flow::Drop => break,
            }
        }
        // Dropping the JoinSet aborts every operation task, which drops its subscription handle.
        c.tasks.abort_all();
        while c.tasks.join_next().await.is_some() {}
        // Held for the connection's life, given back here: the client address's socket slot
        // (`websocket.max_sockets_per_ip`) and the open-socket count.
        drop((ip_slot, count));
    }
}

/// A write the client's socket took while a pong is awaited moves the pong's deadline: the
/// client is reading, only behind (its ping waits behind the frames it has not read yet). How
/// far behind a subscriber may fall is the slow-consumer rule's to decide (`SLOW_CONSUMER`,
/// 1008), not the pong timeout's; a client that stops reading altogether still ends, by the
/// write timeout once its socket's buffers are full, or by the pong timeout when nothing is
/// being sent to it.
fn taking_writes(flow: &Flow, pong_due: &mut Option<Instant>, pong_timeout: Duration) {
    if matches!(flow, Flow::Continue) && pong_due.is_some() {
        *pong_due = Some(Instant::now() + pong_timeout);
    }
}

impl Conn {
    /// Removes operation `id`, giving its principal's slot back.
    fn remove_op(&mut self, id: &str) -> Option<Op> {
        let op = self.ops.remove(id)?;
        self.release_principal(1);
        Some(op)
    }

    fn release_principal(&mut self, n: usize) {
        if let Some(p) = &mut self.principal_ops {
            p.release(n);
        }
    }

    async fn send(&mut self, msg: Message) -> Flow {
        let deadline = Instant::now() + self.state.inner.config.websocket.write_timeout;
        match self.write(deadline, Some(msg)).await {
            Flow::Continue => self.write(deadline, None).await,
            other => other,
        }
    }

    /// Feeds `msg` to the socket (buffered, not flushed), or flushes it when `msg` is `None`. A
    /// write blocked on a client that reads nothing ends at `deadline` (the write timeout), or
    /// at once when the shutdown grace period is over.
    async fn write(&mut self, deadline: Instant, msg: Option<Message>) -> Flow {
        let io = async {
            match msg {
                Some(m) => self.sink.feed(m).await,
                None => self.sink.flush().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.state.inner.force.cancelled() => Flow::Drop,
            res = tokio::time::timeout_at(deadline, io) => match res {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(_)) => Flow::Drop,
                Err(_) => {
                    tracing::debug!("websocket write timed out: dropping the client");
                    Flow::Drop
                }
            },
        }
    }

    /// Writes `first` and whatever else is already queued (up to [`MAX_BATCH_FRAMES`] /
    /// [`MAX_BATCH_BYTES`]), then flushes once: one syscall for a burst instead of one per frame.
    /// The whole batch is bounded by one write timeout.
    async fn write_outs(
        &mut self,
        first: Box<Out>,
        mut rx: Option<&mut mpsc::Receiver<Box<Out>>>,
    ) -> Flow {
        let deadline = Instant::now() + self.state.inner.config.websocket.write_timeout;
        let mut fed = false;
        let mut frames = 0;
        let mut bytes = 0;
        let mut end = Flow::Continue;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match self.on_out(*out) {
                Step::Skip => {}
                Step::Write(msg) => {
                    if let Message::Text(t) = &msg {
                        bytes += t.as_str().len();
                    }
                    match self.write(deadline, Some(msg)).await {
                        Flow::Continue => fed = true,
                        other => return other,
                    }
                }
                Step::End(flow) => {
                    end = flow;
                    break;
                }
            }
            frames += 1;
            if frames < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                next = rx.as_mut().and_then(|r| r.try_recv().ok());
            }
        }
        if fed && let Flow::Drop = self.write(deadline, None).await {
            return Flow::Drop;
        }
        end
    }

    async fn send_json(&mut self, v: Value) -> Flow {
        self.send(Message::Text(v.to_string().into())).await
    }

    async fn complete_all_ops(&mut self) {
        self.fast = StreamMap::new();
        let ids: Vec<Arc<str>> = self.ops.keys().cloned().collect();
        for id in ids {
            if let Some(op) = self.remove_op(&id) {
                if let Some(a) = &op.abort {
                    a.abort();
                }
                let text = frame("complete", &id, None::<&()>);
                if let Flow::Drop = self.send(Message::Text(text.into())).await {
                    return;
                }
            }
        }
    }

    /// What to do with `out`: frames of an operation that is no longer running (completed by
    /// the client, or its id reused since) are skipped.
    fn on_out(&mut self, out: Out) -> Step {
        let live = |ops: &HashMap<Arc<str>, Op>, id: &str, generation: u64| {
            ops.get(id).is_some_and(|o| o.generation == generation)
        };
        match out {
            Out::Frame {
                id,
                generation,
                text,
            } => {
                if !live(&self.ops, &id, generation) {
                    return Step::Skip;
                }
                Step::Write(Message::Text(text.into()))
            }
            Out::Done {
                id,
                generation,
                complete,
            } => {
                if !live(&self.ops, &id, generation) {
                    return Step::Skip;
                }
                self.remove_op(&id);
                if complete {
                    Step::Write(Message::Text(frame("complete", &id, None::<&()>).into()))
                } else {
                    Step::Skip
                }
            }
            Out::Disconnect { code, reason } => Step::End(Flow::Close(code, reason)),
            Out::Adopt {
                id,
                generation,
                handoff,
            } => {
                if let Some(op) = self.ops.get_mut(&id)
                    && op.generation == generation
                {
                    op.abort = None;
                    self.adopt(id, handoff);
                }
                Step::Skip
            }
        }
    }

    /// Writes what the fast-path operations have ready (starting with `first` of `id`), up
    /// to [`MAX_BATCH_FRAMES`] / [`MAX_BATCH_BYTES`], then flushes once.
    async fn write_fast(&mut self, id: Arc<str>, first: FastOut) -> Flow {
        let deadline = Instant::now() + self.state.inner.config.websocket.write_timeout;
        let (mut frames, mut bytes, mut fed) = (0, 0, false);
        let mut next = Some((id, first));
        while let Some((id, out)) = next.take() {
            let flow = match out {
                FastOut::Frame(text) => {
                    bytes += text.len();
                    let f = self.write(deadline, Some(Message::Text(text.into()))).await;
                    fed = true;
                    f
                }
                FastOut::Ended { reason, last } => {
                    self.fast.remove(&id);
                    if self.remove_op(&id).is_none() {
                        Flow::Continue
                    } else {
                        let (error, action) = end_of(reason, last, &id, true);
                        let mut f = Flow::Continue;
                        if let Some(text) = error {
                            f = self.write(deadline, Some(Message::Text(text.into()))).await;
                            fed = true;
                        }
                        match (f, action) {
                            (Flow::Continue, EndAction::Close(code, reason)) => {
                                Flow::Close(code, reason)
                            }
                            (Flow::Continue, EndAction::Complete) => {
                                let text = frame("complete", &id, None::<&()>);
                                fed = true;
                                self.write(deadline, Some(Message::Text(text.into()))).await
                            }
                            (f, _) => f,
                        }
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close(code, reason) => {
                    if fed {
                        let _ = self.write(deadline, None).await;
                    }
                    return Flow::Close(code, reason);
                }
                Flow::Drop => return Flow::Drop,
            }
            frames += 1;
            if frames < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                next = self.fast.next().now_or_never().flatten();
            }
        }
        if fed && let Flow::Drop = self.write(deadline, None).await {
            return Flow::Drop;
        }
        Flow::Continue
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
                    && let Some(op) = self.remove_op(id)
                {
                    // A fast-path operation's subscription is in `fast`: end it as the
                    // client's, then drop it.
                    if let Some(fast) = self.fast.remove(id) {
                        self.state.manager().end(fast.sub.id(), EndReason::Client);
                    }
                    let sub = *op.ctx.subscription.lock();
                    if let Some(sub) = sub {
                        self.state.manager().end(sub, EndReason::Client);
                    }
                    if let Some(a) = &op.abort {
                        a.abort();
                    }
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
        if self.ops.contains_key(id) {
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
            return self.op_error(id, "LIMIT_EXCEEDED", &m).await;
        }
        if !self.bucket.take() {
            let m = format!(
                "too many subscriptions started per second (limit {})",
                self.state.inner.config.limits.subscription_starts_per_sec
            );
            return self.op_error(id, "RATE_LIMITED", &m).await;
        }
        if self.state.inner.auth.required() {
            let cap = self
                .state
                .inner
                .config
                .limits
                .max_subscriptions_per_principal;
            let map = &self.state.inner.principal_ops;
            let hold = self.principal_ops.get_or_insert_with(|| PrincipalOps {
                map: map.clone(),
                key: Arc::from(principal.subject.as_str()),
                held: 0,
            });
            if !hold.acquire(cap) {
                let m = format!(
                    "too many live operations for this caller across its connections (limit {cap})"
                );
                return self.op_error(id, "LIMIT_EXCEEDED", &m).await;
            }
        }
        self.next_gen += 1;
        let generation = self.next_gen;
        // The fast path (projection.rs) does not evaluate directives: a query with any keeps
        // the executor for every change.
        let (handoff_tx, handoff_rx) = tokio::sync::oneshot::channel();
        let ctx = Arc::new(OpContext {
            conn: self.conn.clone(),
            subscription: Mutex::new(None),
            ended: Mutex::new(None),
            last_delivered: Mutex::new(None),
            fast: FastPath {
                allowed: !request.query.contains('@'),
                moved: self.state.inner.fast_operations.clone(),
                handoff: Mutex::new(Some(handoff_tx)),
                ..FastPath::default()
            },
        });
        let mut responses = self
            .state
            .inner
            .schema
            .execute_stream(request.data(ctx.clone()).data(principal));
        let id: Arc<str> = id.into();
        let mut handoff_rx = handoff_rx;
        // A `graphChanges` subscription without `since` resolves at once: check the fast path's
        // probe here and, when it passes, deliver it from this task; no task or channel is
        // made for it. Anything that has to wait (a `since` replay opening, a query) gets its
        // own task below, which does the same once it can.
        let mut first = None;
        if ctx.fast.allowed {
            match responses.next().now_or_never() {
                Some(Some(resp)) => {
                    let probe = ctx.fast.probe.lock().take();
                    match probe {
                        Some(probe) => {
                            let same = check_probe(&resp, probe);
                            *ctx.fast.verdict.lock() = Some(same);
                            if same {
                                // The stream hands its subscription over when polled again.
                                let _ = responses.next().now_or_never();
                                if let Ok(handoff) = handoff_rx.try_recv() {
                                    drop(responses);
                                    ctx.fast.moved.fetch_add(1, Ordering::Relaxed);
                                    self.ops.insert(
                                        id.clone(),
                                        Op {
                                            generation,
                                            abort: None,
                                            ctx,
                                        },
                                    );
                                    self.adopt(id, handoff);
                                    return Flow::Continue;
                                }
                            }
                        }
                        None => first = Some(resp),
                    }
                }
                Some(None) => {
                    self.release_principal(1);
                    let text = frame("complete", &id, None::<&()>);
                    return self.send(Message::Text(text.into())).await;
                }
                None => {}
            }
        }
        let out = self.out_sender();
        let fut = run_op(
            responses,
            first,
            handoff_rx,
            out,
            ctx.clone(),
            id.clone(),
            generation,
            self.protocol,
        );
        let abort = Some(self.tasks.spawn(fut));
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

    /// The sender of the outbound channel, made on first use (operations delivered by this
    /// task need none).
    fn out_sender(&mut self) -> mpsc::Sender<Box<Out>> {
        if let Some(tx) = &self.out_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.state.inner.config.websocket.outbound_queue);
        self.new_out_rx = Some(rx);
        self.out_tx = Some(tx.clone());
        tx
    }

    /// Takes a fast-path `graphChanges` operation over: this task delivers it from now on.
    fn adopt(&mut self, id: Arc<str>, handoff: Handoff) {
        let next = match self.protocol {
            Protocol::Transport => "next",
            Protocol::Legacy => "data",
        };
        let prefix = format!(
            "{{\"type\":\"{next}\",\"id\":{},\"payload\":",
            serde_json::to_string(&*id).unwrap_or_default()
        );
        self.fast.insert(
            id,
            FastSub {
                sub: handoff.sub,
                plan: self.state.intern_plan(handoff.plan),
                prefix: prefix.into(),
                ended: false,
            },
        );
    }
}

/// Whether the executor's rendering of the probe equals the plan's.
fn check_probe(resp: &async_graphql::Response, probe: serde_json::Value) -> bool {
    let same = serde_json::to_value(resp).is_ok_and(|v| v == probe);
    if !same {
        tracing::warn!(
            "the graphChanges fast path renders this selection differently from the executor: keeping the executor (please report the query)"
        );
    }
    same
}

/// The next message of the outbound channel, once it exists.
async fn recv_opt(rx: &mut Option<mpsc::Receiver<Box<Out>>>) -> Option<Box<Out>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Serialises one protocol frame: `{"type": ty, "id": id, "payload": payload}` (no `payload`
/// when it is `None`).
fn frame<P: Serialize + ?Sized>(ty: &str, id: &str, payload: Option<&P>) -> String {
    #[derive(Serialize)]
    struct Frame<'a, P: ?Sized> {
        #[serde(rename = "type")]
        ty: &'a str,
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a P>,
    }
    serde_json::to_string(&Frame { ty, id, payload }).unwrap_or_else(|e| {
        // A payload that cannot be JSON (it never happens with async-graphql's values): the
        // frame still goes out, with a null payload, as before.
        tracing::warn!(error = %e, "could not serialise a frame payload");
        serde_json::to_string(&Frame::<()> {
            ty,
            id,
            payload: Some(&()),
        })
        .unwrap_or_default()
    })
}

/// One operation: reads its response stream and hands each response, serialised, to the
/// connection task through the bounded channel (waiting when it is full: the subscription's own
/// lag limits take over). A `graphChanges` operation whose first change the fast path rendered
/// exactly as the executor did moves to [`fast_changes`] (see `schema::FastPath`).
#[allow(clippy::too_many_arguments)]
async fn run_op(
    mut responses: BoxStream<'static, async_graphql::Response>,
    first: Option<async_graphql::Response>,
    handoff: tokio::sync::oneshot::Receiver<Handoff>,
    out: mpsc::Sender<Box<Out>>,
    ctx: Arc<OpContext>,
    id: Arc<str>,
    generation: u64,
    protocol: Protocol,
) {
    let next = match protocol {
        Protocol::Transport => "next",
        Protocol::Legacy => "data",
    };
    let mut complete = true;
    let mut handoff = Some(handoff);
    let mut first = first;
    loop {
        let resp = if let Some(r) = first.take() {
            Some(r)
        } else {
            tokio::select! {
            biased;
            h = async { handoff.as_mut().expect("guarded").await }, if handoff.is_some() => {
                match h {
                    Ok(handoff) => {
                        // The connection delivers it from here; this task ends.
                        drop(responses);
                        ctx.fast.moved.fetch_add(1, Ordering::Relaxed);
                        let _ = out
                            .send(Box::new(Out::Adopt {
                                id,
                                generation,
                                handoff,
                            }))
                            .await;
                        return;
                    }
                    Err(_) => {
                        handoff = None;
                        continue;
                    }
                }
            }
            r = responses.next() => r,
            }
        };
        let Some(resp) = resp else {
            drop(responses);
            break;
        };
        // The first response of a fast-path candidate is the probe: compared, never sent.
        let probe = ctx.fast.probe.lock().take();
        if let Some(probe) = probe {
            *ctx.fast.verdict.lock() = Some(check_probe(&resp, probe));
            continue;
        }
        let text = if resp.is_err() && resp.data == async_graphql::Value::Null {
            complete = false;
            frame("error", &id, Some(&resp.errors))
        } else {
            frame(next, &id, Some(&resp))
        };
        let msg = Box::new(Out::Frame {
            id: id.clone(),
            generation,
            text,
        });
        if out.send(msg).await.is_err() {
            return;
        }
        if !complete {
            drop(responses);
            break;
        }
    }
    finish_op(&out, &ctx, id, generation, complete).await;
}

/// What an operation sends when its stream ended: the slow-consumer error and close, the
/// changes-lost error, or `complete` (when `complete`).
async fn finish_op(
    out: &mpsc::Sender<Box<Out>>,
    ctx: &OpContext,
    id: Arc<str>,
    generation: u64,
    complete: bool,
) {
    let ended = *ctx.ended.lock();
    let last = *ctx.last_delivered.lock();
    let (error, action) = end_of(ended, last, &id, complete);
    if let Some(text) = error {
        let _ = out
            .send(Box::new(Out::Frame {
                id: id.clone(),
                generation,
                text,
            }))
            .await;
    }
    let last_out = match action {
        EndAction::Close(code, reason) => Out::Disconnect { code, reason },
        EndAction::Complete => Out::Done {
            id,
            generation,
            complete: true,
        },
        EndAction::Nothing => Out::Done {
            id,
            generation,
            complete: false,
        },
    };
    let _ = out.send(Box::new(last_out)).await;
}
