//! GET and POST `/api/definitions`: the broker's definitions in the JSON RabbitMQ exports and
//! imports (`rabbitmqadmin export`, the management page's download), so a topology moves
//! between RabbitMQ and Hare. Exported, as RabbitMQ exports them: vhosts, durable exchanges
//! other than the built-in ones, durable queues that are not exclusive, and the bindings
//! between them; users (with their password hashes, so they log in after an import),
//! permissions and topic permissions. Policies and parameters are exported empty and ignored
//! on import: the broker has none.

use super::json::{table, API_VERSION};
use super::principal::actor;
use super::write::{arguments_of, flag, replicated};
use super::{error, Api};
use crate::auth::{AccessChange, PermissionDef, TopicPermissionDef, VhostDef};
use crate::broker::exchange::{Binding, Destination};
use crate::broker::policy::{PolicyChange, PolicyKind, PolicyRequest};
use crate::broker::replicated::DefinitionChange;
use crate::broker::vhost::QueueDeclaration;
use crate::broker::AmqpError;
use crate::types::ShortStr;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

fn built_in(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

pub async fn export(State(api): State<Api>) -> Json<Value> {
    Json(definitions(&api, None))
}

/// GET /api/definitions/{vhost}: one vhost's exchanges, queues, bindings and parameters, its
/// items without their `vhost`, as RabbitMQ exports a vhost.
pub async fn export_vhost(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "vhost_not_found");
    }
    Json(definitions(&api, Some(&vhost))).into_response()
}

/// The definitions of every vhost, or of `only` (as its own export lists them).
fn definitions(api: &Api, only: Option<&str>) -> Value {
    let mut vhosts = Vec::new();
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    let mut parameters = Vec::new();
    let mut policies = Vec::new();
    let access = api.broker.access();
    for v in api.broker.vhosts().into_iter().filter(|v| only.is_none_or(|o| o == v.name)) {
        let def = access.vhost(&v.name);
        vhosts.push(json!({
            "name": v.name,
            "description": def.map_or("", |d| d.description.as_str()),
            "tags": def.map_or(&[][..], |d| &d.tags[..]),
            "limits": def.map(|d| d.limits.clone()).unwrap_or_default(),
        }));
        // RabbitMQ keeps a vhost's limits as a runtime parameter, and exports them so.
        if let Some(limits) = def.map(|d| &d.limits).filter(|l| !l.is_empty()) {
            parameters.push(json!({ "vhost": v.name, "component": "vhost-limits", "name": "limits", "value": limits }));
        }
        for p in api.broker.parameters(None, Some(&v.name)) {
            parameters.push(p.to_json());
        }
        for p in api.broker.policies(PolicyKind::Policy, Some(&v.name)) {
            policies.push(p.to_json());
        }
        // As RabbitMQ's export: every queue but exclusive ones (they cannot be restored),
        // every exchange but the built-in and internal ones, every explicit binding.
        for q in v.queues().iter().filter(|q| q.options.exclusive_owner.is_none()) {
            queues.push(json!({
                "name": q.name.as_str(),
                "vhost": v.name,
                "durable": q.options.durable,
                "auto_delete": q.options.auto_delete,
                "arguments": table(&q.options.arguments),
            }));
        }
        for e in v.exchanges().iter().filter(|e| !built_in(&e.name) && !e.internal) {
            exchanges.push(json!({
                "name": e.name.as_str(),
                "vhost": v.name,
                "type": e.kind.as_str(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": table(&e.arguments),
            }));
        }
        for (source, b) in v.bindings() {
            bindings.push(super::json::binding(&v.name, &source, &b));
        }
    }
    if only.is_some() {
        // (A vhost's export keeps its policies' `vhost`, as RabbitMQ's does.)
        for item in queues.iter_mut().chain(&mut exchanges).chain(&mut bindings).chain(&mut parameters) {
            if let Value::Object(m) = item {
                m.remove("vhost");
            }
        }
        return json!({
            "rabbit_version": API_VERSION,
            "parameters": parameters,
            "policies": policies,
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
        });
    }
    json!({
        "rabbit_version": API_VERSION,
        "rabbitmq_version": API_VERSION,
        "product_name": "Hare",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": access.users().map(super::access::user_json).collect::<Vec<_>>(),
        "vhosts": vhosts,
        "permissions": access.permissions().map(super::access::permission_json).collect::<Vec<_>>(),
        "topic_permissions": access.topic_permissions().map(super::access::topic_permission_json).collect::<Vec<_>>(),
        "parameters": parameters,
        "global_parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

fn items<'a>(body: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    body.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// A user's or vhost's limits object (under `key`), its integer values kept.
fn limits_of(item: &Value, key: &str) -> Option<crate::auth::Limits> {
    let limits = item.get(key)?.as_object()?;
    Some(limits.iter().filter_map(|(k, v)| Some((k.clone(), v.as_i64()?))).collect())
}

fn text<'a>(item: &'a Value, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).unwrap_or("")
}

/// POST /api/definitions: declares what the file lists, exchanges, then queues, then bindings
/// (each one as a declare would: an existing equivalent one is left as it is); answers 204
/// once every durable change is on disk, or 400 with the first refusal.
pub async fn import(State(api): State<Api>, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("not JSON: {e}")),
    };
    import_into(&api, body).await
}

