//! `weir-ingestd config show`: file, environment and flags resolved, secrets masked; a bad
//! environment value fails naming the variable.

use std::process::Command;

fn ingestd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir-ingestd"));
    c.env_clear().current_dir(std::env::temp_dir());
    c
}

#[test]
fn config_show_layers_file_env_and_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ingestd.toml");
    std::fs::write(&file, "[jobs]\nmax_concurrent = 3\nhistory = 7\n").unwrap();
    let out = ingestd()
        .args([
            "--config",
            file.to_str().unwrap(),
            "--bind",
            "127.0.0.1:18181",
            "config",
            "show",
        ])
        .env("NEO4J_PASSWORD", "graph-secret-xyz")
        .env("WEIR_API_KEYS", "api-secret-abc")
        .env("WEIR_MAX_JOBS", "5")
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
    assert!(text.contains("***"), "{text}");
    assert!(text.contains("127.0.0.1:18181"), "flag wins: {text}");
    assert!(
        text.contains("max_concurrent = 5"),
        "env beats file: {text}"
    );
    assert!(text.contains("history = 7"), "file beats default: {text}");
}

#[test]
fn a_bad_environment_value_is_named() {
    let out = ingestd()
        .args(["config", "show"])
        .env("WEIR_MAX_JOBS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WEIR_MAX_JOBS"));
}
