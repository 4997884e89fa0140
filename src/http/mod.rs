//! The management HTTP API, on RabbitMQ's paths and with its JSON field names, so that tools
//! written for RabbitMQ's management plugin (rabbitmqadmin, monitoring scripts) read Hare.
//!
//! Served so far: GET `/api/overview`, `/api/whoami`, `/api/vhosts[/{vhost}]`,
//! `/api/queues[/{vhost}[/{name}]]`, `/api/exchanges[/{vhost}[/{name}]]`,
//! `/api/bindings[/{vhost}]`, `/api/connections[/{name}]` (DELETE closes one); PUT and DELETE
//! of queues and exchanges, DELETE of a queue's contents (purge), POST and DELETE of bindings,
//! POST publish to an exchange and get from a queue (see `write`); GET and POST `/api/definitions` (see `definitions`); the health
//! checks for alarms and vhosts and the aliveness test (see `health`). Every request
//! needs HTTP basic auth with a broker user (guest from loopback only, as over AMQP); a
//! missing or wrong one gets RabbitMQ's 401. Vhost names in paths are URL-encoded (`%2F` for
//! `/`). Users have no tags yet: every user who may log in may do everything.

mod definitions;
mod health;
mod json;
mod write;

use crate::broker::Broker;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The connection id the API acts as: none (AMQP connections count from 1), so it may not
/// touch exclusive queues.
const NO_CONNECTION: u64 = 0;

/// What the API reports about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: String,
    pub amqp_port: u16,
    pub http_port: u16,
    pub bind: String,
}

#[derive(Clone)]
struct Api {
    broker: Arc<Broker>,
    node: Arc<NodeInfo>,
    /// Storage's durable watermark: a durable change is answered once it passes its ticket.
    durable: Option<tokio::sync::watch::Receiver<u64>>,
}

/// The authenticated user of a request.
#[derive(Clone)]
struct User(String);

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    node: NodeInfo,
    durable: Option<tokio::sync::watch::Receiver<u64>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let api = Api { broker, node: Arc::new(node), durable };
    let app = router(api.clone()).layer(middleware::from_fn_with_state(api, authenticate));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/vhosts", get(vhosts))
        .route("/api/vhosts/{vhost}", get(vhost))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route("/api/queues/{vhost}/{name}", get(queue).put(write::put_queue).delete(write::delete_queue))
        .route("/api/queues/{vhost}/{name}/contents", axum::routing::delete(write::purge))
        .route("/api/queues/{vhost}/{name}/get", post(write::get))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route("/api/exchanges/{vhost}/{name}", get(exchange).put(write::put_exchange).delete(write::delete_exchange))
        .route("/api/exchanges/{vhost}/{name}/publish", post(write::publish))
        .route("/api/definitions", get(definitions::export).post(definitions::import))
        .route("/api/connections", get(connections))
        .route("/api/connections/{name}", get(connection).delete(close_connection))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/health/checks/alarms", get(health::cluster_alarms))
        .route("/api/health/checks/local-alarms", get(health::local_alarms))
        .route("/api/health/checks/virtual-hosts", get(health::virtual_hosts))
        .route("/api/aliveness-test/{vhost}", get(health::aliveness))
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", post(write::post_binding))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            axum::routing::delete(write::delete_binding),
        )
        .fallback(not_found_handler)
        .with_state(api)
}

/// RabbitMQ's error body: `{"error": ..., "reason": ...}`.
fn error(status: StatusCode, error: &str, reason: &str) -> Response {
    (status, Json(json!({ "error": error, "reason": reason }))).into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

async fn not_found_handler() -> Response {
    not_found()
}

/// HTTP basic auth against the broker's users, with the AMQP rules (guest from loopback only).
async fn authenticate(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
    let allowed = credentials
        .filter(|(user, password)| api.broker.authenticate(user, password, peer.ip().is_loopback(), "PLAIN").is_ok());
    let Some((user, _)) = allowed else {
        let mut r = error(StatusCode::UNAUTHORIZED, "not_authorized", "Not_Authorized");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Basic realm=\"RabbitMQ Management\"".parse().expect("a valid header"));
        return r;
    };
    request.extensions_mut().insert(User(user));
    next.run(request).await
}

