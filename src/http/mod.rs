//! The management HTTP API, on RabbitMQ's paths and with its JSON field names, so that tools
//! written for RabbitMQ's management plugin (rabbitmqadmin, monitoring scripts) read Hare.
//!
//! Served: GET `/api/overview`, `/api/nodes[/{name}]`, `/api/whoami`, `/api/vhosts[/{vhost}]`,
//! `/api/queues[/{vhost}[/{name}]]`, `/api/exchanges[/{vhost}[/{name}]]`,
//! `/api/bindings[/{vhost}]` and the bindings of one queue or exchange, `/api/connections`,
//! `/api/channels`, `/api/consumers` (whole broker, by vhost, by connection), `/api/users`,
//! `/api/permissions`; every list takes RabbitMQ's sorting, columns and pagination parameters
//! (see `list`). Writes (see `write`): PUT and DELETE of queues and exchanges, purge, POST
//! and DELETE of bindings, publish and get, DELETE of a connection; `/api/definitions`
//! export and import (see `definitions`); health checks and the aliveness test (see
//! `health`); Prometheus metrics (see `metrics`) and the web page (see `page`).
//! Every API request needs HTTP basic auth with a broker user (guest from loopback only, as
//! over AMQP); a missing or wrong one gets RabbitMQ's 401, and the user's management tags
//! decide what it may see and do (see `access`, which also serves users, vhosts,
//! permissions and limits). Vhost names in paths are URL-encoded (`%2F` for `/`).

mod access;
mod cluster;
mod definitions;
mod health;
mod json;
mod list;
mod metrics;
mod page;
mod parameters;
mod policy;
mod principal;
mod stream;
mod write;

use crate::broker::Broker;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

/// A list endpoint's query parameters (sorting, columns, pagination; see `list`).
type ListQuery = Query<HashMap<String, String>>;

/// The connection id the API acts as: none (AMQP connections count from 1), so it may not
/// touch exclusive queues.
const NO_CONNECTION: u64 = 0;

/// What the API reports about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: String,
    pub amqp_port: u16,
    pub http_port: u16,
    /// The AMQPS and HTTPS ports, when TLS is configured.
    pub amqps_port: Option<u16>,
    pub https_port: Option<u16>,
    pub bind: String,
    /// Memory use past which publishers are blocked, and free disk space below which they are.
    pub memory_limit: u64,
    pub disk_free_limit: u64,
    pub data_dir: std::path::PathBuf,
    /// When the broker started, in milliseconds since the epoch.
    pub started_at_ms: u64,
    /// The configuration file read at start, if any.
    pub config_file: Option<std::path::PathBuf>,
    /// EXTERNAL (client certificates) is offered: TLS with a CA to verify clients.
    pub external_auth: bool,
    /// The listeners of the other wire protocols (MQTT's), by RabbitMQ's protocol names.
    pub other_listeners: Vec<(&'static str, u16)>,
}

#[derive(Clone)]
struct Api {
    broker: Arc<Broker>,
    node: Arc<NodeInfo>,
    /// Storage's durable watermark: a durable change is answered once it passes its ticket.
    durable: Option<tokio::sync::watch::Receiver<u64>>,
}

/// The client's address, from a plain or a TLS listener.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Serves the API on `listener`, and over HTTPS on `tls` when given, until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<crate::tls::TlsListener>,
    broker: Arc<Broker>,
    node: NodeInfo,
    durable: Option<tokio::sync::watch::Receiver<u64>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let api = Api { broker, node: Arc::new(node), durable };
    let app = router(api.clone()).layer(middleware::from_fn_with_state(api, authenticate));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let https = tls.map(|l| {
        let app = app.clone().into_make_service_with_connect_info::<Peer>();
        tokio::spawn(axum::serve(l, app).with_graceful_shutdown(wait(stopped.clone())).into_future())
    });
    let plain = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(wait(stopped.clone()));
    let stopper = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (result, ()) = tokio::join!(plain.into_future(), stopper);
    if let Some(h) = https {
        let _ = h.await;
    }
    result
}

