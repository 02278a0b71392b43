use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use weir_events::fixture::{self, event as ev};
use weir_events::{EVENT_FORMAT_VERSION, JobState, PressureState};

use super::*;

/// Publishes a copy of `b` (the tests build batches by value).
trait PublishRef {
    fn publish_ref(&self, b: &ChangeBatch);
}

impl PublishRef for SubscriptionManager {
    fn publish_ref(&self, b: &ChangeBatch) {
        self.publish(Arc::new(b.clone()));
    }
}

use weir_events::{EntityKind, Operation};

fn batch(events: Vec<ChangeEvent>) -> ChangeBatch {
    fixture::batch("j", "j-1", events)
}

fn progress(job: &str, read: u64, state: JobState) -> ProgressEvent {
    ProgressEvent {
        version: EVENT_FORMAT_VERSION,
        job_id: job.into(),
        state,
        records_read: read,
        records_committed: read,
        records_dead_lettered: 0,
        bytes_read: 0,
        bytes_total: None,
        records_per_sec: 0.0,
        batches_in_flight: 0,
        pressure: PressureState::Normal,
        pressure_ratio: None,
        eta_secs: None,
        elapsed_secs: 0.0,
        error: None,
    }
}

fn changes(labels: &[&str], types: &[&str], keys: &[&str], ops: &[Operation]) -> Topic {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
    Topic::Changes(ChangeFilter {
        labels: s(labels),
        types: s(types),
        keys: s(keys),
        operations: ops.to_vec(),
    })
}

/// Takes what is queued now, without waiting.
fn drain(sub: &mut Subscription) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(Some(d)) = sub.next().now_or_never() {
        out.push(d);
    }
    out
}

fn keys_of(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| match &d.item {
            Item::Change(e) => e.key.clone(),
            Item::Progress(p) => p.job_id.clone(),
        })
        .collect()
}

