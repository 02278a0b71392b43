//! `deploy/` is checked against the services' real settings: every file parses, every flag
//! and environment variable the manifests pass is one the services read (and its value is
//! accepted), probes hit `/ready` and `/health` on the bound port, the ingest memory setting
//! equals its container limit, the gateway has a PodDisruptionBudget, and the Compose file
//! has the official Neo4j image, NATS with JetStream, one ingest service, two gateways,
//! Prometheus and Grafana with config files that exist.
//!
//! Deployment safety and the parts that must agree with each other: an admin listener off
//! loopback gets its token from a secret (the services refuse to start otherwise), Prometheus
//! scrapes every Weir service — each gateway replica as its own target — on the admin port it
//! really listens on, with the token Compose gives it; every Compose service has a health check
//! calling an endpoint or command the service has and a restart policy; the Dockerfile has a
//! `HEALTHCHECK`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;
use weir_app::cli::{Command, GatewaydCli, IngestdCli};
use weir_app::config::Env;
use weir_app::health_check::ready_url;
use weir_app::settings::{ENV, Settings};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut v = Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v.apply_merge().unwrap();
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Which service a command runs, and the variables it reads (every Weir process reads the
/// same ones: `weir_app::settings::ENV`).
fn service_of(command: &str) -> (&'static str, Vec<&'static str>) {
    let vars: Vec<&str> = ENV.iter().map(|(k, _)| *k).collect();
    match command.rsplit('/').next().unwrap() {
        "weir-ingestd" => ("weir-ingestd", vars),
        "weir-gatewayd" => ("weir-gatewayd", vars),
        other => panic!("unknown service command {other}"),
    }
}

/// What one service's flags and environment resolve to.
#[derive(Debug)]
struct Resolved {
    /// The address of its API.
    bind: SocketAddr,
    /// `memory.limit` (ingest only).
    memory_limit: Option<u64>,
    /// The admin listener, if any.
    admin_bind: Option<SocketAddr>,
}

/// The subcommand and validated settings the binary `name` resolves `argv` to in `env`,
/// through the binaries' own command lines and settings (which apply the admin listener's
/// rule: off loopback only with a token or the explicit opt-out).
fn resolve(
    name: &str,
    argv: impl Iterator<Item = String>,
    env: &Env,
) -> (Option<Command>, Settings) {
    let argv = std::iter::once(name.to_owned()).chain(argv);
    match name {
        "weir-ingestd" => {
            let cli = IngestdCli::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: {e}"));
            let s = cli
                .settings(env)
                .unwrap_or_else(|e| panic!("{name} would not start: {e}"));
            (cli.service.command, s)
        }
        _ => {
            let cli = GatewaydCli::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: {e}"));
            let s = cli
                .settings(env)
                .unwrap_or_else(|e| panic!("{name} would not start: {e}"));
            (cli.service.command, s)
        }
    }
}

/// Checks flags and environment against the service's real CLI and settings.
fn check_service(command: &str, args: &[String], env: &BTreeMap<String, String>) -> Resolved {
    let (name, allowed) = service_of(command);
    for k in env.keys() {
        assert!(allowed.contains(&k.as_str()), "{name} does not read {k}");
    }
    let env = Env::from_pairs(env.clone());
    let (_, s) = resolve(name, args.iter().cloned(), &env);
    Resolved {
        bind: s.bind,
        memory_limit: if name == "weir-ingestd" {
            s.memory_limit()
        } else {
            None
        },
        admin_bind: s.admin.bind,
    }
}

/// The URL a health check's command (`binary health ...`, in the container's environment)
/// `GET`s, parsed with that service's real CLI and settings.
fn health_url(argv: &[String], env: &BTreeMap<String, String>) -> String {
    let (name, _) = service_of(&argv[0]);
    let env = Env::from_pairs(env.clone());
    let (command, s) = resolve(name, argv[1..].iter().cloned(), &env);
    match command {
        Some(Command::Health(h)) => h.url.unwrap_or_else(|| ready_url(s.bind)),
        other => panic!("{argv:?} runs {other:?}, not the `health` check"),
    }
}

/// The status a Weir service's health layer gives `GET path` (404: no such endpoint).
fn service_answers(path: &str) -> u16 {
    use tower::ServiceExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let health = weir_app::health::Health::new(
            "deploy-check",
            tokio_util::sync::CancellationToken::new(),
            Duration::from_secs(1),
        );
        let app = weir_app::health::layer(axum::Router::new(), health);
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        app.oneshot(req).await.unwrap().status().as_u16()
    })
}

