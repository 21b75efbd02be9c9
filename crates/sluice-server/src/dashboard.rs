//! The dashboard at `/`: three static files compiled into the binary (`assets/`), no CDN and no
//! third-party code at run time. The page asks for a read key once (kept in the browser's local
//! storage, or taken from the URL fragment `/#key=…`, which browsers never send to the server),
//! draws events/s over the last 5 minutes and per-event counts from the `/v1/live` WebSocket,
//! and top events / active users over a chosen range from the query API.
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles and connections only
//! from this origin (plus WebSockets), no inline script, no framing. The page itself renders
//! every data string with `textContent`, never as HTML.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The Content-Security-Policy of every dashboard file.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

/// The dashboard page (shipped inside the binary).
#[utoipa::path(get, path = "/", tag = "dashboard", responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
pub(crate) async fn index() -> Response {
    // Always revalidated, so a new binary's page is picked up at once.
    asset("text/html; charset=utf-8", INDEX_HTML, "no-cache")
}

/// The dashboard script (shipped inside the binary).
#[utoipa::path(get, path = "/assets/app.js", tag = "dashboard", responses((status = 200, description = "The dashboard script", content_type = "text/javascript")))]
pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS, "no-cache")
}

/// The dashboard style sheet (shipped inside the binary).
#[utoipa::path(get, path = "/assets/app.css", tag = "dashboard", responses((status = 200, description = "The dashboard style sheet", content_type = "text/css")))]
pub(crate) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS, "no-cache")
}
