//! A private ArcadeDB graph server for tests that must see the graph die and come back.
//!
//! [`PrivateGraphServer::start_new`] starts ArcadeDB exactly as `scripts/dev.sh up` does (the
//! `arcadedb-embedded` venv under the cache directory, its bundled Java runtime, the same
//! system properties: root password, `defaultDatabases=neo4j[root]`, the Bolt plugin, both
//! listeners on 127.0.0.1), but on two free ports (Bolt and HTTP), with its own data directory
//! in a temporary directory and a small heap, and waits until a neo4rs connection answers
//! `RETURN 1`. [`PrivateGraphServer::kill`] SIGKILLs the Java process and
//! [`PrivateGraphServer::start`] brings it back on the same ports and data directory (ArcadeDB
//! replays its WAL). Dropping the handle kills the process and deletes the directory.
//!
//! The venv is not installed here: when it is missing, `start_new` panics saying to run
//! `./scripts/dev.sh up`, which installs it.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weir_config::{GraphSettings, Secret};

use crate::TestGraph;

/// The ArcadeDB version `scripts/dev.sh` installs (`ARCADEDB_VERSION` there): keep in step.
pub const ARCADEDB_VERSION: &str = "26.10.2.post1";
/// How long a start may take until `RETURN 1` answers (WAL recovery included).
pub const START_WAIT: Duration = Duration::from_secs(90);
/// The heap of a private server (`-Xmx`): a test's graph is small.
pub const HEAP: &str = "512m";
/// The root password of a private server (ArcadeDB wants at least 8 characters).
const PASSWORD: &str = "weir-private-graph";

/// The venv `scripts/dev.sh` installs ArcadeDB into: `$WEIR_CACHE_DIR`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/weir`, then `venv-arcadedb-<version>` (dev.sh's `CACHE_DIR`
/// and `VENV`).
pub fn venv_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let cache = non_empty("WEIR_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| non_empty("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("weir")))
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache/weir")))
        .unwrap_or_else(|| panic!("neither WEIR_CACHE_DIR, XDG_CACHE_HOME nor HOME is set"));
    cache.join(format!("venv-arcadedb-{ARCADEDB_VERSION}"))
}

/// `<site-packages>/arcadedb_embedded` of the venv, found as dev.sh's `arcade_home` does (the
/// venv's own Python asked for its `purelib`); panics with the fix when the venv is missing.
fn arcade_home(venv: &Path) -> PathBuf {
    let python = venv.join("bin/python");
    if !python.exists() || !venv.join(".complete").exists() {
        panic!(
            "the ArcadeDB venv is missing or incomplete at {}\n  -> run `./scripts/dev.sh up` \
             (it installs arcadedb-embedded=={ARCADEDB_VERSION} there)",
            venv.display()
        );
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} could not name its site-packages: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let home = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("arcadedb_embedded");
    assert!(
        home.join("jre/bin/java").exists() && home.join("jars").is_dir(),
        "no ArcadeDB runtime in {}\n  -> run `./scripts/dev.sh up`",
        home.display()
    );
    home
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free 127.0.0.1 port: {e}"))
}

/// An ArcadeDB server (a `java` process) owned by one test.
#[derive(Debug)]
pub struct PrivateGraphServer {
    home: PathBuf,
    bolt_port: u16,
    http_port: u16,
    /// The temporary directory: `data/` (the server's root path) and `server.log`.
    dir: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    starts: u32,
}

impl PrivateGraphServer {
    /// Starts a new server on free ports with an empty data directory, and waits until Bolt
    /// answers `RETURN 1` (panics with the server's log when it does not within
    /// [`START_WAIT`]).
    pub async fn start_new() -> Self {
        let home = arcade_home(&venv_dir());
        let dir = std::env::temp_dir().join(format!("weir-graph-{}", crate::unique_namespace()));
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let bolt_port = free_port();
        let mut http_port = free_port();
        while http_port == bolt_port {
            http_port = free_port();
        }
        let mut server = Self {
            home,
            bolt_port,
            http_port,
            dir,
            child: None,
            starts: 0,
        };
        server.start().await;
        server
    }

    /// `bolt://127.0.0.1:<port>` (the same across kill/start).
    pub fn bolt_uri(&self) -> String {
        format!("bolt://127.0.0.1:{}", self.bolt_port)
    }

    /// The Bolt port.
    pub fn bolt_port(&self) -> u16 {
        self.bolt_port
    }

