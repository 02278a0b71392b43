//! `weir-gatewayd` child processes: configuration, start, readiness, `/health`, `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_bus::NatsBusConfig;

/// The API key the bench's clients present.
pub(crate) const API_KEY: &str = "weir-bench-fanout-key-0123456789";
/// The admin (`/metrics`) token.
const ADMIN_TOKEN: &str = "weir-bench-fanout-admin-0123456789";

/// Limits raised for the bench, written into the gateway's TOML config.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// `gateway.subscriptions.max_total`.
    pub(crate) max_subscriptions: usize,
    /// `gateway.websocket.outbound_queue`.
    pub(crate) outbound_queue: usize,
}

/// A port free right now on 127.0.0.1.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Finds `weir-gatewayd`: `--gatewayd`, else next to this executable.
pub(crate) fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--gatewayd {} is not a file", p.display());
        return Ok(p.to_owned());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("weir-gatewayd");
    anyhow::ensure!(
        bin.is_file(),
        "weir-gatewayd not found at {} (cargo build --release -p weir-gatewayd, or pass --gatewayd)",
        bin.display()
    );
    Ok(bin)
}

/// The gateway's config file: bind, bus (same NATS settings as the bench's publisher), limits.
fn config_toml(bind: SocketAddr, admin: SocketAddr, bus: &NatsBusConfig, l: &Limits) -> String {
    format!(
        r#"bind = "{bind}"

[admin]
bind = "{admin}"

# Every client of the bench comes from 127.0.0.1 with one key: the per-address and
# per-principal caps are lifted.
[listener]
max_connections_per_ip = 0
max_connections = {max_conns}

[gateway.limits]
max_subscriptions_per_principal = {max_total}

[gateway.subscriptions]
max_total = {max_total}
max_per_connection = 100

[gateway.websocket]
outbound_queue = {outbound}
max_sockets = {max_conns}
max_sockets_per_ip = 0

[bus]
kind = "nats"
url = "{url}"
stream = "{stream}"
subject_prefix = "{prefix}"
max_age = "{max_age}s"
duplicate_window = "{dup}s"
max_bytes = {max_bytes}
"#,
        max_total = l.max_subscriptions.max(100),
        max_conns = l.max_subscriptions.max(100) + 1000,
        outbound = l.outbound_queue,
        url = bus.url,
        stream = bus.stream,
        prefix = bus.subject_prefix,
        max_age = bus.max_age.as_secs(),
        dup = bus.duplicate_window.as_secs(),
        max_bytes = bus.max_bytes,
    )
}

/// One running gateway; SIGTERM then kill on drop.
pub(crate) struct Gateway {
    child: Child,
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    /// The admin listener (`/metrics`).
    pub(crate) admin: SocketAddr,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    /// Starts `bin` with a config file for `bus` and `limits`; the graph settings and the API
    /// key come through the environment. Does not wait for readiness.
    pub(crate) fn spawn(
        bin: &Path,
        bus: &NatsBusConfig,
        limits: &Limits,
        tag: &str,
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let dir =
            std::env::temp_dir().join(format!("weir-bench-fanout-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let cfg = dir.0.join("gatewayd.toml");
        std::fs::write(&cfg, config_toml(addr, admin, bus, limits))?;
        let s = weir_test_support::settings();
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NEO4J_URI", &s.graph.uri)
            .env("NEO4J_USER", &s.graph.user)
            .env("NEO4J_PASSWORD", s.graph.password.expose())
            .env("NEO4J_DATABASE", &s.graph.database)
            .env("WEIR_API_KEYS", API_KEY)
            .env("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WEIR_LOG", "warn")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        #[allow(unsafe_code)]
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory; it only
        // asks the kernel to SIGTERM the child if this process dies without stopping it.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            addr,
            admin,
            _dir: dir,
        })
    }

    /// The child's pid (for `/proc`).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET /ready` answers 200 (at most `within`).
    pub(crate) async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("weir-gatewayd exited before it was ready: {status}");
            }
            if let Ok((200, _)) = http_get(self.addr, "/ready", Some(API_KEY)).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("weir-gatewayd at {} not ready within {within:?}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `(subscriptions, sockets)` from `/health`.
    pub(crate) async fn health_counts(&self) -> anyhow::Result<(u64, u64)> {
        let (status, body) = http_get(self.addr, "/health", Some(API_KEY)).await?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("/health answered {status}: {body}"))?;
        Ok((
            v["subscriptions"].as_u64().unwrap_or(0),
            v["sockets"].as_u64().unwrap_or(0),
        ))
    }

    /// One Prometheus sample without labels (or the sum over its label sets) from `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let (status, body) = http_get(self.admin, "/metrics", Some(ADMIN_TOKEN)).await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(parse_metric(&body, name))
    }

    /// Sends SIGTERM and waits (bounded) for the exit, then kills.
    pub(crate) fn stop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Sums the samples of `name` (any labels) in a Prometheus text body.
pub(crate) fn parse_metric(body: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// A bounded HTTP/1.1 GET (`Connection: close`): status and body.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        // Bounded: admin and health bodies are small.
        (&mut s).take(4 << 20).read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("not an HTTP answer")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        let body = if text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&body)
        } else {
            body
        };
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("GET {addr}{path}: no answer in 10 s"))?
}

/// Joins the chunks of a chunked body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let body = "# HELP x y\n# TYPE weir_a counter\nweir_a 12\nweir_ab 3\nweir_b{reason=\"x\"} 2\nweir_b{reason=\"y\"} 5\n";
        assert_eq!(parse_metric(body, "weir_a"), Some(12.0));
        assert_eq!(parse_metric(body, "weir_b"), Some(7.0));
        assert_eq!(parse_metric(body, "weir_c"), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn config_is_valid_toml_with_the_raised_limits() {
        let bus = NatsBusConfig {
            stream: "S".into(),
            subject_prefix: "p.q".into(),
            ..NatsBusConfig::default()
        };
        let l = Limits {
            max_subscriptions: 20_000,
            outbound_queue: 128,
        };
        let text = config_toml(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            &bus,
            &l,
        );
        // The gateway's own config type (unknown fields are refused) and its validation.
        use weir_app::settings::{Role, Settings};
        let c =
            Settings::from_toml(Role::Gatewayd, &text, std::path::Path::new("bench.toml")).unwrap();
        c.validate(Role::Gatewayd).unwrap();
        assert_eq!(c.gateway.subscriptions.max_total, 20_000);
        assert_eq!(c.gateway.websocket.outbound_queue, 128);
        assert_eq!(c.bind, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.admin.bind, Some("127.0.0.1:2".parse().unwrap()));
        match c.bus {
            weir_bus::BusConfig::Nats(n) => assert_eq!(n, bus),
            other => panic!("not NATS: {other:?}"),
        }
    }
}
