//! The `weir` subcommands, one module each.

pub(crate) mod consume;
pub(crate) mod generate;
pub(crate) mod ingest;
pub(crate) mod ping;
pub(crate) mod publish;
pub(crate) mod serve;
pub(crate) mod validate;

/// Exit code: a fatal error (nothing or not everything could be done).
pub(crate) const EXIT_FATAL: u8 = 1;
/// Exit code: the run completed but some records were dead-lettered.
pub(crate) const EXIT_DEAD_LETTERS: u8 = 3;
/// Exit code: interrupted (Ctrl-C); resumable.
pub(crate) const EXIT_CANCELLED: u8 = 4;
