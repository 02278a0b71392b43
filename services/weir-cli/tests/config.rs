//! `weir ingest`, `weir consume`, `weir publish` and `weir ping` take the services' settings
//! file (`--config`, the `graph`, `pool`, `bus`, `memory` and `log` sections) and print what
//! they resolved (`--show-config`):
//! defaults < file < environment < flags, secrets masked, unknown keys refused by name; the run
//! really uses what the file says.

use std::process::Command;

fn weir(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    // No `.weir/env` from the checkout, no settings from the caller's environment.
    c.env_clear().current_dir(dir);
    c
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn show_config_layers_file_environment_and_flags_for_ingest_and_consume() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(
        &file,
        "[graph]\nuri = \"bolt://127.0.0.1:1111\"\nuser = \"file-user\"\n\
         [pool]\nquery_timeout = \"42s\"\n[memory]\nlimit = \"3GiB\"\n",
    )
    .unwrap();
    for cmd in ["ingest", "consume"] {
        let out = weir(dir.path())
            .args([cmd, "--show-config", "--config", file.to_str().unwrap()])
            .args(["--memory-limit", "64MiB"])
            .env("NEO4J_USER", "env-user")
            .env("NEO4J_PASSWORD", "graph-secret-xyz")
            .env("NATS_URL", "nats://alice:nats-secret@127.0.0.1:4222")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{cmd}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("uri = \"bolt://127.0.0.1:1111\""),
            "{cmd}, file: {text}"
        );
        assert!(
            text.contains("user = \"env-user\""),
            "{cmd}, env beats file: {text}"
        );
        assert!(
            text.contains("query_timeout = \"42s\""),
            "{cmd}, file: {text}"
        );
        assert!(
            text.contains("limit = \"64MiB\""),
            "{cmd}, flag beats file: {text}"
        );
        for secret in ["graph-secret-xyz", "nats-secret", "alice"] {
            assert!(!text.contains(secret), "{cmd} shows {secret}: {text}");
        }
        assert!(!text.contains("[gateway"), "{cmd}: not its section: {text}");
    }
}

#[test]
fn an_unknown_key_is_refused_with_the_file_section_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, "[pool]\nmax_sise = 3\n").unwrap();
    let out = weir(dir.path())
        .args([
            "consume",
            "--show-config",
            "--config",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("weir.toml: in [pool]: unknown field `max_sise`"),
        "{err}"
    );
    std::fs::write(&file, "[gateway]\nintrospection = true\n").unwrap();
    let out = weir(dir.path())
        .args([
            "ingest",
            "--show-config",
            "--config",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`gateway` is not a setting of"), "{err}");
}

/// `weir ping` and `weir publish` read the same file: they go where it says (closed ports
/// here, so they fail naming the addresses), and never print the credentials in `bus.url`.
#[test]
fn ping_and_publish_use_the_files_graph_and_nats_addresses_masked() {
    let dir = tempfile::tempdir().unwrap();
    let (graph_port, nats_port) = (closed_port(), closed_port());
    let file = dir.path().join("weir.toml");
    std::fs::write(
        &file,
        format!(
            "[graph]\nuri = \"bolt://127.0.0.1:{graph_port}\"\n\
             [bus]\nurl = \"nats://bob:bus-secret-42@127.0.0.1:{nats_port}\"\n"
        ),
    )
    .unwrap();
    for cmd in ["ping", "publish"] {
        let out = weir(dir.path())
            .args([cmd, "--show-config", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd}: {text}");
        assert!(
            text.contains(&format!("127.0.0.1:{graph_port}")),
            "{cmd}: {text}"
        );
        assert!(
            text.contains(&format!("127.0.0.1:{nats_port}")),
            "{cmd}: {text}"
        );
        assert!(!text.contains("bus-secret-42"), "{cmd}: {text}");
    }
    let out = weir(dir.path())
        .args(["ping", "--timeout", "1s", "--rounds", "1", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("graph  bolt://127.0.0.1:{graph_port}  DOWN")),
        "{text}"
    );
    assert!(
        text.contains(&format!("nats   nats://***@127.0.0.1:{nats_port}  DOWN")),
        "{text}"
    );
    assert!(!text.contains("bus-secret-42"), "{text}");
    let data = dir.path().join("p.jsonl");
    std::fs::write(&data, "{\"id\":1}\n").unwrap();
    let out = weir(dir.path())
        .args(["publish", "--quiet", "--config"])
        .arg(&file)
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("NATS at nats://***@127.0.0.1:{nats_port}")),
        "{err}"
    );
    assert!(!err.contains("bus-secret-42"), "{err}");
}

/// Not only shown: the run connects where the file says (here a closed port, so it fails
/// naming that address), and `WEIR_CONFIG` names the file like `--config`.
#[test]
fn the_run_uses_the_files_graph_address() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let file = dir.path().join("weir.toml");
    std::fs::write(
        &file,
        format!("[graph]\nuri = \"bolt://127.0.0.1:{port}\"\n[pool]\nconnect_timeout = \"1s\"\n"),
    )
    .unwrap();
    let mapping = dir.path().join("m.toml");
    std::fs::write(
        &mapping,
        "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }]\n",
    )
    .unwrap();
    let data = dir.path().join("p.csv");
    std::fs::write(&data, "id\n1\n").unwrap();
    let out = weir(dir.path())
        .args(["ingest", "--quiet", "--mapping"])
        .arg(&mapping)
        .arg(&data)
        .env("WEIR_CONFIG", &file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("not reachable at bolt://127.0.0.1:{port}")),
        "{err}"
    );
}

