//! Every committed change reaches every subscriber, at default settings, in both deployments,
//! at a realistic size: 100,000 `weir generate` people (the example mapping: people,
//! companies, WORKS_AT, KNOWS; default 1,000-row batches, whose change events exceed NATS's
//! 1 MiB max payload) uploaded through the job API, watched by real WebSocket clients.
//!
//! - `weir serve` (in-process bus): a client filtered on Person and a client on everything
//!   receive every matching change once, in order, `missed` 0, and the counts equal what the
//!   job committed; a client beside them that reads five messages a second is ended by the
//!   slow-consumer rule (`SLOW_CONSUMER` naming where to resume, close 1008) without touching
//!   the others.
//! - `weir-ingestd` + two `weir-gatewayd` on NATS JetStream: a client on each replica receives
//!   every change once, in order; batches went out in parts.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use weir_test_support::process::{
    ChildProcess, free_port, http_request, http_upload, metric_value, service_env, url_encode,
    workspace_binary,
};
use weir_test_support::ws::{Change, Frame, GraphqlWs, assert_in_order};

use support::*;

/// Reads changes in the background until `want` returns true or nothing came for 60 s.
fn read_in_background(
    mut c: GraphqlWs,
    want: impl FnMut(&[Change]) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<(GraphqlWs, Vec<Change>)> {
    tokio::spawn(async move {
        let got = c.changes_until(Duration::from_secs(60), want).await;
        (c, got)
    })
}

/// Every person key 1..=PEOPLE exactly once.
fn assert_every_person(changes: &[Change], label: &str) {
    let keys: std::collections::BTreeSet<u64> = changes
        .iter()
        .filter(|c| c.label == label)
        .map(|c| c.key.parse().expect("a numeric person key"))
        .collect();
    assert_eq!(keys.len() as u64, PEOPLE, "distinct {label} keys");
    assert_eq!(
        (keys.first().copied(), keys.last().copied()),
        (Some(1), Some(PEOPLE))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_serve_delivers_every_change_of_a_large_ingest_to_every_client() {
    let graph = weir_test_support::graph().await;
    let prefix = format!("{}_", graph.namespace);
    // Not registered with the handle: deleting 200,000 nodes would take minutes; each run's
    // labels are its own.
    let person = format!("{prefix}Person");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), PEOPLE);
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs]\njob_dir = {:?}\nspool_dir = {:?}\n",
            dir.path().join("jobs"),
            dir.path().join("spool")
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "UNUSED")
        .env("WEIR_LOG", "info")
        .args([
            "serve",
            "--api-key",
            KEY,
            "--bind",
            &addr.to_string(),
            "--config",
        ])
        .arg(&config);
    let serve = ChildProcess::spawn(&mut cmd);
    wait_ready(addr, &serve).await;

    let mut people = GraphqlWs::connect(addr, KEY).await;
    people
        .subscribe_changes("p", &format!("labels: [\"{person}\"]"))
        .await;
    let mut everything = GraphqlWs::connect(addr, KEY).await;
    everything.subscribe_changes("all", "").await;
    let mut slow = GraphqlWs::connect(addr, KEY).await;
    slow.subscribe_changes("slow", &format!("labels: [\"{person}\"]"))
        .await;
    wait_subscriptions(addr, 3).await;

    let people = read_in_background(people, |got| got.len() as u64 >= PEOPLE);
    let (p, k, w) = (
        person.clone(),
        format!("{prefix}KNOWS"),
        format!("{prefix}WORKS_AT"),
    );
    let mut counts = [0u64; 3];
    let everything = read_in_background(everything, move |got| {
        // Stop once every person, KNOWS and WORKS_AT change is in (companies come between).
        // Counted as they come: `got` grows by one each call.
        if let Some(last) = got.last()
            && let Some(i) = [&p, &k, &w].iter().position(|l| **l == last.label)
        {
            counts[i] += 1;
        }
        counts.iter().all(|n| *n >= PEOPLE)
    });
    // The slow reader: five messages a second, until the server ends it.
    let slow = tokio::spawn(async move {
        let mut seen: Option<Change> = None;
        let mut told = None;
        let mut close = None;
        let mut fast = false;
        let deadline = tokio::time::Instant::now() + JOB_DEADLINE;
        while tokio::time::Instant::now() < deadline {
            match slow.recv(Duration::from_secs(120)).await {
                Some(Frame::Json(v)) if v["type"] == "next" => {
                    seen = Some(GraphqlWs::change_of(&v));
                }
                Some(Frame::Json(v)) => {
                    let ext = &v["payload"][0]["extensions"];
                    assert_eq!(ext["code"], "SLOW_CONSUMER", "{v}");
                    told = Some((ext["lastSeq"].as_u64(), ext["lastIndex"].as_u64()));
                }
                Some(Frame::Close(code, _)) => {
                    close = Some(code);
                    break;
                }
                Some(Frame::Ended) | None => break,
            }
            if !fast {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Once the server has let it go, read the rest of what reached the socket fast.
            if !fast && get_json(addr, "/health").1["subscriptions"].as_u64() == Some(2) {
                fast = true;
            }
        }
        (seen, told, close)
    });

    let mapping = mapping();
    let path = format!(
        "/jobs/upload?id=feed&label_prefix={}&mapping={}",
        url_encode(&prefix),
        url_encode(&mapping)
    );
    let up = http_upload(addr, &path, Some(KEY), &csv).expect("upload");
    assert_eq!(up.status, 202, "{}", up.text());
    let job = wait_job(addr, "feed").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["records_committed"], PEOPLE, "{job}");

    let (_people, got) = people.await.unwrap();
    assert_eq!(
        got.len() as u64,
        PEOPLE,
        "the Person client got every change"
    );
    assert!(got.iter().all(|c| c.label == person));
    assert_in_order(&got);
    assert_every_person(&got, &person);

    let (_all, got) = everything.await.unwrap();
    assert_in_order(&got);
    let mut by_label = BTreeMap::new();
    for c in &got {
        *by_label.entry(c.label.clone()).or_insert(0u64) += 1;
    }
    for l in [
        person.clone(),
        format!("{prefix}KNOWS"),
        format!("{prefix}WORKS_AT"),
    ] {
        assert_eq!(by_label.get(&l), Some(&PEOPLE), "{l}: {by_label:?}");
    }
    assert!(
        by_label
            .get(&format!("{prefix}Company"))
            .is_some_and(|n| *n >= 1000)
    );
    assert_every_person(&got, &person);
    assert_eq!(graph.count(&person).await, PEOPLE as i64);

    // The slow client was ended by the rule while the others got everything.
    let (seen, told, close) = tokio::time::timeout(Duration::from_secs(300), slow)
        .await
        .expect("the slow client was ended")
        .unwrap();
    let seen = seen.expect("the slow client read something first");
    assert!(
        told.is_some() || close.is_none(),
        "closed without saying why: {close:?}"
    );
    if let Some((seq, index)) = told {
        assert_eq!((seq, index), (Some(seen.seq), Some(seen.index)));
        assert_eq!(close, Some(1008));
    }
    let (_, health) = get_json(addr, "/health");
    assert_eq!(health["subscriptions"], 2, "{health}");
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestd_and_two_gateways_deliver_every_change_of_a_large_ingest() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("FEED");
    let prefix = format!("{}_", graph.namespace);
    let person = format!("{prefix}Person");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), PEOPLE);

    let (ingestd_addr, admin, ingestd) = spawn_ingestd(&stream, dir.path(), &[]);
    let gateways: Vec<_> = (0..2)
        .map(|_| {
            let (addr, _, child) = spawn_gatewayd(&stream, &[]);
            (addr, child)
        })
        .collect();
    wait_ready(ingestd_addr, &ingestd).await;
    let mut readers = Vec::new();
    for (addr, child) in &gateways {
        wait_ready(*addr, child).await;
        let mut c = GraphqlWs::connect(*addr, KEY).await;
        c.subscribe_changes("p", &format!("labels: [\"{person}\"]"))
            .await;
        wait_subscriptions(*addr, 1).await;
        readers.push(read_in_background(c, |got| got.len() as u64 >= PEOPLE));
    }

    submit_file(ingestd_addr, &csv, &prefix, "feed");
    let job = wait_job(ingestd_addr, "feed").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["records_committed"], PEOPLE, "{job}");

    for (i, reader) in readers.into_iter().enumerate() {
        let (_c, got) = reader.await.unwrap();
        assert_eq!(
            got.len() as u64,
            PEOPLE,
            "client on replica {i}; gateway log:\n{}",
            gateways[i].1.stderr()
        );
        assert_in_order(&got);
        assert_every_person(&got, &person);
    }
    // The 1,000-row batches' changes (about 1.3 MB each) went out in parts: most batches
    // (a batch the linger flushes short under load fits one message; 198 of 200 parts were
    // seen once in CI), each in two or more.
    let metrics = http_request(admin, "GET", "/metrics", Some(KEY))
        .unwrap()
        .text();
    let parts = metric_value(&metrics, "weir_bus_parts_published_total").unwrap_or(0.0);
    assert!(parts >= 150.0, "parts published: {parts}");
    assert_eq!(graph.count(&person).await, PEOPLE as i64);
}
