//! The HTTP edge of the Graph API: `/v1.0/*` (after the `Bearer` check), the token
//! endpoint and token introspection. Each extracts, hands over and maps the answer.

use super::answers::sim_error;
use super::batch::batch;
use super::routes::{dispatch, is_batch_path, Call};
use super::state::{lock, Shared};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::collections::HashMap;
use std::time::Instant;
use url::form_urlencoded;

/// A request header as text, if it is there and readable.
fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Every `/v1.0/*` request (and 404 for anything else the routes do not name).
pub(super) async fn graph_api(
    state: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let Some(path) = req
        .path()
        .strip_prefix("/v1.0")
        .filter(|p| p.starts_with('/'))
    else {
        return sim_error(404, format!("no route for {}", req.path()));
    };
    let state = state.get_ref();
    let app = match lock(state).authorize(header(&req, "authorization"), Instant::now()) {
        Ok(app) => app,
        Err(e) => return e.reply().into_http(),
    };
    let base = {
        let info = req.connection_info();
        format!("{}://{}/v1.0", info.scheme(), info.host())
    };
    let call = Call {
        method: req.method().as_str(),
        path,
        query: req.query_string(),
        prefer: header(&req, "prefer"),
        body: &body,
        base: &base,
        agent: header(&req, "user-agent").unwrap_or(""),
        app: &app,
    };
    let reply = if is_batch_path(path) {
        batch(state, &call).await
    } else {
        dispatch(state, &call, true).await
    };
    reply.into_http()
}

/// `POST /{tenant}/oauth2/v2.0/token`: an access token for a client credentials or refresh
/// token grant, or the OAuth error.
pub(super) async fn token(
    state: web::Data<Shared>,
    tenant: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let token_url = {
        let info = req.connection_info();
        format!("{}://{}{}", info.scheme(), info.host(), req.path())
    };
    let result = lock(&state).issue_token(&tenant, &token_url, &form, Instant::now());
    token_answer(result)
}

/// A token (not to be cached on the way) or the OAuth error with its status.
fn token_answer(result: Result<serde_json::Value, (u16, serde_json::Value)>) -> HttpResponse {
    match result {
        Ok(v) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store, no-cache"))
            .json(v),
        Err((status, v)) => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
                .json(v)
        }
    }
}

/// `GET /metadata/identity/oauth2/token`: a managed identity token, as IMDS gives one.
pub(super) async fn imds_token(state: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    let query: HashMap<String, String> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let result = lock(&state).issue_imds_token(header(&req, "metadata"), &query, Instant::now());
    token_answer(result)
}

/// `POST /_sim/introspect`: RFC 7662 token introspection, the form field `token` (what
/// Dovecot's oauth2 passdb sends with `introspection_mode = post`).
pub(super) async fn introspect(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let token = form_urlencoded::parse(&body).find_map(|(k, v)| (k == "token").then_some(v));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_request",
            "error_description": "The request body must contain the parameter 'token'."}));
    };
    let v = lock(&state).introspect(&token, Instant::now());
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(v)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    use super::super::answers::GRAPH_JSON;
    use super::super::state::State;
    use actix_web::test::TestRequest;
    use actix_web::FromRequest;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    const MESSAGES: &str = "/v1.0/users/invoices-0@contoso.example/messages";

    fn data() -> web::Data<Shared> {
        web::Data::new(Arc::new(Mutex::new(State::new(&options(&[])).unwrap())))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        actix_web::rt::System::new().block_on(f)
    }

    fn body_json(resp: HttpResponse) -> Value {
        let bytes = block_on(actix_web::body::to_bytes(resp.into_body())).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A token from the token endpoint, as the daemon gets one.
    fn issue(state: &web::Data<Shared>) -> String {
        let req = TestRequest::post()
            .uri("/contoso/oauth2/v2.0/token")
            .param("tenant", "contoso")
            .to_http_request();
        let tenant = block_on(web::Path::<String>::extract(&req)).unwrap();
        let form = "grant_type=client_credentials&client_id=ms1-app&client_secret=sim-secret\
                    &scope=https%3A%2F%2Fgraph.microsoft.com%2F.default";
        let resp = block_on(token(state.clone(), tenant, req, web::Bytes::from(form)));
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("cache-control").unwrap(),
            "no-store, no-cache"
        );
        body_json(resp)["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn graph_routes_want_a_bearer_token_the_token_endpoint_issued() {
        let state = data();
        let req = TestRequest::get().uri(MESSAGES).to_http_request();
        let resp = block_on(graph_api(state.clone(), req, web::Bytes::new()));
        assert_eq!(resp.status(), 401);
        assert_eq!(
            body_json(resp)["error"]["code"],
            "InvalidAuthenticationToken"
        );

        let bearer = format!("Bearer {}", issue(&state));
        let req = TestRequest::get()
            .uri(MESSAGES)
            .insert_header(("Authorization", bearer.as_str()))
            .insert_header(("User-Agent", "ms1/test"))
            .to_http_request();
        let resp = block_on(graph_api(state.clone(), req, web::Bytes::new()));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("content-type").unwrap(), GRAPH_JSON);
        let s = lock(&state);
        assert_eq!(s.mailboxes[0].pollers.seen[0].0, "ms1/test");
    }

    #[test]
    fn paths_outside_v1_are_not_found_before_any_token_check() {
        for path in ["/v2.0/users", "/v1.0x/users", "/"] {
            let req = TestRequest::get().uri(path).to_http_request();
            let resp = block_on(graph_api(data(), req, web::Bytes::new()));
            assert_eq!(resp.status(), 404, "{path}");
        }
    }

    #[test]
    fn a_refused_token_request_keeps_its_status_and_oauth_error() {
        let req = TestRequest::post()
            .param("tenant", "fabrikam")
            .to_http_request();
        let tenant = block_on(web::Path::<String>::extract(&req)).unwrap();
        let resp = block_on(token(
            data(),
            tenant,
            req,
            web::Bytes::from_static(b"grant_type=client_credentials"),
        ));
        assert_eq!(resp.status(), 400);
        assert_eq!(body_json(resp)["error"], "invalid_request");
    }

    #[test]
    fn introspection_wants_a_token_field_and_answers_inactive_for_an_unknown_one() {
        let resp = block_on(introspect(data(), web::Bytes::from_static(b"foo=bar")));
        assert_eq!(resp.status(), 400);
        let resp = block_on(introspect(data(), web::Bytes::from_static(b"token=")));
        assert_eq!(resp.status(), 400);
        let resp = block_on(introspect(
            data(),
            web::Bytes::from_static(b"token=never-issued"),
        ));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
        assert_eq!(body_json(resp), json!({"active": false}));
    }
}
