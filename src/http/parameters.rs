//! Runtime parameters and shovels through RabbitMQ's API paths: `/api/parameters[/{component}
//! [/{vhost}[/{name}]]]` (a shovel's value is checked as RabbitMQ checks it, with its texts,
//! and recorded durably before the answer) and `/api/shovels[/{vhost}]`, the state of each
//! running shovel as RabbitMQ's shovel management plugin shows it.

use super::access::missing;
use super::principal::{actor, current_may_see};
use super::write::parse;
use super::{error, list, not_found, Api, ListQuery};
use crate::broker::parameters::{validation_failed, Parameter, ParameterChange};
use crate::broker::replicated::DefinitionChange;
use crate::shovel;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

/// The components Hare knows: shovels, and vhost limits (kept with the vhosts, listed here as
/// RabbitMQ lists its `vhost-limits` parameters).
const COMPONENTS: [&str; 2] = [shovel::COMPONENT, "vhost-limits"];

/// Every parameter of `component` (or all) in `vhost` (or all), as RabbitMQ lists them.
fn all(api: &Api, component: Option<&str>, vhost: Option<&str>) -> Vec<Value> {
    let mut out: Vec<Value> = api.broker.parameters(component, vhost).iter().map(Parameter::to_json).collect();
    if component.is_none_or(|c| c == "vhost-limits") {
        for v in api.broker.access().vhosts().filter(|v| vhost.is_none_or(|x| x == v.name) && !v.limits.is_empty()) {
            out.push(json!({ "vhost": v.name, "component": "vhost-limits", "name": "limits", "value": v.limits }));
        }
    }
    out.retain(|p| current_may_see(p["vhost"].as_str().unwrap_or_default()));
    out
}

pub async fn parameters(State(api): State<Api>, Query(q): ListQuery) -> Response {
    list::respond(all(&api, None, None), &q)
}

pub async fn component(State(api): State<Api>, Path(component): Path<String>, Query(q): ListQuery) -> Response {
    list::respond(all(&api, Some(&component), None), &q)
}

pub async fn component_in(
    State(api): State<Api>,
    Path((component, vhost)): Path<(String, String)>,
    Query(q): ListQuery,
) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    list::respond(all(&api, Some(&component), Some(&vhost)), &q)
}

pub async fn parameter(
    State(api): State<Api>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Response {
    match all(&api, Some(&component), Some(&vhost)).into_iter().find(|p| p["name"] == name.as_str()) {
        Some(p) => Json(p).into_response(),
        None => not_found(),
    }
}

/// PUT /api/parameters/{component}/{vhost}/{name} with `{"value": ...}`: 201 (204 when it
/// replaced one), or RabbitMQ's 400 with its validation text.
pub async fn put_parameter(
    State(api): State<Api>,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found");
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = missing(&body, &["value"]) {
        return r;
    }
    let value = body["value"].clone();
    if component != shovel::COMPONENT {
        let reason = if COMPONENTS.contains(&component.as_str()) {
            // Vhost limits have their own path, as RabbitMQ's are set through it too.
            validation_failed(vec![format!("component {component} is set through /api/vhost-limits")])
        } else {
            validation_failed(vec![format!("component {component} not found")])
        };
        return error(StatusCode::BAD_REQUEST, "bad_request", &reason);
    }
    if let Err(reason) = shovel::definition::validate(&name, &value) {
        // RabbitMQ's handler escapes HTML in the reason.
        let reason = reason.replace('<', "&lt;").replace('>', "&gt;");
        return error(StatusCode::BAD_REQUEST, "bad_request", &reason);
    }
    for end in ["src-uri", "dest-uri"] {
        if let Err(reason) = local_end_allowed(&api, &value[end]) {
            return error(StatusCode::BAD_REQUEST, "bad_request", &validation_failed(vec![reason]));
        }
    }
    let user = actor().user.to_string();
    let created = api.broker.parameter(&component, &vhost, &name).is_none();
    let parameter = Parameter { component, vhost, name, value, user };
    let done = if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT };
    apply(&api, ParameterChange::Set { parameter }, done).await
}

