//! `weir publish`: put a file's records into a NATS JetStream subject (or, with `--topic`, a
//! Kafka topic), one JSON object per message, so the streaming flow (`weir consume`) can be
//! tried with nothing but Weir and nats-server (or a Kafka broker).

use std::io::{BufRead as _, BufReader, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use weir_app::settings::Settings;
use weir_sources::{SourceError, connect_nats, publish_records};
use weir_stream::InputFormat;

use super::ingest::SettingsArgs;

/// Arguments of `weir publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Input file (`-` for stdin); gzip is detected.
    #[arg(required_unless_present = "show_config")]
    input: Option<PathBuf>,
    /// NATS URL. Default: `NATS_URL`, else the settings file's `bus.url`, else
    /// nats://127.0.0.1:4222.
    #[arg(long)]
    nats_url: Option<String>,
    #[command(flatten)]
    settings: SettingsArgs,
    /// JetStream stream (created with --subject when missing).
    #[arg(long, default_value = "WEIR_INGEST")]
    stream: String,
    /// Subject to publish to.
    #[arg(long, default_value = "weir.ingest")]
    subject: String,
    /// Input format. Default: from the file name (`.jsonl`, `.ndjson`, `.json`, with or without
    /// `.gz`, are JSON Lines; the rest CSV). Each CSV row becomes a JSON object of strings keyed
    /// by the header; each non-blank JSON Lines line is sent as it is.
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// CSV delimiter.
    #[arg(long, default_value = ",")]
    delimiter: char,
    /// Records per message (as JSON Lines in one body).
    #[arg(long, default_value_t = 1)]
    records_per_message: usize,
    /// Most messages awaiting the server's ack.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Only errors.
    #[arg(long, short)]
    quiet: bool,
    /// Publish to this Kafka topic instead of JetStream (created with --partitions when
    /// missing).
    #[arg(long, conflicts_with_all = ["nats_url", "stream", "subject"])]
    topic: Option<String>,
    /// Kafka bootstrap brokers. Default: `KAFKA_BROKERS`, else 127.0.0.1:9092.
    #[arg(long, requires = "topic")]
    kafka_brokers: Option<String>,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1, requires = "topic")]
    partitions: i32,
    /// The record field whose value is the Kafka message key (of a message's first record):
    /// messages with one key go to one partition, in order. Default: no key.
    #[arg(long, requires = "topic")]
    key_field: Option<String>,
    /// A librdkafka producer property `KEY=VALUE`, passed through (repeatable; security
    /// settings as for `weir consume -X`).
    #[arg(long = "kafka-property", short = 'X', value_parser = super::consume::parse_property, requires = "topic")]
    properties: Vec<(String, String)>,
}

/// The NATS of a stream: `flag`, else the settings' bus (`bus.url` of the file, `NATS_URL`),
/// else the local default.
pub(crate) fn stream_nats_url(flag: Option<&str>, settings: &Settings) -> String {
    match (flag, &settings.bus) {
        (Some(url), _) => url.to_owned(),
        (None, weir_bus::BusConfig::Nats(n)) => n.url.clone(),
        (None, weir_bus::BusConfig::InProcess(_)) => weir_config::DEFAULT_NATS_URL.to_owned(),
    }
}

impl PublishArgs {
    /// `--config` / `--show-config`.
    pub(crate) fn settings_args(&self) -> &SettingsArgs {
        &self.settings
    }

    /// `--quiet`.
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }
}

/// Opens the input, gunzipping when it starts with the gzip magic bytes.
fn open(input: &PathBuf) -> anyhow::Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?,
        )
    };
    let mut r = BufReader::new(raw);
    let gz = r.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b]))?;
    Ok(if gz {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

/// The records of the input as JSON texts, with errors naming the line.
fn records(
    args: &PublishArgs,
    input: &PathBuf,
) -> anyhow::Result<Box<dyn Iterator<Item = Result<String, SourceError>> + Send>> {
    let name = input.display().to_string();
    let jsonl = args
        .format
        .unwrap_or_else(|| InputFormat::from_file_name(input))
        == InputFormat::JsonLines;
    let reader = open(input)?;
    let subject = args.subject.clone();
    let bad = move |line: u64, e: &dyn std::fmt::Display| SourceError::Publish {
        subject: subject.clone(),
        reason: format!("reading {name}:{line}: {e}"),
    };
    if jsonl {
        let lines = BufReader::new(reader).lines().enumerate();
        return Ok(Box::new(lines.filter_map(move |(i, l)| match l {
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(Ok(l)),
            Err(e) => Some(Err(bad(i as u64 + 1, &e))),
        })));
    }
    let delimiter = u8::try_from(args.delimiter).context("--delimiter must be ASCII")?;
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(reader);
    let header = csv.headers().context("reading the CSV header")?.clone();
    Ok(Box::new(csv.into_records().map(move |row| {
        let row = row.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            bad(line, &e)
        })?;
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(row.iter())
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect();
        Ok(serde_json::Value::Object(obj).to_string())
    })))
}

