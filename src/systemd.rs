//! systemd integration: `READY=1` once serving, `STATUS=` lines an operator sees in
//! `systemctl status`, `WATCHDOG=1` only while the actors' work loops are alive, and
//! `STOPPING=1` when draining. Every call is a no-op when `NOTIFY_SOCKET` is not set.

use metrics_exporter_prometheus::PrometheusHandle;
use ms1_actors::Health;
use sd_notify::NotifyState;
use std::time::Duration;

/// A work loop silent for longer than this is stuck: the watchdog stops being fed and systemd
/// restarts the service.
pub const STALL: Duration = Duration::from_secs(30);

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Feeds the watchdog (every half `WATCHDOG_USEC`) while the actors are healthy, and keeps
/// `STATUS=` current. Runs until the process ends.
pub async fn supervise(health: Health, prometheus: PrometheusHandle) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let stalled = health.stalled(STALL);
        let readiness = health.readiness();
        if watchdog.is_some() {
            if stalled.is_empty() {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    ?stalled,
                    "actor loops stalled: not feeding the systemd watchdog"
                );
            }
        }
        let delivered = counter(&prometheus, ms1_actors::metrics::DELIVERED);
        let text = if readiness.ready {
            format!("ready; {delivered} e-mails delivered")
        } else {
            format!(
                "degraded: {}; {delivered} e-mails delivered",
                readiness.reasons.join("; ")
            )
        };
        status(&text);
    }
}

/// A counter's current value, read from the rendered exposition.
fn counter(prometheus: &PrometheusHandle, name: &str) -> u64 {
    prometheus
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