fn dry_run_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mapping = dir.join("m.toml");
    std::fs::write(
        &mapping,
        "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }]\n",
    )
    .unwrap();
    let data = dir.join("p.csv");
    std::fs::write(&data, "id\n1\n2\n").unwrap();
    (mapping, data)
}

/// `[log]` of the settings file sets the run's log filter (the environment's `WEIR_LOG` over
/// it); without it the run logs its info line.
#[test]
fn the_files_log_section_sets_the_log_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (mapping, data) = dry_run_files(dir.path());
    let run = |config: Option<&std::path::Path>, weir_log: Option<&str>| {
        let mut c = weir(dir.path());
        c.args(["ingest", "--dry-run", "--progress", "none", "--mapping"])
            .arg(&mapping)
            .arg(&data);
        if let Some(f) = config {
            c.arg("--config").arg(f);
        }
        if let Some(l) = weir_log {
            c.env("WEIR_LOG", l);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let info = run(None, None);
    assert!(info.contains("INFO"), "the default logs info lines: {info}");
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, "[log]\nfilter = \"error\"\n").unwrap();
    let quiet = run(Some(&file), None);
    assert!(!quiet.contains("INFO"), "[log] filter = error: {quiet}");
    let env = run(Some(&file), Some("info"));
    assert!(env.contains("INFO"), "WEIR_LOG beats the file: {env}");
}

/// `--quiet` prints errors only: a run that succeeds prints nothing at all.
#[test]
fn quiet_success_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mapping, data) = dry_run_files(dir.path());
    let out = weir(dir.path())
        .args(["ingest", "--dry-run", "--quiet", "--mapping"])
        .arg(&mapping)
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

/// `--metrics-bind` on a non-loopback address needs the admin token, and the token is read
/// like every setting: from `.weir/env` too, not only from the process environment.
#[test]
fn metrics_bind_reads_the_admin_token_from_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (mapping, data) = dry_run_files(dir.path());
    let run = |dir: &std::path::Path| {
        weir(dir)
            .args(["ingest", "--dry-run", "--quiet", "--progress", "none"])
            .args(["--metrics-bind", "0.0.0.0:0", "--mapping"])
            .arg(&mapping)
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = run(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "no token, open address: {err}");
    assert!(err.contains("without an admin token"), "{err}");
    std::fs::create_dir(dir.path().join(".weir")).unwrap();
    std::fs::write(
        dir.path().join(".weir/env"),
        "WEIR_ADMIN_TOKEN=admin-token-from-env-file\n",
    )
    .unwrap();
    let out = run(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "token from .weir/env: {err}");
    assert!(!err.contains("admin-token-from-env-file"), "{err}");
}
