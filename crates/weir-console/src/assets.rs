//! The embedded assets and how they are served.
//!
//! `npm run build` (vite) writes `assets/`: the two pages (`index.html`, `graphiql.html`), every
//! script, stylesheet and image under `assets/assets/` with a content hash in its name, and
//! `manifest.json` (the hash of the sources it was built from, and each output's hash).
//! `build.rs` embeds every file. Pages are served with `Cache-Control: no-cache` (always
//! revalidated, so a new binary's console is picked up at once); hashed files as `immutable`
//! (a new build gives them new names).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every file under `assets/`, sorted by path (relative, `/`-separated).
static FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The browser may fetch only from this origin (scripts, styles, fonts, images, workers,
/// XHR/fetch and WebSocket): the pages work offline and cannot leak a request elsewhere.
/// Inline styles are allowed (GraphiQL's editor sets them); inline scripts are not.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The embedded file at `path` (relative to `assets/`).
pub(crate) fn file(path: &str) -> Option<&'static [u8]> {
    FILES
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| FILES[i].1)
}

/// Every embedded path.
#[cfg(test)]
pub(crate) fn paths() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(p, _)| *p)
}

/// The content type of a file, from its extension.
pub(crate) fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A page (`index.html`, `graphiql.html`): no-cache, with the content security policy.
pub(crate) fn page(name: &'static str) -> Response {
    let Some(body) = file(name) else {
        // build.rs embeds whatever assets/ holds; a test checks both pages are there.
        return (
            StatusCode::NOT_FOUND,
            "console assets missing from this build",
        )
            .into_response();
    };
    let mut r = ([(header::CONTENT_TYPE, content_type(name))], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    security_headers(h);
    r
}

fn security_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// `GET /console/assets/{*file}`: a hashed build output, cached for a year as immutable.
pub(crate) async fn hashed(Path(rest): Path<String>) -> Response {
    let path = format!("assets/{rest}");
    match file(&path) {
        Some(body) => {
            let mut r = ([(header::CONTENT_TYPE, content_type(&path))], body).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            security_headers(h);
            r
        }
        None => (StatusCode::NOT_FOUND, "no such console asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    //! The committed assets must be the build of the committed sources: the build records the
    //! hash of its inputs in `assets/manifest.json` (`scripts/manifest.mjs`); these tests
    //! recompute it the same way. After changing anything under `web/`, `package.json`,
    //! `package-lock.json` or the build configuration, run `./scripts/dev.sh console-build`.

    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    use super::*;

    const REBUILD: &str =
        "run `./scripts/dev.sh console-build` and commit crates/weir-console/assets";

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn manifest() -> serde_json::Value {
        serde_json::from_slice(file("manifest.json").expect("assets/manifest.json is embedded"))
            .expect("manifest.json is JSON")
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }

    /// The same digest as `scripts/manifest.mjs`: over the inputs sorted by their
    /// `/`-separated path relative to the crate, `path \n sha256(content) \n` each.
    fn source_hash(inputs: &[String]) -> String {
        let root = root();
        let mut inputs = inputs.to_vec();
        inputs.sort();
        let mut h = Sha256::new();
        for rel in &inputs {
            let content = std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            h.update(format!("{rel}\n{}\n", hex(&Sha256::digest(&content))));
        }
        hex(&h.finalize())
    }

    fn current_inputs() -> Vec<String> {
        let root = root();
        let mut files = Vec::new();
        walk(&root.join("web"), &mut files);
        let mut rels: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .replace('\\', "/")
            })
            .collect();
        for f in [
            "package.json",
            "package-lock.json",
            "vite.config.mjs",
            "scripts/manifest.mjs",
        ] {
            rels.push(f.to_owned());
        }
        rels.sort();
        rels
    }

    #[test]
    fn committed_assets_are_built_from_the_committed_sources() {
        let m = manifest();
        let recorded: Vec<String> = m["inputs"]
            .as_array()
            .expect("manifest lists its inputs")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let inputs = current_inputs();
        assert_eq!(
            recorded, inputs,
            "the console's source files changed (added or removed) since the assets were built: {REBUILD}"
        );
        assert_eq!(
            m["source_hash"].as_str().unwrap(),
            source_hash(&inputs),
            "the console's sources changed since the assets were built: {REBUILD}"
        );
    }

    #[test]
    fn every_embedded_file_is_the_one_the_build_wrote() {
        let m = manifest();
        let outputs = m["outputs"]
            .as_object()
            .expect("manifest lists its outputs");
        let embedded: Vec<&str> = paths().filter(|p| *p != "manifest.json").collect();
        let listed: Vec<&str> = outputs.keys().map(String::as_str).collect();
        assert_eq!(
            embedded, listed,
            "assets/ holds other files than the build wrote: {REBUILD}"
        );
        for (path, want) in outputs {
            let got = hex(&Sha256::digest(file(path).unwrap()));
            assert_eq!(
                got,
                want.as_str().unwrap(),
                "{path} was edited after the build: {REBUILD}"
            );
        }
    }

    #[test]
    fn pages_reference_only_embedded_same_origin_assets() {
        for page in ["index.html", "graphiql.html"] {
            let html = std::str::from_utf8(file(page).expect("page embedded")).unwrap();
            let mut refs = 0;
            for attr in ["src=\"", "href=\""] {
                for part in html.split(attr).skip(1) {
                    let url = part.split('"').next().unwrap();
                    if url.starts_with('#') || url == "/" || url == "/graphiql" {
                        continue;
                    }
                    let rest = url.strip_prefix("/console/").unwrap_or_else(|| {
                        panic!("{page} references {url}, outside /console/assets")
                    });
                    assert!(
                        file(rest).is_some(),
                        "{page} references {url}, not embedded"
                    );
                    refs += 1;
                }
            }
            assert!(refs >= 2, "{page} loads its script and stylesheet");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a/b-1.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("f.woff2"), "font/woff2");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
