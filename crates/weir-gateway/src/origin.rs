//! The `Origin` rule for browser clients (see [`crate::GatewayConfig::allowed_origins`]): a
//! request that carries an `Origin` must come from this server's own origin (the `Host` it was
//! sent to) or from a listed one. WebSocket upgrades always follow it (a WebSocket has no CORS
//! to protect it); other requests follow it unless they are `GET`, `HEAD` or `OPTIONS`.

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};

/// Whether `headers` pass the rule with `allowed` listed.
pub fn allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    // Same origin: the page was served by this server, at the address the request went to.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((scheme, authority)), Some(host)) => {
            matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error": {
            "code": "ORIGIN_NOT_ALLOWED",
            "message": "requests from this web page's origin are not allowed; list it in gateway.allowed_origins",
        }})),
    )
        .into_response()
}

/// `router` with the rule applied to every route it has, `allowed` listed.
pub fn guarded<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    allowed: &[String],
) -> axum::Router<S> {
    let list: Arc<[String]> = allowed.into();
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| guard(list.clone(), req, next),
    ))
}

/// Middleware applying the rule to the routes it wraps (see [`guarded`]).
pub async fn guard(allowed_list: Arc<[String]>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if (!safe || upgrade) && !allowed(req.headers(), &allowed_list) {
        return forbidden();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            m.insert(header::ORIGIN, o.parse().unwrap());
        }
        m
    }

    #[test]
    fn same_origin_listed_or_none_pass_others_do_not() {
        let list = vec!["https://app.example.com".to_owned()];
        assert!(allowed(&h(None, "127.0.0.1:8080"), &list));
        assert!(allowed(
            &h(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            &list
        ));
        assert!(allowed(
            &h(Some("https://app.example.com"), "127.0.0.1:8080"),
            &list
        ));
        assert!(!allowed(
            &h(Some("https://evil.example"), "127.0.0.1:8080"),
            &list
        ));
        assert!(!allowed(
            &h(Some("http://127.0.0.1:9999"), "127.0.0.1:8080"),
            &list
        ));
        assert!(!allowed(&h(Some("null"), "127.0.0.1:8080"), &list));
    }
}