/// Splits `http://host:port/path` into host, port and path.
fn split_url(url: &str) -> (String, u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}: not http://"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url}: no port"));
    (
        host.trim_matches(['[', ']']).to_owned(),
        port.parse().unwrap_or_else(|e| panic!("{url}: {e}")),
        if path.is_empty() { "/" } else { path }.to_owned(),
    )
}

/// Checks that a Weir service's health check (`argv`, run in the container with `env`) `GET`s
/// an endpoint the service answers, on loopback at the port it listens on.
fn check_weir_healthcheck(who: &str, argv: &[String], env: &BTreeMap<String, String>, bind: u16) {
    let url = health_url(argv, env);
    let (host, port, path) = split_url(&url);
    assert!(
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
        "{who}: the health check runs in the container; {url} is not loopback"
    );
    assert_eq!(
        port, bind,
        "{who}: the health check GETs {url}, the service listens on {bind}"
    );
    let path = path.split('?').next().unwrap();
    assert_eq!(
        service_answers(path),
        200,
        "{who}: the health check GETs {path}, which the service does not answer"
    );
}

fn quantity(q: &str) -> u64 {
    let units = [
        ("Gi", 1u64 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
        ("g", 1 << 30),
        ("m", 1 << 20),
    ];
    for (u, m) in units {
        if let Some(n) = q.strip_suffix(u) {
            return n.parse::<u64>().unwrap() * m;
        }
    }
    q.parse().unwrap()
}

#[test]
fn kubernetes_manifests_match_the_services() {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(deploy().join("k8s")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            all.extend(docs(&p));
        }
    }
    let kind = |d: &Value| s(&d["kind"]);
    let config: BTreeMap<String, String> = all
        .iter()
        .filter(|d| kind(d) == "ConfigMap" && d["metadata"]["name"] == "weir-env")
        .flat_map(|d| {
            d["data"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| (s(k), s(v)))
        })
        .collect();
    assert!(!config.is_empty(), "ConfigMap weir-env missing");
    for k in config.keys() {
        assert!(
            !SECRET_VARS.contains(&k.as_str()),
            "{k} is a secret; put it in a Secret, not the ConfigMap"
        );
    }
    // Environment variable -> (Secret, key) of every `valueFrom.secretKeyRef`.
    let mut secret_refs: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut seen = Vec::new();
    for d in all.iter().filter(|d| kind(d) == "Deployment") {
        let spec = &d["spec"]["template"]["spec"];
        for c in spec["containers"].as_sequence().unwrap() {
            let command = s(&c["command"][0]);
            let args: Vec<String> = c["args"]
                .as_sequence()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let mut env = config.clone();
            // The Secret's keys, with placeholder values.
            env.insert("NEO4J_PASSWORD".into(), "placeholder-password".into());
            env.insert("WEIR_API_KEYS".into(), "placeholder-key".into());
            for e in c["env"].as_sequence().unwrap() {
                let name = s(&e["name"]);
                let r = &e["valueFrom"]["secretKeyRef"];
                let value = if r.is_mapping() {
                    secret_refs.insert(name.clone(), (s(&r["name"]), s(&r["key"])));
                    "placeholder-secret".to_owned()
                } else {
                    assert!(
                        !SECRET_VARS.contains(&name.as_str()),
                        "{command}: {name} is a secret; take it from a Secret, not a literal value"
                    );
                    s(&e["value"])
                };
                env.insert(name, value);
            }
            let r = check_service(&command, &args, &env);
            let port_named = |name: &str| {
                let p = c["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name)
                    .unwrap_or_else(|| panic!("{command}: a port named {name}"));
                s(&p["containerPort"]).parse::<u16>().unwrap()
            };
            assert_eq!(port_named("http"), r.bind.port(), "{command}: port");
            // (check_service has applied the admin listener's rule: off loopback, a token.)
            if let Some(admin) = r.admin_bind {
                assert_eq!(port_named("metrics"), admin.port(), "{command}: admin port");
            }
            let memory_setting = r.memory_limit;
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"], "/ready",
                "{command}"
            );
            assert_eq!(
                c["livenessProbe"]["httpGet"]["path"], "/health",
                "{command}"
            );
            assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
            assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
            for probe in ["readinessProbe", "livenessProbe"] {
                let path = s(&c[probe]["httpGet"]["path"]);
                assert_eq!(service_answers(&path), 200, "{command}: {probe} {path}");
            }
            let limit = quantity(&s(&c["resources"]["limits"]["memory"]));
            if command.ends_with("weir-ingestd") {
                assert_eq!(
                    memory_setting,
                    Some(limit),
                    "WEIR_MEMORY_LIMIT must equal the memory limit"
                );
            }
            seen.push((command, d));
        }
    }
    let gateway = seen
        .iter()
        .find(|(c, _)| c.ends_with("weir-gatewayd"))
        .map(|(_, d)| *d)
        .expect("a weir-gatewayd Deployment");
    assert!(
        seen.iter().any(|(c, _)| c.ends_with("weir-ingestd")),
        "a weir-ingestd Deployment"
    );
    let replicas = gateway["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "gateway replicas");
    let labels = gateway["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    let pdb = all
        .iter()
        .find(|d| kind(d) == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "PDB selector must select the gateway pods"
        );
    }
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < replicas);
    // The Secrets the Deployments reference are the ones config.yaml says how to create.
    let howto = std::fs::read_to_string(deploy().join("k8s/config.yaml")).unwrap();
    for (var, (secret, key)) in &secret_refs {
        assert!(
            howto.contains(&format!("secret generic {secret} "))
                && howto.contains(&format!("--from-literal={key}=")),
            "{var}: config.yaml does not say how to create Secret {secret} with key {key}"
        );
    }
}

