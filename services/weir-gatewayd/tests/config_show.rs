//! `weir-gatewayd config show`: environment and flags resolved, secrets masked, loopback by
//! default; an unknown config field fails naming it.

use std::process::Command;

fn gatewayd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir-gatewayd"));
    c.env_clear().current_dir(std::env::temp_dir());
    c
}

#[test]
fn config_show_masks_secrets_and_defaults_to_loopback() {
    let out = gatewayd()
        .args(["config", "show"])
        .env("NEO4J_PASSWORD", "graph-secret-xyz")
        .env("WEIR_API_KEYS", "api-secret-abc")
        .env("WEIR_BUS_STREAM", "MY_STREAM")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("graph-secret-xyz") && !text.contains("api-secret-abc"),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:8080"), "{text}");
    assert!(text.contains("MY_STREAM"), "{text}");
}

#[test]
fn unknown_fields_in_the_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.toml");
    std::fs::write(&file, "[gateway]\nbnid = \"127.0.0.1:1\"\n").unwrap();
    let out = gatewayd()
        .args(["--config", file.to_str().unwrap(), "config", "show"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bnid"));
}