/// The API as one service without a listener, every request from `peer`: for driving it in
/// process (the fuzz target of the request handling). Durable changes are answered at once.
pub fn service(broker: Arc<Broker>, node: NodeInfo, peer: SocketAddr) -> Router {
    let api = Api { broker, node: Arc::new(node), durable: None };
    router(api.clone()).layer(middleware::from_fn_with_state(api, authenticate)).layer(middleware::from_fn(
        move |mut request: Request, next: Next| {
            request.extensions_mut().insert(ConnectInfo(Peer(peer)));
            next.run(request)
        },
    ))
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/static/hare.js", get(page::script))
        .route("/static/admin.js", get(page::admin_script))
        .route("/static/hare.css", get(page::style))
        .route("/api/overview", get(overview))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node))
        .route("/api/hare/cluster", get(cluster::status))
        .route("/api/hare/cluster/join", axum::routing::post(cluster::join))
        .route("/api/hare/cluster/forget", axum::routing::post(cluster::forget))
        .route("/api/extensions", get(extensions))
        .route("/api/users", get(access::users))
        .route("/api/users/without-permissions", get(access::users_without_permissions))
        .route("/api/users/bulk-delete", post(access::bulk_delete_users))
        .route("/api/users/{name}", get(access::user).put(access::put_user).delete(access::delete_user))
        .route("/api/users/{name}/permissions", get(access::user_permissions))
        .route("/api/users/{name}/topic-permissions", get(access::user_topic_permissions))
        .route("/api/permissions", get(access::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(access::permission).put(access::put_permission).delete(access::delete_permission),
        )
        .route("/api/topic-permissions", get(access::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(access::topic_permission).put(access::put_topic_permission).delete(access::delete_topic_permission),
        )
        .route("/api/vhosts/{vhost}/permissions", get(access::vhost_permissions))
        .route("/api/vhosts/{vhost}/topic-permissions", get(access::vhost_topic_permissions))
        .route("/api/vhost-limits", get(access::vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(access::vhost_limits_of))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(access::put_vhost_limit).delete(access::delete_vhost_limit),
        )
        .route("/api/policies", get(policy::policies))
        .route("/api/policies/{vhost}", get(policy::policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policy::policy).put(policy::put_policy).delete(policy::delete_policy),
        )
        .route("/api/operator-policies", get(policy::operator_policies))
        .route("/api/operator-policies/{vhost}", get(policy::operator_policies_in))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(policy::operator_policy).put(policy::put_operator_policy).delete(policy::delete_operator_policy),
        )
        .route("/api/parameters", get(parameters::parameters))
        .route("/api/parameters/{component}", get(parameters::component))
        .route("/api/parameters/{component}/{vhost}", get(parameters::component_in))
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(parameters::parameter).put(parameters::put_parameter).delete(parameters::delete_parameter),
        )
        .route("/api/shovels", get(parameters::shovels))
        .route("/api/shovels/{vhost}", get(parameters::shovels_in))
        .route("/api/shovels/vhost/{vhost}/{name}", get(parameters::shovel).delete(parameters::delete_shovel))
        .route("/api/shovels/vhost/{vhost}/{name}/restart", axum::routing::delete(parameters::restart_shovel))
        .route("/api/user-limits", get(access::user_limits))
        .route("/api/user-limits/{user}", get(access::user_limits_of))
        .route(
            "/api/user-limits/{user}/{name}",
            axum::routing::put(access::put_user_limit).delete(access::delete_user_limit),
        )
        .route("/api/channels", get(channels))
        .route("/api/channels/{name}", get(channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(consumers_in))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/exchanges/{vhost}/{name}/bindings/source", get(exchange_bindings_source))
        .route("/api/exchanges/{vhost}/{name}/bindings/destination", get(exchange_bindings_destination))
        .route("/metrics", get(metrics::aggregated))
        .route("/metrics/per-object", get(metrics::per_object))
        .route("/api/whoami", get(access::whoami))
        .route("/api/vhosts", get(vhosts))
        .route("/api/vhosts/{vhost}", get(vhost).put(access::put_vhost).delete(access::delete_vhost))
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
        .route("/api/all-configuration", get(definitions::export).post(definitions::import))
        .route("/api/definitions/{vhost}", get(definitions::export_vhost).post(definitions::import_vhost))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/auth", get(auth_settings))
        .route("/api/connections/username/{user}", get(user_connections).delete(close_user_connections))
        .route("/api/connections", get(connections))
        .route("/api/stream/consumers", get(stream::consumers))
        .route("/api/stream/consumers/{vhost}", get(stream::vhost_consumers))
        .route("/api/connections/{name}", get(connection).delete(close_connection))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/health/checks/alarms", get(health::cluster_alarms))
        .route("/api/health/checks/local-alarms", get(health::local_alarms))
        .route("/api/health/checks/virtual-hosts", get(health::virtual_hosts))
        .route("/api/health/checks/node-is-mirror-sync-critical", get(health::single_node_critical))
        .route("/api/health/checks/node-is-quorum-critical", get(health::single_node_critical))
        .route("/api/health/checks/port-listener/{port}", get(health::port_listener))
        .route("/api/health/checks/protocol-listener/{protocol}", get(health::protocol_listener))
        .route("/api/healthchecks/node", get(health::node_check))
        .route("/api/healthchecks/node/{node}", get(health::node_check))
        .route("/api/aliveness-test/{vhost}", get(health::aliveness))
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", get(bindings_between).post(write::post_binding))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(binding_one).delete(write::delete_binding),
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
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    // As RabbitMQ's Prometheus endpoint, metrics are served without a login; so are the web
    // page's files (the page itself logs in to the API).
    // /api/auth tells the page how to log in, and needs no login either (as RabbitMQ's).
    let path = request.uri().path();
    if path.starts_with("/metrics") || page::is_public(path) || path == "/api/auth" {
        return next.run(request).await;
    }
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
    let given = credentials.is_some();
    let given_user = credentials.as_ref().map(|(u, _)| u.clone());
    let allowed = credentials
        .and_then(|(user, password)| api.broker.authenticate(&user, &password, peer.ip().is_loopback(), "PLAIN").ok());
    if given {
        match &allowed {
            Some(_) => api.broker.login_succeeded(peer.ip()),
            // A source that keeps failing waits for its answers, as over AMQP.
            None => {
                let audit = api.broker.audit();
                if audit.is_on() {
                    let name = given_user.clone().unwrap_or_default();
                    let by = crate::broker::audit::Actor::http(&name, Some(peer.to_string()));
                    let e = crate::broker::audit::AuditEvent::new("user.authentication.failure", &by, None)
                        .with("name", name.as_str())
                        .with("auth_mechanism", "PLAIN")
                        .refused("Not_Authorized");
                    audit.emit(e);
                }
                if let Some(d) = api.broker.login_failed(peer.ip()) {
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
    let Some(user) = allowed else {
        // As RabbitMQ: credentials that fail are "Login failed"; none at all, a bare 401
        // with the challenge.
        let mut r = if given {
            error(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed")
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        };
        // A script in a page (ours sends X-Requested-With) handles the 401 itself; the
        // challenge would make the browser ask for a password in a dialog of its own.
        if !request.headers().contains_key("x-requested-with") {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"RabbitMQ Management\"".parse().expect("a valid header"),
            );
        }
        return r;
    };
    let mut principal = principal::Principal::of(&api, &user);
    principal.source = Some(peer.to_string());
    if let Err(r) = principal::authorise(&principal, request.method(), request.uri().path()) {
        let audit = api.broker.audit();
        if audit.is_on() {
            let by = crate::broker::audit::Actor::http(&principal.name, principal.source.clone());
            let e = crate::broker::audit::AuditEvent::new("access.refused", &by, None)
                .with("kind", "http")
                .with("name", format!("{} {}", request.method(), request.uri().path()))
                .refused("the user's tags do not allow this request");
            audit.emit(e);
        }
        return r;
    }
    principal::PRINCIPAL.scope(principal, next.run(request)).await
}

/// The sample ranges a request asks for (`msg_rates_age`, `lengths_age`, ...); a malformed
/// one is a 400.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for json::Ranges {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        let Query(q) = ListQuery::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        json::Ranges::from_query(&q).map_err(|reason| error(StatusCode::BAD_REQUEST, "bad_request", &reason))
    }
}

async fn overview(State(api): State<Api>, r: json::Ranges) -> Response {
    Json(json::overview(&api.broker, &api.node, &r)).into_response()
}

async fn vhosts(State(api): State<Api>, Query(q): ListQuery) -> Response {
    let access = api.broker.access();
    let items = api
        .broker
        .vhosts()
        .iter()
        .filter(|v| principal::current_may_see(&v.name))
        .map(|v| json::vhost(&api.broker, v, access.vhost(&v.name), &api.node.node))
        .collect();
    list::respond(items, &q)
}

async fn vhost(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.broker.vhost(&name) {
        Some(v) => {
            Json(json::vhost(&api.broker, &v, api.broker.access().vhost(&v.name), &api.node.node)).into_response()
        }
        None => not_found(),
    }
}

async fn connections(State(api): State<Api>, Query(q): ListQuery) -> Response {
    list::respond(api.broker.connection_list().iter().map(|c| json::connection(c, &api.node.node)).collect(), &q)
}

async fn vhost_connections(State(api): State<Api>, Path(vhost): Path<String>, Query(q): ListQuery) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    let list = api.broker.connection_list();
    list::respond(list.iter().filter(|c| c.vhost == vhost).map(|c| json::connection(c, &api.node.node)).collect(), &q)
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

async fn queues(State(api): State<Api>, Query(q): ListQuery, r: json::Ranges) -> Response {
    let node = &api.node.node;
    let all = api
        .broker
        .vhosts()
        .iter()
        .flat_map(|v| v.queues().into_iter().map(move |q| json::queue(&v.name, &q, node, &r)))
        .collect();
    list::respond(all, &q)
}

async fn queues_in(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): ListQuery,
    r: json::Ranges,
) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    let node = &api.node.node;
    list::respond(v.queues().iter().map(|q| json::queue(&v.name, q, node, &r)).collect(), &q)
}

