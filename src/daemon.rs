//! `ms1-ingestor run`: wires the engine, the control API and the signals together.
//!
//! Start: metrics recorder → Redis (configured, or a private redis-server when `redis.url` is
//! empty) → supervised actors → control API (and the webhook listener, when `webhook.bind` is
//! set: Graph's callbacks on a port of their own, the control API not reachable through it).
//! SIGTERM or SIGINT: drain (stop reading, flush the partial batch, wait for in-flight MS4
//! requests up to `pipeline.drain_timeout_ms`), then exit.

use crate::http::console;
use crate::http::control::{self, ControlState};
use crate::http::webhook::{self, WebhookState};
use crate::private_redis::PrivateRedis;
use crate::systemd;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ms1_actors::settings::redact_url;
use ms1_actors::{metrics as m, Health, Pipeline, Settings, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Installs the process-wide Prometheus recorder.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let latency_buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(m::MS4_LATENCY.into()), &latency_buckets)?
        .set_buckets_for_metric(Matcher::Full(m::RATE_WAIT.into()), &latency_buckets)?
        .set_quantiles(&[0.5, 0.9, 0.99, 0.999, 1.0])?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    m::register_counters();
    Ok(handle)
}

/// Installs the process-wide TLS provider awc needs (once; later calls are no-ops).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the daemon until SIGTERM/SIGINT. Returns when drained.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    install_tls_provider();
    let prometheus = install_metrics()?;
    let mut settings = settings;
    // Keep the private Redis alive for as long as the daemon runs.
    let private_redis = if settings.redis.url.is_empty() {
        let redis = PrivateRedis::start_private(Path::new(&settings.redis.data_dir))?;
        tracing::info!(url = %redact_url(&redis.url()), dir = %settings.redis.data_dir, "started a private redis-server on a unix socket only this user can open (redis.url is empty)");
        settings.redis.url = redis.url();
        Some(redis)
    } else {
        None
    };
    let settings = Arc::new(settings);
    let served = actix_rt::System::new().block_on(serve(settings, prometheus));
    // SIGTERM, not SIGKILL: the server writes its AOF out, keeping the last acknowledgements.
    if let Some(mut redis) = private_redis {
        redis.stop();
    }
    served
}

