//! `weir-gatewayd`: parses flags and runs [`weir_gatewayd::run`] through the shared service `main`.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use weir_gatewayd::Cli;
use weir_service::cli::{parse_with_process_args, service_main};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads this symbol once, at its first allocation (before `main`): profiler set up
/// but inactive. `MALLOC_CONF` in the environment is applied after it.
// SAFETY (of the unsafe attribute): nothing else in the program defines `malloc_conf`; jemalloc
// declares it as a weak `const char *`, which `Option<&'static u8>` matches in layout, and the
// bytes are a NUL-terminated static string.
#[cfg(feature = "heap-profiling")]
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(no_mangle)]
static malloc_conf: Option<&'static u8> = Some(&weir_memwatch::JEMALLOC_CONF[0]);

fn main() -> std::process::ExitCode {
    let (cli, process) = parse_with_process_args::<Cli>();
    service_main(
        &cli.log_format,
        &process,
        cli.command.as_ref(),
        |env| cli.resolve(env),
        weir_gatewayd::run,
    )
}
