//! The job API.
//!
//! - `POST /jobs` with JSON `{"path": "...", "mapping": "<TOML>", "format": "csv"|"jsonl",
//!   "label_prefix": "...", "id": "..."}`: a server-side file (inside `jobs.input_roots`).
//! - `POST /jobs/upload?mapping=<TOML>&format=..&label_prefix=..&id=..` with the records as
//!   the (streamed) request body: spooled to `jobs.spool_dir` (at most
//!   `jobs.max_upload_bytes`), then run like a file.
//! - `POST /jobs/stream` with JSON `{"stream": "...", "subject": "...", "consumer": "...",
//!   "deliver": "all"|"new"|"last", "ack_wait": "30s", "max_ack_pending": 20000,
//!   "mapping": "<TOML>", "label_prefix": "...", "id": "..."}`: a stream job, a JetStream
//!   durable consumer on the service's NATS server (a request cannot name another server: that
//!   is set in `[[jobs.streams]]` only). It runs until `DELETE /jobs/{id}` or shutdown.
//!   The Kafka form, `{"topics": ["..."], "group": "...", "start": "earliest"|"latest",
//!   "max_in_flight": 20000, "mapping": ..., "label_prefix": ..., "id": ...}`, is a consumer
//!   of the group on the service's Kafka cluster (`[jobs.kafka]`: brokers and librdkafka
//!   properties are settings only, never a request's). A body naming fields of both forms is
//!   refused, naming the field.
//! - `GET /jobs`, `GET /jobs/{id}`: status. `DELETE /jobs/{id}`: stop (checkpoint kept).
//! - `POST /api/mapping/validate` with JSON `{"mapping": "<TOML>", "label_prefix": "..."}`:
//!   the verdict on a mapping, errors with line and field (see [`crate::validate`]).
//!
//! Every route needs `Authorization: Bearer <token>` unless auth is disabled. Answers:
//! 202 accepted, 400 bad request/mapping, 401, 403 path outside the roots, 404, 409 a job
//! with that id is running, 413 upload too large, 429 too many jobs, 503 not ready or
//! shutting down. Internal errors answer a generic message with a correlation id, logged
//! with the cause.

use std::sync::Arc;

use crate::Authenticator;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::jobs::IngestdError;
use crate::jobs::config::{
    DEFAULT_MAX_IN_FLIGHT, DeliverPolicy, KafkaInput, KafkaStart, refuse_fields,
};
use crate::jobs::manager::{InputFormat, JobInput, JobManager, JobSpec, StreamInput};

/// State of the job API.
#[derive(Clone, Debug)]
pub struct JobsApi {
    /// The jobs.
    pub jobs: JobManager,
    /// The bearer-token check.
    pub auth: Arc<Authenticator>,
}

/// Body of `POST /jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJob {
    path: std::path::PathBuf,
    mapping: String,
    #[serde(default)]
    format: Option<InputFormat>,
    #[serde(default)]
    label_prefix: String,
    #[serde(default)]
    id: Option<String>,
}

/// Body of `POST /jobs/stream`: the JetStream form (`stream`, `subject`, `consumer`, ...) or
/// the Kafka form (`topics`, `group`, ...).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamJob {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    consumer: Option<String>,
    #[serde(default)]
    deliver: Option<DeliverPolicy>,
    #[serde(default, with = "humantime_serde")]
    ack_wait: Option<std::time::Duration>,
    #[serde(default)]
    max_ack_pending: Option<usize>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    start: Option<KafkaStart>,
    #[serde(default)]
    max_in_flight: Option<usize>,
    mapping: String,
    #[serde(default)]
    label_prefix: String,
    #[serde(default)]
    id: Option<String>,
}

/// Query of `POST /jobs/upload`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadJob {
    mapping: String,
    #[serde(default)]
    format: Option<InputFormat>,
    #[serde(default)]
    label_prefix: String,
    #[serde(default)]
    id: Option<String>,
}

