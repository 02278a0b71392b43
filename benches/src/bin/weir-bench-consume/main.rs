//! `weir-bench-consume`: `weir consume` (records streamed through NATS JetStream, and through a
//! Kafka topic) against `weir ingest` of the same records from a file, on the same graph server,
//! in one invocation; and one consume worker against two.
//!
//! Every run writes `weir generate` people (JSON Lines, the example mapping, default 1,000-record
//! batches) under a label prefix of its own, then deletes them. The variants alternate in a
//! rotating order so that a slow phase of the shared machine does not land on one of them:
//!
//! - `ingest`: `weir ingest FILE`, timed from spawn to exit;
//! - `consume ×k`: the file is first published to a fresh stream (not timed; one record per
//!   message, `weir publish` defaults), then `k` workers share one durable consumer, timed from
//!   spawn until the consumer has nothing pending and nothing unacknowledged (every message's
//!   records committed), read from the server every 100 ms; then the workers get SIGTERM.
//! - `kafka ×k` (with `--kafka-brokers`, default `KAFKA_BROKERS`; `--no-kafka` leaves them
//!   out): the file is first published to a fresh 3-partition topic (not timed; one record per
//!   message keyed by `person_id`), then `k` workers share one consumer group, timed from spawn
//!   until the group's committed offset of every partition is its high watermark (read every
//!   100 ms); then the workers get SIGTERM.
//!
//! Each run checks the graph holds exactly the file's nodes and relationships.
//!
//! ```text
//! cargo build --release -p weir-cli -p weir-benches
//! target/release/weir-bench-consume --people 100000 --runs 3
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use neo4rs::{Graph, Query};
use weir_benches::stats::median;
use weir_benches::table::Table;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "weir-bench-consume",
    about = "weir consume (JetStream) vs weir ingest (file) on the same server, and 1 vs 2 consume workers (127.0.0.1 only)."
)]
struct Cli {
    /// People to write per run (`weir generate`; the file is cached in the data directory).
    #[arg(long, default_value_t = 100_000)]
    people: u64,
    /// Runs of each variant.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory of the release binaries (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the generated data goes.
    #[arg(long, default_value = "target/bench-data")]
    data_dir: PathBuf,
    /// Where the results section goes.
    #[arg(long, default_value = "benches/results/consume.md")]
    results: PathBuf,
    /// Kafka bootstrap brokers for the Kafka variants. Default: `KAFKA_BROKERS` (`.weir/env`).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Leave the Kafka variants out.
    #[arg(long)]
    no_kafka: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Ingest,
    Consume(usize),
    Kafka(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Ingest => "weir ingest (file)".into(),
            Self::Consume(k) => format!("weir consume ×{k} (JetStream)"),
            Self::Kafka(k) => format!("weir consume ×{k} (Kafka)"),
        }
    }
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn settings() -> weir_config::ServiceSettings {
    weir_config::ServiceSettings::from_env().expect("settings (.weir/env or NEO4J_*, NATS_URL)")
}

fn env(cmd: &mut Command, s: &weir_config::ServiceSettings) {
    cmd.env("NEO4J_URI", &s.graph.uri)
        .env("NEO4J_USER", &s.graph.user)
        .env("NEO4J_PASSWORD", s.graph.password.expose())
        .env("NEO4J_DATABASE", &s.graph.database)
        .env("NATS_URL", &s.nats.url)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

async fn count(graph: &Graph, q: &str) -> anyhow::Result<u64> {
    let mut rows = graph
        .execute(Query::new(q.to_owned()))
        .await
        .context(q.to_owned())?;
    let row = rows.next().await?.context("no row")?;
    Ok(row.get::<i64>("c")?.max(0) as u64)
}

/// (nodes, relationships) under `prefix`.
async fn counts(graph: &Graph, prefix: &str) -> anyhow::Result<(u64, u64)> {
    let mut n = 0;
    for l in ["Person", "Company"] {
        n += count(
            graph,
            &format!("MATCH (n:`{prefix}{l}`) RETURN count(n) AS c"),
        )
        .await?;
    }
    let mut r = 0;
    for t in ["WORKS_AT", "KNOWS"] {
        r += count(
            graph,
            &format!("MATCH ()-[r:`{prefix}{t}`]->() RETURN count(r) AS c"),
        )
        .await?;
    }
    Ok((n, r))
}

async fn delete_all(graph: &Graph, prefix: &str) -> anyhow::Result<()> {
    for t in ["WORKS_AT", "KNOWS"] {
        let q = format!(
            "MATCH ()-[r:`{prefix}{t}`]->() WITH r LIMIT 5000 DELETE r RETURN count(*) AS c"
        );
        while count(graph, &q).await? > 0 {}
    }
    for l in ["Person", "Company"] {
        let q = format!(
            "MATCH (n:`{prefix}{l}`) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS c"
        );
        while count(graph, &q).await? > 0 {}
    }
    Ok(())
}

/// Waits until the consumer has delivered everything and every delivery is acknowledged.
async fn drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Ok(s) = js.get_stream(stream).await
            && let Ok(mut c) = s
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer)
                .await
            && let Ok(info) = c.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{stream}/{consumer} never drained");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the group's committed offsets of the topic's `partitions` add up to `messages`
