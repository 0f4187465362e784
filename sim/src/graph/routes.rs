//! Routing: a Graph request as a [`Call`], its [`Route`], and the dispatch that runs it
//! through the mailbox's budget, latency and injected errors.

use super::answers::{internal_error, GraphError, Reply};
use super::codecs::percent_decode;
use super::state::{lock, Shared};
use super::subscriptions::{
    create_subscription, delete_subscription, folder_key, get_subscription, list_subscriptions,
    renew_subscription,
};
use super::throttling::{Admission, InFlight};
use std::time::Instant;

/// One Graph request (top-level or a `$batch` item).
pub(super) struct Call<'a> {
    pub(super) method: &'a str,
    /// After `/v1.0`, as sent (percent-encoded), starting with `/`.
    pub(super) path: &'a str,
    pub(super) query: &'a str,
    pub(super) prefer: Option<&'a str>,
    pub(super) body: &'a [u8],
    /// `http://host:port/v1.0`, for nextLink and deltaLink.
    pub(super) base: &'a str,
    /// The caller's `User-Agent` (ms1 names its daemon instance there).
    pub(super) agent: &'a str,
    /// The application (client id) its token was issued to.
    pub(super) app: &'a str,
    /// The tenant its token was issued in: only that tenant's mailboxes answer.
    pub(super) tenant: &'a str,
}

impl Call<'_> {
    /// The JSON body, or Graph's 400 for a body that is not JSON.
    pub(super) fn json(&self) -> Result<serde_json::Value, GraphError> {
        serde_json::from_slice(self.body)
            .map_err(|_| GraphError::bad_request("Empty Payload. JSON content expected."))
    }
}

/// What a request on a mailbox asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MailboxOp {
    List {
        folder: Option<String>,
    },
    Delta {
        folder: String,
    },
    Message(String),
    Attachments(String),
    /// `GET /users/{u}/mailFolders/{folder}`: one folder, by well-known name or id.
    Folder(String),
    /// `POST /users/{u}/messages/{id}/move`.
    Move(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Mailbox { user: String, op: MailboxOp },
    Subscriptions,
    Subscription(String),
}

/// The route a path after `/v1.0` names; 400 for one Graph does not have.
pub(super) fn parse_route(path: &str) -> Result<Route, GraphError> {
    let mut segs: Vec<String> = Vec::new();
    for raw in path.trim_matches('/').split('/') {
        match folder_key(raw) {
            Some(folder) => {
                segs.push("mailFolders".into());
                segs.push(folder);
            }
            None => segs.push(percent_decode(raw)),
        }
    }
    let is = |i: usize, name: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(name));
    let unknown = || {
        GraphError::bad_request(format!(
            "Resource not found for the segment '{}'.",
            segs.last().map(String::as_str).unwrap_or("")
        ))
    };
    if is(0, "subscriptions") {
        return match segs.len() {
            1 => Ok(Route::Subscriptions),
            2 => Ok(Route::Subscription(segs[1].clone())),
            _ => Err(unknown()),
        };
    }
    if !is(0, "users") || segs.len() < 3 {
        return Err(unknown());
    }
    let user = segs[1].clone();
    let op = if is(2, "mailFolders") {
        let folder = segs.get(3).cloned().ok_or_else(unknown)?;
        match segs.len() {
            4 => MailboxOp::Folder(folder),
            5 if is(4, "messages") => MailboxOp::List {
                folder: Some(folder),
            },
            6 if is(4, "messages") && (is(5, "delta") || is(5, "microsoft.graph.delta()")) => {
                MailboxOp::Delta { folder }
            }
            _ => return Err(unknown()),
        }
    } else if is(2, "messages") {
        match segs.len() {
            3 => MailboxOp::List { folder: None },
            4 => MailboxOp::Message(segs[3].clone()),
            5 if is(4, "attachments") => MailboxOp::Attachments(segs[3].clone()),
            5 if is(4, "move") => MailboxOp::Move(segs[3].clone()),
            _ => return Err(unknown()),
        }
    } else {
        return Err(unknown());
    };
    Ok(Route::Mailbox { user, op })
}

/// Whether the path is `/$batch`.
pub(super) fn is_batch_path(path: &str) -> bool {
    let p = path.trim_matches('/');
    p.eq_ignore_ascii_case("$batch") || p.eq_ignore_ascii_case("%24batch")
}

/// Runs one request the way its route does: the app's budget, the mailbox's budget, latency,
/// injected errors, then the route itself. `with_latency` is false inside a `$batch` (the
/// batch waited once).
pub(super) async fn dispatch(state: &Shared, call: &Call<'_>, with_latency: bool) -> Reply {
    if let Err(e) = lock(state).apps.arrive(call.app, Instant::now()) {
        return e.into();
    }
    match parse_route(call.path) {
        Ok(Route::Mailbox { user, op }) => on_mailbox(state, call, &user, &op, with_latency).await,
        Ok(route) => on_subscriptions(state, call, route, with_latency).await,
        Err(e) => e.into(),
    }
}