/// Makes a change, answered with `done` once it is durable; on a cluster node, once the
/// cluster has committed it and applied it here (every node applies it: parameters are the
/// cluster's, and each shovel runs on one node, see [`crate::shovel`]).
async fn apply(api: &Api, change: ParameterChange, done: StatusCode) -> Response {
    let user = actor().user.to_string();
    let replicate = || DefinitionChange::parameter(&change, &user);
    super::write::change_definition(api, replicate, || api.broker.change_parameter(change.clone(), &actor()), done)
        .await
}

/// RabbitMQ's check of a local (`amqp://` without a host) end: the user setting the shovel
/// may open its vhost.
fn local_end_allowed(api: &Api, uris: &Value) -> Result<(), String> {
    let list: Vec<&str> = match uris {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let user = actor().user.to_string();
    for raw in list {
        let Ok(u) = shovel::uri::parse(raw) else { continue };
        if u.host.is_none()
            && (api.broker.vhost(&u.vhost).is_none() || !api.broker.grant(&user, &u.vhost).has_vhost_access())
        {
            return Err(format!("user \"{user}\" may not connect to vhost \"{}\"", u.vhost));
        }
    }
    Ok(())
}

pub async fn delete_parameter(
    State(api): State<Api>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Response {
    if api.broker.parameter(&component, &vhost, &name).is_none() {
        return not_found();
    }
    apply(&api, ParameterChange::Clear { component, vhost, name }, StatusCode::NO_CONTENT).await
}

/// The shovels this node runs, and on a cluster node those the other members report (each
/// runs on one node: the leader).
fn shovel_list(api: &Api, vhost: Option<&str>) -> Vec<Value> {
    let wanted = |v: &str| vhost.is_none_or(|x| x == v) && current_may_see(v);
    let local = api.broker.run_states(shovel::COMPONENT);
    let mut list: Vec<Value> =
        local.iter().filter(|(v, _, _)| wanted(v)).map(|(v, n, s)| s.to_json(&api.node.node, v, n)).collect();
    for remote in api.broker.remote_run_states() {
        let (v, n) = (remote["vhost"].as_str().unwrap_or(""), remote["name"].as_str().unwrap_or(""));
        // A shovel both report (the leadership just moved): this node's report is the fresher.
        if wanted(v) && !local.iter().any(|(lv, ln, _)| lv == v && ln == n) {
            list.push(remote);
        }
    }
    list
}

pub async fn shovels(State(api): State<Api>, Query(q): ListQuery) -> Response {
    list::respond(shovel_list(&api, None), &q)
}

pub async fn shovels_in(State(api): State<Api>, Path(vhost): Path<String>, Query(q): ListQuery) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    list::respond(shovel_list(&api, Some(&vhost)), &q)
}

/// GET /api/shovels/vhost/{vhost}/{name}: a list of the one shovel, as RabbitMQ answers.
pub async fn shovel(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    match shovel_list(&api, Some(&vhost)).into_iter().find(|s| s["name"] == name.as_str()) {
        Some(s) => Json(json!([s])).into_response(),
        None => not_found(),
    }
}

/// DELETE /api/shovels/vhost/{vhost}/{name}: deletes the shovel (its parameter).
pub async fn delete_shovel(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    delete_parameter(State(api), Path((shovel::COMPONENT.to_string(), vhost, name))).await
}

/// DELETE /api/shovels/vhost/{vhost}/{name}/restart: its worker starts over.
pub async fn restart_shovel(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    if api.broker.parameter(shovel::COMPONENT, &vhost, &name).is_none() {
        return not_found();
    }
    if api.broker.quorum_host().is_some_and(|h| !h.leads()) {
        // A cluster runs each shovel on its leader; a restart is asked of that node.
        let runner = api
            .broker
            .remote_run_states()
            .into_iter()
            .find(|s| s["vhost"] == vhost.as_str() && s["name"] == name.as_str());
        let node = runner.as_ref().and_then(|s| s["node"].as_str()).unwrap_or("the cluster's leader");
        let text = format!("shovel '{name}' in vhost '{vhost}' runs on node {node}: ask that node to restart it");
        return error(StatusCode::BAD_REQUEST, "bad_request", &text);
    }
    api.broker.restart_parameter(shovel::COMPONENT, &vhost, &name);
    StatusCode::NO_CONTENT.into_response()
}
