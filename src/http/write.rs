//! The management API's changes: declare and delete queues and exchanges, purge, bind and
//! unbind, publish and get, as RabbitMQ's plugin takes them. A durable change is answered once
//! it is on disk, as over AMQP.

use super::json::table;
use super::principal::actor;
use super::{error, not_found, Api};
use crate::auth::grant::{Kind, Perm};
use crate::broker::exchange::{Binding, Destination};
use crate::broker::message::Message;
use crate::broker::replicated::{self, DefinitionChange};
use crate::broker::vhost::{QueueDeclaration, VHost};
use crate::broker::AmqpError;
use crate::types::{BasicProperties, FieldTable, FieldValue, ShortStr};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// A broker refusal of a declare, delete, bind or unbind, as RabbitMQ's API reports what its
/// channel raised (`rabbit_mgmt_util:direct_request`): 404 `not_found` with the AMQP text,
/// 401 `not_authorised` "Access refused." for ACCESS_REFUSED and NOT_ALLOWED, else 400
/// `bad_request` with the text (without the reply code's name).
fn refused(e: AmqpError) -> Response {
    match e.code {
        404 => error(StatusCode::NOT_FOUND, "not_found", &e.text),
        403 | 530 => access_refused(),
        _ => error(StatusCode::BAD_REQUEST, "bad_request", &e.text),
    }
}

/// RabbitMQ's answer to a change the caller may not make.
fn access_refused() -> Response {
    error(StatusCode::UNAUTHORIZED, "not_authorised", "Access refused.")
}

/// A refusal met by a publish, as RabbitMQ's API reports what its channel closed with:
/// 400 `bad_request`, "<code> <reply text>".
fn publish_refused(e: AmqpError) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &format!("{} {}", e.code, e.reply_text()))
}

/// A publish or get acts through a connection to the vhost (RabbitMQ's API opens one as its
/// user): the vhost must exist and the user must have permissions in it, or RabbitMQ's 401.
fn may_open(api: &Api, vhost: &str) -> Result<Arc<VHost>, Response> {
    let user = super::principal::PRINCIPAL.try_with(|p| p.name.clone()).ok();
    let v = vhost_of(api, vhost).ok_or_else(access_refused)?;
    match user {
        // Its connection counts against the vhost's and the user's connection limits too.
        Some(u)
            if api.broker.access().permission(&u, vhost).is_none()
                || api.broker.check_connection_limits(&u, vhost).is_err() =>
        {
            Err(access_refused())
        }
        _ => Ok(v),
    }
}

/// RabbitMQ's answer for a vhost in a change's path that does not exist.
pub(super) fn no_vhost() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found")
}

/// A JSON value as an AMQP field, as RabbitMQ's API converts them (integers as signed 64-bit).
fn field(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes())),
        Value::Array(items) => FieldValue::Array(items.iter().map(field).collect()),
        Value::Object(map) => FieldValue::Table(to_table(map)),
    }
}

fn to_table(map: &serde_json::Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in map {
        t.insert(k.as_str(), field(v));
    }
    t
}

pub(super) fn arguments_of(body: &Value) -> FieldTable {
    body.get("arguments").and_then(Value::as_object).map(to_table).unwrap_or_default()
}

/// A boolean field as RabbitMQ's API reads one (`parse_bool`): `true`, or the string
/// `"true"` that rabbitmqadmin sends, and the same for false; absent, `default`.
pub(super) fn flag(body: &Value, name: &str, default: bool) -> bool {
    match body.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" => false,
        _ => default,
    }
}

