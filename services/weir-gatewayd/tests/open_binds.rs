//! Safe defaults off loopback, as the binary applies them: authentication cannot be turned off
//! on a gateway bound to another address (the error names the ways out), and the admin listener
//! refuses to start on a non-loopback address without a token unless `WEIR_ADMIN_ALLOW_OPEN=1`
//! says so. Neither needs the graph server or NATS: both are refused before any connection.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_test_support::process::{ChildProcess, WAIT, free_port, http_request};

fn gatewayd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir-gatewayd"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // Nothing listens there: the bus is never reached, which these checks do not need.
        .env("NATS_URL", format!("nats://127.0.0.1:{}", free_port()))
        .current_dir(std::env::temp_dir());
    c
}

#[test]
fn auth_cannot_be_off_on_a_non_loopback_bind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("open.toml");
    std::fs::write(&file, "[auth]\nmode = \"disabled\"\n").unwrap();
    let show = |bind: &str| {
        gatewayd()
            .args(["--config", file.to_str().unwrap(), "--bind", bind])
            .args(["config", "show"])
            .output()
            .unwrap()
    };
    let out = show("0.0.0.0:8080");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for named in ["auth.mode", "127.0.0.1", "WEIR_API_KEYS"] {
        assert!(stderr.contains(named), "{stderr} does not name {named}");
    }
    let out = show("127.0.0.1:8080");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_open_admin_listener_needs_a_token_or_the_explicit_opt_out() {
    let admin_port = free_port();
    let run = || {
        let mut c = gatewayd();
        c.env("WEIR_API_KEYS", "svc-open-key-0123456789")
            .env("WEIR_BIND", format!("127.0.0.1:{}", free_port()))
            .env("WEIR_ADMIN_BIND", format!("0.0.0.0:{admin_port}"));
        c
    };
    let mut refused = ChildProcess::spawn(&mut run());
    let status = refused.wait(WAIT);
    let stderr = refused.stderr();
    assert!(!status.success(), "{stderr}");
    for named in ["admin_bind", "WEIR_ADMIN_TOKEN", "WEIR_ADMIN_ALLOW_OPEN"] {
        assert!(stderr.contains(named), "{stderr} does not name {named}");
    }

    // Opted out: it starts, and /metrics answers without a token.
    let _open = ChildProcess::spawn(run().env("WEIR_ADMIN_ALLOW_OPEN", "1"));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        match http_request(admin, "GET", "/metrics", None) {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "admin listener never answered: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(metrics.status, 200, "{}", metrics.text());
}