/// A request on a mailbox: it passes the mailbox's budget (and is in flight until answered).
async fn on_mailbox(
    state: &Shared,
    call: &Call<'_>,
    user: &str,
    op: &MailboxOp,
    with_latency: bool,
) -> Reply {
    let now = Instant::now();
    let (_in_flight, admission, latency, fail, mbx) = {
        let mut s = lock(state);
        let Some(mbx) = s.resolve(user).filter(|m| s.tenant_of(*m) == call.tenant) else {
            return GraphError::new(
                404,
                "ErrorInvalidUser",
                format!("The requested user '{user}' is invalid."),
            )
            .into();
        };
        if s.mailboxes[mbx].denied {
            s.mailboxes[mbx].counters.denied_requests += 1;
            return GraphError::new(403, "ErrorAccessDenied", "Access to OData is disabled.")
                .into();
        }
        let limits = s.limits;
        let admission = s.mailboxes[mbx].budget.arrive(now, &limits);
        let fail = admission == Admission::Admit && s.roll_error();
        let guard = InFlight {
            state: state.clone(),
            mailbox: mbx,
        };
        (guard, admission, s.latency, fail, mbx)
    };
    if with_latency && !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    if let Admission::Refuse(e) = admission {
        return e.into();
    }
    if fail {
        return internal_error();
    }
    let result = lock(state).execute(mbx, op, call);
    result.unwrap_or_else(Reply::from)
}

/// `/subscriptions` and `/subscriptions/{id}` (not throttled per mailbox).
async fn on_subscriptions(
    state: &Shared,
    call: &Call<'_>,
    route: Route,
    with_latency: bool,
) -> Reply {
    let (latency, fail) = {
        let mut s = lock(state);
        let fail = s.roll_error();
        (s.latency, fail)
    };
    if with_latency && !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    if fail {
        return internal_error();
    }
    match (route, call.method) {
        (Route::Subscriptions, "POST") => create_subscription(state, call).await,
        (Route::Subscriptions, "GET") => list_subscriptions(state),
        (Route::Subscription(id), "GET") => get_subscription(state, &id),
        (Route::Subscription(id), "PATCH") => renew_subscription(state, call, &id).await,
        (Route::Subscription(id), "DELETE") => delete_subscription(state, &id),
        _ => method_not_allowed(call),
    }
}

/// Graph's answer to a method the resource does not support.
pub(super) fn method_not_allowed(call: &Call<'_>) -> Reply {
    GraphError::new(
        405,
        "MethodNotAllowed",
        format!("{} is not supported on this resource.", call.method),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::super::state::State;
    use super::super::tests::options;
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn routes_parse_with_upns_guids_and_folder_key_syntax() {
        let r = parse_route("/users/A%40b.example/mailFolders('inbox')/messages/delta").unwrap();
        assert_eq!(
            r,
            Route::Mailbox {
                user: "A@b.example".into(),
                op: MailboxOp::Delta {
                    folder: "inbox".into()
                }
            }
        );
        assert_eq!(
            parse_route("/users/x/messages/AAMk-0-1/attachments").unwrap(),
            Route::Mailbox {
                user: "x".into(),
                op: MailboxOp::Attachments("AAMk-0-1".into())
            }
        );
        assert_eq!(
            parse_route("/subscriptions/abc").unwrap(),
            Route::Subscription("abc".into())
        );
        assert_eq!(parse_route("/users/x/calendar").unwrap_err().status, 400);
        assert!(is_batch_path("/$batch") && is_batch_path("/%24batch"));
    }

    #[test]
    fn paths_graph_does_not_have_are_refused_and_the_others_parse() {
        for path in [
            "/",
            "/me/messages",
            "/users/x",
            "/users/x/mailFolders",
            "/users/x/mailFolders/inbox/messages/delta/more",
            "/users/x/messages/AAMk-0-1/move/more",
            "/users/x/messages/id/attachments/1",
            "/subscriptions/a/b",
        ] {
            assert_eq!(parse_route(path).unwrap_err().status, 400, "{path}");
        }
        assert_eq!(parse_route("/subscriptions").unwrap(), Route::Subscriptions);
        assert_eq!(
            parse_route("/users/x/mailFolders/Inbox/messages/microsoft.graph.delta()").unwrap(),
            Route::Mailbox {
                user: "x".into(),
                op: MailboxOp::Delta {
                    folder: "Inbox".into()
                }
            }
        );
        assert_eq!(
            parse_route("/users/x/messages").unwrap(),
            Route::Mailbox {
                user: "x".into(),
                op: MailboxOp::List { folder: None }
            }
        );
        assert!(!is_batch_path("/users/$batch"));
    }

    #[test]
    fn a_denied_or_unknown_mailbox_is_refused_and_an_answer_frees_its_slot() {
        let state: Shared = Arc::new(Mutex::new(State::new(&options(&[])).unwrap()));
        lock(&state).mailboxes[1].denied = true;
        let run = |method: &str, path: &str| {
            let call = Call {
                method,
                path,
                query: "",
                prefer: None,
                body: b"",
                base: "http://sim/v1.0",
                agent: "test",
                app: "ms1-app",
                tenant: "contoso",
            };
            actix_web::rt::System::new().block_on(dispatch(&state, &call, true))
        };
        let denied = run("GET", "/users/invoices-1@contoso.example/messages");
        assert_eq!(denied.status, 403);
        assert_eq!(
            run("GET", "/users/nobody@contoso.example/messages").status,
            404
        );
        assert_eq!(
            run("GET", "/users/invoices-0@contoso.example/messages").status,
            200
        );
        assert_eq!(run("PUT", "/subscriptions").status, 405);
        assert_eq!(run("GET", "/users/x/calendar").status, 400);
        let s = lock(&state);
        assert_eq!(s.mailboxes[1].counters.denied_requests, 1);
        assert_eq!(s.mailboxes[0].counters.list_requests, 1);
        assert_eq!(
            s.mailboxes[0].budget.in_flight, 0,
            "the answer freed its slot"
        );
    }
}
