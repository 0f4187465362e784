//! Logging: `pretty` for a terminal, `json` for log shippers, `journald` with structured
//! fields. Where no journald socket exists, `journald` falls back to JSON on stdout and says so
//! once.

use ms1_actors::settings::{LogFormat, LogSettings};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber. Call once, first thing.
pub fn init(log: &LogSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&log.level)
        .map_err(|e| anyhow::anyhow!("log.level `{}`: {e}", log.level))?;
    let registry = tracing_subscriber::registry().with(filter);
    match log.format {
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(
                    layer
                        .with_syslog_identifier("ms1-ingestor".into())
                        .with_field_prefix(None),
                )
                .init(),
            Err(e) => {
                registry
                    .with(
                        fmt::layer()
                            .json()
                            .flatten_event(true)
                            .with_current_span(true),
                    )
                    .init();
                tracing::warn!(error = %e, "log.format = journald but journald is not reachable; logging JSON to stdout instead");
            }
        },
    }
    Ok(())
}
