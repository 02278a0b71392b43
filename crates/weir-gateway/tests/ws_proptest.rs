//! Randomised WebSocket sessions against a real gateway (issue 18, item 7): sequences of
//! protocol messages built from the real vocabulary (`connection_init`, `subscribe`,
//! `complete`, `ping`, `pong`, both protocols' names) with random ids, payloads and queries,
//! mixed with random JSON, random text, binary frames and oversized messages.
//!
//! Whatever a client sends, the gateway answers only with protocol messages or closes with one
//! of its documented close codes; it never panics; once the client is gone every
//! subscription and socket is released; and a well-behaved client is served afterwards.
//! `PROPTEST_CASES=N` sets the number of sessions (default 200); for an hour:
//! `end=$((SECONDS+3600)); while [ $SECONDS -lt $end ]; do PROPTEST_CASES=5000 cargo test --release -p weir-gateway --test ws_proptest || break; done`.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use weir_gateway::close_codes as cc;

/// One thing a client may send.
#[derive(Clone, Debug)]
enum Send {
    Json(Value),
    Text(String),
    Binary(Vec<u8>),
    Huge,
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => "[a-z0-9]{1,2}".prop_map(Value::from),
        1 => Just(Value::from("")),
        1 => "[a-z]{130,140}".prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

fn query() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("subscription { graphChanges { key } }")),
        Just(json!(
            "subscription { graphChanges(labels: [\"P\"]) { key label } }"
        )),
        Just(json!("subscription { graphChanges(since: 0) { key } }")),
        Just(json!("subscription { jobProgress { jobId } }")),
        Just(json!("{ __typename }")),
        Just(json!("query { __typename }")),
        Just(json!("{ nope }")),
        Just(json!(
            "subscription { a: graphChanges { key } b: graphChanges { key } }"
        )),
        Just(json!("query { ".repeat(40))),
        "[ -~]{0,60}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message for a client speaking `graphql-ws` (`legacy`) or `graphql-transport-ws`: mostly
/// that protocol's own types, sometimes the other's or none.
fn message(legacy: bool) -> impl Strategy<Value = Send> {
    let own: &'static [&'static str] = if legacy {
        &["start", "stop", "connection_init", "connection_terminate"]
    } else {
        &["subscribe", "complete", "ping", "pong", "connection_init"]
    };
    let kind = prop_oneof![
        12 => prop::sample::select(own),
        1 => prop::sample::select(&["subscribe", "start", "complete", "stop", "next", "bogus"][..]),
    ];
    prop_oneof![
        16 => (kind, id(), query(), json_value()).prop_map(|(t, id, q, vars)| {
            let payload = match t {
                "connection_init" => json!({"Authorization": format!("Bearer {TOKEN}")}),
                _ => json!({"query": q, "variables": vars}),
            };
            Send::Json(json!({"type": t, "id": id, "payload": payload}))
        }),
        1 => json_value().prop_map(Send::Json),
        1 => "\\PC{0,80}".prop_map(Send::Text),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Send::Binary),
        1 => Just(Send::Huge),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// The close codes the gateway documents (`close_codes`), and the normal ones.
const DOCUMENTED: &[u16] = &[
    1000,
    1005,
    cc::GOING_AWAY,
    cc::SLOW_CONSUMER,
    cc::TOO_BIG,
    cc::BAD_REQUEST,
    cc::UNAUTHORIZED,
    cc::FORBIDDEN,
    cc::INIT_TIMEOUT,
    cc::DUPLICATE_ID,
    cc::TOO_MANY_INIT,
];

const MESSAGE_TYPES: &[&str] = &[
    "connection_ack",
    "next",
    "data",
    "error",
    "complete",
    "ping",
    "pong",
    "ka",
    "connection_error",
];

