//! Heap profiles in pprof format, from jemalloc's sampling heap profiler.
//!
//! How it is switched on, step by step:
//!
//! 1. Built in: the `heap-profiling` cargo feature (default-on in the binaries) builds jemalloc
//!    with its profiler and links [`jemalloc_pprof`](https://crates.io/crates/jemalloc_pprof),
//!    which converts jemalloc's dumps to pprof.
//! 2. Set up, inactive: the binaries export jemalloc's `malloc_conf` symbol as
//!    [`JEMALLOC_CONF`] (`prof:true,prof_active:false,lg_prof_sample:19`). jemalloc then keeps
//!    its profiler ready but records nothing: no stack is walked and nothing is stored, so a
//!    process that never turns it on pays nothing measurable.
//! 3. Active: `--heap-profiling` or `WEIR_HEAP_PROFILING=1` calls
//!    [`activate_heap_profiling`] at start (as does `MALLOC_CONF=prof_active:true` in the
//!    environment). From then on jemalloc records the stack of one allocation per 2^19 bytes
//!    (512 KiB) allocated, on average; `MALLOC_CONF=lg_prof_sample:N` changes the interval
//!    to 2^N bytes.
//! 4. [`heap_profile`] dumps the live sampled allocations (jemalloc's `prof.dump` into a
//!    temporary file) and returns them as a gzipped pprof `Profile` protobuf: sample type
//!    `inuse_space` in bytes, stacks as addresses with the process's mappings (build ids), which
//!    `go tool pprof` / `pprof` symbolise with the binary.
//!
//! Allocations made before activation are never in a profile. When profiling is not available
//! [`heap_profile`] returns [`MemwatchError::ProfilingUnavailable`] saying why and how to turn it
//! on; it never returns a made-up profile.

use serde::Serialize;

use crate::error::MemwatchError;

/// Environment variable that turns heap profiling on at start (`1`, `true`, `yes`, `on`), as the
/// binaries' `--heap-profiling` flag does.
pub const HEAP_PROFILING_ENV: &str = "WEIR_HEAP_PROFILING";

/// The jemalloc options the binaries compile in through the exported `malloc_conf` symbol
/// (NUL-terminated): profiler set up but inactive, one sample per 2^19 bytes when active.
/// Options in `MALLOC_CONF` are applied after these and win.
pub const JEMALLOC_CONF: &[u8] = b"prof:true,prof_active:false,lg_prof_sample:19\0";

/// Declares a binary's allocator, once, in its crate root: jemalloc as the global allocator when
/// the binary's `jemalloc` feature is on, and jemalloc's `malloc_conf` ([`JEMALLOC_CONF`]:
/// heap profiler set up, inactive) when its `heap-profiling` feature is on. The binary depends
/// on `tikv-jemallocator` (optional, enabled by its `jemalloc` feature). The `cfg`s are the
/// binary's own features, since the items expand in the binary's crate.
///
/// ```text
/// weir_memwatch::binary_allocator!();
/// ```
#[macro_export]
macro_rules! binary_allocator {
    () => {
        #[cfg(feature = "jemalloc")]
        #[global_allocator]
        static GLOBAL: ::tikv_jemallocator::Jemalloc = ::tikv_jemallocator::Jemalloc;

        /// jemalloc reads this symbol once, at its first allocation (before `main`): profiler
        /// set up but inactive. `MALLOC_CONF` in the environment is applied after it.
        // SAFETY (of the unsafe attribute): nothing else in the program defines `malloc_conf`;
        // jemalloc declares it as a weak `const char *`, which `Option<&'static u8>` matches in
        // layout, and the bytes are a NUL-terminated static string.
        #[cfg(feature = "heap-profiling")]
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(no_mangle)]
        static malloc_conf: Option<&'static u8> = Some(&$crate::JEMALLOC_CONF[0]);
    };
}

/// Whether a heap profile can be taken, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProfilingStatus {
    /// Whether [`heap_profile`] can return a profile.
    pub available: bool,
    /// The format a profile comes in (`pprof`), when available.
    pub format: Option<&'static str>,
    /// Why not, and what would turn it on.
    pub reason: Option<String>,
}

/// Whether heap profiles are available in this process.
pub fn profiling_status() -> ProfilingStatus {
    match imp::state() {
        State::Active => ProfilingStatus {
            available: true,
            format: Some("pprof"),
            reason: None,
        },
        other => ProfilingStatus {
            available: false,
            format: None,
            reason: Some(other.reason()),
        },
    }
}

/// Turns heap profiling on (jemalloc's `prof.active`). Call it once at start, before the work
/// to be profiled: only allocations made while profiling is active are sampled. Fails, saying
/// why, when this build or this process cannot profile; succeeds at once when already active.
pub fn activate_heap_profiling() -> Result<(), MemwatchError> {
    imp::activate()
}