/// Environment variables that hold secrets: never literal values in a manifest.
const SECRET_VARS: &[&str] = &["NEO4J_PASSWORD", "WEIR_API_KEYS", "WEIR_ADMIN_TOKEN"];

fn compose_value(v: &str) -> String {
    // `${VAR:-default}` -> default, `${VAR:?message}` -> a placeholder.
    let Some(start) = v.find("${") else {
        return v.to_owned();
    };
    let end = v[start..].find('}').unwrap() + start;
    let inner = &v[start + 2..end];
    let value = if let Some((_, d)) = inner.split_once(":-") {
        d.to_owned()
    } else {
        "placeholder-value".to_owned()
    };
    format!("{}{value}{}", &v[..start], compose_value(&v[end + 1..]))
}

fn compose() -> Value {
    docs(&deploy().join("compose.yaml")).remove(0)
}

/// A Compose service that runs a Weir binary.
struct WeirService {
    /// The Compose service name.
    name: String,
    /// The binary (its entrypoint).
    command: String,
    /// Its environment, `${...}` resolved as Compose would (placeholders for required values).
    env: BTreeMap<String, String>,
    /// What its settings resolve to.
    resolved: Resolved,
}

/// Every Compose service with an `entrypoint`, checked against the real CLI and settings.
fn weir_services(compose: &Value) -> Vec<WeirService> {
    let mut out = Vec::new();
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let Some(entry) = svc["entrypoint"].as_sequence() else {
            continue;
        };
        let command = s(&entry[0]);
        let env: BTreeMap<String, String> = svc["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (s(k), compose_value(&s(v))))
            .collect();
        let args: Vec<String> = svc["command"]
            .as_sequence()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        let resolved = check_service(&command, &args, &env);
        out.push(WeirService {
            name: s(name),
            command,
            env,
            resolved,
        });
    }
    out
}