async fn queue(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>, r: json::Ranges) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    match v.queues().iter().find(|q| q.name.as_str() == name) {
        Some(q) => {
            let mut j = json::queue(&v.name, q, &api.node.node, &r);
            json::queue_details(&mut j, consumers_of(&api, &v.name, q));
            Json(j).into_response()
        }
        None => not_found(),
    }
}

async fn exchanges(State(api): State<Api>, Query(q): ListQuery, r: json::Ranges) -> Response {
    let all = api
        .broker
        .vhosts()
        .iter()
        .flat_map(|v| v.exchanges().into_iter().map(move |e| json::exchange(&v.name, &e, &r)))
        .collect();
    list::respond(all, &q)
}

async fn exchanges_in(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): ListQuery,
    r: json::Ranges,
) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    list::respond(v.exchanges().iter().map(|e| json::exchange(&v.name, e, &r)).collect(), &q)
}

async fn exchange(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>, r: json::Ranges) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    let name = exchange_name(name);
    match v.exchanges().iter().find(|e| e.name.as_str() == name) {
        Some(e) => {
            let mut j = json::exchange(&v.name, e, &r);
            json::exchange_details(&mut j);
            Json(j).into_response()
        }
        None => not_found(),
    }
}

async fn bindings(State(api): State<Api>, Query(q): ListQuery) -> Response {
    list::respond(api.broker.vhosts().iter().flat_map(|v| json::bindings(v)).collect(), &q)
}

