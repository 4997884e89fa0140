//! Streams in the management API: the stream protocol's subscriptions with their offsets
//! (`/api/stream/consumers`, as RabbitMQ's rabbitmq_stream_management plugin lists them), and
//! a stream's own figures in its queue object and in the metrics.

use super::{list, not_found, Api, ListQuery};
use crate::broker::connections::{ConnectionEntry, StreamReaderCard};
use crate::broker::queue::Queue;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// A stream's figures: the offsets it keeps (first, and the last durable one), its segments
/// and their bytes. None for other queues.
pub(super) struct Figures {
    pub first: u64,
    /// The last durable offset; None while the stream is empty.
    pub committed: Option<u64>,
    pub segments: usize,
    pub bytes: u64,
}

pub(super) fn figures(q: &Queue) -> Option<Figures> {
    let s = q.stream.as_ref()?;
    let (first, end) = s.bounds();
    let (bytes, segments) = s.size();
    Some(Figures { first, committed: end.checked_sub(1).filter(|&c| c >= first), segments, bytes })
}

/// What a stream queue's object adds (RabbitMQ's `members`, `online`, `committed_offset`,
/// `segments`; Hare's `first_offset` and `stream_size_bytes`).
pub(super) fn queue_fields(v: &mut Value, q: &Queue, node: &str) {
    let Some(f) = figures(q) else { return };
    v["members"] = json!([node]);
    v["online"] = json!([node]);
    v["committed_offset"] = json!(f.committed);
    v["first_offset"] = json!(f.first);
    v["segments"] = json!(f.segments);
    v["stream_size_bytes"] = json!(f.bytes);
}

/// How far a subscription is behind its stream's last durable offset (RabbitMQ's
/// `offset_lag`): 0 once it was sent everything.
fn lag(card: &StreamReaderCard, committed: Option<u64>) -> u64 {
    committed.map_or(0, |c| (c + 1).saturating_sub(card.offset.load(Ordering::Relaxed)))
}

/// Every stream protocol subscription the caller may see, with its connection and the
/// stream's last durable offset.
fn subscriptions(
    api: &Api,
    vhost: Option<&str>,
) -> Vec<(std::sync::Arc<ConnectionEntry>, std::sync::Arc<StreamReaderCard>, Option<u64>)> {
    let mut out = Vec::new();
    for c in api.broker.connection_list() {
        if vhost.is_some_and(|v| v != c.vhost) || !super::principal::current_may_see(&c.vhost) {
            continue;
        }
        let readers = c.stream_readers();
        if readers.is_empty() {
            continue;
        }
        let Some(v) = api.broker.vhost(&c.vhost) else { continue };
        for r in readers {
            let committed = v.queue(&r.stream, 0).ok().and_then(|q| figures(&q)).and_then(|f| f.committed);
            out.push((c.clone(), r, committed));
        }
    }
    out
}

fn consumer(c: &ConnectionEntry, r: &StreamReaderCard, committed: Option<u64>, node: &str) -> Value {
    let properties: serde_json::Map<String, Value> = r.properties.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let active = r.active.load(Ordering::Relaxed);
    json!({
        "connection_details": {
            "name": c.name,
            "node": node,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "user": c.user,
        },
        "queue": { "name": r.stream, "vhost": c.vhost },
        "subscription_id": r.subscription,
        "offset": r.offset.load(Ordering::Relaxed),
        "offset_lag": lag(r, committed),
        "consumed": r.consumed.load(Ordering::Relaxed),
        "credits": r.credits.available_permits(),
        "properties": properties,
        "active": active,
        "activity_status": if active { "up" } else { "waiting" },
    })
}

/// GET /api/stream/consumers
pub(super) async fn consumers(State(api): State<Api>, Query(q): ListQuery) -> Response {
    let node = api.node.node.clone();
    list::respond(subscriptions(&api, None).iter().map(|(c, r, m)| consumer(c, r, *m, &node)).collect(), &q)
}

/// GET /api/stream/consumers/{vhost}
pub(super) async fn vhost_consumers(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): ListQuery,
) -> Response {
    if api.broker.vhost(&vhost).is_none() {
        return not_found();
    }
    let node = api.node.node.clone();
    list::respond(subscriptions(&api, Some(&vhost)).iter().map(|(c, r, m)| consumer(c, r, *m, &node)).collect(), &q)
}

/// The largest offset lag among each stream's subscriptions, by (vhost, stream), for the
/// metrics.
pub(super) fn max_lags(api: &Api) -> HashMap<(String, String), u64> {
    let mut out: HashMap<(String, String), u64> = HashMap::new();
    for (c, r, committed) in subscriptions(api, None) {
        let l = out.entry((c.vhost.clone(), r.stream.clone())).or_default();
        *l = (*l).max(lag(&r, committed));
    }
    out
}
