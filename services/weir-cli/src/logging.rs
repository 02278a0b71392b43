//! Log setup of the one-shot commands (`ingest`, `ping`, ...): to stderr (stdout stays for
//! command output), filtered by `WEIR_LOG` like every Weir binary (default `warn,weir=info`;
//! `weir ingest --quiet`: errors only), text or JSON (`--log-format`, `WEIR_LOG_FORMAT`).

use weir_app::cli::ProcessFlags;
use weir_app::config::Env;
use weir_app::settings::{LogConfig, LogFormat};

/// Installs the global subscriber.
pub(crate) fn init(process: &ProcessFlags, env: &Env, quiet: bool) {
    let filter = if quiet {
        "error".to_owned()
    } else {
        env.get("WEIR_LOG").unwrap_or("warn,weir=info").to_owned()
    };
    let format = match process
        .log_format
        .as_deref()
        .or_else(|| env.get("WEIR_LOG_FORMAT"))
    {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    weir_app::cli::init_logging(&LogConfig { filter, format });
}