/// Whether `value` (of [`HEAP_PROFILING_ENV`]) asks for heap profiling: `1`, `true`, `yes` or
/// `on`, any case.
pub fn env_requests_profiling(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// A heap profile of the live sampled allocations in pprof format (gzipped protobuf), or
/// [`MemwatchError::ProfilingUnavailable`] saying why not and how to turn it on.
///
/// Blocking (it writes and parses a dump file, and may wait for another dump): call it from a
/// blocking thread (`tokio::task::spawn_blocking`), not from async code.
pub fn heap_profile() -> Result<Vec<u8>, MemwatchError> {
    imp::dump()
}

/// Where heap profiling stands in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "heap-profiling"), allow(dead_code))]
enum State {
    /// The build has no profiler (cargo feature `heap-profiling` off).
    #[cfg_attr(feature = "heap-profiling", allow(dead_code))]
    NotBuilt,
    /// jemalloc started without `prof:true` (no `malloc_conf` export, or overridden), or it is
    /// not this process's allocator.
    NotEnabled,
    /// Set up but not recording.
    Inactive,
    /// Recording samples.
    Active,
}

impl State {
    fn reason(self) -> String {
        match self {
            State::NotBuilt => {
                "heap profiling is off: this build has no heap profiler (build the binary with \
                 its default cargo feature `heap-profiling`)"
                    .to_owned()
            }
            State::NotEnabled => {
                "heap profiling is off: jemalloc started without its profiler in this process \
                 (the binaries compile in `prof:true`; check that MALLOC_CONF does not set \
                 prof:false, or start the process with MALLOC_CONF=prof:true,prof_active:true)"
                    .to_owned()
            }
            State::Inactive => format!(
                "heap profiling is off: start the process with --heap-profiling or \
                 {HEAP_PROFILING_ENV}=1 (or MALLOC_CONF=prof_active:true); only allocations made \
                 after that are sampled"
            ),
            State::Active => String::new(),
        }
    }

    fn unavailable(self) -> MemwatchError {
        MemwatchError::ProfilingUnavailable {
            reason: self.reason(),
        }
    }
}

#[cfg(feature = "heap-profiling")]
mod imp {
    use jemalloc_pprof::PROF_CTL;
    use tikv_jemalloc_ctl::profiling;

    use super::State;
    use crate::error::MemwatchError;

    fn enabled() -> bool {
        // `opt.prof` fails (ENOENT) when jemalloc lacks the profiler; read it before touching
        // `PROF_CTL`, whose initialisation assumes it is there.
        profiling::prof::read().unwrap_or(false)
    }

    pub(super) fn state() -> State {
        if !enabled() {
            return State::NotEnabled;
        }
        let Some(ctl) = PROF_CTL.as_ref() else {
            return State::NotEnabled;
        };
        match ctl.try_lock() {
            Ok(ctl) if ctl.activated() => State::Active,
            Ok(_) => State::Inactive,
            // Held only while activating or dumping, and dumps happen only when active.
            Err(_) => State::Active,
        }
    }

    pub(super) fn activate() -> Result<(), MemwatchError> {
        if !enabled() {
            return Err(State::NotEnabled.unavailable());
        }
        let Some(ctl) = PROF_CTL.as_ref() else {
            return Err(State::NotEnabled.unavailable());
        };
        let mut ctl = ctl.try_lock().map_err(|_| MemwatchError::Profile {
            reason: "the profiler is busy (a dump is in progress)".to_owned(),
        })?;
        if ctl.activated() {
            return Ok(());
        }
        ctl.activate().map_err(|e| MemwatchError::Profile {
            reason: format!("activating jemalloc's profiler: {e}"),
        })?;
        tracing::info!(
            target: "weir::memory",
            lg_sample = profiling::lg_prof_sample::read().ok(),
            "heap profiling active"
        );
        Ok(())
    }

    pub(super) fn dump() -> Result<Vec<u8>, MemwatchError> {
        match state() {
            State::Active => {}
            other => return Err(other.unavailable()),
        }
        let Some(ctl) = PROF_CTL.as_ref() else {
            return Err(State::NotEnabled.unavailable());
        };
        let mut ctl = ctl.blocking_lock();
        ctl.dump_pprof().map_err(|e| MemwatchError::Profile {
            reason: format!("{e:#}"),
        })
    }
}

#[cfg(not(feature = "heap-profiling"))]
mod imp {
    use super::State;
    use crate::error::MemwatchError;

    pub(super) fn state() -> State {
        State::NotBuilt
    }

    pub(super) fn activate() -> Result<(), MemwatchError> {
        Err(State::NotBuilt.unavailable())
    }

    pub(super) fn dump() -> Result<Vec<u8>, MemwatchError> {
        Err(State::NotBuilt.unavailable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit-test binary does not export `malloc_conf`, so whatever the features, jemalloc
    /// (if linked at all) runs without its profiler here: profiling is unavailable, says so
    /// with a way to turn it on, and returns no bytes.
    #[test]
    fn unavailable_profiling_says_so_and_returns_no_bytes() {
        let st = profiling_status();
        assert!(!st.available);
        assert_eq!(st.format, None);
        let reason = st.reason.unwrap();
        assert!(reason.contains("heap profiling is off"), "{reason}");
        assert!(
            reason.contains("heap-profiling") || reason.contains("MALLOC_CONF"),
            "says how to turn it on: {reason}"
        );
        assert!(matches!(
            heap_profile(),
            Err(MemwatchError::ProfilingUnavailable { .. })
        ));
        assert!(matches!(
            activate_heap_profiling(),
            Err(MemwatchError::ProfilingUnavailable { .. })
        ));
    }

    #[test]
    fn env_values_that_turn_profiling_on() {
        for v in ["1", "true", "YES", " on "] {
            assert!(env_requests_profiling(v), "{v}");
        }
        for v in ["", "0", "false", "off", "no", "2"] {
            assert!(!env_requests_profiling(v), "{v}");
        }
    }

    #[test]
    fn jemalloc_conf_is_nul_terminated_and_inactive() {
        assert_eq!(JEMALLOC_CONF.last(), Some(&0));
        assert_eq!(JEMALLOC_CONF.iter().filter(|&&b| b == 0).count(), 1);
        let conf = std::str::from_utf8(&JEMALLOC_CONF[..JEMALLOC_CONF.len() - 1]).unwrap();
        assert!(conf.contains("prof:true"));
        assert!(conf.contains("prof_active:false"));
    }
}
