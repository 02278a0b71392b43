//! `weir-ingestd`: parses flags and runs [`weir_ingestd::run`] through the shared service `main`.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use weir_ingestd::Cli;
use weir_service::cli::{Command, health_main, parse_with_process_args, service_main};

// jemalloc (`jemalloc` feature) and its inactive heap profiler (`heap-profiling` feature).
weir_memwatch::binary_allocator!();

fn main() -> std::process::ExitCode {
    let (cli, process) = parse_with_process_args::<Cli>();
    // `health` GETs /ready on the address the settings resolve to (the container health check).
    if let Some(Command::Health(check)) = &cli.command {
        return health_main(check, |env| cli.resolve(env).map(|c| c.bind));
    }
    service_main(
        &cli.log_format,
        &process,
        cli.command.as_ref(),
        |env| cli.resolve(env),
        weir_ingestd::run,
    )
}
