//! Log setup of the one-shot commands (`ingest`, `ping`, ...): to stderr (stdout stays for
//! command output), filtered by `WEIR_LOG` like every Weir binary (default `warn,weir=info`;
//! `weir ingest --quiet`: errors only), text or JSON (`--log-format`, `WEIR_LOG_FORMAT`).

use weir_app::cli::ProcessFlags;
use weir_app::config::Env;
use weir_app::settings::{LogConfig, LogFormat};

/// Installs the global subscriber: `settings` (the `[log]` a command resolved from its settings
/// file and the environment) when given, else `WEIR_LOG` / `WEIR_LOG_FORMAT`; `--quiet` and
/// `--log-format` win.
pub(crate) fn init(process: &ProcessFlags, env: &Env, quiet: bool, settings: Option<LogConfig>) {
    let (filter, format) = match settings {
        Some(l) => (l.filter, l.format),
        None => (
            env.get("WEIR_LOG").unwrap_or("warn,weir=info").to_owned(),
            match env.get("WEIR_LOG_FORMAT") {
                Some("json") => LogFormat::Json,
                _ => LogFormat::Text,
            },
        ),
    };
    let filter = if quiet { "error".to_owned() } else { filter };
    let format = match process.log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        _ => format,
    };
    weir_app::cli::init_logging(&LogConfig { filter, format });
}
