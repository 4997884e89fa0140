//! The management web page, served by the broker itself: one HTML file, two scripts (the
//! views, and the Admin section's) and a style sheet, compiled into the binary (no build step, nothing to install). The page is a client
//! of the same API as every other tool: it logs in with HTTP basic auth against the broker's
//! users, and the files themselves are served without a login, as RabbitMQ serves its UI.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/hare.js");
const ADMIN: &str = include_str!("page/admin.js");
const STYLE: &str = include_str!("page/hare.css");

/// Paths served without a login.
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/static/")
}

pub async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}

pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT)
}

pub async fn admin_script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], ADMIN)
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
