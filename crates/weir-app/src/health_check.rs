//! `health`: a container health check the binaries run on themselves (their images have no
//! curl): `GET` the service's `/ready` and exit 0 on a 2xx answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Args;

/// Arguments of `health`.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct HealthArgs {
    /// The `http://` URL to `GET`. Default: `/ready` of this service as its settings (file,
    /// environment, flags) say it listens, on loopback when it binds every address
    /// (`0.0.0.0:8080` -> `http://127.0.0.1:8080/ready`).
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this long (connecting, sending, reading the answer), e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `http://<host>:<port>/ready` of a service listening on `bind`: loopback when it binds every
/// address (`0.0.0.0` -> `127.0.0.1`, `[::]` -> `[::1]`), else the address itself.
pub fn ready_url(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/ready", SocketAddr::new(ip, bind.port()))
}

/// Largest answer `health` reads, bytes (the `/ready` body is a few hundred).
const HEALTH_MAX_ANSWER: usize = 16 << 10;

/// `GET url` (plain `http://` only) within `timeout`: the status line and body when the status
/// is 2xx, else what went wrong (no answer, or the status line and body).
pub fn check_health(url: &str, timeout: Duration) -> Result<String, String> {
    let (authority, path) = split_http_url(url)?;
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {}", humantime::format_duration(timeout)))
    };
    let addrs: Vec<SocketAddr> = with_default_port(authority)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let mut last = format!("{authority} resolves to no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, remaining()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: weir-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < HEALTH_MAX_ANSWER {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // An answer whose head has arrived is enough when the rest is slow.
            Err(_) if answer.windows(4).any(|w| w == b"\r\n\r\n") => break,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (status_line, body) = match text.split_once("\r\n\r\n") {
        Some((head, body)) => (head.lines().next().unwrap_or(""), body.trim()),
        None => (text.lines().next().unwrap_or(""), ""),
    };
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP answer: {:?}", status_line))?;
    let summary = if body.is_empty() {
        status_line.to_owned()
    } else {
        format!("{status_line} {body}")
    };
    if (200..300).contains(&code) {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// `http://authority/path` -> (`authority`, `/path`); only plain `http://` URLs.
fn split_http_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: expected http://host:port/path"));
    }
    Ok((authority, path))
}

/// `authority` with port 80 added when it names none (`host`, `[::1]`).
fn with_default_port(authority: &str) -> String {
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_url_uses_loopback_for_wildcard_binds() {
        let url = |b: &str| ready_url(b.parse().unwrap());
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/ready");
        assert_eq!(url("[::]:8081"), "http://[::1]:8081/ready");
        assert_eq!(url("127.0.0.1:9000"), "http://127.0.0.1:9000/ready");
        assert_eq!(url("10.0.0.5:8080"), "http://10.0.0.5:8080/ready");
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_http_url("http://127.0.0.1:8080/ready").unwrap(),
            ("127.0.0.1:8080", "/ready")
        );
        assert_eq!(split_http_url("http://h").unwrap(), ("h", "/"));
        assert!(split_http_url("https://h/ready").is_err());
        assert!(split_http_url("http:///ready").is_err());
        assert!(split_http_url("http://u:p@h/").is_err());
        assert_eq!(with_default_port("h"), "h:80");
        assert_eq!(with_default_port("h:1"), "h:1");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("[::1]:8080"), "[::1]:8080");
    }

    /// Answers one connection with `answer` (after reading the request head); returns the
    /// URL of `path` and the request it received.
    fn serve_once(answer: &'static str, path: &str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let task = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (url, task)
    }

    #[test]
    fn check_health_is_ok_on_2xx_only() {
        let (url, task) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}",
            "/ready",
        );
        let ok = check_health(&url, Duration::from_secs(5)).unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK") && ok.contains("\"ok\""),
            "{ok}"
        );
        let req = task.join().unwrap();
        assert!(req.starts_with("GET /ready HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: 127.0.0.1:"), "{req}");

        let (url, task) = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"degraded\"}",
            "/ready",
        );
        let e = check_health(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("503") && e.contains("degraded"), "{e}");
        task.join().unwrap();

        let (url, task) = serve_once("SSH-2.0-OpenSSH\r\n\r\n", "/");
        let e = check_health(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not an HTTP answer"), "{e}");
        task.join().unwrap();
    }

    #[test]
    fn check_health_fails_without_a_listener_or_an_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = check_health(&format!("http://{addr}/ready"), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");

        // Accepts but never answers: bounded by the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ready", silent.local_addr().unwrap());
        let started = Instant::now();
        let e = check_health(&url, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{e}");
        assert!(e.contains("no answer"), "{e}");
        drop(silent);
    }
}
