//! `weir ingest` and `weir consume` take the services' settings file (`--config`, the `graph`,
//! `pool`, `bus`, `memory` and `log` sections) and print what they resolved (`--show-config`):
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