    /// The root password (for `NEO4J_PASSWORD`).
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// Settings that reach this server (user `root`, database `neo4j`).
    pub fn settings(&self) -> GraphSettings {
        GraphSettings {
            uri: self.bolt_uri(),
            user: "root".into(),
            password: Secret::new(PASSWORD),
            database: "neo4j".into(),
        }
    }

    /// Sets `NEO4J_URI`, `NEO4J_USER`, `NEO4J_PASSWORD` and `NEO4J_DATABASE` of `cmd` to reach
    /// this server.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("NEO4J_URI", self.bolt_uri())
            .env("NEO4J_USER", "root")
            .env("NEO4J_PASSWORD", PASSWORD)
            .env("NEO4J_DATABASE", "neo4j")
    }

    /// A [`TestGraph`] on this server (its own namespace; labels deleted on drop while the
    /// server runs).
    pub async fn graph(&self) -> TestGraph {
        let settings = self.settings();
        let graph = crate::try_connect_graph(&settings)
            .await
            .unwrap_or_else(|msg| panic!("{msg}\n{}", self.log_tail(40)));
        TestGraph {
            graph,
            settings,
            namespace: crate::unique_namespace(),
            labels: Mutex::new(Vec::new()),
        }
    }

    /// Whether the process runs (started and not killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The server's log (stdout and stderr of every start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The last `lines` lines of the server's log (at most 64 KiB read).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            text = String::from_utf8_lossy(&buf).into_owned();
        }
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last lines of {} ---\n{tail}",
            self.log_path().display()
        )
    }

    /// Starts the server (again) on the same ports and data directory and waits until Bolt
    /// answers `RETURN 1`; panics with the log when it exits or does not answer within
    /// [`START_WAIT`]. Does nothing when it runs.
    pub async fn start(&mut self) {
        if self.is_running() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path().display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", self.log_path().display()));
        // The command line of scripts/dev.sh's graph_up, with our ports, directory and heap.
        let child = Command::new(self.home.join("jre/bin/java"))
            .current_dir(&self.dir)
            .args(["-Xms128m", &format!("-Xmx{HEAP}")])
            .args(["--add-modules", "jdk.incubator.vector"])
            .arg(format!(
                "-Darcadedb.server.rootPath={}",
                self.dir.join("data").display()
            ))
            .arg(format!("-Darcadedb.server.rootPassword={PASSWORD}"))
            .arg("-Darcadedb.server.defaultDatabases=neo4j[root]")
            .arg("-Darcadedb.server.httpIncomingHost=127.0.0.1")
            .arg(format!(
                "-Darcadedb.server.httpIncomingPort={}",
                self.http_port
            ))
            .arg("-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin")
            .arg("-Darcadedb.bolt.host=127.0.0.1")
            .arg(format!("-Darcadedb.bolt.port={}", self.bolt_port))
            .arg("-cp")
            .arg(format!("{}/*", self.home.join("jars").display()))
            .arg("com.arcadedb.server.ArcadeDBServer")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting ArcadeDB: {e}"));
        self.child = Some(child);
        self.starts += 1;
        let started = Instant::now();
        let settings = self.settings();
        loop {
            if !self.is_running() {
                panic!(
                    "ArcadeDB (bolt port {}) exited during start {}\n{}",
                    self.bolt_port,
                    self.starts,
                    self.log_tail(40)
                );
            }
            if probe(&settings).await {
                return;
            }
            if started.elapsed() > START_WAIT {
                let tail = self.log_tail(40);
                self.kill();
                panic!(
                    "ArcadeDB (bolt port {}) did not answer RETURN 1 within {START_WAIT:?} of start {}\n{tail}",
                    self.bolt_port, self.starts
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGKILLs the Java process and waits until it is gone. Nothing is flushed: what the
    /// server had not written to its WAL is lost, the rest is recovered by [`Self::start`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `RETURN 1` over a fresh neo4rs connection, each step bounded.
async fn probe(settings: &GraphSettings) -> bool {
    let config = crate::graph_config(settings, 1);
    let attempt = async {
        let graph = neo4rs::Graph::connect(config).ok()?;
        let mut rows = graph.execute(neo4rs::query("RETURN 1 AS x")).await.ok()?;
        let row = rows.next().await.ok()??;
        row.get::<i64>("x").ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(1))
    )
}

impl Drop for PrivateGraphServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