async fn bindings_in(State(api): State<Api>, Path(vhost): Path<String>, Query(q): ListQuery) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    list::respond(json::bindings(&v), &q)
}

/// The bindings of a vhost that match `keep`, or 404 when `exists` finds no such object.
fn bindings_where(
    api: &Api,
    vhost: &str,
    exists: impl Fn(&crate::broker::vhost::VHost) -> bool,
    keep: impl Fn(&Value) -> bool,
    q: &HashMap<String, String>,
) -> Response {
    let Some(v) = api.broker.vhost(vhost) else { return not_found() };
    if !exists(&v) {
        return not_found();
    }
    list::respond(json::bindings(&v).into_iter().filter(|b| keep(b)).collect(), q)
}

async fn queue_bindings(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): ListQuery,
) -> Response {
    bindings_where(
        &api,
        &vhost,
        |v| v.queues().iter().any(|x| x.name.as_str() == name),
        |b| b["destination_type"] == "queue" && b["destination"] == name.as_str(),
        &q,
    )
}

/// The bindings from one exchange to one queue (`q`) or exchange (`e`); an empty list when
/// either end is missing, or the vhost, as RabbitMQ answers.
async fn bindings_between(
    State(api): State<Api>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    Query(q): ListQuery,
) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return list::respond(Vec::new(), &q) };
    let Some(dtype) = binding_kind(&kind) else { return not_found() };
    let source = exchange_name(source);
    let list = json::bindings(&v)
        .into_iter()
        .filter(|b| {
            b["source"] == source.as_str() && b["destination"] == dest.as_str() && b["destination_type"] == dtype
        })
        .collect();
    list::respond(list, &q)
}

