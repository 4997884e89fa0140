//! Policies and operator policies through RabbitMQ's API paths: `/api/policies[/{vhost}[/{name}]]`
//! and `/api/operator-policies/...`. A change is checked as RabbitMQ checks it (its texts),
//! recorded durably and applied to the vhost's queues and exchanges before the answer (see
//! `crate::broker::policy`); on a cluster node it is proposed to the cluster and applied on
//! every node in the log's order.

use super::access::missing;
use super::principal::{actor, current_may_see};
use super::write::parse;
use super::{error, list, not_found, Api, ListQuery};
use crate::broker::policy::{self, PolicyChange, PolicyKind, PolicyRequest};
use crate::broker::replicated::DefinitionChange;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::Value;

fn listing(
    api: &Api,
    kind: PolicyKind,
    vhost: Option<&str>,
    q: &std::collections::HashMap<String, String>,
) -> Response {
    if let Some(v) = vhost {
        if api.broker.vhost(v).is_none() {
            return not_found();
        }
    }
    let items =
        api.broker.policies(kind, vhost).iter().filter(|p| current_may_see(&p.vhost)).map(|p| p.to_json()).collect();
    list::respond(items, q)
}

pub async fn policies(State(api): State<Api>, Query(q): ListQuery) -> Response {
    listing(&api, PolicyKind::Policy, None, &q)
}

pub async fn policies_in(State(api): State<Api>, Path(vhost): Path<String>, Query(q): ListQuery) -> Response {
    listing(&api, PolicyKind::Policy, Some(&vhost), &q)
}

pub async fn operator_policies(State(api): State<Api>, Query(q): ListQuery) -> Response {
    listing(&api, PolicyKind::OperatorPolicy, None, &q)
}

pub async fn operator_policies_in(State(api): State<Api>, Path(vhost): Path<String>, Query(q): ListQuery) -> Response {
    listing(&api, PolicyKind::OperatorPolicy, Some(&vhost), &q)
}

fn one(api: &Api, kind: PolicyKind, vhost: &str, name: &str) -> Response {
    match api.broker.policy(kind, vhost, name) {
        Some(p) => Json(p.to_json()).into_response(),
        None => not_found(),
    }
}

pub async fn policy(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    one(&api, PolicyKind::Policy, &vhost, &name)
}

pub async fn operator_policy(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    one(&api, PolicyKind::OperatorPolicy, &vhost, &name)
}

/// A PUT's body as a policy: `pattern` and `definition` required (RabbitMQ's key_missing),
/// `priority` and `apply-to` optional, each checked with RabbitMQ's texts.
fn policy_of(kind: PolicyKind, vhost: &str, name: &str, body: &Bytes) -> Result<policy::PolicyDef, Response> {
    let body = parse(body)?;
    missing(&body, &["pattern", "definition"])?;
    let Some(definition) = body["definition"].as_object() else {
        // RabbitMQ 3.10's handler fails with a 500 here.
        return Err(error(StatusCode::BAD_REQUEST, "bad_request", "definition must be a dictionary"));
    };
    let request = PolicyRequest {
        pattern: &body["pattern"],
        definition,
        priority: body.get("priority"),
        apply_to: body.get("apply-to"),
    };
    policy::validate(kind, vhost, name, &request).map_err(|reason| {
        // The policy handler escapes HTML in its reason (as RabbitMQ's does); the operator
        // policy handler does not.
        let reason = if kind == PolicyKind::Policy { escape_html(&reason) } else { reason };
        error(StatusCode::BAD_REQUEST, "bad_request", &reason)
    })
}

/// RabbitMQ's `rabbit_mgmt_format:escape_html_tags`.
fn escape_html(s: &str) -> String {
    s.replace('<', "&lt;").replace('>', "&gt;")
}

/// Applies a change and answers once it is durable (on a cluster node: once the cluster has
/// applied it here).
async fn apply(api: &Api, change: PolicyChange, created: bool) -> Response {
    let done = if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT };
    if let Err(e) = api.broker.check_policy_change(&change) {
        return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
    }
    let user = actor().user.to_string();
    let replicate = || DefinitionChange::policy(&change, &user);
    super::write::change_definition(api, replicate, || api.broker.change_policy(change.clone(), &actor()), done).await
}

async fn put(api: Api, kind: PolicyKind, vhost: String, name: String, body: Bytes) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found");
    }
    let policy = match policy_of(kind, &vhost, &name, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let created = api.broker.policy(kind, &vhost, &name).is_none();
    apply(&api, PolicyChange::Set { kind, policy }, created).await
}

async fn delete(api: Api, kind: PolicyKind, vhost: String, name: String) -> Response {
    if api.broker.policy(kind, &vhost, &name).is_none() {
        return not_found();
    }
    apply(&api, PolicyChange::Clear { kind, vhost, name }, false).await
}

pub async fn put_policy(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>, body: Bytes) -> Response {
    put(api, PolicyKind::Policy, vhost, name, body).await
}

pub async fn put_operator_policy(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    put(api, PolicyKind::OperatorPolicy, vhost, name, body).await
}

pub async fn delete_policy(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    delete(api, PolicyKind::Policy, vhost, name).await
}

pub async fn delete_operator_policy(State(api): State<Api>, Path((vhost, name)): Path<(String, String)>) -> Response {
    delete(api, PolicyKind::OperatorPolicy, vhost, name).await
}

/// The policy fields of a queue object: `policy` and `operator_policy` (names, or null) and
/// `effective_policy_definition`. (An exchange object has only `policy`, when one applies.)
pub fn applied_json(applied: &policy::Applied) -> [(&'static str, Value); 3] {
    [
        ("policy", applied.policy_name().map_or(Value::Null, Value::from)),
        ("operator_policy", applied.operator_name().map_or(Value::Null, Value::from)),
        ("effective_policy_definition", serde_json::to_value(applied.effective_definition()).unwrap_or_default()),
    ]
}