/// On a cluster node: proposes the definition change and waits until it is applied here
/// (every node applies it, in the cluster's order); `None` on a single node, where the caller
/// makes the change itself. The inner error is the apply's refusal.
pub(super) async fn replicated(
    api: &Api,
    change: impl FnOnce() -> DefinitionChange,
) -> Option<Result<(), replicated::Refusal>> {
    let host = api.broker.quorum_host()?.clone();
    let ticket = host.propose_definition(change());
    let mut resolved = host.resolved();
    let wait = resolved.wait_for(|r| *r >= ticket || host.is_resolved(ticket));
    if tokio::time::timeout(CLUSTER_WAIT, wait).await.is_err() {
        // No quorum within the time (this node is cut off, say): the change may still be
        // applied once it has one.
        return Some(Err(replicated::Refusal {
            code: crate::types::constants::INTERNAL_ERROR,
            text: format!("no quorum of the cluster answered within {} s", CLUSTER_WAIT.as_secs()),
            connection: false,
        }));
    }
    Some(match host.take_refusal(ticket) {
        Some(r) => Err(r),
        None => Ok(()),
    })
}

/// A definition change asked through the API (a policy, a parameter), answered `done` once
/// it is durable; on a cluster node, proposed and answered once the cluster has applied it
/// here (`replicate` makes the cluster's form of it). A refusal is 400 with its text.
pub(super) async fn change_definition<E: std::fmt::Display>(
    api: &Api,
    replicate: impl FnOnce() -> DefinitionChange,
    local: impl FnOnce() -> Result<u64, E>,
    done: StatusCode,
) -> Response {
    let result = match replicated(api, replicate).await {
        Some(r) => r.map_err(|e| e.text),
        None => match local() {
            Ok(ticket) => {
                durable(api, ticket).await;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => done.into_response(),
        Err(text) => error(StatusCode::BAD_REQUEST, "bad_request", &text),
    }
}

/// How long an API request waits for the cluster to commit its change.
const CLUSTER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until a journal ticket is on disk (0: nothing to wait for).
pub(super) async fn durable(api: &Api, ticket: u64) {
    if let Some(mut w) = api.durable.clone() {
        let _ = w.wait_for(|d| *d >= ticket).await;
    }
}

fn vhost_of(api: &Api, name: &str) -> Option<Arc<VHost>> {
    api.broker.vhost(name)
}

/// The caller's permissions for a change, checked as over AMQP: the API acts as its user, in
/// the vhost of the path (an administrator too, as in RabbitMQ). A refusal is audited and
/// answered as RabbitMQ's API reports its channel's error (see [`Refusal`]).
fn permitted(api: &Api, vhost: &str, checks: &[(Kind, &str, Perm)]) -> Result<(), Response> {
    permitted_as(api, vhost, checks, Refusal::Declare)
}

/// How a refused permission is answered, by what was asked.
#[derive(Clone, Copy)]
enum Refusal {
    /// A declare, delete or binding: 401 "Access refused.".
    Declare,
    /// A get: 401 with the AMQP text (its channel closed with it).
    Get,
    /// A publish: 400 "403 ACCESS_REFUSED - ..." (the channel closes after the publish).
    Publish,
}

fn permitted_as(api: &Api, vhost: &str, checks: &[(Kind, &str, Perm)], how: Refusal) -> Result<(), Response> {
    let Ok(user) = super::principal::PRINCIPAL.try_with(|p| p.name.clone()) else { return Ok(()) };
    let grant = api.broker.grant(&user, vhost);
    for &(kind, name, perm) in checks {
        if let Err(r) = grant.check(kind, name, perm) {
            let audit = api.broker.audit();
            if audit.is_on() {
                let e = crate::broker::audit::AuditEvent::new("access.refused", &actor(), Some(vhost))
                    .with("kind", kind.name())
                    .with("name", name)
                    .with("permission", perm.name())
                    .refused(r.text.clone());
                audit.emit(e);
            }
            let text = format!("ACCESS_REFUSED - {}", r.text);
            return Err(match how {
                Refusal::Declare => access_refused(),
                Refusal::Get => error(StatusCode::UNAUTHORIZED, "not_authorised", &text),
                Refusal::Publish => error(StatusCode::BAD_REQUEST, "bad_request", &format!("403 {text}")),
            });
        }
    }
    Ok(())
}

/// The body of a PUT or POST; an empty one is `{}`.
pub(super) fn parse(body: &Bytes) -> Result<Value, Response> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &format!("not JSON: {e}")))
}

