//! `weir-ingestd health`, the container health check of an image without curl or wget: exit 1
//! while nothing listens, exit 0 once the running service's `/ready` answers 200, at the
//! address resolved from the same settings as the service (`WEIR_BIND` here).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weir_test_support::process::{ChildProcess, WAIT, free_port, service_env};

fn ingestd(stream: &str, bind: &str, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-ingestd"));
    service_env(&mut cmd, stream)
        .env("WEIR_API_KEYS", "svc-health-key-0123456789")
        .env("WEIR_BIND", bind)
        .env("WEIR_JOB_DIR", dir.join("jobs"))
        .env("WEIR_SPOOL_DIR", dir.join("spool"))
        .current_dir(dir);
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
async fn health_follows_the_running_service() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("HEALTH");
    let dir = tempfile::tempdir().unwrap();
    let bind = format!("127.0.0.1:{}", free_port());

    let out = ingestd(&stream, &bind, dir.path())
        .arg("health")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing listens yet: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("http://{bind}/ready")),
        "{}",
        text(&out)
    );

    let _service = ChildProcess::spawn(&mut ingestd(&stream, &bind, dir.path()));
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ingestd(&stream, &bind, dir.path())
            .arg("health")
            .output()
            .unwrap();
        if out.status.success() {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(" 200 "),
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
