//! Users, vhosts, permissions, topic permissions and limits through RabbitMQ's API paths.
//! Every change goes through `Broker::change_access` (recorded durably, answered once on
//! disk). Only an `administrator` reaches these paths (see [`super::principal`]), except
//! `whoami` and the vhosts a user may see.

use super::principal::{actor, current_may_see, PRINCIPAL};
use super::write::{durable, parse};
use super::{error, list, not_found, Api, ListQuery};
use crate::auth::{password, AccessChange, AccessError, PermissionDef, TopicPermissionDef, UserDef, VhostDef};
use crate::broker::policy::erlang_term;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashSet;

/// A change refused, as RabbitMQ's API answers it.
fn refused(e: AccessError) -> Response {
    let reason = match &e {
        AccessError::NoSuchUser(_) | AccessError::NoSuchVhost(_) => "vhost_or_user_not_found".to_string(),
        other => other.to_string(),
    };
    error(StatusCode::BAD_REQUEST, "bad_request", &reason)
}

/// Applies a change and answers once it is durable: 201 if `created`, else 204.
async fn apply(api: &Api, change: AccessChange, created: bool) -> Response {
    if api.broker.quorum_host().is_some() {
        // A cluster node: checked here, applied on every node in the cluster's order.
        if let Err(e) = api.broker.check_access_change(&change) {
            return refused(e);
        }
        let user = actor().user.to_string();
        let make = || crate::broker::replicated::DefinitionChange::access(&change, &user);
        if let Some(r) = super::write::replicated(api, make).await {
            return match r {
                Ok(()) => if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT }.into_response(),
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e.text),
            };
        }
    }
    match api.broker.change_access(change, &actor()) {
        Ok(ticket) => {
            durable(api, ticket).await;
            if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT }.into_response()
        }
        Err(e) => refused(e),
    }
}

/// Tags as RabbitMQ takes them: a list, or one string separated by commas.
pub fn tags_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

pub fn user_json(u: &UserDef) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": u.limits,
    })
}

