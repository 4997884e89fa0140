//! Health checks as RabbitMQ's management API answers them: 200 `{"status":"ok"}` when
//! healthy, 503 with `{"status":"failed","reason":...}` when not; and the aliveness test,
//! which declares a queue, publishes to it and gets the message back.

use super::principal::actor;
use super::{error, not_found, Api};
use crate::broker::message::Message;
use crate::broker::vhost::QueueDeclaration;
use crate::protocol::{FieldTable, ShortStr};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;

/// The alarms in effect as RabbitMQ lists them: the resource (`memory` or `disk`) and node.
fn alarms(api: &Api) -> Vec<serde_json::Value> {
    api.broker
        .alarm()
        .map(|reason| {
            let resource = if reason.starts_with("memory") { "memory" } else { "disk" };
            vec![json!({ "node": api.node.node, "resource": resource, "reason": reason })]
        })
        .unwrap_or_default()
}

/// GET /api/health/checks/alarms (one node: the same as local-alarms but for the text).
pub async fn cluster_alarms(State(api): State<Api>) -> Response {
    check(&api, "There are alarms in effect in the cluster")
}

/// GET /api/health/checks/local-alarms.
pub async fn local_alarms(State(api): State<Api>) -> Response {
    check(&api, "There are alarms in effect on the node")
}

fn check(api: &Api, text: &str) -> Response {
    let alarms = alarms(api);
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
    let message =
        Arc::new(Message::new(ShortStr::default(), name, Bytes::new(), Bytes::from_static(b"test_message"), false));
    if let Err(e) = queue.publish(message, None) {
        return failed(e.to_string());
    }
    match queue.get(true) {
        Some((m, _)) if m.message.body.to_bytes() == "test_message" => Json(json!({ "status": "ok" })).into_response(),
        _ => failed("the test message did not come back".into()),
    }
}
