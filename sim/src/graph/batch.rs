//! JSON batching: `POST /$batch`, at most 20 requests, each run like its route.

use super::answers::{GraphError, Reply, GRAPH_JSON};
use super::codecs::push_json_str;
use super::routes::{dispatch, is_batch_path, method_not_allowed, parse_route, Call, Route};
use super::state::{lock, Shared};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Graph's JSON batching limit.
const MAX_BATCH: usize = 20;

/// One item of a `$batch` body.
#[derive(Debug, Deserialize)]
struct BatchItem {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<Value>,
}

/// `POST /$batch`: at most 20 items, each run like its route (and throttled like it).
pub(super) async fn batch(state: &Shared, call: &Call<'_>) -> Reply {
    if call.method != "POST" {
        return method_not_allowed(call);
    }
    let invalid = || -> Reply { GraphError::bad_request("Invalid batch payload format.").into() };
    let Ok(body) = serde_json::from_slice::<Value>(call.body) else {
        return invalid();
    };
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return invalid();
    };
    // The mailboxes the batch touches, for the per-mailbox counters.
    let touched: Vec<usize> = {
        let s = lock(state);
        let mut t: Vec<usize> = requests
            .iter()
            .filter_map(|r| r.get("url")?.as_str())
            .filter_map(
                |u| match parse_route(u.split('?').next()?.trim_start_matches("/v1.0")) {
                    Ok(Route::Mailbox { user, .. }) => s.resolve(&user),
                    _ => None,
                },
            )
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    {
        let mut s = lock(state);
        s.stats.batch_requests += 1;
        let over = requests.len() > MAX_BATCH;
        if over {
            s.stats.batch_over_20 += 1;
        }
        for &m in &touched {
            s.mailboxes[m].counters.batch_requests += 1;
            if over {
                s.mailboxes[m].counters.batch_over_20 += 1;
            }
        }
        if over {
            return GraphError::bad_request(format!(
                "Number of requests in a batch exceeds limit of {MAX_BATCH}."
            ))
            .into();
        }
    }
    let Ok(items) = serde_json::from_value::<Vec<BatchItem>>(Value::Array(requests.clone())) else {
        return invalid();
    };
    if items.is_empty() {
        return invalid();
    }
    let mut ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return GraphError::bad_request("Batch request ids must be unique.").into();
    }
    for item in &items {
        let has_type = item
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"));
        let writes = matches!(
            item.method.to_ascii_uppercase().as_str(),
            "POST" | "PATCH" | "PUT"
        );
        if writes && (item.body.is_none() || !has_type) {
            return GraphError::bad_request(format!(
                "Write request id : {} does not contain Content-Type header or body.",
                item.id
            ))
            .into();
        }
    }
    let latency = lock(state).latency;
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    let mut out = String::from("{\"responses\":[");
    for (n, item) in items.iter().enumerate() {
        let method = item.method.to_ascii_uppercase();
        let url = item.url.trim();
        let url = url.strip_prefix("/v1.0").unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let body = item
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).expect("JSON serializes"))
            .unwrap_or_default();
        let prefer = item
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("prefer"))
            .map(|(_, v)| v.as_str());
        let sub = Call {
            method: &method,
            path: &path,
            query,
            prefer,
            body: &body,
            base: call.base,
            agent: call.agent,
            app: call.app,
        };
        let reply = if is_batch_path(&path) {
            GraphError::bad_request("A batch cannot contain a batch.").into()
        } else {
            dispatch(state, &sub, false).await
        };
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        push_json_str(&mut out, &item.id);
        out.push_str(&format!(",\"status\":{},\"headers\":{{", reply.status));
        let mut headers: Vec<(&str, String)> = reply.headers;
        if reply.body.is_some() {
            headers.push(("Content-Type", GRAPH_JSON.to_string()));
        }
        for (i, (k, v)) in headers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, k);
            out.push(':');
            push_json_str(&mut out, v);
        }
        out.push('}');
        if let Some(b) = reply.body {
            out.push_str(",\"body\":");
            out.push_str(&b);
        }
        out.push('}');
    }
    out.push_str("]}");
    Reply::json(200, out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    use super::super::state::State;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn shared() -> Shared {
        let state = State::new(&options(&["--messages-per-mailbox", "2"])).unwrap();
        Arc::new(Mutex::new(state))
    }

    /// Sends `body` to `$batch` with `method`; the status and the JSON answered.
    fn send(state: &Shared, method: &str, body: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(body).unwrap();
        let call = Call {
            method,
            path: "/$batch",
            query: "",
            prefer: None,
            body: &body,
            base: "http://sim/v1.0",
            agent: "test",
            app: "ms1-app",
        };
        let reply = actix_web::rt::System::new().block_on(batch(state, &call));
        let v = reply
            .body
            .as_deref()
            .map_or(Value::Null, |b| serde_json::from_str(b).unwrap());
        (reply.status, v)
    }

    fn get(id: &str, url: &str) -> Value {
        json!({"id": id, "method": "GET", "url": url})
    }

    #[test]
    fn a_batch_answers_each_item_like_its_route_in_order() {
        let state = shared();
        let (status, v) = send(
            &state,
            "POST",
            &json!({"requests": [
                get("1", "/users/invoices-0@contoso.example/messages/AAMk-0-1?$select=subject"),
                get("2", "/v1.0/users/invoices-1@contoso.example/messages/nope"),
                get("3", "/$batch"),
            ]}),
        );
        assert_eq!(status, 200);
        let r = &v["responses"];
        assert_eq!(
            (r[0]["id"].as_str(), r[0]["status"].as_u64()),
            (Some("1"), Some(200))
        );
        assert_eq!(r[0]["body"]["id"], "AAMk-0-1");
        assert_eq!(r[0]["headers"]["Content-Type"], GRAPH_JSON);
        assert_eq!(r[1]["status"], 404);
        assert_eq!(r[2]["status"], 400, "a batch cannot contain a batch");
        let s = lock(&state);
        assert_eq!(s.stats.batch_requests, 1);
        let per_mailbox: Vec<u64> = s
            .mailboxes
            .iter()
            .map(|m| m.counters.batch_requests)
            .collect();
        assert_eq!(per_mailbox, [1, 1, 0]);
    }

    #[test]
    fn more_than_twenty_items_are_refused_whole_and_counted_against_each_mailbox() {
        let state = shared();
        let requests: Vec<Value> = (0..21)
            .map(|i| get(&i.to_string(), "/users/invoices-2@contoso.example/messages"))
            .collect();
        let (status, v) = send(&state, "POST", &json!({ "requests": requests }));
        assert_eq!(status, 400);
        assert!(v["error"]["message"].as_str().unwrap().contains("20"));
        let s = lock(&state);
        assert_eq!(
            (s.stats.batch_over_20, s.mailboxes[2].counters.batch_over_20),
            (1, 1)
        );
        assert_eq!(s.mailboxes[2].counters.list_requests, 0, "no item ran");
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        let state = shared();
        let patch = json!({"id": "1", "method": "PATCH", "url": "/users/x/messages/y",
                           "body": {"isRead": true}});
        for body in [
            json!({}),
            json!({"requests": []}),
            json!({"requests": [get("1", "/subscriptions"), get("1", "/subscriptions")]}),
            json!({ "requests": [patch] }),
        ] {
            let (status, v) = send(&state, "POST", &body);
            assert_eq!(
                (status, &v["error"]["code"]),
                (400, &json!("BadRequest")),
                "{body}"
            );
        }
        assert_eq!(send(&state, "GET", &json!({})).0, 405);
    }
}
