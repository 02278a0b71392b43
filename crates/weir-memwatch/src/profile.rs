//! Heap profiles.
//!
//! A pprof heap profile needs jemalloc's sampling profiler (`tikv-jemallocator`'s `profiling`
//! feature and `MALLOC_CONF=prof:true`) and a conversion of its dump into pprof protobuf with
//! symbolised stacks. This build does not do that conversion, so it reports profiling as
//! unavailable with the reason, and never returns a made-up profile.

use serde::Serialize;

use crate::error::MemwatchError;

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
    ProfilingStatus {
        available: false,
        format: None,
        reason: Some(unavailable_reason()),
    }
}

fn unavailable_reason() -> String {
    if cfg!(feature = "jemalloc") {
        "heap profiling is off: this build reads jemalloc statistics but does not convert \
         jemalloc heap dumps (prof.dump) to pprof; build with jemalloc profiling and use \
         `jeprof --pprof` on a dump taken with MALLOC_CONF=prof:true"
            .to_owned()
    } else {
        "heap profiling is off: this build has no jemalloc support (cargo feature `jemalloc`)"
            .to_owned()
    }
}

/// A heap profile in pprof format, or [`MemwatchError::ProfilingUnavailable`] saying why not.
pub fn heap_profile() -> Result<Vec<u8>, MemwatchError> {
    let status = profiling_status();
    Err(MemwatchError::ProfilingUnavailable {
        reason: status.reason.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_profiling_says_so_and_returns_no_bytes() {
        let st = profiling_status();
        assert!(!st.available);
        assert!(
            st.reason
                .as_deref()
                .unwrap()
                .contains("heap profiling is off")
        );
        assert!(matches!(
            heap_profile(),
            Err(MemwatchError::ProfilingUnavailable { .. })
        ));
    }
}
