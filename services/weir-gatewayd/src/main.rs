//! `weir-gatewayd`: Weir's GraphQL gateway, fed from NATS JetStream; run several. Everything it
//! runs is put together by `weir_app::app` (the same composition as `weir serve` and
//! `weir-ingestd`); settings: `weir-gatewayd config show`, `weir-gatewayd config schema`.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use clap::Parser;
use weir_app::cli::{ProcessFlags, ServiceArgs};
use weir_app::settings::Role;

// jemalloc (`jemalloc` feature) and its inactive heap profiler (`heap-profiling` feature).
weir_memwatch::binary_allocator!();

/// Command line of `weir-gatewayd`.
#[derive(Debug, Parser)]
#[command(
    name = "weir-gatewayd",
    version,
    about = "Weir's GraphQL gateway, fed from the NATS JetStream bus."
)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    process: ProcessFlags,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    weir_app::cli::main(Role::Gatewayd, &cli.service, &cli.process, |_| {}, None)
}