/// Reads frames until none comes within `wait`; `Ok(true)` once the server has closed.
async fn read(
    c: &mut Client,
    wait: Duration,
    seen: &std::sync::Mutex<Seen>,
) -> Result<bool, String> {
    loop {
        match tokio::time::timeout(wait, c.ws.next()).await {
            Err(_) => return Ok(false),
            // A panicking connection task drops the socket without a close frame.
            Ok(None) | Ok(Some(Err(_))) => {
                return Err("the connection ended without a close frame".into());
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .map_err(|e| format!("not JSON from the server: {t}: {e}"))?;
                let ty = v["type"].as_str().unwrap_or("");
                if !MESSAGE_TYPES.contains(&ty) {
                    return Err(format!("unknown message type from the server: {v}"));
                }
                let mut seen = seen.lock().unwrap();
                match ty {
                    "connection_ack" => seen.acks += 1,
                    "next" | "data" | "error" | "complete" => seen.operation_messages += 1,
                    _ => {}
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                let code = f.map_or(1005, |f| u16::from(f.code));
                if !DOCUMENTED.contains(&code) {
                    return Err(format!("undocumented close code {code}"));
                }
                *seen.lock().unwrap().closes.entry(code).or_default() += 1;
                return Ok(true);
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// What the sessions saw, so the test can tell it reached past the handshake.
#[derive(Default, Debug)]
struct Seen {
    acks: u64,
    operation_messages: u64,
    closes: std::collections::BTreeMap<u16, u64>,
}

async fn session(
    server: &Server,
    protocol: &str,
    script: &[Send],
    seen: &std::sync::Mutex<Seen>,
) -> Result<(), String> {
    let mut c = connect(server.addr, protocol).await;
    let mut closed = false;
    for (i, m) in script.iter().enumerate() {
        let frame = match m {
            Send::Json(v) => Message::Text(v.to_string().into()),
            Send::Text(t) => Message::Text(t.clone().into()),
            Send::Binary(b) => Message::Binary(b.clone().into()),
            Send::Huge => Message::Text("x".repeat(70 * 1024).into()),
        };
        if let Err(e) = c.ws.send(frame).await {
            return Err(format!("sending failed before the server closed: {e}"));
        }
        // Read what the message brought (the last one gets longer), so nothing is lost to a
        // reset when the server closes while we still send.
        let wait = if i + 1 == script.len() { 150 } else { 15 };
        if read(&mut c, Duration::from_millis(wait), seen).await? {
            closed = true;
            break;
        }
    }
    if !closed {
        read(&mut c, Duration::from_millis(50), seen).await?;
    }
    c.drop_tcp();
    Ok(())
}

#[test]
fn any_client_messages_get_protocol_answers_and_release_everything() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = config();
    cfg.limits.subscription_starts_per_sec = 1000;
    let server = rt.block_on(serve(cfg));
    let seen = std::sync::Mutex::new(Seen::default());
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // The default suite runs the same sessions every time (its coverage checks below are then
    // exact); with PROPTEST_CASES set (long runs) every run draws new ones.
    let mut runner = if std::env::var_os("PROPTEST_CASES").is_some() {
        proptest::test_runner::TestRunner::new(config)
    } else {
        let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
        proptest::test_runner::TestRunner::new_with_rng(config, rng)
    };
    // Most sessions begin with a valid `connection_init`, so the messages after it reach the
    // authenticated paths (subscriptions, completes, duplicates) and not only the refusal.
    let strategy = prop::bool::ANY.prop_flat_map(|legacy| {
        (
            Just(legacy),
            prop::bool::weighted(0.8),
            prop::collection::vec(message(legacy), 1..12),
        )
    });
    runner
        .run(&strategy, |(legacy, init, mut script)| {
            let protocol = if legacy {
                "graphql-ws"
            } else {
                "graphql-transport-ws"
            };
            if init {
                let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {TOKEN}")}});
                script.insert(0, Send::Json(init));
            }
            rt.block_on(session(&server, protocol, &script, &seen))
                .map_err(TestCaseError::fail)?;
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    eprintln!("sessions: {seen:?}");
    // The sessions went past the handshake, into operations, and were closed for more than
    // one reason.
    let n = u64::from(cases());
    assert!(seen.acks >= n / 2, "{seen:?}");
    assert!(seen.operation_messages >= n / 20, "{seen:?}");
    assert!(seen.closes.len() >= 3, "{seen:?}");
    rt.block_on(async {
        // Everything released once the clients are gone, and a normal client is served.
        server.wait_empty().await;
        let mut c = connect(server.addr, "graphql-transport-ws").await;
        c.init().await;
        c.subscribe("ok", "subscription { graphChanges { key } }")
            .await;
        server.wait_active(1).await;
        server.state.manager().publish(batch(vec![event(
            weir_events::EntityKind::Node,
            "P",
            "1",
            weir_events::Operation::Created,
        )]));
        let v = c.recv_json().await;
        assert_eq!(v["type"], "next", "{v}");
        assert_eq!(v["payload"]["data"]["graphChanges"]["key"], "1", "{v}");
    });
}
