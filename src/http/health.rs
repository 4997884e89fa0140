//! Health checks as RabbitMQ's management API answers them: 200 `{"status":"ok"}` when
//! healthy, 503 with `{"status":"failed","reason":...}` when not; and the aliveness test,
//! which declares a queue, publishes to it and gets the message back.

use super::principal::actor;
use super::{error, not_found, Api};
use crate::broker::message::Message;
use crate::broker::vhost::QueueDeclaration;
use crate::types::{FieldTable, ShortStr};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;

/// This node's alarm as RabbitMQ lists one: the resource (`memory` or `disk`) and node.
fn local(api: &Api) -> Vec<serde_json::Value> {
    api.broker
        .alarm()
        .map(|reason| {
            let resource = crate::broker::alarm_resource(&reason);
            vec![json!({ "node": api.node.node, "resource": resource, "reason": reason })]
        })
        .unwrap_or_default()
}

/// GET /api/health/checks/alarms: this node's alarm and every other member's (a cluster's
/// alarms block every node's publishers).
pub async fn cluster_alarms(State(api): State<Api>) -> Response {
    let mut alarms = local(&api);
    for (node, resource) in api.broker.remote_alarms() {
        alarms.push(json!({ "node": node, "resource": resource }));
    }
    check(alarms, "There are alarms in effect in the cluster")
}

/// GET /api/health/checks/local-alarms.
pub async fn local_alarms(State(api): State<Api>) -> Response {
    check(local(&api), "There are alarms in effect on the node")
}

fn check(alarms: Vec<serde_json::Value>, text: &str) -> Response {
    if alarms.is_empty() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "failed", "reason": text, "alarms": alarms })))
            .into_response()
    }
}

/// GET /api/health/checks/virtual-hosts: every vhost is running (they always are here).
pub async fn virtual_hosts() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// GET /api/aliveness-test/{vhost}: declares `aliveness-test`, publishes a message to it and
/// gets it back, as RabbitMQ does; `{"status":"ok"}`.
pub async fn aliveness(State(api): State<Api>, Path(vhost): Path<String>) -> Response {
    let Some(v) = api.broker.vhost(&vhost) else { return not_found() };
    let name = ShortStr::from("aliveness-test");
    let decl = QueueDeclaration {
        name: name.clone(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::new(),
    };
    let failed = |why: String| error(StatusCode::SERVICE_UNAVAILABLE, "failed", &why);
    let queue = match v.declare_queue(&decl, &actor()) {
        Ok((q, ..)) => q,
        Err(e) => return failed(e.reply_text()),
    };
    // Through the default exchange, as RabbitMQ's test publishes (and counts) it.
    let message = Arc::new(Message::new(
        ShortStr::default(),
        name.clone(),
        Bytes::new(),
        Bytes::from_static(b"test_message"),
        false,
    ));
    let mut routed = Vec::new();
    if let Err(e) = v.route("", &name, &[], &message.properties, &mut routed) {
        return failed(e.reply_text());
    }
    for q in &routed {
        if let Err(e) = q.publish(message.clone(), None) {
            return failed(e.to_string());
        }
    }
    match queue.get(true) {
        Some((m, _)) if m.message.body.to_bytes() == "test_message" => Json(json!({ "status": "ok" })).into_response(),
        _ => failed("the test message did not come back".into()),
    }
}

/// GET /api/healthchecks/node and /api/healthchecks/node/{node}: RabbitMQ 3.10's older node
/// check. This node answers for itself; another node name is 404, as RabbitMQ answers for a
/// node that is not in its cluster.
pub async fn node_check(State(api): State<Api>, node: Option<Path<String>>) -> Response {
    if node.is_some_and(|Path(n)| n != api.node.node) {
        return not_found();
    }
    Json(json!({ "status": "ok" })).into_response()
}

/// GET /api/health/checks/node-is-mirror-sync-critical and node-is-quorum-critical: whether
/// stopping this node would leave a mirrored or quorum queue without a synchronised copy or
/// quorum. A single node never does, and RabbitMQ says why.
pub async fn single_node_critical() -> Response {
    Json(json!({ "status": "ok", "reason": "single node cluster" })).into_response()
}

/// GET /api/health/checks/port-listener/{port}: a listener is open on the port.
pub async fn port_listener(State(api): State<Api>, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<u16>() else { return error(StatusCode::BAD_REQUEST, "bad_request", "Invalid port") };
    let listeners = super::json::listener_ports(&api.node);
    if listeners.iter().any(|&(_, p)| p == port) {
        return Json(json!({ "status": "ok", "port": port })).into_response();
    }
    let ports: Vec<u16> = listeners.iter().map(|&(_, p)| p).collect();
    let body = json!({ "status": "failed", "reason": "No active listener", "missing": port, "ports": ports });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// GET /api/health/checks/protocol-listener/{protocol}: a listener of the protocol is open;
/// the protocol's other spellings are read as RabbitMQ reads them.
pub async fn protocol_listener(State(api): State<Api>, Path(protocol): Path<String>) -> Response {
    let lower = protocol.to_lowercase();
    let protocol = match lower.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp0_9_1" | "amqp10" | "amqp1.0" | "amqp1-0" | "amqp1_0" => "amqp",
        "amqps" => "amqp/ssl",
        "mqtt3.1" | "mqtt3.1.1" | "mqtt31" | "mqtt311" | "mqtt3_1" | "mqtt3_1_1" => "mqtt",
        "mqtts" | "mqtt+tls" | "mqtt+ssl" => "mqtt/ssl",
        "stomp1.0" | "stomp1.1" | "stomp1.2" | "stomp10" | "stomp11" | "stomp12" | "stomp1_0" | "stomp1_1"
        | "stomp1_2" => "stomp",
        "stomps" | "stomp+tls" | "stomp+ssl" => "stomp/ssl",
        "http1" | "http1.1" | "http_api" | "management" | "management_ui" | "ui" => "http",
        "cli" | "distribution" => "clustering",
        other => other,
    };
    let listeners = super::json::listener_ports(&api.node);
    if listeners.iter().any(|&(p, _)| p == protocol) {
        return Json(json!({ "status": "ok", "protocol": protocol })).into_response();
    }
    let protocols: Vec<&str> = listeners.iter().map(|&(p, _)| p).collect();
    let body =
        json!({ "status": "failed", "reason": "No active listener", "missing": protocol, "protocols": protocols });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
