//! JSON batching on messages: one `$batch` of at most 20 requests, one per message, each
//! answered with its own status. Marking read (`PATCH {"isRead": true}`) and moving
//! (`POST …/move {"destinationId"}`) both go this way; the destination folder of a move is
//! looked up once first ([`GraphClient::folder_id`]), so a move's 404 can only mean that the
//! message is gone.

use super::{segment, GraphClient, GraphError, BATCH_MAX, DEFAULT_RETRY_AFTER};
use awc::http::Method;
use serde::Deserialize;
use std::time::Duration;

impl GraphClient {
    /// Marks up to 20 messages read in one `$batch`; returns each message's status (200 done,
    /// 404 gone, 429 throttled, …) in the order given.
    pub(crate) async fn mark_read(
        &self,
        mailbox: &str,
        ids: &[String],
    ) -> Result<Vec<u16>, GraphError> {
        self.batch_each(
            mailbox,
            ids,
            "PATCH",
            "",
            serde_json::json!({"isRead": true}),
        )
        .await
    }

    /// Moves up to 20 messages to the folder `destination_id` (from [`folder_id`](Self::folder_id))
    /// in one `$batch`; returns each message's status (201 moved, 404 gone, …) in order. A
    /// moved message gets a new id in its new folder.
    pub(crate) async fn move_messages(
        &self,
        mailbox: &str,
        ids: &[String],
        destination_id: &str,
    ) -> Result<Vec<u16>, GraphError> {
        let body = serde_json::json!({ "destinationId": destination_id });
        self.batch_each(mailbox, ids, "POST", "/move", body).await
    }

    /// The id of a mailbox's folder named by a well-known name (`archive`, `junkemail`, …) or
    /// by its id: `GET /users/{u}/mailFolders/{folder}`; `None` when it does not exist.
    pub(crate) async fn folder_id(
        &self,
        mailbox: &str,
        folder: &str,
    ) -> Result<Option<String>, GraphError> {
        #[derive(Deserialize)]
        struct Folder {
            id: String,
        }
        let url = format!(
            "{}/users/{}/mailFolders/{}?$select=id,displayName",
            self.base,
            segment(mailbox),
            segment(folder)
        );
        match self.call(mailbox, Method::GET, &url, None, None, 1).await {
            Ok(body) => serde_json::from_slice::<Folder>(&body)
                .map(|f| Some(f.id))
                .map_err(|e| GraphError::Transient(format!("unexpected mail folder: {e}"))),
            Err(GraphError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One `$batch` of `method` on `/users/{mailbox}/messages/{id}{suffix}` with `body`, for
    /// each of `ids`; each sub-request's status in order. A throttled item pauses the mailbox.
    async fn batch_each(
        &self,
        mailbox: &str,
        ids: &[String],
        method: &str,
        suffix: &str,
        body: serde_json::Value,
    ) -> Result<Vec<u16>, GraphError> {
        assert!(ids.len() <= BATCH_MAX, "a $batch holds at most 20 requests");
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            responses: Vec<Sub>,
        }
        #[derive(Deserialize)]
        struct Sub {
            id: String,
            status: u16,
            #[serde(default)]
            headers: std::collections::HashMap<String, String>,
        }
        let requests: Vec<serde_json::Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                serde_json::json!({
                    "id": (i + 1).to_string(),
                    "method": method,
                    "url": format!("/users/{}/messages/{}{suffix}", segment(mailbox), segment(id)),
                    "headers": {"Content-Type": "application/json"},
                    "body": body,
                })
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "requests": requests }))
            .expect("a batch serializes");
        let url = format!("{}/$batch", self.base);
        let reply = self
            .call(
                mailbox,
                Method::POST,
                &url,
                Some(body),
                None,
                ids.len() as u32,
            )
            .await?;
        let reply: Reply = serde_json::from_slice(&reply)
            .map_err(|e| GraphError::Transient(format!("unexpected $batch answer: {e}")))?;
        let mut statuses = vec![0u16; ids.len()];
        let mut retry_after = None;
        for r in reply.responses {
            if let Some(slot) =
                r.id.parse::<usize>()
                    .ok()
                    .and_then(|i| statuses.get_mut(i.wrapping_sub(1)))
            {
                *slot = r.status;
            }
            if r.status == 429 || r.status == 503 {
                let d = r
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .and_then(|(_, v)| super::super::ms4::parse_retry_after(v))
                    .unwrap_or(DEFAULT_RETRY_AFTER);
                retry_after = Some(retry_after.map_or(d, |p: Duration| p.max(d)));
            }
        }
        if let Some(d) = retry_after {
            self.pause(mailbox, d).await;
        }
        Ok(statuses)
    }
}