impl IntoResponse for IngestdError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            Self::InvalidMapping(_) => (StatusCode::BAD_REQUEST, "INVALID_MAPPING"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            Self::PathNotAllowed(_) => (StatusCode::FORBIDDEN, "PATH_NOT_ALLOWED"),
            Self::InputNotFound(_) => (StatusCode::BAD_REQUEST, "INPUT_NOT_FOUND"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "JOB_RUNNING"),
            Self::UploadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE"),
            Self::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_JOBS"),
            Self::TooManyUploads { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_UPLOADS"),
            Self::SpoolFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "SPOOL_FULL"),
            Self::UploadStalled(_) => (StatusCode::REQUEST_TIMEOUT, "UPLOAD_STALLED"),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN"),
            Self::Internal(_) | Self::Config(_) | Self::Io(_) => {
                let id = uuid::Uuid::new_v4();
                tracing::error!(correlation_id = %id, error = %self, "internal error");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": {"code": "INTERNAL", "message": format!("internal error (correlation id {id})")}})),
                )
                    .into_response();
            }
        };
        (
            status,
            axum::Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response()
    }
}

fn authorize(api: &JobsApi, headers: &HeaderMap) -> Result<(), IngestdError> {
    api.auth
        .check_headers(headers)
        .map(|_| ())
        .map_err(|e| IngestdError::Unauthenticated(e.to_string()))
}

