//! Control API routes: `/health`, `/ready` (no token, for load balancers and systemd) and
//! `/metrics/prometheus` (bearer token when `control.token` is set).
//!
//! Errors are JSON `{"error":{"code","message"}}`.

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use metrics_exporter_prometheus::PrometheusHandle;
use ms1_actors::Health;
use serde_json::json;

/// What the routes read.
#[derive(Clone)]
pub struct ControlState {
    pub health: Health,
    pub prometheus: PrometheusHandle,
    pub token: String,
}

/// An error answer in the API's shape: `{"error":{"code","message"}}` with its status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

/// Checks `Authorization: Bearer <token>` in constant time.
pub fn authorize(req: &HttpRequest, token: &str) -> Result<(), ApiError> {
    if token.is_empty() {
        return Ok(());
    }
    let given = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <control.token>)",
        ))
    }
}

/// Compares in constant time (for equal lengths; a length mismatch is not a secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

async fn ready(state: web::Data<ControlState>) -> HttpResponse {
    let r = state.health.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(r)
}

async fn prometheus(
    state: web::Data<ControlState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.token)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render()))
}

async fn not_found() -> HttpResponse {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").error_response()
}

/// Registers the control routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics/prometheus", web::get().to(prometheus))
        .default_service(web::to(not_found));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
