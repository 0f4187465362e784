//! Graph's callbacks: `POST /webhook/notifications` and `POST /webhook/lifecycle`.
//!
//! Public routes (no bearer token): Graph authenticates by `clientState`, which the
//! WebhookReceiver checks. A request with `?validationToken=…` is Graph's validation
//! handshake, answered here directly (200, `text/plain`, the decoded token) because Graph sends
//! it while the daemon is itself waiting for Graph to create the subscription. The token is
//! echoed only in the body, and only when it is 1–1,024 bytes of UTF-8 without control
//! characters (no CR/LF); anything else, and every body that is too big or not a notification
//! batch, gets a 4xx with the API's JSON error.
//!
//! Served on `webhook.bind` when set (the only port to expose to Graph; the control listener
//! then does not serve these routes), else on the control listener. Limits: a body must arrive
//! within `webhook.body_timeout_ms` after the head (408 otherwise: a client trickling a body
//! does not keep the connection), at most [`MAX_BODY`] bytes (413), at most
//! `webhook.max_notifications_per_post` items (413, nothing taken). While the pipeline's
//! backlog is above `pipeline.max_backlog` notifications get 503 with `Retry-After`.

use super::control::ApiError;
use actix::Addr;
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use ms1_actors::sources::webhook::NotTaken;
use ms1_actors::sources::webhook::{
    parse_notifications, LifecycleEvents, NotificationBatch, Notifications, WebhookReceiver,
};
use percent_encoding::percent_decode;
use serde_json::json;
use std::time::Duration;

/// Longest validation token echoed back (Graph's are about 150 characters).
const MAX_TOKEN: usize = 1_024;
/// Largest notification body taken.
pub const MAX_BODY: usize = 1024 * 1024;

/// What the webhook routes need: the receiver (when webhooks are enabled) and the limits.
#[derive(Clone)]
pub struct WebhookState {
    pub receiver: Option<Addr<WebhookReceiver>>,
    /// `webhook.max_notifications_per_post`.
    pub max_items: usize,
    /// `webhook.body_timeout_ms`.
    pub body_timeout: Duration,
    /// `webhook.backlog_retry_after_s`.
    pub retry_after_s: u64,
}

fn bad_token() -> HttpResponse {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_validation_token",
        "validationToken must be 1-1024 bytes of UTF-8 text without control characters",
    )
    .error_response()
}

/// The `validationToken` of a query string, form-decoded (`+` is a space) and strictly UTF-8:
/// `None` without one, `Some(None)` when it does not decode to text.
fn validation_token(query: &str) -> Option<Option<String>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key.as_bytes()).decode_utf8_lossy() == "validationToken").then(|| {
            let value = value.replace('+', " ");
            percent_decode(value.as_bytes())
                .decode_utf8()
                .ok()
                .map(|t| t.into_owned())
        })
    })
}

/// Answers the validation handshake: the token, as plain text, if it is sane.
fn validation(token: &str) -> HttpResponse {
    if token.is_empty() || token.len() > MAX_TOKEN || token.chars().any(char::is_control) {
        return bad_token();
    }
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(token.to_string())
}

fn receiver(state: &WebhookState) -> Result<&Addr<WebhookReceiver>, ApiError> {
    state.receiver.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks_disabled",
            "webhooks are not enabled on this daemon (webhook.enabled)",
        )
    })
}

fn parse(body: &[u8]) -> Result<NotificationBatch, ApiError> {
    parse_notifications(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_notification",
            format!("not a Graph notification body: {e}"),
        )
    })
}

/// Reads the body, at most [`MAX_BODY`] bytes (413 past that, announced or not), within
/// `timeout` (408 past that).
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    timeout: Duration,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a notification body is at most {MAX_BODY} bytes"),
        )
    };
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, payload.to_bytes_limited(MAX_BODY)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} ms (webhook.body_timeout_ms)",
                timeout.as_millis()
            ),
        )),
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(e))) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body could not be read: {e}"),
        )),
        Ok(Err(_)) => Err(too_large()),
    }
}

/// The handshake, or the parsed body and the receiver to hand it to.
async fn accept(
    state: &WebhookState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Result<(Addr<WebhookReceiver>, NotificationBatch), HttpResponse>, ApiError> {
    if let Some(token) = validation_token(req.query_string()) {
        return Ok(Err(token.as_deref().map_or_else(bad_token, validation)));
    }
    let body = read_body(req, payload, state.body_timeout).await?;
    let receiver = receiver(state)?.clone();
    let batch = parse(&body)?;
    if batch.value.len() > state.max_items {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_notifications",
            format!(
                "{} items in one POST; at most {} are taken (webhook.max_notifications_per_post): nothing was taken",
                batch.value.len(),
                state.max_items
            ),
        ));
    }
    Ok(Ok((receiver, batch)))
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
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (receiver, batch) = match accept(&state, &req, payload).await? {
        Ok(work) => work,
        Err(handshake) => return Ok(handshake),
    };
    let received = match receiver
        .send(Notifications(batch.value))
        .await
        .map_err(unavailable)?
    {
        Ok(received) => received,
        Err(e @ NotTaken::Backlogged { .. }) => {
            let mut answer =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backlogged", e.to_string())
                    .error_response();
            answer.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                state.retry_after_s.into(),
            );
            return Ok(answer);
        }
        Err(e) => return Err(unavailable(e)),
    };
    if received.accepted == 0 && received.rejected > 0 {
        return Err(none_accepted("notification"));
    }
    Ok(HttpResponse::Accepted().json(json!({
        "accepted": received.accepted,
        "duplicates": received.duplicates,
        "rejected": received.rejected,
    })))
}

async fn lifecycle(
    state: web::Data<WebhookState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (receiver, batch) = match accept(&state, &req, payload).await? {
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
            .route("/notifications", web::post().to(notifications))
            .route("/lifecycle", web::post().to(lifecycle)),
    );
}

/// The webhook routes alone, for their own listener (`webhook.bind`): anything else is 404.
pub fn listener_routes(cfg: &mut web::ServiceConfig) {
    routes(cfg);
    cfg.default_service(web::to(|| async {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route (this listener serves /webhook/notifications and /webhook/lifecycle only)",
        )
        .error_response()
    }));
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
        let echo = validation("Validation: caf\u{e9} \u{20ac}");
        assert_eq!(
            echo.headers().get("content-type").unwrap(),
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn the_validation_token_is_form_decoded_strictly() {
        assert_eq!(validation_token("a=1"), None);
        assert_eq!(
            validation_token("x=1&validationToken=Validation%3A+Testing+caf%C3%A9"),
            Some(Some("Validation: Testing café".to_string()))
        );
        assert_eq!(
            validation_token("validationToken"),
            Some(Some(String::new()))
        );
        assert_eq!(validation_token("validationToken=%FF%FE"), Some(None));
        assert_eq!(
            validation_token("validationToken=a%0D%0ASet-Cookie:+x"),
            Some(Some("a\r\nSet-Cookie: x".to_string()))
        );
    }
}