pub fn permission_json(p: &PermissionDef) -> Value {
    json!({ "user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read })
}

pub fn topic_permission_json(p: &TopicPermissionDef) -> Value {
    json!({ "user": p.user, "vhost": p.vhost, "exchange": p.exchange, "write": p.write, "read": p.read })
}

/// A user as a PUT body (or a definitions file) describes it: `password` (hashed here), or
/// `password_hash` with `hashing_algorithm`, or neither (a user for EXTERNAL only).
pub fn user_from(name: &str, body: &Value, old: Option<&UserDef>) -> Result<UserDef, String> {
    let (password_hash, hashing_algorithm) = match (body.get("password"), body.get("password_hash")) {
        (Some(Value::String(p)), _) => (password::hash(p), password::SHA256.to_string()),
        (_, Some(Value::String(h))) => {
            let algorithm = body.get("hashing_algorithm").and_then(Value::as_str).unwrap_or(password::SHA256);
            if !password::known_algorithm(algorithm) {
                return Err(format!("unsupported hashing algorithm '{algorithm}'"));
            }
            (h.clone(), algorithm.to_string())
        }
        // Neither: an existing user keeps its password (a change of tags); a new one has
        // none and logs in only by EXTERNAL.
        _ => match old {
            Some(o) => (o.password_hash.clone(), o.hashing_algorithm.clone()),
            None => (String::new(), password::SHA256.to_string()),
        },
    };
    Ok(UserDef {
        name: name.to_string(),
        password_hash,
        hashing_algorithm,
        tags: tags_of(body.get("tags")),
        limits: old.map(|o| o.limits.clone()).unwrap_or_default(),
    })
}

pub async fn whoami(State(api): State<Api>) -> Json<Value> {
    let name = PRINCIPAL.try_with(|p| p.name.clone()).unwrap_or_default();
    let tags = api.broker.user(&name).map(|u| u.tags).unwrap_or_default();
    Json(json!({ "name": name, "tags": tags }))
}

pub async fn users(State(api): State<Api>, axum::extract::Query(q): ListQuery) -> Response {
    list::respond(api.broker.access().users().map(user_json).collect(), &q)
}

pub async fn users_without_permissions(State(api): State<Api>) -> Response {
    let access = api.broker.access();
    let with: HashSet<&str> = access.permissions().map(|p| p.user.as_str()).collect();
    Json(Value::Array(access.users().filter(|u| !with.contains(u.name.as_str())).map(user_json).collect()))
        .into_response()
}

pub async fn user(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.broker.user(&name) {
        Some(u) => Json(user_json(&u)).into_response(),
        None => not_found(),
    }
}

pub async fn put_user(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let old = api.broker.user(&name);
    let user = match user_from(&name, &body, old.as_ref()) {
        Ok(u) => u,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", &reason),
    };
    apply(&api, AccessChange::PutUser { user }, old.is_none()).await
}

pub async fn delete_user(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if api.broker.user(&name).is_none() {
        return not_found();
    }
    apply(&api, AccessChange::DeleteUser { name }, false).await
}

pub async fn user_permissions(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if api.broker.user(&name).is_none() {
        return not_found();
    }
    let access = api.broker.access();
    Json(Value::Array(access.permissions().filter(|p| p.user == name).map(permission_json).collect())).into_response()
}

pub async fn user_topic_permissions(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if api.broker.user(&name).is_none() {
        return not_found();
    }
    let access = api.broker.access();
    Json(Value::Array(access.topic_permissions().filter(|p| p.user == name).map(topic_permission_json).collect()))
        .into_response()
}

/// PUT /api/vhosts/{name}: creates the vhost, or sets an existing one's description and tags
/// (what the body leaves out is cleared, as RabbitMQ's `put_vhost` does). As RabbitMQ, the
/// user who creates a vhost gets every permission in it (`.*` for configure, write and read),
/// so that a client creating a vhost can then use it.
pub async fn put_vhost(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let old = api.broker.access().vhost(&name).cloned();
    let mut def = old.clone().unwrap_or_else(|| VhostDef::new(&name));
    def.description = body.get("description").and_then(Value::as_str).unwrap_or("").to_string();
    def.tags = tags_of(body.get("tags"));
    if old.is_none() {
        def.default_queue_type = body.get("defaultqueuetype").and_then(Value::as_str).map(str::to_string);
    }
    let created = old.is_none();
    let answer = apply(&api, AccessChange::PutVhost { vhost: def }, created).await;
    if !created || answer.status() != StatusCode::CREATED {
        return answer;
    }
    let creator = PRINCIPAL.try_with(|p| p.name.clone()).unwrap_or_default();
    if api.broker.user(&creator).is_none() {
        return answer;
    }
    let all = || ".*".to_string();
    let permission = PermissionDef { user: creator, vhost: name, configure: all(), write: all(), read: all() };
    match apply(&api, AccessChange::SetPermissions { permission }, true).await.status() {
        s if s.is_success() => answer,
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the creator's permissions were not set"),
    }
}

pub async fn delete_vhost(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if api.broker.vhost(&name).is_none() {
        return not_found();
    }
    apply(&api, AccessChange::DeleteVhost { name }, false).await
}

pub async fn permissions(State(api): State<Api>, axum::extract::Query(q): ListQuery) -> Response {
    list::respond(api.broker.access().permissions().map(permission_json).collect(), &q)
}

pub async fn vhost_permissions(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    axum::extract::Query(q): ListQuery,
) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    list::respond(api.broker.access().permissions().filter(|p| p.vhost == vhost).map(permission_json).collect(), &q)
}

pub async fn permission(State(api): State<Api>, Path((vhost, user)): Path<(String, String)>) -> Response {
    match api.broker.access().permission(&user, &vhost) {
        Some(p) => Json(permission_json(p)).into_response(),
        None => not_found(),
    }
}

/// The string fields `keys` of a JSON body, or RabbitMQ's 400 listing every one missing
/// (`[{key_missing,write},{key_missing,read}]`, as its `with_decode` does).
fn texts<const N: usize>(body: &Bytes, keys: [&str; N]) -> Result<[String; N], Response> {
    let body = parse(body)?;
    missing(&body, &keys)?;
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, key) in out.iter_mut().zip(keys) {
        match body.get(key) {
            Some(Value::String(s)) => *slot = s.clone(),
            Some(other) => *slot = other.to_string(),
            None => {}
        }
    }
    Ok(out)
}