/// PUT /api/queues/{vhost}/{name}: 201 when created, 204 when it was there (equivalent).
pub async fn put_queue(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>, body: Bytes) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return no_vhost() };
    if let Err(r) = permitted(&api, &vhost, &[(Kind::Queue, &name, Perm::Configure)]) {
        return r;
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let existed = v.queues().iter().any(|q| q.name.as_str() == name);
    // As over AMQP, a name in amq.* is refused on create; the API reports it as RabbitMQ's.
    if !existed && name.starts_with("amq.") {
        return access_refused();
    }
    // Fields left out take the AMQP method's defaults, as RabbitMQ fills its method record.
    let decl = QueueDeclaration {
        name: ShortStr::from(name.as_str()),
        passive: false,
        durable: flag(&body, "durable", false),
        exclusive: false,
        auto_delete: flag(&body, "auto_delete", false),
        arguments: arguments_of(&body),
    };
    match declare_queue(&api, &v, &decl).await {
        Ok(ticket) => {
            durable(&api, ticket).await;
            if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED }.into_response()
        }
        Err(e) => refused(e),
    }
}

/// Declares a queue for the API: on a cluster node a new quorum queue is the cluster's
/// (proposed, and answered once applied here, as over AMQP); any other queue is this node's.
/// Returns the journal ticket to wait for.
pub(super) async fn declare_queue(api: &Api, v: &VHost, decl: &QueueDeclaration) -> Result<u64, AmqpError> {
    let quorum = matches!(decl.arguments.get("x-queue-type"), Some(t) if t.as_str() == Some("quorum"));
    match api.broker.quorum_host().cloned() {
        Some(host) if quorum && !v.has_queue(&decl.name) => {
            let args = crate::broker::arguments::QueueArguments::parse(&decl.arguments, &decl.name, &v.name)?;
            crate::broker::arguments::check_type_properties(
                decl.auto_delete,
                decl.exclusive,
                decl.durable,
                &decl.name,
                &v.name,
            )?;
            let ticket = host.declare(&v.name, &decl.name, &decl.arguments, &args);
            committed(&host, ticket).await?;
            Ok(0)
        }
        // A classic queue of a cluster node: placed through the log, as a declare over AMQP
        // places it (this node holds it; the others make its face).
        Some(host) if !decl.exclusive && !v.has_queue(&decl.name) => {
            let Some(ticket) = api.broker.place_new_queue(&v.name, decl, &actor().user)? else {
                return v.declare_queue(decl, &actor()).map(|(_, _, _, ticket)| ticket);
            };
            committed(&host, ticket).await?;
            match host.take_refusal(ticket) {
                Some(r) => Err(r.into()),
                None => Ok(0),
            }
        }
        _ => v.declare_queue(decl, &actor()).map(|(_, _, _, ticket)| ticket),
    }
}

/// Waits until the cluster has resolved `ticket` (committed and applied here, or failed).
async fn committed(host: &Arc<dyn crate::broker::queue::replica::QuorumHost>, ticket: u64) -> Result<(), AmqpError> {
    let mut resolved = host.resolved();
    let answered = tokio::time::timeout(CLUSTER_WAIT, resolved.wait_for(|r| *r >= ticket || host.is_resolved(ticket)))
        .await
        .is_ok();
    if answered {
        return Ok(());
    }
    Err(AmqpError::new(
        crate::types::constants::INTERNAL_ERROR,
        format!("no quorum of the cluster answered within {} s", CLUSTER_WAIT.as_secs()),
    ))
}

#[derive(Deserialize, Default)]
pub struct DeleteQuery {
    #[serde(rename = "if-empty")]
    if_empty: Option<bool>,
    #[serde(rename = "if-unused")]
    if_unused: Option<bool>,
}

