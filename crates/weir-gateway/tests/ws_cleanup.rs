//! 1,000 subscriptions over 100 connections, ended every way (client complete, client close,
//! TCP drop without close, server-side TTL): the registry and every per-connection structure
//! are empty afterwards (asserted exactly, including the registry's held-bytes count), and the
//! process RSS plateaus after a few warm-up rounds (memory is reused, not accumulated).

mod common;

use common::*;
use serde_json::json;
use weir_memwatch::procfs::Process;

const CONNECTIONS: usize = 100;
const PER_CONNECTION: usize = 10;

async fn round(server: &Server) {
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut c = connect(server.addr, "graphql-transport-ws").await;
        c.init().await;
        // A quarter of the connections get a 3 s TTL: the server ends those. (1 s ran out
        // before all 100 connections had subscribed in a loaded parallel test run.)
        let ttl = if i % 4 == 3 { ", ttlSeconds: 3" } else { "" };
        for j in 0..PER_CONNECTION {
            let label = format!("L{}", (i + j) % 13);
            c.subscribe(
                &j.to_string(),
                &format!(
                    r#"subscription {{ graphChanges(labels: ["{label}"], types: ["R"]{ttl}) {{ key }} }}"#
                ),
            )
            .await;
        }
        clients.push(c);
    }
    server.wait_active(CONNECTIONS * PER_CONNECTION).await;
    let snap = server.state.manager().snapshot();
    assert_eq!(snap.connections_with_subscriptions, CONNECTIONS);
    assert!(snap.held_bytes > 0);
    // Every subscription gets an event (all of them watch type R).
    server.state.manager().publish(batch(vec![event(
        weir_events::EntityKind::Relationship,
        "R",
        "a->b",
        weir_events::Operation::Created,
    )]));
    for (i, mut c) in clients.into_iter().enumerate() {
        match i % 4 {
            0 => {
                // Read the ten events, complete each operation, then a clean close handshake.
                for _ in 0..PER_CONNECTION {
                    assert_eq!(c.recv_json().await["type"], "next");
                }
                for j in 0..PER_CONNECTION {
                    c.send(json!({"type": "complete", "id": j.to_string()}))
                        .await;
                }
                c.ws.close(None).await.unwrap();
                assert!(matches!(c.recv().await, Frame::Close(..) | Frame::Ended));
            }
            1 => {
                // Close without completing (unread events still queued on the socket).
                c.ws.close(None).await.unwrap();
            }
            2 => c.drop_tcp(),
            _ => {
                // Server-side TTL: ten `complete`s arrive, then the client leaves.
                let mut completes = 0;
                while completes < PER_CONNECTION {
                    let m = c.recv_json().await;
                    if m["type"] == "complete" {
                        completes += 1;
                    }
                }
                c.drop_tcp();
            }
        }
    }
    server.wait_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_empties_the_registry_and_memory_is_reused() {
    let server = serve(config()).await;
    round(&server).await;
    let stats = server.state.manager().stats();
    assert_eq!(stats.created, 1000);
    assert_eq!(stats.active, 0);
    assert_eq!(stats.completed_ttl, 250);
    assert_eq!(stats.completed_client, 250);
    assert_eq!(stats.completed_disconnect, 500);
    assert_eq!(stats.delivered_events, 1000);
    // Warm-up: glibc's per-thread arenas and the runtime's buffers (clients and server share
    // this process) take a few rounds to reach their working size; then RSS must plateau.
    let mut rss = Vec::new();
    for _ in 0..5 {
        round(&server).await;
        rss.push(weir_memwatch::procfs::rss_bytes(Process::Current).unwrap());
    }
    // RSS swings by ~15 MiB as glibc trims or keeps its arenas, so compare peaks: the peak of
    // the last two rounds may not exceed the peak of the first three by more than 16 MiB (8 MiB
    // failed once in a full parallel run on the 2-core machine).
    let baseline = rss[..3].iter().copied().max().unwrap();
    let after = rss[3..].iter().copied().max().unwrap();
    let growth = after.saturating_sub(baseline);
    // Generous on purpose. The exact check is `held_bytes == 0` (and every map empty) in `wait_empty`.
    assert!(
        growth < 16 << 20,
        "RSS kept growing over identical rounds: {rss:?}"
    );
    assert_eq!(server.state.manager().stats().created, 6000);
}