#[test]
fn compose_file_matches_the_services() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let image = |name: &str| s(&services[name]["image"]);
    assert!(image("neo4j").starts_with("neo4j:"), "official Neo4j image");
    let nats_cmd: Vec<String> = services["nats"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(nats_cmd.contains(&"-js".to_owned()), "NATS with JetStream");
    for (name, svc) in services {
        if let Some(ports) = svc["ports"].as_sequence() {
            for p in ports {
                assert!(
                    s(p).starts_with("127.0.0.1:"),
                    "{}: publish on loopback only",
                    s(name)
                );
            }
        }
    }
    let (mut ingest, mut gateways) = (0, 0);
    for w in weir_services(&compose) {
        let svc = &services[w.name.as_str()];
        if w.command.ends_with("weir-ingestd") {
            ingest += 1;
            assert_eq!(
                w.resolved.memory_limit,
                Some(quantity(&s(&svc["mem_limit"]))),
                "{}: memory",
                w.name
            );
        } else {
            gateways += 1;
        }
        let published = s(&svc["ports"][0]);
        let port = w.resolved.bind.port();
        assert!(
            published.ends_with(&format!(":{port}")),
            "{published} vs bind port {port}"
        );
    }
    assert_eq!(
        (ingest, gateways),
        (1, 2),
        "one ingest service, two gateways"
    );
    for name in ["prometheus", "grafana"] {
        for vol in services[name]["volumes"].as_sequence().unwrap() {
            let host = s(vol).split(':').next().unwrap().to_owned();
            assert!(
                deploy().join(&host).exists(),
                "{name}: {host} does not exist in deploy/"
            );
        }
    }
}

/// The ports a Compose service listens on inside its container: the container side of its
/// published ports, and the numbers among its command's arguments (`nats -m 8222`).
fn container_ports(svc: &Value) -> BTreeSet<u16> {
    let published = svc["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| s(p).rsplit(':').next().and_then(|p| p.parse().ok()));
    let args = svc["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| s(a).parse().ok());
    published.chain(args).collect()
}

#[test]
fn compose_services_have_health_checks_and_restart_policies() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let weir: BTreeMap<String, WeirService> = weir_services(&compose)
        .into_iter()
        .map(|w| (w.name.clone(), w))
        .collect();
    for (name, svc) in services {
        let name = s(name);
        let restart = svc["restart"].as_str().unwrap_or("no");
        assert!(
            ["unless-stopped", "always", "on-failure"].contains(&restart)
                || restart.starts_with("on-failure:"),
            "{name}: restart policy `{restart}` does not restart a failed container"
        );
        let check = &svc["healthcheck"];
        assert_ne!(
            check["disable"],
            Value::Bool(true),
            "{name}: health check disabled"
        );
        let test: Vec<String> = check["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: no healthcheck test (as a list)"))
            .iter()
            .map(s)
            .collect();
        let argv: Vec<String> = match test.first().map(String::as_str) {
            Some("CMD") => test[1..].to_vec(),
            Some("CMD-SHELL") => test[1].split_whitespace().map(str::to_owned).collect(),
            other => panic!("{name}: healthcheck test starts with {other:?}, not CMD"),
        };
        assert!(!argv.is_empty(), "{name}: empty health check");
        if let Some(w) = weir.get(&name) {
            assert_eq!(
                argv[0], w.command,
                "{name}: the health check must run the service's own binary"
            );
            check_weir_healthcheck(&name, &argv, &w.env, w.resolved.bind.port());
        } else {
            let tool = argv[0].rsplit('/').next().unwrap();
            assert!(
                ["wget", "curl"].contains(&tool),
                "{name}: health check runs {tool}"
            );
            let url = argv
                .iter()
                .find(|a| a.starts_with("http://"))
                .unwrap_or_else(|| panic!("{name}: the health check names no http:// URL"));
            let (host, port, _) = split_url(url);
            assert_eq!(host, "127.0.0.1", "{name}: {url}");
            assert!(
                container_ports(svc).contains(&port),
                "{name}: the health check GETs {url}; the service listens on {:?}",
                container_ports(svc)
            );
        }
    }
}

