//! HTTP side: tokens refused when wrong or missing (API keys and HS256 JWT, also in
//! `connection_init`), depth/complexity/body-size limits with clear errors, introspection
//! switch, identifier validation, health and readiness.

mod common;

use common::*;
use serde_json::json;
use weir_config::Secret;
use weir_gateway::{AuthConfig, GatewayConfig, close_codes};

fn q(query: &str) -> String {
    json!({ "query": query }).to_string()
}

#[tokio::test]
async fn api_key_required_on_http() {
    let server = serve(config()).await;
    let (status, body) = post(server.addr, None, q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let (status, _) = post(server.addr, Some("wrong"), q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 401);
    let (status, body) = post(server.addr, Some(TOKEN), q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"data": {"ingestJobs": []}}));
}

#[tokio::test]
async fn auth_off_only_when_configured() {
    // Default config: API keys with none configured refuses everyone.
    let server = serve(GatewayConfig::default()).await;
    let (status, _) = post(server.addr, Some("anything"), q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 401);
    let open = serve(GatewayConfig {
        auth: AuthConfig::Disabled,
        ..GatewayConfig::default()
    })
    .await;
    let (status, _) = post(open.addr, None, q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn jwt_on_http_and_in_connection_init() {
    let secret = "a-long-enough-hs256-secret";
    let server = serve(GatewayConfig {
        auth: AuthConfig::Jwt {
            secret: Secret::new(secret),
            issuer: None,
            audience: None,
            clock_skew: weir_gateway::DEFAULT_CLOCK_SKEW,
        },
        ..GatewayConfig::default()
    })
    .await;
    let token = |key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "ana", "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let good = token(secret);
    let forged = token("some-other-secret-value");
    let (status, _) = post(server.addr, Some(&good), q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 200);
    let (status, _) = post(server.addr, Some(&forged), q("{ ingestJobs { jobId } }")).await;
    assert_eq!(status, 401);
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {forged}")}}))
        .await;
    c.expect_close(close_codes::FORBIDDEN).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {good}")}}),
    )
    .await;
    assert_eq!(c.recv_json().await["type"], "connection_ack");
}

#[tokio::test]
async fn depth_complexity_and_body_limits() {
    let mut cfg = config();
    cfg.limits.max_depth = 3;
    cfg.limits.max_complexity = 8;
    cfg.limits.max_body_bytes = 1024;
    let server = serve(cfg).await;
    let deep = "{ neighbours(label: \"A\", key: \"1\") { edges { node { labels } } } }";
    let (status, body) = post(server.addr, Some(TOKEN), q(deep)).await;
    assert_eq!(status, 200);
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("nested too deep"), "{body}");
    let complex = "{ ingestJobs { jobId state recordsRead recordsCommitted recordsDeadLettered bytesRead bytesTotal recordsPerSec batchesInFlight } }";
    let (_, body) = post(server.addr, Some(TOKEN), q(complex)).await;
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("too complex"), "{body}");
    let big = q(&format!(
        "{{ ingestJob(jobId: \"{}\") {{ jobId }} }}",
        "x".repeat(2000)
    ));
    let (status, _) = post(server.addr, Some(TOKEN), big).await;
    assert_eq!(status, 413);
    let (status, body) = post(server.addr, Some(TOKEN), "not json".into()).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST");
}

#[tokio::test]
async fn introspection_is_switchable() {
    let query = q("{ __schema { queryType { name } } }");
    let mut cfg = config();
    cfg.introspection = false;
    let off = serve(cfg).await;
    let (_, body) = post(off.addr, Some(TOKEN), query.clone()).await;
    // async-graphql answers a disabled introspection with null, not an error.
    assert_eq!(body, json!({"data": {"__schema": null}}));
    // On by default, for authenticated callers only.
    let on = serve(config()).await;
    let (status, _) = post(on.addr, None, query.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = post(on.addr, Some("wrong"), query.clone()).await;
    assert_eq!(status, 401);
    let (_, body) = post(on.addr, Some(TOKEN), query).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "QueryRoot");
}

/// GraphiQL's own introspection query (graphql-js `getIntrospectionQuery`, as GraphiQL sends
/// it) passes the default depth and complexity limits: the console's GraphiQL needs it.
#[tokio::test]
async fn graphiql_introspection_passes_the_default_limits() {
    let server = serve(config()).await;
    let (status, body) = post(server.addr, Some(TOKEN), q(GRAPHIQL_INTROSPECTION)).await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let types = body["data"]["__schema"]["types"].as_array().unwrap();
    assert!(types.iter().any(|t| t["name"] == "GraphChange"), "{body}");
}

/// graphql-js 16 `getIntrospectionQuery({ inputValueDeprecation: true, schemaDescription: true })`.
const GRAPHIQL_INTROSPECTION: &str = include_str!("graphiql_introspection.graphql");

#[tokio::test]
async fn identifiers_are_checked_before_any_graph_read() {
    // NoGraph panics on any read: these must be refused before reaching it.
    let server = serve(config()).await;
    for query in [
        "{ node(label: \"A`) DETACH DELETE n //\", key: \"1\") { id } }",
        "{ node(label: \"A\", key: \"1\", keyProperty: \"x y\") { id } }",
        "{ neighbours(label: \"A\", key: \"1\", relationshipType: \"R-1\") { pageInfo { hasNextPage } } }",
        "{ counts(labels: [\"ok\", \"1bad\"]) { count } }",
    ] {
        let (status, body) = post(server.addr, Some(TOKEN), q(query)).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
    }
    // A subscription over HTTP is refused with an error, not served.
    let (_, body) = post(
        server.addr,
        Some(TOKEN),
        q("subscription { graphChanges { key } }"),
    )
    .await;
    assert!(body["errors"].is_array(), "{body}");
    assert_eq!(server.state.manager().active(), 0);
}

#[tokio::test]
async fn health_and_ready() {
    let server = serve(config()).await;
    let (status, body) = get(server.addr, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert_eq!(get(server.addr, "/ready").await.0, 200);
    server.state.begin_shutdown();
    assert_eq!(get(server.addr, "/ready").await.0, 503);
}
