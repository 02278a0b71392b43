//! Runs a measured child process: wall time, peak RSS from `wait4`'s `ru_maxrss` (the kernel's
//! high-water mark of exactly that child), CPU time, and RSS over time from `RssSampler`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use weir_benches::procfs::{RssPoint, RssSampler};

/// What one child run measured.
#[derive(Debug, Clone)]
pub(crate) struct ChildRun {
    /// Spawn to exit.
    pub(crate) wall: Duration,
    /// `ru_maxrss` of the child (bytes).
    pub(crate) peak_rss: u64,
    /// Largest RSS the sampler saw (bytes); a cross-check of `peak_rss`.
    pub(crate) sampled_max_rss: u64,
    /// User + system CPU time of the child.
    pub(crate) cpu: Duration,
    /// RSS over time (seconds since spawn, bytes).
    pub(crate) rss: Vec<RssPoint>,
    /// Its stdout.
    pub(crate) stdout: String,
}

/// How often the RSS sampler reads the child's RSS (`/proc/<pid>/statm`).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Most RSS points kept per run (older points are thinned, see `RssSampler`).
const MAX_POINTS: usize = 2000;

fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Exit status and resource usage of `pid`, waited for with `wait4`.
#[allow(unsafe_code)]
fn wait4(pid: u32) -> std::io::Result<(i32, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and live for the call; `pid` is our
        // own child, not yet waited for (std's `Child::wait` is never called on it).
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    Ok((code, usage))
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// Runs `cmd` to completion (blocking), measuring it; fails unless it exits 0.
pub(crate) fn run_measured(mut cmd: Command) -> anyhow::Result<ChildRun> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let sampler = RssSampler::start(pid, SAMPLE_EVERY, MAX_POINTS);
    let out = drain(child.stdout.take().context("stdout")?);
    let err = drain(child.stderr.take().context("stderr")?);
    let (code, usage) = wait4(pid).with_context(|| format!("waiting for {what}"))?;
    let wall = started.elapsed();
    let rss = sampler.finish();
    // `child` was reaped by wait4; dropping it neither waits nor kills.
    drop(child);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if code != 0 {
        let tail: String = stderr
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{what} exited with {code}\nstdout:\n{stdout}\nstderr (tail):\n{tail}");
    }
    Ok(ChildRun {
        wall,
        // Linux reports ru_maxrss in KiB.
        peak_rss: (usage.ru_maxrss.max(0) as u64) * 1024,
        sampled_max_rss: rss.iter().map(|p| p.1).max().unwrap_or(0),
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        rss,
        stdout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child_that_allocates() {
        // `sh` touching 64 MiB through `head` into a variable is not portable; use dd into
        // /dev/null with a 32 MiB block: dd allocates its block buffer and touches it.
        let mut cmd = Command::new("dd");
        cmd.args(["if=/dev/zero", "of=/dev/null", "bs=32M", "count=2"]);
        let r = run_measured(cmd).unwrap();
        assert!(r.peak_rss >= 32 << 20, "peak {}", r.peak_rss);
        assert!(r.sampled_max_rss > 0);
        assert!(r.wall > Duration::ZERO);
    }

    #[test]
    fn a_failing_child_is_an_error_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo boom >&2; exit 3"]);
        let e = format!("{:#}", run_measured(cmd).unwrap_err());
        assert!(
            e.contains("exited with 3") && e.contains("boom") && e.contains("out"),
            "{e}"
        );
    }
}
