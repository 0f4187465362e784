//! Graph's callbacks: `POST /webhook/notifications` and `POST /webhook/lifecycle`.
//!
//! Public routes (no bearer token): Graph authenticates by `clientState`, which the
//! WebhookReceiver checks. A request with `?validationToken=…` is Graph's validation
//! handshake, answered here directly (200, `text/plain`, the decoded token) because Graph sends
//! it while the daemon is itself waiting for Graph to create the subscription.

use super::control::ApiError;
use actix::Addr;
use actix_web::{http::StatusCode, web, HttpResponse, ResponseError};
use ms1_actors::webhook::{LifecycleEvents, NotificationBatch, Notifications, WebhookReceiver};
use serde_json::json;
use std::collections::HashMap;

/// Longest validation token echoed back (Graph's are about 150 characters).
const MAX_TOKEN: usize = 1_024;
/// Largest notification body taken.
pub const MAX_BODY: usize = 1024 * 1024;

/// The receiver, when webhooks are enabled.
#[derive(Clone)]
pub struct WebhookState(pub Option<Addr<WebhookReceiver>>);

/// Answers the validation handshake: the token, as plain text, if it is sane.
fn validation(token: &str) -> HttpResponse {
    if token.is_empty() || token.len() > MAX_TOKEN || token.chars().any(char::is_control) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_validation_token",
            "validationToken must be 1-1024 printable characters",
        )
        .error_response();
    }
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(token.to_string())
}

fn receiver(state: &WebhookState) -> Result<&Addr<WebhookReceiver>, ApiError> {
    state.0.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks_disabled",
            "webhooks are not enabled on this daemon (webhook.enabled)",
        )
    })
}

fn parse(body: &[u8]) -> Result<NotificationBatch, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_notification",
            format!("not a Graph notification body: {e}"),
        )
    })
}

/// The handshake, or the parsed body and the receiver to hand it to.
fn accept(
    state: &WebhookState,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Result<(Addr<WebhookReceiver>, NotificationBatch), HttpResponse>, ApiError> {
    if let Some(token) = query.get("validationToken") {
        return Ok(Err(validation(token)));
    }
    let receiver = receiver(state)?.clone();
    Ok(Ok((receiver, parse(body)?)))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

fn none_accepted(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "rejected",
        format!("no {what} was accepted (clientState or subscription unknown)"),
    )
}

async fn notifications(
    state: web::Data<WebhookState>,
    query: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (receiver, batch) = match accept(&state, &query, &body)? {
        Ok(work) => work,
        Err(handshake) => return Ok(handshake),
    };
    let received = receiver
        .send(Notifications(batch.value))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    if received.accepted == 0 && received.rejected > 0 {
        return Err(none_accepted("notification"));
    }
    Ok(HttpResponse::Accepted()
        .json(json!({"accepted": received.accepted, "rejected": received.rejected})))
}

async fn lifecycle(
    state: web::Data<WebhookState>,
    query: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (receiver, batch) = match accept(&state, &query, &body)? {
        Ok(work) => work,
        Err(handshake) => return Ok(handshake),
    };
    let received = receiver
        .send(LifecycleEvents(batch.value))
        .await
        .map_err(unavailable)?;
    if received.accepted == 0 && received.rejected > 0 {
        return Err(none_accepted("lifecycle event"));
    }
    Ok(HttpResponse::Accepted().json(json!({"accepted": received.accepted})))
}

/// Registers the webhook routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/webhook")
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .route("/notifications", web::post().to(notifications))
            .route("/lifecycle", web::post().to(lifecycle)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validation_token_is_echoed_only_when_sane() {
        let ok = validation("Validation: Testing client application reachability");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            validation("a\r\nSet-Cookie: x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            validation(&"x".repeat(2_000)).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(validation("").status(), StatusCode::BAD_REQUEST);
    }
}
