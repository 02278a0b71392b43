//! `TCP_NODELAY` on Bolt sockets that neo4rs opened.
//!
//! neo4rs (0.9) writes each Bolt message through an 8 KiB buffered stream and leaves Nagle's
//! algorithm on. A message larger than the buffer (any `UNWIND $rows` batch of more than a
//! few dozen rows) leaves the socket as several writes; Nagle holds the last, partial segment
//! until the server acknowledges the earlier ones, and the server delays that ACK (40–200 ms on
//! Linux) because it is still waiting for the rest of the message. Every large statement then
//! stalls for the delayed-ACK timer. On the local ArcadeDB, 100 k rows at batch 1000 took 27 s
//! with Nagle on and 12 s with it off (BENCHMARKS.md). The official Neo4j drivers set
//! `TCP_NODELAY` for the same reason.
//!
//! neo4rs opens its sockets itself and does not expose them, so after a connection is proven
//! the pool looks through the process's own sockets (`/proc/self/fd`) for TCP streams whose
//! peer is the Bolt server and switches Nagle off on those. It touches nothing else: other
//! peers are skipped, and `TCP_NODELAY` only changes when small segments are sent. On other
//! systems than Linux this does nothing (and says so through [`SUPPORTED`]).

use std::io;
use std::net::SocketAddr;

/// Whether this build can switch Nagle off on neo4rs's sockets (Linux only).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// Resolves the `host:port` of a Bolt URI ([`bolt_authority`]) to the addresses a
/// connection may end at.
pub async fn resolve_bolt_peers(uri: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host(bolt_authority(uri))
        .await?
        .collect())
}

/// The `host:port` of a Bolt URI such as `bolt://db.local:7687` or `neo4j+s://user@h/db`
/// (default port 7687).
pub fn bolt_authority(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = match authority.rfind(']') {
        // `[::1]:7687` or `[::1]`
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:7687")
    }
}

/// Switches Nagle's algorithm off on every TCP socket of this process connected to one of
/// `peers` that still has it on; returns how many sockets it changed.
pub fn disable_nagle_to(peers: &[SocketAddr]) -> io::Result<usize> {
    let mut changed = 0;
    for_each_socket_to(peers, |sock| {
        if !sock.tcp_nodelay()? {
            sock.set_tcp_nodelay(true)?;
            changed += 1;
        }
        Ok(())
    })?;
    Ok(changed)
}

/// `TCP_NODELAY` of every TCP socket of this process connected to one of `peers`, for
/// diagnostics and tests.
pub fn nodelay_of_sockets_to(peers: &[SocketAddr]) -> io::Result<Vec<bool>> {
    let mut states = Vec::new();
    for_each_socket_to(peers, |sock| {
        states.push(sock.tcp_nodelay()?);
        Ok(())
    })?;
    Ok(states)
}

#[cfg(target_os = "linux")]
fn for_each_socket_to(
    peers: &[SocketAddr],
    mut f: impl FnMut(&socket2::SockRef<'_>) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::fd::{BorrowedFd, RawFd};

    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // Only sockets; the link reads `socket:[inode]`.
        match std::fs::read_link(entry.path()) {
            Ok(target)
                if target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:") => {}
            _ => continue,
        }
        // SAFETY: `fd` is a descriptor of this process that was a socket a moment ago. The
        // borrow lives only for the few calls below and never closes it (`SockRef` does not
        // own the descriptor). If another thread closes the descriptor meanwhile, the calls
        // fail with EBADF; if the number is reused at once, they act on that new descriptor,
        // which is skipped unless it is a TCP stream to the Bolt server. No memory is read or
        // written through the descriptor, so either race is harmless.
        #[allow(unsafe_code)]
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        if !matches!(sock.r#type(), Ok(t) if t == socket2::Type::STREAM) {
            continue;
        }
        let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if !peers.contains(&peer) {
            continue;
        }
        match f(&sock) {
            Ok(()) => {}
            // Closed or shut down under us: not ours to worry about.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn for_each_socket_to(
    _peers: &[SocketAddr],
    _f: impl FnMut(&socket2::SockRef<'_>) -> io::Result<()>,
) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bolt_uris_resolve_with_their_port_or_7687() {
        let p = resolve_bolt_peers("bolt://127.0.0.1:17687").await.unwrap();
        assert_eq!(p, vec!["127.0.0.1:17687".parse().unwrap()]);
        let p = resolve_bolt_peers("neo4j+s://user:pw@127.0.0.1/db?x=1")
            .await
            .unwrap();
        assert_eq!(p, vec!["127.0.0.1:7687".parse().unwrap()]);
        let p = resolve_bolt_peers("bolt://[::1]").await.unwrap();
        assert_eq!(p, vec!["[::1]:7687".parse().unwrap()]);
        let p = resolve_bolt_peers("127.0.0.1:9").await.unwrap();
        assert_eq!(p, vec!["127.0.0.1:9".parse().unwrap()]);
    }

    /// A loopback pair: the client side gets Nagle switched off, a socket to another peer
    /// keeps it on.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn switches_nagle_off_only_towards_the_peer() {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let ca = tokio::net::TcpStream::connect(to_a).await.unwrap();
        let cb = tokio::net::TcpStream::connect(to_b).await.unwrap();
        assert!(!ca.nodelay().unwrap() && !cb.nodelay().unwrap());

        assert_eq!(nodelay_of_sockets_to(&[to_a]).unwrap(), vec![false]);
        assert_eq!(disable_nagle_to(&[to_a]).unwrap(), 1);
        assert!(ca.nodelay().unwrap(), "the socket to the peer");
        assert!(
            !cb.nodelay().unwrap(),
            "a socket to another peer is left alone"
        );
        assert_eq!(nodelay_of_sockets_to(&[to_a]).unwrap(), vec![true]);
        assert_eq!(disable_nagle_to(&[to_a]).unwrap(), 0, "idempotent");
    }
}