/// The job routes (no `/health` or `/ready`: the service adds those, so the routes can be
/// merged into `weir serve`'s gateway).
pub fn jobs_router(api: JobsApi) -> Router {
    Router::new()
        .route("/jobs", post(submit_file).get(list))
        .route(
            "/jobs/upload",
            post(submit_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/jobs/stream", post(submit_stream))
        .route("/jobs/{id}", get(status).delete(cancel))
        .route(
            "/api/mapping/validate",
            post(crate::jobs::validate::validate_mapping),
        )
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(api)
}

async fn submit_file(
    State(api): State<JobsApi>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, IngestdError> {
    authorize(&api, &headers)?;
    let job: FileJob = serde_json::from_slice(&body)
        .map_err(|e| IngestdError::BadRequest(format!("the body is not a job: {e}")))?;
    let status = api
        .jobs
        .submit(JobSpec {
            id: job.id,
            input: JobInput::Path(job.path),
            mapping: job.mapping,
            format: job.format,
            label_prefix: job.label_prefix,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(status)).into_response())
}

async fn submit_stream(
    State(api): State<JobsApi>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, IngestdError> {
    authorize(&api, &headers)?;
    let job: StreamJob = serde_json::from_slice(&body)
        .map_err(|e| IngestdError::BadRequest(format!("the body is not a stream job: {e}")))?;
    let input = stream_input(&job, &api.jobs.config().kafka)?;
    let status = api
        .jobs
        .submit(JobSpec {
            id: job.id,
            input,
            mapping: job.mapping,
            format: None,
            label_prefix: job.label_prefix,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(status)).into_response())
}

/// The source a `POST /jobs/stream` body names: Kafka when it names `topics` (on the service's
/// cluster), else JetStream (on the service's NATS).
fn stream_input(
    job: &StreamJob,
    kafka: &crate::jobs::config::KafkaConnection,
) -> Result<JobInput, IngestdError> {
    let bad = |(_, reason): (&str, String)| IngestdError::BadRequest(reason);
    if !job.topics.is_empty() {
        refuse_fields(
            "Kafka",
            &[
                ("stream", job.stream.is_some()),
                ("subject", job.subject.is_some()),
                ("consumer", job.consumer.is_some()),
                ("deliver", job.deliver.is_some()),
                ("ack_wait", job.ack_wait.is_some()),
                ("max_ack_pending", job.max_ack_pending.is_some()),
            ],
        )
        .map_err(bad)?;
        let group = job.group.clone().ok_or_else(|| {
            IngestdError::BadRequest("a Kafka stream job needs `group` (the consumer group)".into())
        })?;
        return Ok(JobInput::Kafka(KafkaInput {
            topics: job.topics.clone(),
            group,
            brokers: kafka.brokers.clone(),
            properties: kafka.properties.clone(),
            start: job.start.unwrap_or_default(),
            max_in_flight: job.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        }));
    }
    refuse_fields(
        "JetStream",
        &[
            ("group", job.group.is_some()),
            ("start", job.start.is_some()),
            ("max_in_flight", job.max_in_flight.is_some()),
        ],
    )
    .map_err(bad)?;
    let need = |v: &Option<String>, field: &str| {
        v.clone().ok_or_else(|| {
            IngestdError::BadRequest(format!(
                "missing `{field}`: a stream job names either `stream`, `subject` and `consumer` (JetStream) or `topics` and `group` (Kafka)"
            ))
        })
    };
    let defaults = weir_sources::JetStreamSourceConfig::default();
    Ok(JobInput::Stream(StreamInput {
        stream: need(&job.stream, "stream")?,
        subject: need(&job.subject, "subject")?,
        consumer: need(&job.consumer, "consumer")?,
        deliver: job.deliver.unwrap_or_default(),
        url: None,
        ack_wait: job.ack_wait.unwrap_or(defaults.ack_wait),
        max_ack_pending: job.max_ack_pending.unwrap_or(defaults.max_ack_pending),
    }))
}

async fn submit_upload(
    State(api): State<JobsApi>,
    headers: HeaderMap,
    query: Result<Query<UploadJob>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, IngestdError> {
    authorize(&api, &headers)?;
    let Query(job) = query.map_err(|e| IngestdError::BadRequest(e.body_text()))?;
    if !api.jobs.ready().await {
        return Err(IngestdError::NotReady);
    }
    let cfg = api.jobs.config();
    // Everything that can refuse the upload is checked before a byte is spooled.
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > cfg.max_upload_bytes
    {
        return Err(IngestdError::UploadTooLarge {
            max: cfg.max_upload_bytes,
        });
    }
    api.jobs.check_capacity()?;
    let _upload = api.jobs.upload_slot()?;
    crate::jobs::private_dir(&cfg.spool_dir)?;
    let used = spooled_bytes(&cfg.spool_dir).await?;
    let room = cfg.max_spool_bytes.saturating_sub(used);
    if room == 0 {
        return Err(IngestdError::SpoolFull {
            used,
            max: cfg.max_spool_bytes,
        });
    }
    let path = cfg
        .spool_dir
        .join(format!("{}.upload", uuid::Uuid::new_v4()));
    let written = spool(
        body,
        &path,
        cfg.max_upload_bytes,
        SpoolRoom {
            room,
            used,
            max: cfg.max_spool_bytes,
        },
        cfg.upload_idle_timeout,
    )
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    let status = api
        .jobs
        .submit(JobSpec {
            id: job.id,
            input: JobInput::Spooled(path),
            mapping: job.mapping,
            format: job.format,
            label_prefix: job.label_prefix,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(status)).into_response())
}

/// What the spool may still take (`room`), for the error past it.
struct SpoolRoom {
    room: u64,
    used: u64,
    max: u64,
}

/// Bytes in the spool directory's files now (uploads received and being received).
async fn spooled_bytes(dir: &std::path::Path) -> Result<u64, IngestdError> {
    let mut total = 0u64;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(e) = entries.next_entry().await? {
        if let Ok(m) = e.metadata().await
            && m.is_file()
        {
            total += m.len();
        }
    }
    Ok(total)
}

/// Streams `body` into a new file at `path` (created exclusively, never through a symlink),
/// at most `max` bytes and at most `spool.room`; a body that pauses longer than `idle` is
/// abandoned.
async fn spool(
    body: Body,
    path: &std::path::Path,
    max: u64,
    spool: SpoolRoom,
    idle: std::time::Duration,
) -> Result<u64, IngestdError> {
    let mut file = tokio::fs::File::from_std(crate::jobs::create_private_file(path)?);
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| IngestdError::UploadStalled(idle))?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| IngestdError::BadRequest(format!("reading the body: {e}")))?;
        n += chunk.len() as u64;
        if n > max {
            return Err(IngestdError::UploadTooLarge { max });
        }
        if n > spool.room {
            return Err(IngestdError::SpoolFull {
                used: spool.used,
                max: spool.max,
            });
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(n)
}

async fn list(State(api): State<JobsApi>, headers: HeaderMap) -> Result<Response, IngestdError> {
    authorize(&api, &headers)?;
    Ok(axum::Json(json!({"jobs": api.jobs.list()})).into_response())
}

async fn status(
    State(api): State<JobsApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, IngestdError> {
    authorize(&api, &headers)?;
    api.jobs
        .status(&id)
        .map(|s| axum::Json(s).into_response())
        .ok_or(IngestdError::NotFound(id))
}

async fn cancel(
    State(api): State<JobsApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, IngestdError> {
    authorize(&api, &headers)?;
    if api.jobs.cancel(&id) {
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "cancelling": true})),
        )
            .into_response())
    } else {
        Err(IngestdError::NotFound(id))
    }
}