/// DELETE /api/queues/{vhost}/{name}[?if-empty=true&if-unused=true]: 204.
pub async fn delete_queue(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return not_found() };
    // As RabbitMQ: a missing queue is 404 before the permission is checked.
    if !v.queues().iter().any(|x| x.name.as_str() == name) {
        return not_found();
    }
    if let Err(r) = permitted(&api, &vhost, &[(Kind::Queue, &name, Perm::Configure)]) {
        return r;
    }
    let (if_unused, if_empty) = (q.if_unused.unwrap_or(false), q.if_empty.unwrap_or(false));
    let mut end = None;
    if let (Some(queue), Some(host)) = (v.replicated_queue(&name), api.broker.quorum_host().cloned()) {
        let ticket = match (&queue.replica, queue.home()) {
            // A classic queue another node holds: its home deletes it, with its checks.
            (Some(r), Some(_)) => Some(r.delete(if_unused, if_empty, &actor().user)),
            // A quorum queue of a cluster goes on every node once its deletion is applied.
            (Some(_), None) => {
                if let Err(e) = v.check_delete(&queue, if_unused, if_empty) {
                    return refused(e);
                }
                Some(host.delete(&vhost, &name))
            }
            // A classic queue held here: deleted here, then its faces elsewhere.
            (None, _) => {
                end = Some((host.clone(), queue.placement()));
                None
            }
        };
        if let Some(ticket) = ticket {
            return match committed(&host, ticket).await {
                Ok(()) => match host.take_refusal(ticket) {
                    Some(r) => refused(r.into()),
                    None => StatusCode::NO_CONTENT.into_response(),
                },
                Err(e) => refused(e),
            };
        }
    }
    match v.delete_queue(&ShortStr::from(name.as_str()), if_unused, if_empty, &actor()) {
        Ok((_, ticket)) => {
            durable(&api, ticket).await;
            if let Some((host, id)) = end {
                let change = DefinitionChange::UnplaceQueue { vhost: vhost.clone(), name: name.clone(), id };
                if let Err(e) = committed(&host, host.propose_definition(change)).await {
                    return refused(e);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refused(e),
    }
}

/// DELETE /api/queues/{vhost}/{name}/contents: purge, 204.
pub async fn purge(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return not_found() };
    if !v.queues().iter().any(|x| x.name.as_str() == name) {
        return not_found();
    }
    if let Err(r) = permitted(&api, &vhost, &[(Kind::Queue, &name, Perm::Read)]) {
        return r;
    }
    match v.purge_queue(&name, super::NO_CONNECTION) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

/// PUT /api/exchanges/{vhost}/{name}: 201 when created, 204 when it was there.
pub async fn put_exchange(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return no_vhost() };
    if let Err(r) = permitted(&api, &vhost, &[(Kind::Exchange, &name, Perm::Configure)]) {
        return r;
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(kind) = body.get("type").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "key_missing: type");
    };
    let existed = v.exchanges().iter().any(|e| e.name.as_str() == name);
    if !existed && name.starts_with("amq.") {
        return access_refused();
    }
    if crate::broker::exchange::ExchangeKind::parse(kind).is_err() {
        return error(StatusCode::BAD_REQUEST, "bad_request", &format!("invalid exchange type '{kind}'"));
    }
    if !existed {
        let flags = (flag(&body, "durable", false), flag(&body, "auto_delete", false), flag(&body, "internal", false));
        let make = || {
            let user = actor().user.to_string();
            DefinitionChange::declare_exchange(&vhost, &name, kind, flags, &arguments_of(&body), &user)
        };
        if let Some(r) = replicated(&api, make).await {
            return match r {
                Ok(()) => StatusCode::CREATED.into_response(),
                Err(e) => refused(e.into()),
            };
        }
    }
    let result = v.declare_exchange(
        &ShortStr::from(name.as_str()),
        kind,
        false,
        flag(&body, "durable", false),
        flag(&body, "auto_delete", false),
        flag(&body, "internal", false),
        &arguments_of(&body),
        &actor(),
    );
    match result {
        Ok(ticket) => {
            durable(&api, ticket).await;
            if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED }.into_response()
        }
        Err(e) => refused(e),
    }
}

