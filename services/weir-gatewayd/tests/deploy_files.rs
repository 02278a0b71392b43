//! `deploy/` is checked against the services' real settings: every file parses, every flag
//! and environment variable the manifests pass is one the services read (and its value is
//! accepted), probes hit `/ready` and `/health` on the bound port, the ingest memory setting
//! equals its container limit, the gateway has a PodDisruptionBudget, and the Compose file
//! has the official Neo4j image, NATS with JetStream, one ingest service, two gateways,
//! Prometheus and Grafana with config files that exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;
use weir_app::config::{COMMON_ENV, Env};

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

/// Which service a command runs, and the variables it reads.
fn service_of(command: &str) -> (&'static str, Vec<&'static str>) {
    let common: Vec<&str> = COMMON_ENV
        .iter()
        .map(|(k, _)| *k)
        .chain(["WEIR_CONFIG"])
        .collect();
    match command.rsplit('/').next().unwrap() {
        "weir-ingestd" => (
            "weir-ingestd",
            common
                .into_iter()
                .chain(weir_app::jobs::config::ENV_VARS.iter().copied())
                .collect(),
        ),
        "weir-gatewayd" => ("weir-gatewayd", common),
        other => panic!("unknown service command {other}"),
    }
}

/// Checks flags and environment against the service's real CLI and config; returns the
/// resolved bind port and (ingest) memory limit.
fn check_service(
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> (u16, Option<u64>) {
    let (name, allowed) = service_of(command);
    for k in env.keys() {
        assert!(allowed.contains(&k.as_str()), "{name} does not read {k}");
    }
    let env = Env::from_pairs(env.clone());
    let argv = std::iter::once(name.to_owned()).chain(args.iter().cloned());
    match name {
        "weir-ingestd" => {
            let cli =
                weir_app::jobs::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: {e}"));
            let c = cli.resolve(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
            (c.bind.port(), c.jobs.memory_limit)
        }
        _ => {
            let cli = weir_app::gateway::Cli::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let c = cli.resolve(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
            (c.gateway.bind.port(), None)
        }
    }
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
                env.insert(s(&e["name"]), s(&e["value"]));
            }
            let (port, memory_setting) = check_service(&command, &args, &env);
            let http = c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "http")
                .expect("a port named http");
            assert_eq!(
                s(&http["containerPort"]).parse::<u16>().unwrap(),
                port,
                "{command}: port"
            );
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"], "/ready",
                "{command}"
            );
            assert_eq!(
                c["livenessProbe"]["httpGet"]["path"], "/health",
                "{command}"
            );
            assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
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
}

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

#[test]
fn compose_file_matches_the_services() {
    let compose = docs(&deploy().join("compose.yaml")).remove(0);
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
    let (mut ingest, mut gateways) = (0, 0);
    for (name, svc) in services {
        let name = s(name);
        if let Some(ports) = svc["ports"].as_sequence() {
            for p in ports {
                assert!(
                    s(p).starts_with("127.0.0.1:"),
                    "{name}: publish on loopback only"
                );
            }
        }
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
        let (port, memory) = check_service(&command, &args, &env);
        if command.ends_with("weir-ingestd") {
            ingest += 1;
            assert_eq!(
                memory,
                Some(quantity(&s(&svc["mem_limit"]))),
                "{name}: memory"
            );
        } else {
            gateways += 1;
        }
        let published = s(&svc["ports"][0]);
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
