//! What a route answers: a Graph error or a reply, before it becomes HTTP (or a `$batch` item).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use chrono::{SecondsFormat, Utc};
use serde_json::json;

/// The content type Graph answers JSON with.
pub(super) const GRAPH_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// A Graph error: status, `error.code`, `error.message`, and `Retry-After` when throttled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GraphError {
    pub(super) status: u16,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) retry_after_s: Option<u64>,
}

impl GraphError {
    /// An error with no Retry-After.
    pub(super) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(super) fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequest", message)
    }

    pub(super) fn item_not_found() -> Self {
        Self::new(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    pub(super) fn sync_state_not_found() -> Self {
        Self::new(
            410,
            "SyncStateNotFound",
            "The sync state generation is not found or has expired. Start a full synchronization again.",
        )
    }

    pub(super) fn throttled(status: u16, code: &'static str, message: String, secs: u64) -> Self {
        Self {
            status,
            code,
            message,
            retry_after_s: Some(secs),
        }
    }

    /// The error as Graph writes it: `{"error": {code, message, innerError}}`, with
    /// `Retry-After` when throttled.
    pub(super) fn reply(&self) -> Reply {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {
                "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                "request-id": uuid::Uuid::new_v4().to_string(),
            }
        }});
        let mut reply = Reply::json(self.status, body.to_string());
        if let Some(secs) = self.retry_after_s {
            reply.headers.push(("Retry-After", secs.to_string()));
        }
        reply
    }
}

/// An answer before it becomes HTTP (or a `$batch` item).
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    /// JSON text, or nothing (204).
    pub(super) body: Option<String>,
}

impl Reply {
    pub(super) fn json(status: u16, body: String) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    pub(super) fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    pub(super) fn into_http(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = HttpResponse::build(status);
        for (name, value) in self.headers {
            builder.insert_header((name, value));
        }
        match self.body {
            Some(body) => builder.content_type(GRAPH_JSON).body(body),
            None => builder.finish(),
        }
    }
}

impl From<GraphError> for Reply {
    fn from(e: GraphError) -> Self {
        e.reply()
    }
}

/// A refusal of a `/_sim/*` request.
pub(super) fn sim_refusal(status: u16, message: impl Into<String>) -> Reply {
    GraphError::new(status, "SimulatorRequest", message).reply()
}

/// A refusal of a `/_sim/*` request, as HTTP.
pub(super) fn sim_error(status: u16, message: impl Into<String>) -> HttpResponse {
    sim_refusal(status, message).into_http()
}

/// Graph's answer to a request that failed inside the service (`error_rate`).
pub(super) fn internal_error() -> Reply {
    GraphError::new(
        500,
        "InternalServerError",
        "An internal server error occurred.",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    #[test]
    fn a_throttled_error_carries_retry_after_and_graphs_error_body() {
        let reply =
            GraphError::throttled(429, "ApplicationThrottled", "slow down".into(), 7).reply();
        assert_eq!(reply.status, 429);
        assert_eq!(reply.headers, [("Retry-After", "7".to_string())]);
        let v: Value = serde_json::from_str(reply.body.as_deref().unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "ApplicationThrottled");
        assert_eq!(v["error"]["message"], "slow down");
        assert!(v["error"]["innerError"]["request-id"].is_string());
        assert!(GraphError::item_not_found().reply().headers.is_empty());
    }

    #[test]
    fn a_reply_becomes_http_with_graphs_content_type_or_without_a_body() {
        let http = Reply::json(201, "{}".into()).into_http();
        assert_eq!(http.status(), 201);
        assert_eq!(http.headers().get("content-type").unwrap(), GRAPH_JSON);
        let http = Reply::empty(204).into_http();
        assert_eq!(http.status(), 204);
        assert!(http.headers().get("content-type").is_none());
        assert_eq!(
            Reply::json(1000, String::new()).into_http().status(),
            500,
            "a status HTTP cannot carry"
        );
    }

    #[test]
    fn simulator_refusals_and_injected_errors_say_who_refused() {
        let r = sim_refusal(404, "no mailbox 'x'");
        let v: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            (r.status, &v["error"]["code"]),
            (404, &json!("SimulatorRequest"))
        );
        assert_eq!(sim_error(409, "busy").status(), 409);
        let e = internal_error();
        assert_eq!(e.status, 500);
        assert!(e.body.unwrap().contains("InternalServerError"));
    }
}