fn empty(m: &SubscriptionManager) {
    let s = m.snapshot();
    assert_eq!(
        (
            s.subscriptions,
            s.connections_with_subscriptions,
            s.index_keys,
            s.wildcard,
            s.progress_jobs,
            s.expiries,
            s.held_bytes,
            s.filters,
            s.queued_batches
        ),
        (0, 0, 0, 0, 0, 0, 0, 0, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn filter_matches_label_type_key_and_operation() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut person = c
        .subscribe(changes(&["Person"], &[], &[], &[]), Default::default())
        .unwrap();
    let mut knows_created = c
        .subscribe(
            changes(&[], &["KNOWS"], &[], &[Operation::Created]),
            Default::default(),
        )
        .unwrap();
    let mut alice = c
        .subscribe(
            changes(&["Person"], &[], &["alice"], &[]),
            Default::default(),
        )
        .unwrap();
    let mut all = c
        .subscribe(changes(&[], &[], &[], &[]), Default::default())
        .unwrap();
    m.publish_ref(&batch(vec![
        ev(EntityKind::Node, "Person", "alice", Operation::Merged),
        ev(EntityKind::Node, "Person", "bob", Operation::Created),
        ev(EntityKind::Node, "City", "paris", Operation::Created),
        ev(
            EntityKind::Relationship,
            "KNOWS",
            "a->b",
            Operation::Created,
        ),
        ev(
            EntityKind::Relationship,
            "KNOWS",
            "b->c",
            Operation::Updated,
        ),
        // A relationship type named like a label must not reach label subscribers.
        ev(
            EntityKind::Relationship,
            "Person",
            "x->y",
            Operation::Created,
        ),
    ]));
    assert_eq!(keys_of(&drain(&mut person)), ["alice", "bob"]);
    assert_eq!(keys_of(&drain(&mut knows_created)), ["a->b"]);
    assert_eq!(keys_of(&drain(&mut alice)), ["alice"]);
    assert_eq!(drain(&mut all).len(), 6);
    assert_eq!(m.stats().delivered_events, 2 + 1 + 1 + 6);
}

#[tokio::test]
async fn dropping_the_handle_removes_everything() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let subs: Vec<_> = (0..10)
        .map(|i| {
            let topic = if i % 3 == 0 {
                changes(&[], &[], &[], &[])
            } else if i % 3 == 1 {
                changes(&["A", "B"], &["R"], &[], &[])
            } else {
                Topic::Progress {
                    job_id: format!("job{i}"),
                }
            };
            c.subscribe(topic, Default::default()).unwrap()
        })
        .collect();
    let s = m.snapshot();
    assert_eq!(s.subscriptions, 10);
    assert!(s.held_bytes > 0);
    assert_eq!(c.active(), 10);
    drop(subs);
    empty(&m);
    assert_eq!(m.stats().completed_disconnect, 10);
    assert_eq!(m.snapshot().open_connections, 1);
    drop(c);
    assert_eq!(m.snapshot().open_connections, 0);
}

#[tokio::test]
async fn per_connection_and_global_limits_refuse_with_clear_errors() {
    let cfg = ManagerConfig {
        max_per_connection: 2,
        max_total: 3,
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    let (c1, c2) = (m.connect(), m.connect());
    let t = || changes(&["A"], &[], &[], &[]);
    let _a = c1.subscribe(t(), Default::default()).unwrap();
    let _b = c1.subscribe(t(), Default::default()).unwrap();
    let err = c1.subscribe(t(), Default::default()).unwrap_err();
    assert_eq!(err, SubscriptionError::ConnectionLimit { limit: 2 });
    assert!(err.to_string().contains("limit 2"));
    let _c = c2.subscribe(t(), Default::default()).unwrap();
    let err = c2.subscribe(t(), Default::default()).unwrap_err();
    assert_eq!(err, SubscriptionError::GlobalLimit { limit: 3 });
    assert_eq!(m.stats().rejected_limit, 2);
    assert_eq!(m.active(), 3);
}

#[tokio::test(start_paused = true)]
async fn ttl_completes_and_removes_and_is_capped_by_max() {
    let cfg = ManagerConfig {
        default_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(120),
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    let c = m.connect();
    let t = || changes(&["A"], &[], &[], &[]);
    let start = Instant::now();
    let mut short = c
        .subscribe(
            t(),
            SubscribeOptions {
                ttl: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    let default = c.subscribe(t(), Default::default()).unwrap();
    let long = c
        .subscribe(
            t(),
            SubscribeOptions {
                ttl: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(default.expires_at() - start, Duration::from_secs(60));
    assert_eq!(long.expires_at() - start, Duration::from_secs(120));
    // The stream ends when the TTL runs out.
    assert!(short.next().await.is_none());
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
    assert_eq!(short.end_reason(), Some(EndReason::Ttl));
    assert_eq!(m.active(), 2);
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(m.active(), 0);
    assert_eq!(long.end_reason(), Some(EndReason::Ttl));
    assert_eq!(m.stats().completed_ttl, 3);
    drop((short, default, long));
    assert_eq!(m.stats().completed_disconnect, 0);
    empty(&m);
}

#[tokio::test]
async fn a_drained_queue_gives_back_what_a_burst_grew() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut sub = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    // Nothing is allocated for the queue until something is delivered.
    let idle = m.snapshot().held_bytes;
    for i in 0..200 {
        m.publish_ref(&batch(vec![ev(
            EntityKind::Node,
            "A",
            &i.to_string(),
            Operation::Created,
        )]));
    }
    let full = m.snapshot();
    assert_eq!((full.queued_batches, full.queued_items), (200, 200));
    assert!(
        full.held_bytes >= idle + 200 * size_of::<slot::Pending>(),
        "{full:?}"
    );
    assert_eq!(drain(&mut sub).len(), 200);
    let drained = m.snapshot();
    assert_eq!(drained.queued_items, 0);
    assert!(
        drained.held_bytes <= idle + 4 * size_of::<slot::Pending>(),
        "a drained queue still holds {} bytes (idle {idle})",
        drained.held_bytes
    );
    drop(sub);
    empty(&m);
}

#[tokio::test]
async fn a_burst_of_any_size_reaches_every_subscriber_whole() {
    // The failure this replaces: a 1,000-row batch yields thousands of matching changes at
    // once, and a queue of 256 items dropped all but the last 256 before anyone could read.
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut subs: Vec<_> = (0..3)
        .map(|_| {
            c.subscribe(changes(&["A"], &[], &[], &[]), Default::default())
                .unwrap()
        })
        .collect();
    let mut other = c
        .subscribe(changes(&["B"], &[], &[], &[]), Default::default())
        .unwrap();
    let n = 100_000;
    let mut events: Vec<ChangeEvent> = (0..n)
        .map(|i| ev(EntityKind::Node, "A", &i.to_string(), Operation::Merged))
        .collect();
    events.push(ev(EntityKind::Node, "B", "b", Operation::Merged));
    let mut b = batch(events);
    b.assign_seq(1);
    let b = Arc::new(b);
    m.publish(b.clone());
    let snap = m.snapshot();
    assert_eq!(
        snap.queued_batches, 4,
        "one entry per subscription, not one per event"
    );
    assert_eq!(snap.filters, 2, "three subscriptions share one filter");
    for s in &mut subs {
        let got = drain(s);
        assert_eq!(got.len(), n);
        assert!(got.iter().all(|d| d.missed == 0));
        for (i, d) in got.iter().enumerate() {
            let Item::Change(e) = &d.item else { panic!() };
            assert_eq!(
                (e.seq, e.index, e.key.as_str()),
                (1, i as u32, i.to_string().as_str())
            );
        }
        assert_eq!(s.last_delivered(), Some((1, n as u32 - 1)));
    }
    assert_eq!(keys_of(&drain(&mut other)), ["b"]);
    let st = m.stats();
    assert_eq!((st.completed_lagged, st.dropped_events), (0, 0));
    assert_eq!(st.delivered_events, 3 * n as u64 + 1);
    drop((subs, other));
    assert_eq!(
        Arc::strong_count(&b),
        1,
        "nothing keeps the batch after the readers"
    );
    empty(&m);
}

#[tokio::test(start_paused = true)]
async fn a_reader_behind_by_max_lag_is_ended_and_told_where_it_stopped() {
    let cfg = ManagerConfig {
        max_lag: Duration::from_secs(10),
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    let c = m.connect();
    let mut slow = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    let mut fast = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    let mut fast_got = 0;
    for i in 1..=20u64 {
        let mut b = batch(vec![
            ev(EntityKind::Node, "A", &format!("{i}a"), Operation::Created),
            ev(EntityKind::Node, "A", &format!("{i}b"), Operation::Created),
        ]);
        b.assign_seq(i);
        m.publish(Arc::new(b));
        if i == 1 {
            // The slow reader reads one event, then stops reading.
            assert!(matches!(
                slow.next().await,
                Some(Delivery { missed: 0, .. })
            ));
        }
        fast_got += drain(&mut fast).len();
        tokio::time::advance(Duration::from_millis(600)).await;
    }
    assert_eq!(fast_got, 40);
    // 20 × 0.6 s = 12 s: the batch the slow reader is in was published more than 10 s ago.
    tokio::task::yield_now().await;
    assert_eq!(slow.end_reason(), Some(EndReason::Lagged));
    assert_eq!(fast.end_reason(), None, "the reader beside it keeps going");
    assert_eq!(slow.last_delivered(), Some((1, 0)), "where to resume from");
    assert!(slow.next().await.is_none());
    let st = m.stats();
    assert_eq!(st.completed_lagged, 1);
    // Ended at the publish of batch 18 (10.2 s after batch 1): 18 batches of 2, one read.
    assert_eq!(st.dropped_events, 35, "what it had not read is counted");
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_never_reads_is_ended_by_the_periodic_check() {
    let cfg = ManagerConfig {
        max_lag: Duration::from_secs(5),
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    let c = m.connect();
    let sub = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    m.publish_ref(&batch(vec![ev(
        EntityKind::Node,
        "A",
        "1",
        Operation::Created,
    )]));
    // Nothing else is published: the once-a-second check ends it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(sub.end_reason(), Some(EndReason::Lagged));
    drop(sub);
    empty(&m);
}

#[tokio::test]
async fn a_reader_behind_by_max_lag_bytes_is_ended_and_frees_what_it_held() {
    let one = Arc::new(batch(
        (0..50)
            .map(|i| ev(EntityKind::Node, "A", &i.to_string(), Operation::Created))
            .collect(),
    ));
    let bytes = one.approx_bytes() as u64;
    let cfg = ManagerConfig {
        // Three batches may be published after the one being read; the fourth is too many.
        max_lag_bytes: bytes * 3 + bytes / 2,
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    let c = m.connect();
    let slow = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    let mut fast = c
        .subscribe(changes(&[], &[], &[], &[]), Default::default())
        .unwrap();
    for _ in 0..4 {
        m.publish(one.clone());
        assert_eq!(drain(&mut fast).len(), 50);
    }
    assert_eq!(slow.end_reason(), None);
    m.publish(one.clone());
    assert_eq!(slow.end_reason(), Some(EndReason::Lagged));
    assert_eq!(drain(&mut fast).len(), 50);
    assert_eq!(
        Arc::strong_count(&one),
        1,
        "the ended reader's queue no longer holds the batches"
    );
    drop((slow, fast));
    empty(&m);
}

#[tokio::test]
async fn pending_batches_per_subscription_are_bounded() {
    let cfg = ManagerConfig {
        max_pending_batches: 8,
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    let c = m.connect();
    let sub = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    for i in 0..8 {
        m.publish_ref(&batch(vec![ev(
            EntityKind::Node,
            "A",
            &i.to_string(),
            Operation::Created,
        )]));
    }
    assert_eq!(sub.end_reason(), None);
    assert_eq!(m.snapshot().queued_batches, 8);
    m.publish_ref(&batch(vec![ev(
        EntityKind::Node,
        "A",
        "9",
        Operation::Created,
    )]));
    assert_eq!(sub.end_reason(), Some(EndReason::Lagged));
    assert_eq!(m.snapshot().queued_batches, 0);
}

#[tokio::test]
async fn equivalent_filters_are_evaluated_once() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let a = c
        .subscribe(changes(&["B", "A", "A"], &[], &[], &[]), Default::default())
        .unwrap();
    let b = c
        .subscribe(changes(&["A", "B"], &[], &[], &[]), Default::default())
        .unwrap();
    let other = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    assert_eq!(m.snapshot().filters, 2);
    drop(a);
    assert_eq!(m.snapshot().filters, 2);
    drop(b);
    assert_eq!(m.snapshot().filters, 1);
    drop(other);
    empty(&m);
}

#[tokio::test]
async fn shutdown_completes_everything_and_refuses_new() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut subs: Vec<_> = (0..5)
        .map(|_| {
            c.subscribe(changes(&["A"], &[], &[], &[]), Default::default())
                .unwrap()
        })
        .collect();
    m.shutdown();
    for s in &mut subs {
        assert!(s.next().await.is_none());
        assert_eq!(s.end_reason(), Some(EndReason::Shutdown));
    }
    assert_eq!(
        c.subscribe(changes(&[], &[], &[], &[]), Default::default())
            .unwrap_err(),
        SubscriptionError::ShuttingDown
    );
    assert_eq!(m.stats().completed_shutdown, 5);
    empty(&m);
}

#[tokio::test]
async fn a_gap_ends_change_subscriptions_and_keeps_progress_watchers() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut changes = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    let progress = c
        .subscribe(Topic::Progress { job_id: "j".into() }, Default::default())
        .unwrap();
    assert_eq!(m.end_changes(EndReason::Gap), 1);
    assert!(changes.next().await.is_none());
    assert_eq!(changes.end_reason(), Some(EndReason::Gap));
    assert_eq!(progress.end_reason(), None);
    assert_eq!(m.stats().completed_gap, 1);
}

#[tokio::test]
async fn client_end_is_counted_as_client() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut s = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    assert!(m.end(s.id(), EndReason::Client));
    assert!(!m.end(s.id(), EndReason::Client));
    assert!(s.next().await.is_none());
    drop(s);
    let st = m.stats();
    assert_eq!((st.completed_client, st.completed_disconnect), (1, 0));
}

#[tokio::test]
async fn a_panicking_consumer_still_removes_its_subscription() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = Arc::new(m.connect());
    let c2 = c.clone();
    let task = tokio::spawn(async move {
        let _s = c2
            .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
            .unwrap();
        panic!("handler bug");
    });
    assert!(task.await.unwrap_err().is_panic());
    empty(&m);
    assert_eq!(m.stats().completed_disconnect, 1);
}

#[tokio::test]
async fn progress_latest_is_kept_bounded_and_delivered() {
    let cfg = ManagerConfig {
        max_jobs: 3,
        ..ManagerConfig::default()
    };
    let m = SubscriptionManager::new(cfg).unwrap();
    m.publish_progress(progress("a", 1, JobState::Completed));
    m.publish_progress(progress("b", 1, JobState::Running));
    let c = m.connect();
    let mut watch_b = c
        .subscribe(Topic::Progress { job_id: "b".into() }, Default::default())
        .unwrap();
    // The latest snapshot comes first.
    let first = drain(&mut watch_b);
    assert_eq!(first.len(), 1);
    m.publish_progress(progress("b", 2, JobState::Running));
    m.publish_progress(progress("c", 1, JobState::Running));
    m.publish_progress(progress("d", 1, JobState::Running));
    let got = drain(&mut watch_b);
    assert_eq!(got.len(), 1);
    let Item::Progress(p) = &got[0].item else {
        panic!()
    };
    assert_eq!(p.records_read, 2);
    // Bound: 3 jobs; the finished job "a" went first.
    let ids: Vec<String> = m.jobs().iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids, ["d", "c", "b"]);
    m.publish_progress(progress("e", 1, JobState::Running));
    assert_eq!(m.snapshot().jobs, 3);
    assert!(m.job("b").is_none(), "least recently updated goes next");
}

#[tokio::test]
async fn replay_comes_first_and_overlap_is_skipped() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let with_seq = |k: &str, seq| {
        let mut e = ev(EntityKind::Node, "A", k, Operation::Created);
        e.seq = seq;
        e
    };
    let mut replayed = batch(vec![with_seq("r1", 1), with_seq("r2", 2)]);
    replayed.events[1].index = 1;
    let replay = futures::stream::iter(EventRef::all(Arc::new(replayed)));
    let mut s = c
        .subscribe(
            changes(&["A"], &[], &[], &[]),
            SubscribeOptions {
                ttl: None,
                replay: Some(replay.boxed()),
            },
        )
        .unwrap();
    m.publish_ref(&batch(vec![with_seq("dup", 2), with_seq("live", 3)]));
    assert_eq!(keys_of(&drain(&mut s)), ["r1", "r2", "live"]);
}

#[tokio::test]
async fn last_seq_tracks_the_highest_batch_even_without_subscribers() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    assert_eq!(m.last_seq(), 0);
    let mut b = batch(vec![ev(EntityKind::Node, "A", "1", Operation::Created)]);
    b.seq = 7;
    m.publish_ref(&b);
    assert_eq!(m.last_seq(), 7, "recorded with no subscription registered");
    let c = m.connect();
    let _s = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    b.seq = 9;
    m.publish_ref(&b);
    b.seq = 8; // an out-of-order publish never moves it back
    m.publish_ref(&b);
    assert_eq!(m.last_seq(), 9);
}

#[tokio::test]
async fn feed_publishes_until_the_stream_ends() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let c = m.connect();
    let mut s = c
        .subscribe(changes(&["A"], &[], &[], &[]), Default::default())
        .unwrap();
    let batches = futures::stream::iter(vec![
        Arc::new(batch(vec![ev(
            EntityKind::Node,
            "A",
            "1",
            Operation::Created,
        )])),
        Arc::new(batch(vec![ev(
            EntityKind::Node,
            "B",
            "2",
            Operation::Created,
        )])),
        Arc::new(batch(vec![ev(
            EntityKind::Node,
            "A",
            "3",
            Operation::Created,
        )])),
    ]);
    m.feed(batches).await;
    assert_eq!(keys_of(&drain(&mut s)), ["1", "3"]);
}

#[tokio::test]
async fn a_thousand_subscriptions_over_a_hundred_connections_all_go() {
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let conns: Vec<_> = (0..100).map(|_| m.connect()).collect();
    let mut subs = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        for j in 0..10 {
            let label = format!("L{}", (i + j) % 7);
            subs.push(
                c.subscribe(changes(&[&label], &["R"], &[], &[]), Default::default())
                    .unwrap(),
            );
        }
    }
    assert_eq!(m.snapshot().subscriptions, 1000);
    assert_eq!(m.snapshot().connections_with_subscriptions, 100);
    m.publish_ref(&batch(vec![ev(
        EntityKind::Relationship,
        "R",
        "k",
        Operation::Created,
    )]));
    assert_eq!(m.stats().delivered_events, 1000);
    // End them by every path.
    for (i, s) in subs.into_iter().enumerate() {
        if i % 2 == 0 {
            m.end(s.id(), EndReason::Client);
        }
        drop(s);
    }
    drop(conns);
    empty(&m);
    let snap = m.snapshot();
    assert_eq!((snap.open_connections, snap.queued_items), (0, 0));
    let st = m.stats();
    assert_eq!(st.completed_client + st.completed_disconnect, 1000);
}

#[tokio::test]
async fn idle_subscription_footprint_is_small() {
    // The registry's own bytes per idle subscription (entry, slot, filter, index, schedule).
    let m = SubscriptionManager::new(ManagerConfig::default()).unwrap();
    let conns: Vec<_> = (0..100).map(|_| m.connect()).collect();
    let subs: Vec<_> = (0..10_000)
        .map(|i| {
            conns[i % 100]
                .subscribe(
                    changes(&[&format!("Label{}", i % 50)], &[], &[], &[]),
                    Default::default(),
                )
                .unwrap()
        })
        .collect();
    let per_sub = m.snapshot().held_bytes / subs.len();
    eprintln!("registry bytes per idle subscription: {per_sub}");
    assert!(per_sub < 1024, "{per_sub} bytes per idle subscription");
    drop(subs);
    empty(&m);
}
