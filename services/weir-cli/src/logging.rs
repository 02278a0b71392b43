//! Log setup: human output on a terminal, JSON with `--log-format json`; level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Logs go to stderr so stdout stays for command output.
pub(crate) fn init(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,weir=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