async fn serve(settings: Arc<Settings>, prometheus: PrometheusHandle) -> anyhow::Result<()> {
    let store = Store::connect(&settings.redis).map_err(|e| match e {
        ms1_actors::store::StoreError::Access(text) => anyhow::anyhow!("{text}"),
        e => anyhow::anyhow!("redis.url: {e}"),
    })?;
    check_redis_access(&store, &settings.redis.url).await?;
    let health = Health::default();
    let pipeline = Pipeline::start(settings.clone(), store.clone(), health.clone());
    tracing::info!(
        consumer = %settings.consumer_name(),
        prefix = %settings.redis.prefix,
        redis_cluster = settings.redis.cluster,
        ms4 = %redact_url(&settings.ms4.base_url),
        batch_size = settings.ms4.batch_size,
        rate_limit_per_min = settings.ms4.rate_limit_per_min,
        "ms1-ingestor started"
    );

    actix_rt::spawn(watch_redis(
        store.clone(),
        health.clone(),
        prometheus.clone(),
    ));
    let prometheus_for_status = prometheus.clone();

    let state = web::Data::new(ControlState {
        health: health.clone(),
        prometheus,
        token: settings.control.token.clone(),
        session: pipeline.session.clone(),
        dead_letters: pipeline.dead_letters.clone(),
        inspector: pipeline.inspector.clone(),
        console: Default::default(),
        default_interval: settings.graph.poll_interval_s,
        default_webhook: settings.webhook.enabled,
    });
    let hooks = web::Data::new(WebhookState {
        receiver: pipeline.webhook.clone(),
        max_items: settings.webhook.max_notifications_per_post,
        body_timeout: Duration::from_millis(settings.webhook.body_timeout_ms),
        retry_after_s: settings.webhook.backlog_retry_after_s,
    });
    // Graph's callbacks on their own listener, when `webhook.bind` says where.
    let webhook_server = if settings.webhook.bind.is_empty() {
        None
    } else {
        let hooks = hooks.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(hooks.clone())
                .configure(webhook::listener_routes)
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(2)
        .bind(&settings.webhook.bind)
        .map_err(|e| anyhow::anyhow!("webhook.bind {}: {e}", settings.webhook.bind))?
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::info!(bind = %settings.webhook.bind, "webhook listener up (/webhook/notifications, /webhook/lifecycle)");
        Some(handle)
    };
    let hooks_on_control = webhook_server.is_none();
    let server = HttpServer::new(move || {
        let app = App::new().app_data(state.clone()).app_data(hooks.clone());
        let app = if hooks_on_control {
            app.configure(webhook::routes)
        } else {
            app
        };
        app.configure(console::routes).configure(control::routes)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(&settings.control.bind)
    .map_err(|e| anyhow::anyhow!("control.bind {}: {e}", settings.control.bind))?
    .run();
    let server_handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(bind = %settings.control.bind, "control API listening");
    pipeline.http_ready();
    systemd::ready("started");
    actix_rt::spawn(systemd::supervise(health.clone(), prometheus_for_status));

    wait_for_signal().await;
    systemd::stopping("draining");
    tracing::info!(
        deadline_ms = settings.pipeline.drain_timeout_ms,
        "stopping: draining in-flight work"
    );
    let drained = pipeline
        .drain(Duration::from_millis(settings.pipeline.drain_timeout_ms))
        .await;
    if drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain deadline passed; unacknowledged entries stay pending and are re-sent on the next start");
    }
    server_handle.stop(true).await;
    if let Some(handle) = webhook_server {
        handle.stop(true).await;
    }
    actix_rt::System::current().stop();
    Ok(())
}

/// Connects to Redis once before anything starts. A Redis that refuses the daemon (a wrong
/// password, a certificate either side does not trust) stops the start with a message naming
/// the settings to fix, instead of a loop of actor restarts; a Redis that is only down (or
/// slow) is waited for by the actors as usual.
async fn check_redis_access(store: &Store, url: &str) -> anyhow::Result<()> {
    let reply = tokio::time::timeout(Duration::from_secs(10), store.verify()).await;
    match reply {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match ms1_actors::store::describe_refusal(&e) {
            Some(why) => anyhow::bail!("{why}"),
            None => {
                let text = e.to_string().to_ascii_lowercase();
                let cut_off = ["reset by peer", "unexpected end", "broken pipe", "eof"]
                    .iter()
                    .any(|s| text.contains(s));
                if cut_off && url.starts_with("redis://") {
                    tracing::warn!(error = %e, "redis closed the connection at once: if its port speaks TLS (Azure Cache for Redis: 6380), redis.url must be rediss://; starting anyway and retrying");
                } else {
                    tracing::warn!(error = %e, "redis is not reachable yet; starting anyway and retrying");
                }
                Ok(())
            }
        },
        Err(_) => {
            tracing::warn!("redis did not answer within 10 s; starting anyway and retrying");
            Ok(())
        }
    }
}

/// Keeps readiness and stream-length gauges current.
async fn watch_redis(store: Store, health: Health, prometheus: PrometheusHandle) {
    let keys = store.keys().clone();
    let streams = [
        ("inbound", keys.inbound()),
        ("outbound", keys.outbound()),
        ("dlq", keys.dlq()),
    ];
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match store.ping().await {
            Ok(()) => {
                health.set_redis(true);
                for (name, key) in &streams {
                    if let Ok(len) = store.len(key).await {
                        metrics::gauge!(m::STREAM_LEN, "stream" => *name).set(len as f64);
                    }
                    for (group, pending, lag) in store.groups(key).await.unwrap_or_default() {
                        metrics::gauge!(m::GROUP_PENDING, "stream" => *name, "group" => group.clone())
                            .set(pending as f64);
                        if let Some(lag) = lag {
                            metrics::gauge!(m::GROUP_LAG, "stream" => *name, "group" => group)
                                .set(lag as f64);
                        }
                    }
                }
            }
            Err(e) => {
                health.set_redis(false);
                tracing::warn!(error = %e, "redis is not reachable");
            }
        }
        let auth_ok = health.readiness().ms4_auth;
        metrics::gauge!(m::MS4_AUTH_OK).set(if auth_ok { 1.0 } else { 0.0 });
        prometheus.run_upkeep();
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