/// (offsets start at 0 and are contiguous; tansu's high watermark lags the end, so it is not
/// used).
fn kafka_drained(
    brokers: &str,
    topic: &str,
    group: &str,
    partitions: i32,
    messages: i64,
) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let mut total = 0;
        if let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(10)) {
            for p in 0..partitions {
                if let Some(rdkafka::Offset::Offset(o)) =
                    committed.find_partition(topic, p).map(|e| e.offset())
                {
                    total += o;
                }
            }
        }
        if total == messages {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{topic}/{group} never committed to the end");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable's directory")?
            .to_owned(),
    };
    let weir = bin_dir.join("weir");
    anyhow::ensure!(
        weir.is_file(),
        "{} missing: cargo build --release -p weir-cli",
        weir.display()
    );
    let s = settings();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mapping = root.join("examples/people/mapping-jsonl.toml");
    std::fs::create_dir_all(&cli.data_dir)?;
    let data = cli.data_dir.join(format!("people-{}.jsonl", cli.people));
    if !data.is_file() {
        let st = Command::new(&weir)
            .args([
                "generate",
                "--format",
                "jsonl",
                "--people",
                &cli.people.to_string(),
                "--out",
            ])
            .arg(&data)
            .status()?;
        anyhow::ensure!(st.success(), "weir generate failed");
    }
    let graph = Graph::connect(weir_test_support::graph_config(&s.graph, 2))?;
    let nats = async_nats::connect(&s.nats.url).await?;
    let js = async_nats::jetstream::new(nats);
    let run_id = std::process::id();

    // The expected graph: one clean ingest.
    let kafka = if cli.no_kafka {
        None
    } else {
        Some(
            cli.kafka_brokers
                .clone()
                .or_else(|| std::env::var("KAFKA_BROKERS").ok())
                .context("--kafka-brokers or KAFKA_BROKERS (./scripts/dev.sh up), or --no-kafka")?,
        )
    };
    let mut variants = vec![Variant::Ingest, Variant::Consume(1), Variant::Consume(2)];
    if kafka.is_some() {
        variants.extend([Variant::Kafka(1), Variant::Kafka(2)]);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut expected: Option<(u64, u64)> = None;
    for run in 0..cli.runs {
        for k in 0..variants.len() {
            let vi = (run + k) % variants.len();
            let v = variants[vi];
            let prefix = format!("B{run_id}_{run}_{vi}_");
            let (secs, got) = match v {
                Variant::Ingest => {
                    let mut cmd = Command::new(&weir);
                    env(&mut cmd, &s);
                    cmd.arg("ingest")
                        .arg(&data)
                        .arg("--mapping")
                        .arg(&mapping)
                        .args(["--label-prefix", &prefix, "--progress", "none"]);
                    let t = Instant::now();
                    let st = cmd.status()?;
                    let secs = t.elapsed().as_secs_f64();
                    anyhow::ensure!(st.success(), "weir ingest failed");
                    (secs, counts(&graph, &prefix).await?)
                }
                Variant::Consume(workers) => {
                    let stream = format!("BENCH_{run_id}_{run}_{vi}");
                    let subject = format!("bench.{run_id}.{run}.{vi}");
                    let mut cmd = Command::new(&weir);
                    env(&mut cmd, &s);
                    let st = cmd
                        .args(["publish", "--stream", &stream, "--subject", &subject])
                        .arg(&data)
                        .status()?;
                    anyhow::ensure!(st.success(), "weir publish failed");
                    let t = Instant::now();
                    let mut children = Killed(Vec::new());
                    for _ in 0..workers {
                        let mut cmd = Command::new(&weir);
                        env(&mut cmd, &s);
                        cmd.args([
                            "consume",
                            "--stream",
                            &stream,
                            "--subject",
                            &subject,
                            "--consumer",
                            "bench",
                            "--label-prefix",
                            &prefix,
                            "--progress",
                            "none",
                            "--quiet",
                        ])
                        .arg("--mapping")
                        .arg(&mapping);
                        children.0.push(cmd.spawn()?);
                    }
                    drained(&js, &stream, "bench").await?;
                    let secs = t.elapsed().as_secs_f64();
                    for c in &children.0 {
                        let _ = Command::new("kill")
                            .args(["-TERM", &c.id().to_string()])
                            .status();
                    }
                    for c in &mut children.0 {
                        let st = c.wait()?;
                        anyhow::ensure!(st.success(), "weir consume exited with {st}");
                    }
                    children.0.clear();
                    let _ = js.delete_stream(&stream).await;
                    (secs, counts(&graph, &prefix).await?)
                }
                Variant::Kafka(workers) => {
                    let brokers = kafka.clone().context("Kafka brokers")?;
                    let topic = format!("bench-{run_id}-{run}-{vi}");
                    let mut cmd = Command::new(&weir);
                    env(&mut cmd, &s);
                    let st = cmd
                        .env("KAFKA_BROKERS", &brokers)
                        .args(["publish", "--topic", &topic, "--partitions", "3"])
                        // One message per batch: tansu skips the rest of a batch when a
                        // fetch starts inside it (see tests/tests/kafka_rig).
                        .args(["--key-field", "person_id", "-X", "batch.num.messages=1"])
                        .arg(&data)
                        .status()?;
                    anyhow::ensure!(st.success(), "weir publish --topic failed");
                    let t = Instant::now();
                    let mut children = Killed(Vec::new());
                    for _ in 0..workers {
                        let mut cmd = Command::new(&weir);
                        env(&mut cmd, &s);
                        cmd.env("KAFKA_BROKERS", &brokers)
                            // A group of its own per topic: tansu 0.6.0 left a new member
                            // of a group reused across topics with no partitions (it read
                            // nothing for minutes after the previous variant's workers left).
                            .args(["consume", "--topic", &topic, "--group", &topic])
                            .args(["--label-prefix", &prefix, "--progress", "none", "--quiet"])
                            .arg("--mapping")
                            .arg(&mapping);
                        children.0.push(cmd.spawn()?);
                    }
                    let messages = i64::try_from(cli.people)?;
                    let (b, tp) = (brokers.clone(), topic.clone());
                    tokio::task::spawn_blocking(move || kafka_drained(&b, &tp, &tp, 3, messages))
                        .await??;
                    let secs = t.elapsed().as_secs_f64();
                    for c in &children.0 {
                        let _ = Command::new("kill")
                            .args(["-TERM", &c.id().to_string()])
                            .status();
                    }
                    for c in &mut children.0 {
                        let st = c.wait()?;
                        anyhow::ensure!(st.success(), "weir consume --topic exited with {st}");
                    }
                    children.0.clear();
                    (secs, counts(&graph, &prefix).await?)
                }
            };
            match expected {
                None => expected = Some(got),
                Some(e) => anyhow::ensure!(
                    e == got,
                    "{}: {got:?} nodes/relationships, a clean run gives {e:?}",
                    v.name()
                ),
            }
            eprintln!(
                "run {run} {:<28} {:>7.1} s  {:>8.0} records/s  {got:?}",
                v.name(),
                secs,
                cli.people as f64 / secs
            );
            times[vi].push(secs);
            delete_all(&graph, &prefix).await?;
        }
    }

    let med: Vec<f64> = times
        .iter()
        .map(|t| median(t).unwrap_or(f64::NAN))
        .collect();
    let mut table = Table::new(["variant", "median s", "records/s", "vs ingest", "runs (s)"]);
    for (i, v) in variants.iter().enumerate() {
        table.row([
            v.name(),
            format!("{:.1}", med[i]),
            format!("{:.0}", cli.people as f64 / med[i]),
            format!("{:.2}×", med[0] / med[i]),
            times[i]
                .iter()
                .map(|t| format!("{t:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    let (nodes, rels) = expected.unwrap_or_default();
    let load = weir_memwatch::procfs::load_average()
        .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
        .unwrap_or_default();
    let body = format!(
        "{} people ({nodes} nodes, {rels} relationships per run), {} runs per variant, medians; \
         measured {} on {}; load average at the end: {}\n\n{}",
        cli.people,
        cli.runs,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        s.graph.uri,
        load,
        table.to_markdown()
    );
    println!("{body}");
    weir_benches::sections::write_section(
        &cli.results,
        "consume",
        &format!("people-{}", cli.people),
        &body,
    )?;
    Ok(())
}