/// RabbitMQ's 400 for a body without some of `keys`: `[{key_missing,k},...]`.
pub(super) fn missing(body: &Value, keys: &[&str]) -> Result<(), Response> {
    let absent: Vec<String> =
        keys.iter().filter(|k| body.get(**k).is_none()).map(|k| format!("{{key_missing,{k}}}")).collect();
    if absent.is_empty() {
        return Ok(());
    }
    Err(error(StatusCode::BAD_REQUEST, "bad_request", &format!("[{}]", absent.join(","))))
}

/// RabbitMQ's 400 for a user named in a path who does not exist: `["no_such_user","bob"]`.
fn no_such_user(name: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": "bad_request", "reason": ["no_such_user", name] }))).into_response()
}

/// POST /api/users/bulk-delete with `{"users": [...]}`: deletes them in order, 204. As
/// RabbitMQ, a name that is not a user stops there with 400 `["no_such_user", name]` (the
/// ones before it are gone).
pub async fn bulk_delete_users(State(api): State<Api>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = missing(&body, &["users"]) {
        return r;
    }
    let Some(names) = body["users"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "users must be a list of user names");
    };
    for name in names {
        let name = name.as_str().map_or_else(|| name.to_string(), str::to_string);
        if api.broker.user(&name).is_none() {
            return no_such_user(&name);
        }
        let r = apply(&api, AccessChange::DeleteUser { name }, false).await;
        if !r.status().is_success() {
            return r;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

pub async fn put_permission(
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let [configure, write, read] = match texts(&body, ["configure", "write", "read"]) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let existed = api.broker.access().permission(&user, &vhost).is_some();
    let permission = PermissionDef { user, vhost, configure, write, read };
    apply(&api, AccessChange::SetPermissions { permission }, !existed).await
}

pub async fn delete_permission(State(api): State<Api>, Path((vhost, user)): Path<(String, String)>) -> Response {
    if api.broker.access().permission(&user, &vhost).is_none() {
        return not_found();
    }
    apply(&api, AccessChange::ClearPermissions { user, vhost }, false).await
}

pub async fn topic_permissions(State(api): State<Api>, axum::extract::Query(q): ListQuery) -> Response {
    list::respond(api.broker.access().topic_permissions().map(topic_permission_json).collect(), &q)
}

pub async fn vhost_topic_permissions(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    let access = api.broker.access();
    Json(Value::Array(access.topic_permissions().filter(|p| p.vhost == vhost).map(topic_permission_json).collect()))
        .into_response()
}

pub async fn topic_permission(State(api): State<Api>, Path((vhost, user)): Path<(String, String)>) -> Response {
    let access = api.broker.access();
    let found: Vec<Value> = access.topic_permissions_of(&user, &vhost).map(topic_permission_json).collect();
    if found.is_empty() {
        return not_found();
    }
    Json(Value::Array(found)).into_response()
}

pub async fn put_topic_permission(
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let [exchange, write, read] = match texts(&body, ["exchange", "write", "read"]) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let existed = api.broker.access().topic_permissions_of(&user, &vhost).any(|p| p.exchange == exchange);
    let permission = TopicPermissionDef { user, vhost, exchange, write, read };
    apply(&api, AccessChange::SetTopicPermissions { permission }, !existed).await
}

pub async fn delete_topic_permission(State(api): State<Api>, Path((vhost, user)): Path<(String, String)>) -> Response {
    if api.broker.access().topic_permissions_of(&user, &vhost).next().is_none() {
        return not_found();
    }
    apply(&api, AccessChange::ClearTopicPermissions { user, vhost, exchange: None }, false).await
}

fn limits_json(kind: &str, name: &str, limits: &crate::auth::Limits) -> Value {
    json!({ kind: name, "value": limits })
}

pub async fn vhost_limits(State(api): State<Api>) -> Response {
    let access = api.broker.access();
    let items = access
        .vhosts()
        .filter(|v| !v.limits.is_empty() && current_may_see(&v.name))
        .map(|v| limits_json("vhost", &v.name, &v.limits))
        .collect();
    Json(Value::Array(items)).into_response()
}

pub async fn vhost_limits_of(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    let Some(v) = api.broker.access().vhost(&vhost).cloned() else { return not_found() };
    let items = if v.limits.is_empty() { vec![] } else { vec![limits_json("vhost", &v.name, &v.limits)] };
    Json(Value::Array(items)).into_response()
}

/// The `value` of a limit's PUT body, checked as RabbitMQ checks it: a known limit (`known`),
/// an integer. The texts are RabbitMQ's; `component` names the limits in them.
fn limit_value(body: &Bytes, name: &str, known: &[&str], component: &str) -> Result<i64, Response> {
    let body = parse(body)?;
    missing(&body, &["value"])?;
    let value = &body["value"];
    let prefix = if component == "limits" { "Validation failed\n\n" } else { "" };
    let suffix = if component == "limits" { "\n" } else { "" };
    if !known.contains(&name) {
        let reason =
            format!("{prefix}Unrecognised terms [{{<<\"{name}\">>,{}}}] in {component}{suffix}", erlang_term(value));
        return Err(error(StatusCode::BAD_REQUEST, "bad_request", &reason));
    }
    value.as_i64().ok_or_else(|| {
        let reason = format!("{prefix}{name} should be a number, actually was {}{suffix}", erlang_term(value));
        error(StatusCode::BAD_REQUEST, "bad_request", &reason)
    })
}

pub async fn put_vhost_limit(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(mut def) = api.broker.access().vhost(&vhost).cloned() else { return super::write::no_vhost() };
    let value = match limit_value(&body, &name, &crate::auth::VHOST_LIMITS, "limits") {
        Ok(v) => v,
        Err(r) => return r,
    };
    def.limits.insert(name, value);
    apply(&api, AccessChange::PutVhost { vhost: def }, false).await
}

/// DELETE /api/vhost-limits/{vhost}/{name}: 204, whether the limit was set or not.
pub async fn delete_vhost_limit(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    let Some(mut def) = api.broker.access().vhost(&vhost).cloned() else { return not_found() };
    if def.limits.remove(&name).is_none() {
        return StatusCode::NO_CONTENT.into_response();
    }
    apply(&api, AccessChange::PutVhost { vhost: def }, false).await
}

pub async fn user_limits(State(api): State<Api>) -> Response {
    let access = api.broker.access();
    let items =
        access.users().filter(|u| !u.limits.is_empty()).map(|u| limits_json("user", &u.name, &u.limits)).collect();
    Json(Value::Array(items)).into_response()
}

pub async fn user_limits_of(State(api): State<Api>, Path(user): Path<String>) -> Response {
    let Some(u) = api.broker.user(&user) else { return not_found() };
    let items = if u.limits.is_empty() { vec![] } else { vec![limits_json("user", &u.name, &u.limits)] };
    Json(Value::Array(items)).into_response()
}

pub async fn put_user_limit(
    State(api): State<Api>,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let value = match limit_value(&body, &name, &crate::auth::USER_LIMITS, "user-limits") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(mut def) = api.broker.user(&user) else { return no_such_user(&user) };
    def.limits.insert(name, value);
    apply(&api, AccessChange::PutUser { user: def }, false).await
}

/// DELETE /api/user-limits/{user}/{name}: 204, whether the limit was set or not.
pub async fn delete_user_limit(State(api): State<Api>, Path((user, name)): Path<(String, String)>) -> Response {
    let Some(mut def) = api.broker.user(&user) else { return not_found() };
    if def.limits.remove(&name).is_none() {
        return StatusCode::NO_CONTENT.into_response();
    }
    apply(&api, AccessChange::PutUser { user: def }, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_as_a_list_or_a_string() {
        assert_eq!(tags_of(Some(&json!("administrator, monitoring"))), ["administrator", "monitoring"]);
        assert_eq!(tags_of(Some(&json!(["management"]))), ["management"]);
        assert!(tags_of(Some(&json!(""))).is_empty());
    }
}
