//! The MS4 Persistence API client: `POST {base_url}/batch-metadata`.
//!
//! A request carries the batch as one JSON array (records are already serialized in the
//! outbound stream and are concatenated, never re-parsed), `X-API-Key`, and an
//! `Idempotency-Key` that is a hash of the batch's record keys in order, so the same batch
//! re-sent after a crash or a retry carries the same key. Each answer is classified once into a
//! [`Verdict`]; the sender acts on the verdict, never on raw status codes.

use crate::settings::Ms4Settings;
use awc::http::StatusCode;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Longest response body kept (for dead letters and logs).
const BODY_KEEP: usize = 2_048;
/// Retry-After assumed when a 429 carries none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What MS4's answer means for the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 2xx: the whole batch is stored.
    Accepted,
    /// 400/413/422: at least one record is invalid; bisect to find it.
    Reject { status: u16, body: String },
    /// 401/403: the API key is refused; stop sending, keep everything.
    Unauthorized { status: u16 },
    /// 429 (or 503 with Retry-After): pause every sender this long.
    RetryAfter(Duration),
    /// 5xx, timeout, connection error: retry with backoff; counts for the breaker.
    Transient(String),
}

impl Verdict {
    /// Label for the `outcome` of the request counter.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Reject { .. } => "rejected",
            Verdict::Unauthorized { .. } => "unauthorized",
            Verdict::RetryAfter(_) => "throttled",
            Verdict::Transient(_) => "transient",
        }
    }
}

/// The raw answer, before classification.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// `Location` of a 3xx, to name it (it is never followed).
    pub location: Option<String>,
    pub body: String,
}

/// Classifies an answer (or a failure to get one).
pub(crate) fn classify(answer: Result<Answer, String>) -> Verdict {
    let a = match answer {
        Ok(a) => a,
        Err(e) => return Verdict::Transient(e),
    };
    let retry_after = a.retry_after.as_deref().and_then(parse_retry_after);
    match a.status {
        200..=299 => Verdict::Accepted,
        300..=399 => Verdict::Transient(super::redirect_refused(
            "MS4",
            a.status,
            a.location.as_deref(),
        )),
        400 | 413 | 422 => Verdict::Reject {
            status: a.status,
            body: a.body,
        },
        401 | 403 => Verdict::Unauthorized { status: a.status },
        429 => Verdict::RetryAfter(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)),
        503 if retry_after.is_some() => Verdict::RetryAfter(retry_after.unwrap_or_default()),
        s => Verdict::Transient(format!("MS4 answered {s}")),
    }
}

/// `Retry-After` as delay-seconds (the form MS4 and Graph use). An HTTP-date is not expected
/// from MS4; it falls back to the default.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3_600.0)))
}

/// `Idempotency-Key` of a batch: SHA-256 of its record keys in the order sent.
pub(crate) fn batch_key<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// JSON array of already-serialized records.
pub(crate) fn batch_body<'a>(records: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 * 1024);
    body.push(b'[');
    for (i, r) in records.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r.as_bytes());
    }
    body.push(b']');
    body
}

/// Talks to one MS4. Not `Send` (awc): lives on the actor's arbiter.
pub(crate) struct Ms4Client {
    http: awc::Client,
    url: String,
    api_key: crate::secret::Secret,
}

impl Ms4Client {
    pub(crate) fn new(s: &Ms4Settings) -> Self {
        let pool = super::Pool {
            connect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            limit: s.max_in_flight.max(1) * 2,
        };
        let http = super::http_client(pool, s.request_timeout());
        Self {
            http,
            url: format!("{}/batch-metadata", s.base_url.trim_end_matches('/')),
            api_key: s.api_key.clone(),
        }
    }

    /// Sends one batch; a transport failure is the `Err` string.
    pub(crate) async fn post(
        &self,
        body: Vec<u8>,
        idempotency_key: &str,
    ) -> Result<Answer, String> {
        let mut resp = self
            .http
            .post(&self.url)
            .insert_header(("X-API-Key", self.api_key.expose()))
            .insert_header(("Idempotency-Key", idempotency_key))
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
            .await
            .map_err(|e| format!("MS4 request failed: {e}"))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = if status == StatusCode::ACCEPTED || status.is_success() {
            // The body of an accepted batch is not needed; drain it so the connection is reused.
            let _ = resp.body().limit(64 * 1024).await;
            String::new()
        } else {
            match resp.body().limit(64 * 1024).await {
                Ok(b) => String::from_utf8_lossy(&b[..b.len().min(BODY_KEEP)]).into_owned(),
                Err(e) => format!("(body unreadable: {e})"),
            }
        };
        Ok(Answer {
            status: status.as_u16(),
            retry_after,
            location,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<&str>) -> Result<Answer, String> {
        Ok(Answer {
            status,
            retry_after: retry_after.map(str::to_string),
            location: None,
            body: "b".into(),
        })
    }

    #[test]
    fn every_answer_is_classified_once() {
        assert_eq!(classify(answer(202, None)), Verdict::Accepted);
        assert_eq!(
            classify(answer(400, None)),
            Verdict::Reject {
                status: 400,
                body: "b".into()
            }
        );
        assert_eq!(
            classify(answer(401, None)),
            Verdict::Unauthorized { status: 401 }
        );
        assert_eq!(
            classify(answer(429, Some("3"))),
            Verdict::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(
            classify(answer(429, None)),
            Verdict::RetryAfter(DEFAULT_RETRY_AFTER)
        );
        assert_eq!(
            classify(answer(503, Some("2"))),
            Verdict::RetryAfter(Duration::from_secs(2))
        );
        assert!(matches!(classify(answer(503, None)), Verdict::Transient(_)));
        assert!(matches!(classify(answer(500, None)), Verdict::Transient(_)));
        for redirect in [301, 302, 303, 307, 308] {
            assert!(
                matches!(classify(answer(redirect, None)), Verdict::Transient(ref r) if r.contains("never followed")),
                "{redirect} must keep the batch queued"
            );
        }
        assert!(matches!(
            classify(Err("timeout".into())),
            Verdict::Transient(_)
        ));
    }

    #[test]
    fn retry_after_accepts_seconds_and_ignores_garbage() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn the_batch_key_is_stable_and_order_sensitive() {
        let a = batch_key(["k1", "k2"]);
        assert_eq!(a, batch_key(["k1", "k2"]));
        assert_ne!(a, batch_key(["k2", "k1"]));
        assert_ne!(batch_key(["k1k2"]), batch_key(["k1", "k2"]));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn the_body_is_a_json_array_of_the_records() {
        let body = batch_body([r#"{"a":1}"#, r#"{"b":2}"#]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!([{"a":1},{"b":2}]));
        assert_eq!(batch_body([]), b"[]");
    }
}
