//! The bare baseline: the people CSV pre-parsed into Bolt parameter lists before timing starts,
//! then sent with plain `neo4rs::Graph` as `UNWIND $rows AS row MERGE ...` transactions (one per
//! batch, nodes then relationships: the statements Weir generates for
//! `examples/people/mapping.toml`) by `concurrency` tasks pulling batches from a shared counter.
//!
//! Pre-parsing does what a careful hand-written loader would do once, outside the timed part:
//! typed values, and per batch the rows de-duplicated by key and sorted by key (Weir does the
//! same inside its timed run, so both send the same rows in the same order). Each batch's
//! parameter lists are moved into the driver, not copied (a retry builds them again from the
//! rows), as Weir's writer does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::NaiveDate;
use neo4rs::{BoltList, BoltMap, BoltType, Query};
use serde::{Deserialize, Serialize};

/// The statements of one batch for label/type prefix `p`, in the order Weir runs them.
pub(crate) fn statements(p: &str) -> [String; 4] {
    [
        format!("UNWIND $rows AS row MERGE (n:`{p}Person` {{`id`: row.k0}}) SET n += row.p"),
        format!("UNWIND $rows AS row MERGE (n:`{p}Company` {{`id`: row.k0}}) SET n += row.p"),
        format!(
            "UNWIND $rows AS row MERGE (a:`{p}Person` {{`id`: row.s0}}) MERGE (b:`{p}Company` \
             {{`id`: row.e0}}) MERGE (a)-[r:`{p}WORKS_AT`]->(b) SET r += row.p"
        ),
        format!(
            "UNWIND $rows AS row MERGE (a:`{p}Person` {{`id`: row.s0}}) MERGE (b:`{p}Person` \
             {{`id`: row.e0}}) MERGE (a)-[r:`{p}KNOWS`]->(b) SET r += row.p"
        ),
    ]
}

/// The key constraints Weir creates for the mapping (`GraphWriter::ensure_schema`).
pub(crate) fn constraints(p: &str) -> [String; 2] {
    ["Company", "Person"].map(|l| {
        format!(
            "CREATE CONSTRAINT `weir_{p}{l}_id_key` IF NOT EXISTS FOR (n:`{p}{l}`) \
             REQUIRE n.`id` IS UNIQUE"
        )
    })
}

/// Constraint names, for dropping them after the run.
pub(crate) fn constraint_names(p: &str) -> [String; 2] {
    ["Company", "Person"].map(|l| format!("weir_{p}{l}_id_key"))
}

/// One CSV row of `weir generate`, typed as `examples/people/mapping.toml` types it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct PersonRow {
    pub(crate) person_id: i64,
    name: String,
    email: String,
    age: i64,
    born: NaiveDate,
    score: f64,
    active: bool,
    tags: String,
    pub(crate) company_id: i64,
    company: String,
    since: i64,
    pub(crate) knows_id: i64,
    knows_since: NaiveDate,
}

/// The four parameter lists of one batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct BareBatch {
    /// Rows for each of [`statements`], same order.
    pub(crate) lists: [BoltList; 4],
}

fn map(pairs: Vec<(&str, BoltType)>) -> BoltMap {
    let mut m = BoltMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        m.put(k.into(), v);
    }
    m
}

/// Builds one batch from rows: Person rows by id, Company rows de-duplicated (last wins) by id,
/// WORKS_AT and KNOWS rows de-duplicated by (start, end); each list sorted by key.
pub(crate) fn build_batch(rows: &[PersonRow]) -> BareBatch {
    let mut people: BTreeMap<i64, BoltMap> = BTreeMap::new();
    let mut companies: BTreeMap<i64, BoltMap> = BTreeMap::new();
    let mut works: BTreeMap<(i64, i64), BoltMap> = BTreeMap::new();
    let mut knows: BTreeMap<(i64, i64), BoltMap> = BTreeMap::new();
    for r in rows {
        let tags: BoltList = r
            .tags
            .split(';')
            .filter(|t| !t.is_empty())
            .map(BoltType::from)
            .collect::<Vec<_>>()
            .into();
        let p = map(vec![
            ("name", BoltType::from(r.name.as_str())),
            ("email", BoltType::from(r.email.as_str())),
            ("age", BoltType::from(r.age)),
            ("born", BoltType::from(r.born)),
            ("score", BoltType::from(r.score)),
            ("active", BoltType::from(r.active)),
            ("tags", BoltType::List(tags)),
        ]);
        people.insert(
            r.person_id,
            map(vec![
                ("k0", BoltType::from(r.person_id)),
                ("p", BoltType::Map(p)),
            ]),
        );
        companies.insert(
            r.company_id,
            map(vec![
                ("k0", BoltType::from(r.company_id)),
                (
                    "p",
                    BoltType::Map(map(vec![("name", BoltType::from(r.company.as_str()))])),
                ),
            ]),
        );
        works.insert(
            (r.person_id, r.company_id),
            map(vec![
                ("s0", BoltType::from(r.person_id)),
                ("e0", BoltType::from(r.company_id)),
                (
                    "p",
                    BoltType::Map(map(vec![("since", BoltType::from(r.since))])),
                ),
            ]),
        );
        knows.insert(
            (r.person_id, r.knows_id),
            map(vec![
                ("s0", BoltType::from(r.person_id)),
                ("e0", BoltType::from(r.knows_id)),
                (
                    "p",
                    BoltType::Map(map(vec![("since", BoltType::from(r.knows_since))])),
                ),
            ]),
        );
    }
    let list = |v: Vec<BoltMap>| -> BoltList {
        v.into_iter().map(BoltType::Map).collect::<Vec<_>>().into()
    };
    BareBatch {
        lists: [
            list(people.into_values().collect()),
            list(companies.into_values().collect()),
            list(works.into_values().collect()),
            list(knows.into_values().collect()),
        ],
    }
}

