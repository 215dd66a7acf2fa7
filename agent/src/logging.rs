//! Structured logging with `tracing`.
//!
//! Writes to stderr. Plain lines without timestamps under systemd (journald
//! stamps them, and `JOURNAL_STREAM` tells us we are there), JSON on request.
//! The level comes from `HOSTWATCH_LOG` (an `EnvFilter` directive), default `info`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("HOSTWATCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = match (format, under_journald) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Plain, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Plain, false) => builder.try_init(),
    };
}
