//! `weir-gatewayd health`, the container health check of an image without curl or wget: exit 0
//! once the running gateway's `/ready` answers 200 (the address resolved from the same settings
//! as the service, `WEIR_BIND` here), 1 with the answer while it is not ready (no bus) and when
//! nothing listens; `--url` checks another endpoint.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weir_test_support::process::{ChildProcess, WAIT, free_port, service_env};

fn gatewayd(stream: &str, bind: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-gatewayd"));
    service_env(&mut cmd, stream)
        .env("WEIR_API_KEYS", "svc-health-key-0123456789")
        .env("WEIR_BIND", bind)
        .current_dir(std::env::temp_dir());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_once_the_gateway_is_ready() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("HEALTH");
    let bind = format!("127.0.0.1:{}", free_port());
    let _service = ChildProcess::spawn(&mut gatewayd(&stream, &bind));
    let deadline = Instant::now() + WAIT;
    loop {
        // The same environment as the service, no --url: /ready on the port of WEIR_BIND.
        let out = gatewayd(&stream, &bind).arg("health").output().unwrap();
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("http://{bind}/ready")) && stdout.contains(" 200 "),
                "{}",
                text(&out)
            );
            break;
        }
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(Instant::now() < deadline, "never healthy: {}", text(&out));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn health_exits_one_while_not_ready_and_when_nothing_listens() {
    // A bus that is not there: the gateway runs, /health answers, /ready says 503.
    let closed = free_port();
    let bind = format!("127.0.0.1:{}", free_port());
    let run = || {
        let mut cmd = gatewayd("HEALTH_NO_BUS", &bind);
        cmd.env("NATS_URL", format!("nats://127.0.0.1:{closed}"));
        cmd
    };
    let _service = ChildProcess::spawn(&mut run());
    let live_url = format!("http://{bind}/health");
    let deadline = Instant::now() + WAIT;
    while !run()
        .args(["health", "--url", &live_url])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the gateway never answered /health"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run().arg("health").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("unhealthy: http://{bind}/ready: HTTP/1.1 503 ")),
        "{}",
        text(&out)
    );
    // The answer's body says why: the bus is down.
    let body: serde_json::Value = serde_json::from_str(&stderr[stderr.find('{').unwrap()..])
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(
        body["components"]["bus"]["status"],
        "down",
        "{}",
        text(&out)
    );

    let nobody = format!("http://127.0.0.1:{}/ready", free_port());
    let out = run()
        .args(["health", "--url", &nobody, "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out)
    );
}
