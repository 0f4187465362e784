//! The web console at `/console`: four pages (overview, sources, queues, dead letters) for the
//! operator who would rather look than read. Pages are rendered here around embedded static
//! assets (one stylesheet, one script, no build chain); the script fills and refreshes them
//! from the public control API only (`/session/*`, `/ready`, `/rates`, `/sources`, `/queues`,
//! `/dlq*`), so every number on a page is also in the JSON API.
//!
//! Security: nothing works without the control token, which is exchanged once for a session
//! cookie ([`sessions`]); state-changing requests made with the cookie need the session's
//! CSRF token; every answer carries a Content-Security-Policy without `unsafe-inline` (no
//! inline script or style anywhere), `frame-ancestors 'none'` and `nosniff`. With no
//! `control.token` set the console stays shut: it has nothing to check a sign-in against.

pub mod sessions;

use super::control::{constant_time_eq, ApiError, ControlState};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use sessions::{cookie_value, set_cookie, Session, COOKIE};

/// The console's Content-Security-Policy: its own script, style and API only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// The pages: path, title, body.
const PAGES: [(&str, &str, &str); 4] = [
    ("overview", "Overview", include_str!("assets/overview.html")),
    ("sources", "Sources", include_str!("assets/sources.html")),
    ("queues", "Queues", include_str!("assets/queues.html")),
    (
        "dead-letters",
        "Dead letters",
        include_str!("assets/dead-letters.html"),
    ),
];

/// Who a control request comes from.
pub enum Caller {
    /// `Authorization: Bearer <control.token>` (scripts, the CLI), or no token configured.
    Bearer,
    /// A signed-in console.
    Console(Session),
}

/// The console session of a request's cookie, if live.
fn session_of(req: &HttpRequest, state: &ControlState) -> Option<(String, Session)> {
    let header = req.headers().get(header::COOKIE)?.to_str().ok()?;
    let id = cookie_value(header, COOKIE)?;
    state.console.get(id).map(|s| (id.to_string(), s))
}

/// A state-changing request made with a console cookie must carry the session's CSRF token
/// and, when the browser names one, come from this very origin.
fn check_csrf(req: &HttpRequest, session: &Session, given: Option<&str>) -> Result<(), ApiError> {
    let forbidden = |why: &str| ApiError::new(StatusCode::FORBIDDEN, "csrf", why);
    let given = given.or_else(|| {
        req.headers()
            .get("X-CSRF-Token")
            .and_then(|v| v.to_str().ok())
    });
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), session.csrf.as_bytes())) {
        return Err(forbidden(
            "missing or wrong CSRF token (X-CSRF-Token): reload the console page",
        ));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let info = req.connection_info();
        let here = format!("{}://{}", info.scheme(), info.host());
        if origin.to_str().ok() != Some(here.as_str()) {
            return Err(forbidden("cross-origin request refused"));
        }
    }
    Ok(())
}

/// Authenticates a control request: the bearer token, or a console session (with its CSRF
/// token on anything but GET and HEAD).
pub fn authenticate(req: &HttpRequest, state: &ControlState) -> Result<Caller, ApiError> {
    let token = state.token.expose();
    let bearer = super::control::authorize(req, token);
    if bearer.is_ok() {
        return Ok(Caller::Bearer);
    }
    let Some((_, session)) = session_of(req, state) else {
        return Err(bearer.unwrap_err());
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        check_csrf(req, &session, None)?;
    }
    Ok(Caller::Console(session))
}

/// Served over TLS (directly, or behind a proxy that says so): the cookie gets `Secure`.
fn over_tls(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A page of the console around `body`.
fn layout(page: &str, title: &str, csrf: &str, body: &str) -> String {
    let nav: String = PAGES
        .iter()
        .map(|(path, name, _)| {
            let current = if *path == page {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"/console/{path}\" id=\"nav-{path}\"{current}>{name}</a>")
        })
        .collect();
    let csrf = escape(csrf);
    let signed_in = if csrf.is_empty() {
        String::new()
    } else {
        format!(
            "<form method=\"post\" action=\"/console/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button id=\"logout\" type=\"submit\">Log out</button></form>"
        )
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\"><title>{title} · ms1-ingestor</title>\
<link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
<script src=\"/console/assets/console.js\" defer></script></head>\
<body data-page=\"{page}\"><header><span class=\"brand\">ms1-ingestor</span><nav>{}</nav>{signed_in}</header>\
<main>{body}</main></body></html>\n",
        if csrf.is_empty() { String::new() } else { nav }
    )
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

fn login_page(status: StatusCode, problem: &str) -> HttpResponse {
    let problem = if problem.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"problem\" id=\"login-problem\">{}</p>",
            escape(problem)
        )
    };
    let body = format!(
        "<section class=\"login\"><h1>Sign in</h1>{problem}\
<form method=\"post\" action=\"/console/login\" id=\"login-form\">\
<label for=\"token\">Control token (<code>control.token</code>)</label>\
<input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
<button type=\"submit\" id=\"login\">Sign in</button></form></section>"
    );
    html(status, layout("login", "Sign in", "", &body))
}

