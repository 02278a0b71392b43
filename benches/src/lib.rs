//! Shared pieces of Weir's bench binaries: reading another process's memory and CPU from
//! `/proc`, sampling RSS over time, a latency histogram, summary statistics, Markdown tables, results files with one
//! section per preset, and RSS charts.
//!
//! The binaries live in `src/bin/`; `scripts/bench.sh quick|full` runs them and prints the
//! tables that BENCHMARKS.md quotes.

pub mod chart;
pub mod hist;
pub mod procfs;
pub mod sections;
pub mod stats;
pub mod table;
