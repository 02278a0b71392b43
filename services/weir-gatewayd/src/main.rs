//! `weir-gatewayd`: Weir's GraphQL gateway, fed from NATS JetStream; run several. Everything it
//! runs is put together by `weir_app::app` (the same composition as `weir serve` and
//! `weir-ingestd`); settings: `weir-gatewayd config show`, `weir-gatewayd config schema`.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use clap::Parser;

// jemalloc (`jemalloc` feature) and its inactive heap profiler (`heap-profiling` feature).
weir_memwatch::binary_allocator!();

fn main() -> std::process::ExitCode {
    weir_app::cli::GatewaydCli::parse().main()
}