/// DELETE /api/exchanges/{vhost}/{name}[?if-unused=true]: 204.
pub async fn delete_exchange(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return not_found() };
    if !v.exchanges().iter().any(|e| e.name.as_str() == name) {
        return not_found();
    }
    if let Err(r) = permitted(&api, &vhost, &[(Kind::Exchange, &name, Perm::Configure)]) {
        return r;
    }
    let if_unused = q.if_unused.unwrap_or(false);
    let make = || DefinitionChange::DeleteExchange {
        vhost: vhost.clone(),
        name: name.clone(),
        if_unused,
        user: actor().user.to_string(),
    };
    if let Some(r) = replicated(&api, make).await {
        return match r {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => refused(e.into()),
        };
    }
    match v.delete_exchange(&ShortStr::from(name.as_str()), if_unused, &actor()) {
        Ok(ticket) => {
            durable(&api, ticket).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refused(e),
    }
}

/// A binding path's destination: `q` a queue, `e` an exchange.
pub(super) fn destination(kind: &str, name: &str) -> Option<Destination> {
    match kind {
        "q" => Some(Destination::Queue(name.into())),
        "e" => Some(Destination::Exchange(name.into())),
        _ => None,
    }
}

/// POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination} with `routing_key` and
/// `arguments`: 201 with the new binding's location.
pub async fn post_binding(
    State(api): State<Api>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return no_vhost() };
    let Some(destination) = destination(&kind, &dest) else { return not_found() };
    let dest_kind = if kind == "e" { Kind::Exchange } else { Kind::Queue };
    if let Err(r) = permitted(&api, &vhost, &[(dest_kind, &dest, Perm::Write), (Kind::Exchange, &source, Perm::Read)]) {
        return r;
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = body.get("routing_key").and_then(Value::as_str).unwrap_or("").to_string();
    let binding = Binding { destination, routing_key: key.as_str().into(), arguments: arguments_of(&body) };
    let result = match replicated_binding(&api, &v, true, &source, &binding).await {
        Some(r) => r.map(|()| 0).map_err(AmqpError::from),
        None => v.bind(&ShortStr::from(source.as_str()), binding, &actor()),
    };
    match result {
        Ok(ticket) => {
            durable(&api, ticket).await;
            // Where the binding is, relative to this path: its properties key.
            let props = super::json::properties_key(&key, &arguments_of(&body));
            let mut r = StatusCode::CREATED.into_response();
            if let Ok(h) = props.parse() {
                r.headers_mut().insert(header::LOCATION, h);
            }
            r
        }
        Err(e) => refused(e),
    }
}

/// DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}: 204. `props` is the
/// binding's `properties_key`: its routing key, `~` for an empty one.
pub async fn delete_binding(
    State(api): State<Api>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let Some(v) = vhost_of(&api, &vhost) else { return not_found() };
    let Some(destination) = destination(&kind, &dest) else { return not_found() };
    let dest_kind = if kind == "e" { Kind::Exchange } else { Kind::Queue };
    let Some(binding) = find_binding(&v, &source, &destination, &props) else {
        return not_found();
    };
    if let Err(r) = permitted(&api, &vhost, &[(dest_kind, &dest, Perm::Write), (Kind::Exchange, &source, Perm::Read)]) {
        return r;
    }
    let result = match replicated_binding(&api, &v, false, &source, &binding).await {
        Some(r) => r.map(|()| 0).map_err(AmqpError::from),
        None => v.unbind(&ShortStr::from(source.as_str()), &binding, &actor()),
    };
    match result {
        Ok(ticket) => {
            durable(&api, ticket).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refused(e),
    }
}

/// A binding's change through the cluster, when it is the cluster's: to an exchange, a quorum
/// queue or a classic queue the cluster knows (an exclusive queue's bindings are its node's).
pub(super) async fn replicated_binding(
    api: &Api,
    v: &VHost,
    bind: bool,
    source: &str,
    binding: &Binding,
) -> Option<Result<(), replicated::Refusal>> {
    if let Destination::Queue(q) = &binding.destination {
        v.replicated_queue(q)?;
    }
    let user = actor().user.to_string();
    replicated(api, || DefinitionChange::binding(bind, &v.name, source, binding, &user)).await
}

/// The binding from `source` to `destination` whose properties key is `props` (as the path
/// carried it: quoted once or twice).
pub(super) fn find_binding(v: &VHost, source: &str, destination: &Destination, props: &str) -> Option<Binding> {
    let wanted = super::json::unquote_binding(props);
    v.bindings().into_iter().find_map(|(s, b)| {
        let key = super::json::properties_key(&b.routing_key, &b.arguments);
        (s.as_str() == source && &b.destination == destination && super::json::unquote_binding(&key) == wanted)
            .then_some(b)
    })
}

/// POST /api/exchanges/{vhost}/{name}/publish with routing_key, payload, payload_encoding
/// (`string` or `base64`) and properties: `{"routed": true|false}`.
pub async fn publish(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>, body: Bytes) -> Response {
    let v = match may_open(&api, &vhost) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = permitted_as(&api, &vhost, &[(Kind::Exchange, &name, Perm::Write)], Refusal::Publish) {
        return r;
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let exchange = if name == "amq.default" { String::new() } else { name };
    let key = body.get("routing_key").and_then(Value::as_str).unwrap_or("");
    let payload = body.get("payload").and_then(Value::as_str).unwrap_or("");
    let payload = match body.get("payload_encoding").and_then(Value::as_str).unwrap_or("string") {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => match base64::engine::general_purpose::STANDARD.decode(payload) {
            Ok(b) => Bytes::from(b),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("payload is not base64: {e}")),
        },
        other => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "bad_request", "reason": ["unsupported_encoding", other] })),
            )
                .into_response()
        }
    };
    let mut props = properties(body.get("properties"));
    let persistent = props.delivery_mode == Some(2);
    if let Err(e) = v.check_publish(&exchange) {
        return publish_refused(e);
    }
    // CC and BCC route as on AMQP; BCC is not delivered.
    let cc = match props.headers.as_mut() {
        Some(h) => match crate::broker::message::header_routes(h) {
            Ok(keys) => {
                h.remove("BCC");
                keys
            }
            Err(e) => return publish_refused(e),
        },
        None => Vec::new(),
    };
    let message = Arc::new(Message::new(exchange.as_str().into(), key.into(), props.to_bytes(), payload, persistent));
    let mut queues = Vec::new();
    if let Err(e) = v.route(&exchange, key, &cc, &message.properties, &mut queues) {
        return publish_refused(e);
    }
    let mut ticket = 0;
    let mut rejected = false;
    for q in &queues {
        match q.publish(message.clone(), None) {
            Ok(p) => {
                ticket = ticket.max(p.ticket);
                rejected |= p.rejected;
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", &e.to_string()),
        }
    }
    durable(&api, ticket).await;
    if rejected {
        // A queue over its limit with reject-publish nacked it: RabbitMQ's API says so.
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "rejected Unable to publish message. Check queue limits.",
        );
    }
    Json(json!({ "routed": crate::broker::queue::delayed::reached_now(&queues) })).into_response()
}