/// One binding, named by its ends and its properties key.
async fn binding_one(
    State(api): State<Api>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    let Some(destination) = write::destination(&kind, &dest) else { return not_found() };
    let source = exchange_name(source);
    match write::find_binding(&v, &source, &destination, &props) {
        Some(b) => {
            let mut j = json::binding(&v.name, &source, &b);
            j["properties_key"] = json!(json::properties_key(&b.routing_key, &b.arguments));
            Json(j).into_response()
        }
        None => not_found(),
    }
}

/// `q` and `e` in binding paths, as the destination types they name.
fn binding_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "q" => Some("queue"),
        "e" => Some("exchange"),
        _ => None,
    }
}

/// The default exchange is `amq.default` in paths.
fn exchange_name(name: String) -> String {
    if name == "amq.default" {
        String::new()
    } else {
        name
    }
}

/// The bindings with the exchange as their source (`true`) or their destination.
fn exchange_bindings(api: &Api, vhost: &str, name: String, source: bool, q: &HashMap<String, String>) -> Response {
    let name = exchange_name(name);
    let keep = |b: &Value| {
        if source {
            b["source"] == name.as_str()
        } else {
            b["destination_type"] == "exchange" && b["destination"] == name.as_str()
        }
    };
    bindings_where(api, vhost, |v| v.exchanges().iter().any(|e| e.name.as_str() == name), keep, q)
}

async fn exchange_bindings_source(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): ListQuery,
) -> Response {
    exchange_bindings(&api, &vhost, name, true, &q)
}

async fn exchange_bindings_destination(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): ListQuery,
) -> Response {
    exchange_bindings(&api, &vhost, name, false, &q)
}

/// Every open channel, with its connection.
fn all_channels(api: &Api, r: &json::Ranges) -> Vec<(Arc<crate::broker::connections::ConnectionEntry>, Value)> {
    let node = &api.node.node;
    api.broker
        .connection_list()
        .into_iter()
        .flat_map(|c| {
            let list: Vec<Value> = c.channels().iter().map(|ch| json::channel(&c, ch, node, r)).collect();
            list.into_iter().map(move |v| (c.clone(), v))
        })
        .collect()
}

async fn channels(State(api): State<Api>, Query(q): ListQuery, r: json::Ranges) -> Response {
    list::respond(all_channels(&api, &r).into_iter().map(|(_, v)| v).collect(), &q)
}

async fn vhost_channels(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): ListQuery,
    r: json::Ranges,
) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    list::respond(all_channels(&api, &r).into_iter().filter(|(c, _)| c.vhost == vhost).map(|(_, v)| v).collect(), &q)
}

async fn connection_channels(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): ListQuery,
    r: json::Ranges,
) -> Response {
    let Some(c) = api.broker.connection_list().into_iter().find(|c| c.name == name) else { return not_found() };
    list::respond(c.channels().iter().map(|ch| json::channel(&c, ch, &api.node.node, &r)).collect(), &q)
}

async fn channel(State(api): State<Api>, Path(name): Path<String>, r: json::Ranges) -> Response {
    match all_channels(&api, &r).into_iter().find(|(_, v)| v["name"] == name.as_str()) {
        Some((c, mut v)) => {
            // The channel's consumers, and the per-queue and per-exchange breakdowns of
            // RabbitMQ's `detailed` statistics mode (empty in the `basic` mode Hare keeps).
            let number = v["number"].as_u64().unwrap_or(0);
            let consumers: Vec<Value> = consumer_list(&api, &api.broker.vhosts())
                .into_iter()
                .filter(|x| x["channel_details"]["connection_name"] == c.name.as_str())
                .filter(|x| x["channel_details"]["number"].as_u64() == Some(number))
                .collect();
            v["consumer_details"] = Value::Array(consumers);
            v["deliveries"] = json!([]);
            v["publishes"] = json!([]);
            Json(v).into_response()
        }
        None => not_found(),
    }
}

