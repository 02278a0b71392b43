//! `weir ping` against the running services, and with each of them unreachable.

use assert_cmd::Command;

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn weir() -> Command {
    let mut c = Command::cargo_bin("weir").unwrap();
    let s = weir_test_support::settings();
    c.env("NEO4J_URI", &s.graph.uri)
        .env("NEO4J_USER", &s.graph.user)
        .env("NEO4J_PASSWORD", s.graph.password.expose())
        .env("NATS_URL", &s.nats.url);
    c
}

#[test]
fn ping_reports_both_services_up() {
    let out = weir().arg("ping").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir ping failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("graph") && stdout.contains("round trip"),
        "{stdout}"
    );
    assert!(
        stdout.contains("nats") && stdout.contains("jetstream: true"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(weir_test_support::settings().graph.password.expose()),
        "password leaked"
    );
}

#[test]
fn ping_fails_clearly_when_the_graph_server_is_down() {
    let out = weir()
        .args(["ping", "--timeout", "3s"])
        .env("NEO4J_URI", format!("bolt://127.0.0.1:{}", closed_port()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("graph") && stdout.contains("DOWN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("nats") && stdout.contains(" ok "),
        "NATS is still up: {stdout}"
    );
    assert!(stderr.contains("scripts/dev.sh up"), "{stderr}");
}

#[test]
fn ping_fails_clearly_when_nats_is_down() {
    let out = weir()
        .args(["ping", "--timeout", "3s"])
        .env("NATS_URL", format!("nats://127.0.0.1:{}", closed_port()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("nats") && stdout.contains("DOWN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("graph") && stdout.contains(" ok "),
        "graph is still up: {stdout}"
    );
}