/// The properties object of a publish, as RabbitMQ's API takes it.
fn properties(v: Option<&Value>) -> BasicProperties {
    let mut p = BasicProperties::default();
    let Some(v) = v.and_then(Value::as_object) else { return p };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(ShortStr::from);
    p.content_type = s("content_type");
    p.content_encoding = s("content_encoding");
    p.correlation_id = s("correlation_id");
    p.reply_to = s("reply_to");
    p.expiration = s("expiration");
    p.message_id = s("message_id");
    p.kind = s("type");
    p.user_id = s("user_id");
    p.app_id = s("app_id");
    p.delivery_mode = v.get("delivery_mode").and_then(Value::as_u64).map(|d| d as u8);
    p.priority = v.get("priority").and_then(Value::as_u64).map(|d| d as u8);
    p.timestamp = v.get("timestamp").and_then(Value::as_u64);
    p.headers = v.get("headers").and_then(Value::as_object).map(to_table);
    p
}

fn properties_json(p: &BasicProperties) -> Value {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let s = |x: &Option<ShortStr>| x.as_ref().map(|s| json!(s.as_str()));
    put("content_type", s(&p.content_type));
    put("content_encoding", s(&p.content_encoding));
    put("correlation_id", s(&p.correlation_id));
    put("reply_to", s(&p.reply_to));
    put("expiration", s(&p.expiration));
    put("message_id", s(&p.message_id));
    put("type", s(&p.kind));
    put("user_id", s(&p.user_id));
    put("app_id", s(&p.app_id));
    put("delivery_mode", p.delivery_mode.map(|d| json!(d)));
    put("priority", p.priority.map(|d| json!(d)));
    put("timestamp", p.timestamp.map(|d| json!(d)));
    put("headers", p.headers.as_ref().map(table));
    Value::Object(m)
}

/// POST /api/queues/{vhost}/{name}/get with count, ackmode (`ack_requeue_true`,
/// `ack_requeue_false`, `reject_requeue_true`, `reject_requeue_false`), encoding (`auto` or
/// `base64`) and truncate: the messages, as RabbitMQ lists them.
pub async fn get(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>, body: Bytes) -> Response {
    let v = match may_open(&api, &vhost) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = permitted_as(&api, &vhost, &[(Kind::Queue, &name, Perm::Read)], Refusal::Get) {
        return r;
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1).min(10_000) as usize;
    let requeue = match body.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true") | Some("reject_requeue_true") => true,
        Some("ack_requeue_false") | Some("reject_requeue_false") => false,
        other => {
            let what = other.map_or("missing".to_string(), |o| format!("'{o}'"));
            return error(StatusCode::BAD_REQUEST, "bad_request", &format!("ackmode {what}"));
        }
    };
    let base64 = body.get("encoding").and_then(Value::as_str) == Some("base64");
    let truncate = body.get("truncate").and_then(Value::as_u64).map(|t| t as usize);
    let queue = match v.queue(&name, super::NO_CONNECTION) {
        Ok(q) => q,
        // The get's channel closed with 404: RabbitMQ's API passes its whole reply text on.
        Err(e) if e.code == 404 => return error(StatusCode::NOT_FOUND, "not_found", &e.reply_text()),
        Err(e) => return refused(e),
    };
    let mut out = Vec::new();
    let mut taken = Vec::new();
    for _ in 0..count {
        let Some((m, remaining)) = queue.get(!requeue) else { break };
        let body = m.message.body.to_bytes();
        let shown = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
        let (payload, encoding) = match std::str::from_utf8(shown) {
            Ok(s) if !base64 => (json!(s), "string"),
            _ => (json!(base64::engine::general_purpose::STANDARD.encode(shown)), "base64"),
        };
        out.push(json!({
            "payload_bytes": body.len(),
            "redelivered": m.redelivered,
            "exchange": m.message.exchange.as_str(),
            "routing_key": m.message.routing_key.as_str(),
            "message_count": remaining,
            // RabbitMQ writes properties that are all absent as an empty list.
            "properties": match properties_json(&m.message.decode_properties()) {
                Value::Object(o) if o.is_empty() => json!([]),
                p => p,
            },
            "payload": payload,
            "payload_encoding": encoding,
        }));
        taken.push(m);
    }
    if requeue {
        queue.requeue(taken);
    }
    Json(Value::Array(out)).into_response()
}
