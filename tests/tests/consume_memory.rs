//! `weir consume` under a tight `--memory-limit`: wide records (2 KB each) push the process
//! over the high watermark, the pipeline's intake pauses and the worker stops pulling; it
//! resumes (below the low watermark, or once the pipeline has drained and the usage left is
//! taken as a floor) and the run ends with exactly the graph of the file, nothing pending.
//!
//! The evidence is what the worker exposes: `weir_stream_backpressure_active` on its
//! `/metrics` (1 while paused), `weir_consumer_messages_received_total` flat meanwhile, and the
//! pipeline's "intake paused" / "intake resumed" log lines.

mod consumers;

use std::net::SocketAddr;
use std::time::Duration;

use consumers::*;
use tokio::time::Instant;
use weir_test_support::process::{free_port, http_request};

const PEOPLE: u64 = 20_000;
/// A debug `weir consume` holds about 28 MB before it reads anything (55-70 % of this), and
/// pulling 4 MiB at a time of 2 KB records takes it past 80 % within a second.
const LIMIT: &str = "40MiB";

/// One scrape of the worker: (backpressure active, messages received, records committed).
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    paused: bool,
    received: f64,
    committed: f64,
}

fn scrape(metrics: SocketAddr) -> Option<Sample> {
    let text = http_request(metrics, "GET", "/metrics", None).ok()?.text();
    let value = |name: &str| {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse::<f64>().ok()).flatten()
        })
    };
    Some(Sample {
        at: Instant::now(),
        paused: value("weir_stream_backpressure_active")? == 1.0,
        received: value(&format!(
            "weir_consumer_messages_received_total{{consumer=\"{CONSUMER}\"}}"
        ))?,
        committed: value("weir_stream_records_committed_total")?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_memory_limit_pauses_pulling_and_the_run_still_completes() {
    let graph = weir_test_support::graph().await;
    let rig = Rig::new(&graph);
    let (data, lines) = rig.generate_with(PEOPLE, &["--pad", "2000"]);
    let want = expected_counts(lines.iter().map(String::as_str));
    assert!(
        rig.publish(&data)
            .contains(&format!("published {PEOPLE} records"))
    );

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut worker = rig.worker(
        "a",
        "30s",
        Some(metrics),
        &["--memory-limit", LIMIT],
        "warn,weir_stream=info",
    );
    let workers = [("a", &worker, Some(metrics))];

    // Scrape every 100 ms until everything is committed.
    let mut samples: Vec<Sample> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = scrape(metrics) {
            samples.push(s);
            if s.committed >= PEOPLE as f64 {
                break;
            }
        }
        rig.assert_alive(&workers, &["a"]).await;
        if Instant::now() >= deadline {
            panic!("not committed within 300 s{}", rig.report(&workers).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.wait_drained(PEOPLE, Duration::from_secs(60), &workers, &["a"])
        .await;
    let shown = || {
        samples
            .iter()
            .map(|s| {
                format!(
                    "{:>6.1}s paused={} received={} committed={}",
                    (s.at - samples[0].at).as_secs_f64(),
                    u8::from(s.paused),
                    s.received,
                    s.committed
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Paused: a stretch of at least 1 s of scrapes all showing backpressure during which the
    // worker pulled nothing (the gauge follows progress events sent once a second, so the
    // stretch's ends may be late; its middle is not).
    let paused_flat = (0..samples.len()).filter(|&i| samples[i].paused).any(|i| {
        samples[i..].iter().take_while(|s| s.paused).any(|s| {
            s.at - samples[i].at >= Duration::from_secs(1) && s.received == samples[i].received
        })
    });
    assert!(
        paused_flat,
        "no pause of pulling seen under {LIMIT}:\n{}{}",
        shown(),
        rig.report(&workers).await
    );
    // Resumed: after the first pause, a scrape without backpressure and more received.
    let first_pause = samples.iter().position(|s| s.paused).unwrap();
    let resumed = samples[first_pause..]
        .iter()
        .any(|s| !s.paused && s.received > samples[first_pause].received);
    assert!(resumed, "pulling never resumed:\n{}", shown());
    let log = worker.stderr();
    for line in [
        "memory pressure high: intake paused",
        "memory pressure back to normal: intake resumed",
    ] {
        assert!(log.contains(line), "no \"{line}\" in\n{log}");
    }

    // Exactly the file's graph, nothing dead-lettered, nothing left on the consumer.
    let have = rig.graph_counts(&graph).await;
    assert_eq!(have, want);
    assert!(rig.dead_letters(&["a"]).is_empty());
    kill(&worker, "TERM");
    let status = worker.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", worker.stderr());
    let info = rig.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    eprintln!(
        "{} scrapes, {} with backpressure active; the pipeline's lines:\n{}",
        samples.len(),
        samples.iter().filter(|s| s.paused).count(),
        worker
            .lines()
            .iter()
            .filter(|l| l.contains("intake") || l.contains("low watermark"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `--exit-when-idle` counts only time the worker could have read: a pause on memory pressure
/// reads nothing by choice, and messages still on the server mean work is left. A worker that
/// took its pauses for idleness stopped with most of the stream unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_does_not_stop_a_worker_paused_on_memory_pressure() {
    let graph = weir_test_support::graph().await;
    let rig = Rig::new(&graph);
    let (data, lines) = rig.generate_with(PEOPLE, &["--pad", "2000"]);
    let want = expected_counts(lines.iter().map(String::as_str));
    assert!(
        rig.publish(&data)
            .contains(&format!("published {PEOPLE} records"))
    );
    let mut worker = rig.worker(
        "a",
        "30s",
        None,
        &["--memory-limit", LIMIT, "--exit-when-idle", "1s"],
        "warn,weir_stream=info",
    );
    let status = worker.wait(Duration::from_secs(300));
    let log = worker.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("memory pressure high: intake paused"),
        "the worker never paused, so this run shows nothing:\n{log}"
    );
    let have = rig.graph_counts(&graph).await;
    assert_eq!(have, want, "stopped early:\n{log}");
    let info = rig.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
}