async fn whoami(request: Request) -> Json<Value> {
    let user = request.extensions().get::<User>().map(|u| u.0.clone()).unwrap_or_default();
    // No tags yet: a user who may log in is treated as an administrator.
    Json(json!({ "name": user, "tags": ["administrator"] }))
}

async fn overview(State(api): State<Api>) -> Json<Value> {
    Json(json::overview(&api.broker, &api.node))
}

async fn vhosts(State(api): State<Api>) -> Json<Value> {
    Json(Value::Array(api.broker.vhosts().iter().map(|v| json::vhost(v)).collect()))
}

async fn vhost(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.broker.vhost(&name) {
        Some(v) => Json(json::vhost(&v)).into_response(),
        None => not_found(),
    }
}

async fn connections(State(api): State<Api>) -> Json<Value> {
    Json(Value::Array(api.broker.connection_list().iter().map(|c| json::connection(c, &api.node.node)).collect()))
}

async fn vhost_connections(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    let list = api.broker.connection_list();
    Json(Value::Array(list.iter().filter(|c| c.vhost == vhost).map(|c| json::connection(c, &api.node.node)).collect()))
        .into_response()
}

async fn connection(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.broker.connection_list().into_iter().find(|c| c.name == name) {
        Some(c) => Json(json::connection(&c, &api.node.node)).into_response(),
        None => not_found(),
    }
}

/// DELETE /api/connections/{name}: closes it with 320 CONNECTION_FORCED and the reason from
/// the `X-Reason` header, RabbitMQ's "Closed via management plugin" without one.
async fn close_connection(State(api): State<Api>, Path(name): Path<String>, request: Request) -> Response {
    let Some(c) = api.broker.connection_list().into_iter().find(|c| c.name == name) else { return not_found() };
    let reason = request
        .headers()
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    c.request_close(&reason);
    StatusCode::NO_CONTENT.into_response()
}

async fn queues(State(api): State<Api>) -> Json<Value> {
    let node = &api.node.node;
    Json(Value::Array(
        api.broker
            .vhosts()
            .iter()
            .flat_map(|v| v.queues().into_iter().map(move |q| json::queue(&v.name, &q, node)))
            .collect(),
    ))
}

async fn queues_in(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    let node = &api.node.node;
    Json(Value::Array(v.queues().iter().map(|q| json::queue(&v.name, q, node)).collect())).into_response()
}

async fn queue(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    match v.queues().iter().find(|q| q.name.as_str() == name) {
        Some(q) => Json(json::queue(&v.name, q, &api.node.node)).into_response(),
        None => not_found(),
    }
}

async fn exchanges(State(api): State<Api>) -> Json<Value> {
    Json(Value::Array(
        api.broker
            .vhosts()
            .iter()
            .flat_map(|v| v.exchanges().into_iter().map(move |e| json::exchange(&v.name, &e)))
            .collect(),
    ))
}

async fn exchanges_in(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    Json(Value::Array(v.exchanges().iter().map(|e| json::exchange(&v.name, e)).collect())).into_response()
}

async fn exchange(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    // The default exchange is `amq.default` in paths.
    let name = if name == "amq.default" { String::new() } else { name };
    match v.exchanges().iter().find(|e| e.name.as_str() == name) {
        Some(e) => Json(json::exchange(&v.name, e)).into_response(),
        None => not_found(),
    }
}

async fn bindings(State(api): State<Api>) -> Json<Value> {
    Json(Value::Array(api.broker.vhosts().iter().flat_map(|v| json::bindings(v)).collect()))
}

async fn bindings_in(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    Json(Value::Array(json::bindings(&v))).into_response()
}