/// Reads the whole CSV (header row) into typed rows.
pub(crate) fn read_rows(path: &Path) -> anyhow::Result<Vec<PersonRow>> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, r) in rdr.deserialize().enumerate() {
        out.push(r.with_context(|| format!("{} row {}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// Parameters of one bare run (the hidden `bare` subcommand).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BareArgs {
    /// The people CSV (`weir generate`).
    #[arg(long)]
    pub(crate) csv: std::path::PathBuf,
    /// Label/type prefix.
    #[arg(long)]
    pub(crate) prefix: String,
    /// Rows per batch (one transaction each).
    #[arg(long)]
    pub(crate) batch_size: usize,
    /// Batches in flight.
    #[arg(long)]
    pub(crate) concurrency: usize,
    /// Leave Nagle's algorithm on, as neo4rs does. By default the loop switches it off
    /// (`TCP_NODELAY`, like Weir's pool): with it on, every statement larger than neo4rs's
    /// 8 KiB write buffer waits for the server's delayed ACK.
    #[arg(long)]
    pub(crate) nagle: bool,
}

/// What a bare run reports on stdout (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct BareReport {
    /// CSV rows sent.
    pub(crate) rows: u64,
    /// Transactions committed.
    pub(crate) batches: u64,
    /// Failed attempts that were retried.
    pub(crate) retries: u64,
    /// Seconds spent reading and pre-parsing the CSV (not timed).
    pub(crate) parse_secs: f64,
    /// Seconds from the first batch sent to the last commit (the timed part).
    pub(crate) secs: f64,
}

/// Wait after failed attempt `attempt` (1-based): the pipeline's default policy (100 ms
/// doubling, capped at 10 s, up to 50 % jitter).
fn backoff(attempt: u32, unit: f64) -> Duration {
    let base = 0.1 * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64(base.min(10.0) * (1.0 - 0.5 * unit.clamp(0.0, 1.0)))
}

/// A cheap jitter source (no `rand` dependency): the low bits of the clock.
fn jitter_unit() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1000) / 1000.0
}

/// Most attempts per batch before the bare loop gives up (ArcadeDB answers concurrent MERGE
/// batches with DeadlockDetected / ConstraintValidationFailed; both succeed on a retry).
const MAX_ATTEMPTS: u32 = 12;

/// One transaction: the batch's lists are handed to the driver as they are (not copied).
async fn write_one(graph: &neo4rs::Graph, stmts: &[String; 4], b: BareBatch) -> anyhow::Result<()> {
    let mut txn = graph.start_txn().await?;
    for (q, rows) in stmts.iter().zip(b.lists) {
        if rows.is_empty() {
            continue;
        }
        let q = Query::new(q.clone()).param("rows", BoltType::List(rows));
        if let Err(e) = txn.run(q).await {
            let _ = txn.rollback().await;
            return Err(e.into());
        }
    }
    txn.commit().await.map(|_| ())?;
    Ok(())
}