/// The consumers of every queue in the given vhosts: AMQP consumers, then stream protocol
/// subscriptions (listed by their connections).
fn consumer_list(api: &Api, vhosts: &[Arc<crate::broker::vhost::VHost>]) -> Vec<Value> {
    let list = api.broker.connection_list();
    let conns: HashMap<u64, _> = list.iter().map(|c| (c.id, c.clone())).collect();
    let mut out = Vec::new();
    for v in vhosts {
        for q in v.queues() {
            for c in q.consumers() {
                out.push(json::consumer(&v.name, &q, &c, conns.get(&c.connection_id()).map(|c| &**c), &api.node.node));
            }
        }
        for c in list.iter().filter(|c| c.vhost == v.name) {
            out.extend(c.stream_readers().iter().map(|r| json::stream_consumer(&v.name, r)));
        }
    }
    out
}

/// One queue's consumers, as its `consumer_details` lists them (a stream's stream protocol
/// subscriptions too).
fn consumers_of(api: &Api, vhost: &str, q: &crate::broker::queue::Queue) -> Vec<Value> {
    let list = api.broker.connection_list();
    let conns: HashMap<u64, _> = list.iter().map(|c| (c.id, c.clone())).collect();
    let mut out: Vec<Value> = q
        .consumers()
        .iter()
        .map(|c| json::consumer(vhost, q, c, conns.get(&c.connection_id()).map(|c| &**c), &api.node.node))
        .collect();
    if q.stream.is_some() {
        for c in list.iter().filter(|c| c.vhost == vhost) {
            let readers = c.stream_readers();
            out.extend(readers.iter().filter(|r| r.stream == q.name.as_str()).map(|r| json::stream_consumer(vhost, r)));
        }
    }
    out
}

async fn consumers(State(api): State<Api>, Query(q): ListQuery) -> Response {
    list::respond(consumer_list(&api, &api.broker.vhosts()), &q)
}

async fn consumers_in(State(api): State<Api>, Path(vhost): Path<String>, Query(q): ListQuery) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    list::respond(consumer_list(&api, &[v]), &q)
}

async fn nodes(State(api): State<Api>) -> Json<Value> {
    let mut out = vec![json::node(&api.broker, &api.node)];
    if let Some(h) = api.broker.quorum_host() {
        // The cluster's other members, as this node sees them.
        for m in h.status().members.into_iter().filter(|m| m.name != api.node.node) {
            let short = |resource: &str| m.alarms.iter().any(|a| a == resource);
            out.push(json!({
                "name": m.name,
                "running": m.reachable,
                "type": "disc",
                "being_drained": false,
                "mem_alarm": short("memory"),
                "disk_free_alarm": short("disk"),
            }));
        }
    }
    Json(Value::Array(out))
}

async fn node(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if name != api.node.node {
        return not_found();
    }
    Json(json::node(&api.broker, &api.node)).into_response()
}

/// GET /api/cluster-name: a single node's cluster is named after the node.
async fn cluster_name(State(api): State<Api>) -> Json<Value> {
    Json(json!({ "name": api.node.node }))
}

/// GET /api/auth: how the web page logs in; Hare has no OAuth 2 (UAA) login, only the
/// broker's users, as RabbitMQ 3.10 answers without its OAuth plugin.
async fn auth_settings() -> Json<Value> {
    Json(json!({ "enable_uaa": false, "uaa_client_id": "", "uaa_location": "" }))
}

/// GET /api/connections/username/{user}: that user's connections, as RabbitMQ lists them
/// there (name, node, user, vhost).
async fn user_connections(State(api): State<Api>, Path(user): Path<String>) -> Response {
    let list: Vec<Value> = api
        .broker
        .connection_list()
        .iter()
        .filter(|c| c.user == user)
        .map(|c| json!({ "name": c.name, "node": api.node.node, "user": c.user, "vhost": c.vhost }))
        .collect();
    Json(Value::Array(list)).into_response()
}

/// DELETE /api/connections/username/{user}: closes every connection of the user, 204.
async fn close_user_connections(State(api): State<Api>, Path(user): Path<String>) -> Response {
    for c in api.broker.connection_list().iter().filter(|c| c.user == user) {
        c.request_close("Closed via management plugin");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// No management extensions (RabbitMQ lists its plugins' UI extensions here).
async fn extensions() -> Json<Value> {
    Json(json!([]))
}