async fn login_form(state: web::Data<ControlState>, req: HttpRequest) -> HttpResponse {
    if state.token.is_empty() {
        return shut();
    }
    if session_of(&req, &state).is_some() {
        return see_other("/console/overview");
    }
    login_page(StatusCode::OK, "")
}

/// Without `control.token` the console has nothing to check a sign-in against.
fn shut() -> HttpResponse {
    let body = "<section class=\"login\"><h1>The console is off</h1><p>Set <code>control.token</code> (see docs/CONFIGURATION.md) and restart the daemon: the console signs in with it.</p></section>";
    html(
        StatusCode::FORBIDDEN,
        layout("login", "Console off", "", body),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    state: web::Data<ControlState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let token = state.token.expose();
    if token.is_empty() {
        return shut();
    }
    if !constant_time_eq(form.token.as_bytes(), token.as_bytes()) {
        // A pause makes guessing slow; the answer never says how close a guess was.
        actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
        tracing::warn!("console sign-in refused: wrong control token");
        return login_page(StatusCode::UNAUTHORIZED, "That is not the control token.");
    }
    let (id, _) = state.console.open();
    tracing::info!("console signed in");
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/overview"))
        .insert_header((header::SET_COOKIE, set_cookie(Some(&id), over_tls(&req))))
        .finish()
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    state: web::Data<ControlState>,
    req: HttpRequest,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, ApiError> {
    if let Some((id, session)) = session_of(&req, &state) {
        check_csrf(&req, &session, Some(&form.csrf))?;
        state.console.close(&id);
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/login"))
        .insert_header((header::SET_COOKIE, set_cookie(None, over_tls(&req))))
        .finish())
}

async fn page(
    state: web::Data<ControlState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    let Some((path, title, body)) = PAGES.iter().find(|(p, ..)| *p == name.as_str()) else {
        return html(
            StatusCode::NOT_FOUND,
            layout("missing", "Not found", "", "<h1>No such page</h1>"),
        );
    };
    if state.token.is_empty() {
        return shut();
    }
    match session_of(&req, &state) {
        Some((_, session)) => html(StatusCode::OK, layout(path, title, &session.csrf, body)),
        None => see_other("/console/login"),
    }
}

async fn asset(name: web::Path<String>) -> HttpResponse {
    let (kind, body) = match name.as_str() {
        "console.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => ("text/css; charset=utf-8", STYLE),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Registers `/console`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(
                DefaultHeaders::new()
                    .add(("Content-Security-Policy", CSP))
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("X-Frame-Options", "DENY"))
                    // Not `no-referrer`: under it a browser sends `Origin: null` with the
                    // console's own form posts (logout), which `check_csrf` must refuse.
                    // `same-origin` still tells no other site where the operator came from.
                    .add(("Referrer-Policy", "same-origin")),
            )
            .app_data(web::FormConfig::default().limit(4_096))
            .route(
                "",
                web::get().to(|| async { see_other("/console/overview") }),
            )
            .route(
                "/",
                web::get().to(|| async { see_other("/console/overview") }),
            )
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/assets/{name}", web::get().to(asset))
            .route("/{page}", web::get().to(page)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_embed_and_load_no_inline_script_or_style() {
        let page = layout("overview", "Overview", "a\"<b>", "<p>x</p>");
        assert!(page.contains("content=\"a&quot;&lt;b&gt;\""), "{page}");
        for (_, _, body) in PAGES {
            let whole = layout("x", "x", "t", body);
            assert!(!whole.contains("<script>"), "inline script");
            assert!(!whole.contains("style="), "inline style");
            assert!(!whole.contains("<style"), "inline style");
            let handler = whole.match_indices(" on").any(|(i, _)| {
                let rest = &whole[i + 3..];
                let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                !name.is_empty() && rest[name.len()..].starts_with('=')
            });
            assert!(!handler, "inline event handler in {whole}");
        }
        assert!(!CSP.contains("unsafe-inline") && CSP.contains("script-src 'self'"));
    }
}
