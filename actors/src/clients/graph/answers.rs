//! Graph's answers, classified once: `Ok` or a [`GraphError`] the caller acts on.

use super::{GraphError, DEFAULT_RETRY_AFTER};
use std::time::Duration;

/// `: {code}: {message}` of a Graph error body (short, for logs and `/ready`), or nothing.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => {
            let text = format!(": {}: {}", b.error.code, b.error.message);
            text.chars().take(200).collect()
        }
        Err(_) => String::new(),
    }
}

/// Classifies a Graph answer once.
pub(super) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(), GraphError> {
    let text = || String::from_utf8_lossy(&body[..body.len().min(1_024)]).into_owned();
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(GraphError::Unauthorized(status, error_detail(body))),
        404 => Err(GraphError::NotFound),
        410 => Err(GraphError::SyncStateGone),
        429 => Err(GraphError::Throttled(
            retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
        )),
        503 if retry_after.is_some() => Err(GraphError::Throttled(
            retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
        )),
        400 if text().to_ascii_lowercase().contains("syncstatenotfound") => {
            Err(GraphError::SyncStateGone)
        }
        400..=499 => Err(GraphError::Rejected {
            status,
            body: text(),
        }),
        _ => Err(GraphError::Transient(format!("Graph answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_once() {
        assert!(classify(200, None, b"{}").is_ok());
        assert!(matches!(
            classify(429, Some(Duration::from_secs(3)), b""),
            Err(GraphError::Throttled(d)) if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(503, Some(Duration::from_secs(1)), b""),
            Err(GraphError::Throttled(_))
        ));
        assert!(matches!(
            classify(503, None, b""),
            Err(GraphError::Transient(_))
        ));
        assert!(matches!(
            classify(410, None, b""),
            Err(GraphError::SyncStateGone)
        ));
        assert!(matches!(
            classify(400, None, br#"{"error":{"code":"SyncStateNotFound"}}"#),
            Err(GraphError::SyncStateGone)
        ));
        assert!(matches!(
            classify(401, None, b""),
            Err(GraphError::Unauthorized(401, _))
        ));
        assert!(matches!(
            classify(404, None, b""),
            Err(GraphError::NotFound)
        ));
        assert!(matches!(
            classify(400, None, b"InefficientFilter"),
            Err(GraphError::Rejected { status: 400, .. })
        ));
    }
}