/// POST /api/definitions/{vhost}: imports one vhost's exchanges, queues, bindings and
/// parameters into it (their own `vhost` fields, if any, are replaced), as RabbitMQ does.
pub async fn import_vhost(State(api): State<Api>, Path(vhost): Path<String>, body: Bytes) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "vhost_not_found");
    }
    let mut body: Value = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("not JSON: {e}")),
    };
    let Value::Object(m) = &mut body else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "the definitions are not a JSON object");
    };
    m.retain(|k, _| matches!(k.as_str(), "queues" | "exchanges" | "bindings" | "parameters" | "policies"));
    for list in m.values_mut() {
        for item in list.as_array_mut().into_iter().flatten() {
            if let Value::Object(item) = item {
                item.insert("vhost".into(), json!(vhost));
            }
        }
    }
    import_into(&api, body).await
}

async fn import_into(api: &Api, body: Value) -> Response {
    let bad = |what: String| error(StatusCode::BAD_REQUEST, "bad_request", &what);
    // On a cluster node, every definition is the cluster's: each change is proposed and
    // applied on every node, in the file's order (a classic queue is placed on this node).
    let cluster = api.broker.quorum_host().is_some();
    let user = actor().user.to_string();
    let mut ticket = 0;
    let mut changes = Vec::new();
    for u in items(&body, "users") {
        let old = api.broker.user(text(u, "name"));
        match super::access::user_from(text(u, "name"), u, old.as_ref()) {
            Ok(mut user) => {
                if let Some(limits) = limits_of(u, "limits") {
                    user.limits = limits;
                }
                changes.push(AccessChange::PutUser { user })
            }
            Err(e) => return bad(format!("user '{}': {e}", text(u, "name"))),
        }
    }
    for v in items(&body, "vhosts") {
        let name = text(v, "name");
        let mut def = api.broker.access().vhost(name).cloned().unwrap_or_else(|| VhostDef::new(name));
        if let Some(d) = v.get("description").and_then(Value::as_str) {
            def.description = d.to_string();
        }
        if v.get("tags").is_some() {
            def.tags = super::access::tags_of(v.get("tags"));
        }
        if let Some(limits) = limits_of(v, "limits") {
            def.limits = limits;
        }
        changes.push(AccessChange::PutVhost { vhost: def });
    }
    // Vhost limits kept as RabbitMQ's runtime parameter.
    for p in items(&body, "parameters").filter(|p| text(p, "component") == "vhost-limits") {
        // The vhost as this import leaves it (its own entry first), else as it is.
        let pending = changes.iter().rev().find_map(|c| match c {
            AccessChange::PutVhost { vhost } if vhost.name == text(p, "vhost") => Some(vhost.clone()),
            _ => None,
        });
        let Some(mut def) = pending.or_else(|| api.broker.access().vhost(text(p, "vhost")).cloned()) else {
            return bad(format!("no vhost '{}'", text(p, "vhost")));
        };
        if let Some(limits) = limits_of(p, "value") {
            def.limits = limits;
        }
        changes.push(AccessChange::PutVhost { vhost: def });
    }
    for p in items(&body, "permissions") {
        changes.push(AccessChange::SetPermissions {
            permission: PermissionDef {
                user: text(p, "user").into(),
                vhost: text(p, "vhost").into(),
                configure: text(p, "configure").into(),
                write: text(p, "write").into(),
                read: text(p, "read").into(),
            },
        });
    }
    for p in items(&body, "topic_permissions") {
        changes.push(AccessChange::SetTopicPermissions {
            permission: TopicPermissionDef {
                user: text(p, "user").into(),
                vhost: text(p, "vhost").into(),
                exchange: text(p, "exchange").into(),
                write: text(p, "write").into(),
                read: text(p, "read").into(),
            },
        });
    }
    for change in changes {
        if cluster {
            // Checked here, applied on every node in the cluster's order (as a PUT of one).
            if let Err(e) = api.broker.check_access_change(&change) {
                return bad(e.to_string());
            }
            match replicated(api, || DefinitionChange::access(&change, &user)).await {
                Some(Ok(())) => continue,
                Some(Err(e)) => return bad(e.text),
                None => {}
            }
        }
        match api.broker.change_access(change, &actor()) {
            Ok(t) => ticket = ticket.max(t),
            Err(e) => return bad(e.to_string()),
        }
    }
    // Policies before queues and exchanges, as RabbitMQ imports them: each applies as it is
    // declared.
    for p in items(&body, "policies") {
        let (vhost, name) = (text(p, "vhost"), text(p, "name"));
        if api.broker.vhost(vhost).is_none() {
            return bad(format!("no vhost '{vhost}'"));
        }
        let empty = serde_json::Map::new();
        let request = PolicyRequest {
            pattern: p.get("pattern").unwrap_or(&Value::Null),
            definition: p.get("definition").and_then(Value::as_object).unwrap_or(&empty),
            priority: p.get("priority"),
            apply_to: p.get("apply-to"),
        };
        let policy = match crate::broker::policy::validate(PolicyKind::Policy, vhost, name, &request) {
            Ok(policy) => policy,
            Err(e) => return bad(format!("{e} ({vhost}/{name})").replace('<', "&lt;").replace('>', "&gt;")),
        };
        let change = PolicyChange::Set { kind: PolicyKind::Policy, policy };
        match replicated(api, || DefinitionChange::policy(&change, &user)).await {
            Some(Ok(())) => continue,
            Some(Err(e)) => return bad(e.text),
            None => {}
        }
        match api.broker.change_policy(change, &actor()) {
            Ok(t) => ticket = ticket.max(t),
            Err(e) => return bad(e.to_string()),
        }
    }
    for e in items(&body, "exchanges") {
        let Some(v) = api.broker.vhost(text(e, "vhost")) else {
            return bad(format!("no vhost '{}'", text(e, "vhost")));
        };
        let flags = (flag(e, "durable", true), flag(e, "auto_delete", false), flag(e, "internal", false));
        let (name, kind) = (text(e, "name"), text(e, "type"));
        let make = || DefinitionChange::declare_exchange(&v.name, name, kind, flags, &arguments_of(e), &user);
        match replicated(api, make).await {
            Some(Ok(())) => continue,
            Some(Err(err)) => return bad(AmqpError::from(err).reply_text()),
            None => {}
        }
        let (durable, auto_delete, internal) = flags;
        let result = v.declare_exchange(
            &ShortStr::from(name),
            kind,
            false,
            durable,
            auto_delete,
            internal,
            &arguments_of(e),
            &actor(),
        );
        match result {
            Ok(t) => ticket = ticket.max(t),
            Err(err) => return bad(err.reply_text()),
        }
    }
    for q in items(&body, "queues") {
        let Some(v) = api.broker.vhost(text(q, "vhost")) else {
            return bad(format!("no vhost '{}'", text(q, "vhost")));
        };
        let decl = QueueDeclaration {
            name: ShortStr::from(text(q, "name")),
            passive: false,
            durable: flag(q, "durable", true),
            exclusive: false,
            auto_delete: flag(q, "auto_delete", false),
            arguments: arguments_of(q),
        };
        match super::write::declare_queue(api, &v, &decl).await {
            Ok(t) => ticket = ticket.max(t),
            Err(err) => return bad(err.reply_text()),
        }
    }
    for b in items(&body, "bindings") {
        let Some(v) = api.broker.vhost(text(b, "vhost")) else {
            return bad(format!("no vhost '{}'", text(b, "vhost")));
        };
        let name = ShortStr::from(text(b, "destination"));
        let destination = match text(b, "destination_type") {
            "exchange" => Destination::Exchange(name),
            _ => Destination::Queue(name),
        };
        let binding = Binding { destination, routing_key: text(b, "routing_key").into(), arguments: arguments_of(b) };
        // To an exchange or a queue of the cluster, the cluster's (an exclusive queue's are
        // this node's, but a file has none).
        match super::write::replicated_binding(api, &v, true, text(b, "source"), &binding).await {
            Some(Ok(())) => continue,
            Some(Err(err)) => return bad(AmqpError::from(err).reply_text()),
            None => {}
        }
        match v.bind(&ShortStr::from(text(b, "source")), binding, &actor()) {
            Ok(t) => ticket = ticket.max(t),
            Err(err) => return bad(err.reply_text()),
        }
    }
    // Shovels (runtime parameters), checked as a PUT of one is; after the queues they move
    // between, so that a worker starting at once finds them declared as the file says.
    for p in items(&body, "parameters").filter(|p| text(p, "component") == crate::shovel::COMPONENT) {
        let (vhost, name) = (text(p, "vhost"), text(p, "name"));
        let value = p.get("value").cloned().unwrap_or(Value::Null);
        if let Err(e) = crate::shovel::definition::validate(name, &value) {
            return bad(format!("{e} ({vhost}/{name})"));
        }
        let parameter = crate::broker::parameters::Parameter {
            component: crate::shovel::COMPONENT.into(),
            vhost: vhost.into(),
            name: name.into(),
            value,
            user: actor().user.to_string(),
        };
        let change = crate::broker::parameters::ParameterChange::Set { parameter };
        match replicated(api, || DefinitionChange::parameter(&change, &user)).await {
            Some(Ok(())) => continue,
            Some(Err(e)) => return bad(e.text),
            None => {}
        }
        match api.broker.change_parameter(change, &actor()) {
            Ok(t) => ticket = ticket.max(t),
            Err(e) => return bad(e.to_string()),
        }
    }
    super::write::durable(&api, ticket).await;
    let audit = api.broker.audit();
    if audit.is_on() {
        let count = |k: &str| items(&body, k).count() as u64;
        let e = crate::broker::audit::AuditEvent::new("definitions.imported", &actor(), None)
            .with("users", count("users"))
            .with("vhosts", count("vhosts"))
            .with("permissions", count("permissions"))
            .with("exchanges", count("exchanges"))
            .with("queues", count("queues"))
            .with("bindings", count("bindings"))
            .with("policies", count("policies"));
        audit.emit(e);
    }
    StatusCode::NO_CONTENT.into_response()
}