/// Runs the bare loop (the `bare` subcommand) and returns its report.
pub(crate) async fn run(
    args: &BareArgs,
    settings: &weir_config::GraphSettings,
) -> anyhow::Result<BareReport> {
    if args.batch_size == 0 || args.concurrency == 0 {
        bail!("--batch-size and --concurrency must be at least 1");
    }
    let t = Instant::now();
    let rows = Arc::new(read_rows(&args.csv)?);
    // Each batch is taken (moved into the driver) by its first attempt; a retry builds it
    // again from the rows.
    let batches: Arc<Vec<std::sync::Mutex<Option<BareBatch>>>> = Arc::new(
        rows.chunks(args.batch_size)
            .map(|c| std::sync::Mutex::new(Some(build_batch(c))))
            .collect(),
    );
    let n_rows = rows.len() as u64;
    let parse_secs = t.elapsed().as_secs_f64();

    // Fails loudly, with the start hint, when the server is not there.
    weir_test_support::try_connect_graph(settings)
        .await
        .map_err(anyhow::Error::msg)?;
    let graph = neo4rs::Graph::connect(weir_test_support::graph_config(
        settings,
        args.concurrency + 1,
    ))?;
    for c in constraints(&args.prefix) {
        graph
            .run(Query::new(c))
            .await
            .context("creating key constraints")?;
    }
    // Open every connection the loop will use before the clock starts (neo4rs connects
    // lazily), so Nagle can be switched off on all of them.
    let txns = futures::future::try_join_all((0..args.concurrency).map(|_| graph.start_txn()))
        .await
        .context("opening connections")?;
    for t in txns {
        t.rollback().await?;
    }
    let peers = weir_pool::nodelay::resolve_bolt_peers(&settings.uri).await?;
    if !args.nagle {
        weir_pool::nodelay::disable_nagle_to(&peers)?;
    }
    let stmts = Arc::new(statements(&args.prefix));
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (graph, stmts, batches, rows, next, retries) = (
            graph.clone(),
            stmts.clone(),
            batches.clone(),
            rows.clone(),
            next.clone(),
            retries.clone(),
        );
        let batch_size = args.batch_size;
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = batches.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let mut attempt = 1;
                loop {
                    let b = slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .unwrap_or_else(|| {
                            let start = i * batch_size;
                            build_batch(&rows[start..(start + batch_size).min(rows.len())])
                        });
                    match write_one(&graph, &stmts, b).await {
                        Ok(()) => break,
                        Err(_) if attempt < MAX_ATTEMPTS => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(backoff(attempt, jitter_unit())).await;
                            attempt += 1;
                        }
                        Err(e) => {
                            return Err(e.context(format!("batch {i}: {attempt} attempts")));
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    let states = weir_pool::nodelay::nodelay_of_sockets_to(&peers)?;
    if states.contains(&args.nagle) {
        bail!(
            "Nagle was meant to be {} on every connection; TCP_NODELAY per socket: {states:?}",
            if args.nagle { "on" } else { "off" }
        );
    }
    Ok(BareReport {
        rows: n_rows,
        batches: batches.len() as u64,
        retries: retries.load(Ordering::Relaxed),
        parse_secs,
        secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "person_id,name,email,age,born,score,active,tags,company_id,company,since,knows_id,knows_since
2,Ada Abe,ada.abe2@example.com,30,1995-03-04,12.5,true,rust;graph,7,Fox Labs,2010,1,2012-05-01
1,Ben Fox,ben.fox1@example.com,41,1984-11-20,99.01,false,ops,7,Fox Labs,2003,2,2019-01-01
";

    fn rows() -> Vec<PersonRow> {
        // One directory per call: the tests run on parallel threads of one process.
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weir-bench-bare-{}-{}",
            std::process::id(),
            CALLS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.csv");
        std::fs::write(&p, CSV).unwrap();
        let r = read_rows(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn csv_is_typed_like_the_mapping() {
        let r = rows();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].person_id, 2);
        assert_eq!(r[0].born, NaiveDate::from_ymd_opt(1995, 3, 4).unwrap());
        assert!(r[0].active && !r[1].active);
        assert_eq!(r[1].score, 99.01);
        assert_eq!(
            r[1].knows_since,
            NaiveDate::from_ymd_opt(2019, 1, 1).unwrap()
        );
    }

    #[test]
    fn batch_dedups_and_sorts_by_key() {
        let b = build_batch(&rows());
        let lens: Vec<usize> = b.lists.iter().map(BoltList::len).collect();
        // Two people, one company (7, twice), two WORKS_AT, two KNOWS.
        assert_eq!(lens, vec![2, 1, 2, 2]);
        let key = |t: &BoltType, k: &str| match t {
            BoltType::Map(m) => match m.value.get(k) {
                Some(BoltType::Integer(i)) => i.value,
                other => panic!("{k}: {other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let people: Vec<i64> = b.lists[0].value.iter().map(|t| key(t, "k0")).collect();
        assert_eq!(people, vec![1, 2]);
        let knows: Vec<(i64, i64)> = b.lists[3]
            .value
            .iter()
            .map(|t| (key(t, "s0"), key(t, "e0")))
            .collect();
        assert_eq!(knows, vec![(1, 2), (2, 1)]);
        let BoltType::Map(p0) = &b.lists[0].value[1] else {
            panic!()
        };
        let Some(BoltType::Map(props)) = p0.value.get("p") else {
            panic!()
        };
        assert!(matches!(props.value.get("tags"), Some(BoltType::List(l)) if l.len() == 2));
        assert!(matches!(props.value.get("born"), Some(BoltType::Date(_))));
        assert_eq!(props.value.len(), 7);
    }

    #[test]
    fn statements_are_prefixed_and_parameterised() {
        let s = statements("x1_");
        assert_eq!(
            s[0],
            "UNWIND $rows AS row MERGE (n:`x1_Person` {`id`: row.k0}) SET n += row.p"
        );
        assert!(s[3].contains("MERGE (a)-[r:`x1_KNOWS`]->(b) SET r += row.p"));
        assert!(constraints("x1_")[1].starts_with("CREATE CONSTRAINT `weir_x1_Person_id_key`"));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(50));
    }
}
