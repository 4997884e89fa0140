//! A cluster node's own endpoints (Hare's, not RabbitMQ's: RabbitMQ reports its cluster
//! through rabbitmqctl): `GET /api/hare/cluster` (members, leader, each member's replication
//! lag, the quorum queues), `POST /api/hare/cluster/join` (`{"seed": "host:port"}`, asked of
//! the node that joins) and `POST /api/hare/cluster/forget` (`{"node": "name"}`). On a single
//! node they answer 404 with RabbitMQ's body.

use super::{error, not_found, Api};
use crate::broker::queue::replica::Membership;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub async fn status(State(api): State<Api>) -> Response {
    match api.broker.quorum_host() {
        Some(h) => Json(json!(h.status())).into_response(),
        None => not_found(),
    }
}

fn field(body: &Bytes, key: &str) -> Result<String, Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &format!("malformed JSON: {e}")))?;
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "bad_request", &format!("key_missing: {key}")))
}

/// A membership change whose argument is the body's `key`: 204 once committed.
async fn change(api: Api, body: Bytes, key: &str, make: fn(String) -> Membership) -> Response {
    let Some(h) = api.broker.quorum_host().cloned() else { return not_found() };
    let value = match field(&body, key) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match h.membership(make(value)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e),
    }
}

pub async fn join(State(api): State<Api>, body: Bytes) -> Response {
    change(api, body, "seed", |seed| Membership::Join { seed }).await
}

pub async fn forget(State(api): State<Api>, body: Bytes) -> Response {
    change(api, body, "node", |node| Membership::Forget { node }).await
}