/// The container path -> secret name of each Compose secret `svc` mounts.
fn mounted_secrets(svc: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in svc["secrets"].as_sequence().into_iter().flatten() {
        let (source, target) = match m {
            Value::String(name) => (name.clone(), name.clone()),
            _ => {
                let source = s(&m["source"]);
                let target = m["target"].as_str().map_or(source.clone(), str::to_owned);
                (source, target)
            }
        };
        let path = if target.starts_with('/') {
            target
        } else {
            format!("/run/secrets/{target}")
        };
        out.insert(path, source);
    }
    out
}

#[test]
fn prometheus_scrapes_each_weir_service_on_its_admin_port_with_the_admin_token() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    // Every name a target may use: service names and network aliases, each naming one service
    // (a shared alias would resolve to one replica at a time).
    let mut host_of: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in services {
        let name = s(name);
        let mut names = vec![name.clone()];
        for (_, net) in svc["networks"].as_mapping().into_iter().flatten() {
            names.extend(net["aliases"].as_sequence().into_iter().flatten().map(s));
        }
        for n in names {
            if let Some(other) = host_of.insert(n.clone(), name.clone()) {
                panic!("{n} names both {other} and {name}");
            }
        }
    }
    let weir: BTreeMap<String, WeirService> = weir_services(&compose)
        .into_iter()
        .map(|w| (w.name.clone(), w))
        .collect();

    let prometheus = &services["prometheus"];
    let args: Vec<String> = prometheus["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    let config_path = args
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("prometheus --config.file");
    assert!(
        prometheus["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| s(v).starts_with(&format!("./prometheus/prometheus.yml:{config_path}"))),
        "Compose must mount deploy/prometheus/prometheus.yml at {config_path}"
    );
    let secrets = mounted_secrets(prometheus);

    let config = docs(&deploy().join("prometheus/prometheus.yml")).remove(0);
    let mut scraped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in config["scrape_configs"].as_sequence().unwrap() {
        let job_name = s(&job["job_name"]);
        for group in job["static_configs"].as_sequence().into_iter().flatten() {
            for target in group["targets"].as_sequence().unwrap().iter().map(s) {
                let (host, port) = target.rsplit_once(':').unwrap();
                let service = host_of.get(host).unwrap_or_else(|| {
                    panic!("{job_name}: target {target} is no Compose service or alias")
                });
                let w = weir
                    .get(service)
                    .unwrap_or_else(|| panic!("{target}: {service} is not a Weir service"));
                let admin = w
                    .resolved
                    .admin_bind
                    .unwrap_or_else(|| panic!("{target}: {service} has no admin listener"));
                assert_eq!(
                    port.parse::<u16>().unwrap(),
                    admin.port(),
                    "{target}: {service} serves /metrics on {admin}"
                );
                assert_eq!(
                    job["metrics_path"].as_str().unwrap_or("/metrics"),
                    "/metrics",
                    "{job_name}"
                );
                // The token: a file Compose mounts from the secret holding WEIR_ADMIN_TOKEN,
                // the variable the service's own WEIR_ADMIN_TOKEN comes from.
                let auth = &job["authorization"];
                assert_eq!(auth["type"].as_str().unwrap_or("Bearer"), "Bearer");
                let file = auth["credentials_file"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{job_name}: scrapes {target} without a token"));
                let secret = secrets
                    .get(file)
                    .unwrap_or_else(|| panic!("{job_name}: Compose mounts nothing at {file}"));
                let source = &compose["secrets"][secret.as_str()];
                assert_eq!(
                    source["environment"], "WEIR_ADMIN_TOKEN",
                    "secret {secret} must hold WEIR_ADMIN_TOKEN"
                );
                let raw = s(&services[service.as_str()]["environment"]["WEIR_ADMIN_TOKEN"]);
                assert!(
                    raw.starts_with("${WEIR_ADMIN_TOKEN:?")
                        || raw.starts_with("${WEIR_ADMIN_TOKEN}"),
                    "{service}: WEIR_ADMIN_TOKEN is `{raw}`, not the token Prometheus has"
                );
                scraped.entry(service.clone()).or_default().push(target);
            }
        }
    }
    let mut gateways = 0;
    for (name, w) in &weir {
        if w.resolved.admin_bind.is_none() {
            continue;
        }
        gateways += usize::from(w.command.ends_with("weir-gatewayd"));
        assert_eq!(
            scraped.get(name).map(Vec::len),
            Some(1),
            "{name} has an admin listener: scrape it once, by a name of its own ({scraped:?})"
        );
    }
    assert!(gateways >= 2, "each gateway replica is scraped");
}

#[test]
fn prometheus_config_passes_promtool() {
    let script = deploy().join("../scripts/lib/ensure-promtool.sh");
    let out = Process::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "promtool is missing and {} could not install it:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let promtool = String::from_utf8(out.stdout).unwrap();
    // Syntax only: the token file exists only where Compose mounts it.
    let out = Process::new(promtool.trim())
        .args(["check", "config", "--syntax-only", "prometheus.yml"])
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfile_is_multi_stage_and_builds_every_binary() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(froms[0].ends_with("AS build"), "{}", froms[0]);
    assert!(text.contains("COPY --from=build"));
    for (package, bin) in [
        ("weir-ingestd", "weir-ingestd"),
        ("weir-gatewayd", "weir-gatewayd"),
        ("weir-cli", "weir"),
    ] {
        assert!(text.contains(&format!("-p {package}")), "builds {package}");
        assert!(
            text.contains(&format!("/usr/local/bin/{bin}"))
                || text.contains(&format!("/out/{bin}")),
            "installs {bin}"
        );
    }
}

/// The JSON array of an exec-form instruction (`ENTRYPOINT [...]`, `HEALTHCHECK ... CMD [...]`).
fn exec_form(instruction: &str) -> Vec<String> {
    let start = instruction
        .find('[')
        .unwrap_or_else(|| panic!("{instruction}: not exec form"));
    serde_json::from_str(&instruction[start..]).unwrap_or_else(|e| panic!("{instruction}: {e}"))
}

#[test]
fn dockerfile_has_a_healthcheck_the_image_can_run() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    // Instructions with their continuation lines joined.
    let instructions: Vec<String> = text
        .replace("\\\n", " ")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect();
    let find = |word: &str| {
        instructions
            .iter()
            .rfind(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word} in the Dockerfile"))
            .clone()
    };
    let entrypoint = exec_form(&find("ENTRYPOINT "));
    let health = find("HEALTHCHECK ");
    let cmd = health
        .split_once(" CMD ")
        .unwrap_or_else(|| panic!("{health}: no CMD"))
        .1;
    let argv = exec_form(cmd);
    assert_eq!(
        argv[0], entrypoint[0],
        "the image's health check runs the image's default binary"
    );
    // The image's environment: nothing but WEIR_LOG, so the service binds its default.
    let env = BTreeMap::from([("WEIR_LOG".to_owned(), "info".to_owned())]);
    let bind = check_service(&argv[0], &[], &env).bind.port();
    check_weir_healthcheck("Dockerfile", &argv, &env, bind);
    assert!(
        text.lines().next().unwrap().starts_with("# syntax="),
        "the syntax directive counts only on the first line"
    );
}