/// The key of a message: `field` of its first record, as text (a JSON string's value, other
/// values as JSON); `None` when the record lacks it.
fn key_of(record: &str, field: &str) -> Option<bytes::Bytes> {
    let v: serde_json::Value = serde_json::from_str(record).ok()?;
    match v.get(field)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(bytes::Bytes::from(s.clone())),
        other => Some(bytes::Bytes::from(other.to_string())),
    }
}

/// `weir publish --topic`: the records to a Kafka topic.
async fn run_kafka(args: &PublishArgs, topic: &str, input: &PathBuf) -> anyhow::Result<u8> {
    let brokers = super::consume::kafka_brokers(args.kafka_brokers.as_deref())?;
    weir_sources::ensure_topic(
        &brokers,
        &args.properties,
        topic,
        args.partitions,
        std::time::Duration::from_secs(30),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let per = args.records_per_message;
    let key_field = args.key_field.clone();
    let mut recs = records(args, input)?;
    let started = std::time::Instant::now();
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = counted.clone();
    let bodies = std::iter::from_fn(move || {
        let mut body = String::new();
        let mut key = None;
        for _ in 0..per {
            let Some(next) = recs.next() else {
                break;
            };
            match next {
                Ok(r) => {
                    if body.is_empty()
                        && let Some(f) = &key_field
                    {
                        key = key_of(&r, f);
                    }
                    if !body.is_empty() {
                        body.push('\n');
                    }
                    body.push_str(&r);
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    return Some(Err(weir_sources::KafkaSourceError::Publish {
                        topic: String::new(),
                        reason: e.to_string(),
                    }));
                }
            }
            if body.len() > 512 << 10 {
                break;
            }
        }
        (!body.is_empty()).then(|| Ok((key, Bytes::from(body))))
    });
    let sent = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(weir_sources::publish_kafka(
            &brokers,
            &args.properties,
            topic,
            bodies,
            args.in_flight,
        ))
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.quiet {
        println!(
            "published {} records in {sent} messages to Kafka topic {topic} in {:.2}s",
            counted.load(std::sync::atomic::Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}

/// Runs `weir publish`.
pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<u8> {
    if args.records_per_message == 0 {
        anyhow::bail!("--records-per-message must be at least 1");
    }
    let settings = args.settings.resolve(None, None, 1)?;
    if args.settings.show(&settings) {
        return Ok(0);
    }
    let Some(input) = &args.input else {
        anyhow::bail!("an input file is required");
    };
    if let Some(topic) = &args.topic {
        return run_kafka(&args, topic, input).await;
    }
    let url = stream_nats_url(args.nats_url.as_deref(), &settings);
    let client = connect_nats(&url, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let per = args.records_per_message;
    let mut recs = records(&args, input)?;
    let started = std::time::Instant::now();
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = counted.clone();
    // Bodies are built on this thread as the publisher takes them (bounded by `in_flight`).
    let bodies = std::iter::from_fn(move || {
        let mut body = String::new();
        for _ in 0..per {
            let Some(next) = recs.next() else {
                break;
            };
            match next {
                Ok(r) => {
                    if !body.is_empty() {
                        body.push('\n');
                    }
                    body.push_str(&r);
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => return Some(Err(e)),
            }
            if body.len() > 512 << 10 {
                break;
            }
        }
        (!body.is_empty()).then(|| Ok(Bytes::from(body)))
    });
    let sent = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(publish_records(
            &client,
            &args.stream,
            &args.subject,
            bodies,
            args.in_flight,
        ))
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = client.flush().await;
    if !args.quiet {
        println!(
            "published {} records in {sent} messages to {} (stream {}) in {:.2}s",
            counted.load(std::sync::atomic::Ordering::Relaxed),
            args.subject,
            args.stream,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}
