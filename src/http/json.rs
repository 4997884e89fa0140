//! The JSON the management API returns, field for field as RabbitMQ's management plugin
//! names them.

use super::NodeInfo;
use crate::broker::connections::ConnectionEntry;
use crate::broker::exchange::Binding;
use crate::broker::queue::Queue;
use crate::broker::vhost::{ExchangeInfo, VHost};
use crate::broker::Broker;
use crate::protocol::{FieldTable, FieldValue};
use serde_json::{json, Map, Value};

/// The RabbitMQ release whose management API this one follows, for tools that look at
/// `rabbitmq_version` to decide what to send.
pub const API_VERSION: &str = "3.10.8";

/// An argument table as RabbitMQ prints it: strings as strings, numbers as numbers.
pub fn table(t: &FieldTable) -> Value {
    Value::Object(t.0.iter().map(|(k, v)| (k.to_string(), value(v))).collect::<Map<String, Value>>())
}

fn value(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Decimal(scale, n) => json!(*n as f64 / 10f64.powi(*scale as i32)),
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => json!(String::from_utf8_lossy(b)),
        FieldValue::Array(items) => Value::Array(items.iter().map(value).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table(t),
        FieldValue::Void => Value::Null,
    }
}

pub fn queue(vhost: &str, q: &Queue, node: &str) -> Value {
    let (ready, consumers) = q.counts();
    let unacked = q.unacked_count() as u64;
    let o = &q.options;
    json!({
        "name": q.name.as_str(),
        "vhost": vhost,
        "durable": o.durable,
        "auto_delete": o.auto_delete,
        "exclusive": o.exclusive_owner.is_some(),
        "arguments": table(&o.arguments),
        "node": node,
        "state": "running",
        "type": "classic",
        "messages": ready as u64 + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
    })
}

pub fn connection(c: &ConnectionEntry, node: &str) -> Value {
    json!({
        "name": c.name,
        "node": node,
        "vhost": c.vhost,
        "user": c.user,
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "state": "running",
        "ssl": false,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "channels": c.channel_count(),
        "connected_at": c.connected_at,
        "frame_max": c.frame_max,
        "channel_max": c.channel_max,
        "timeout": c.heartbeat,
        "client_properties": table(&c.client_properties),
    })
}

pub fn exchange(vhost: &str, e: &ExchangeInfo) -> Value {
    json!({
        "name": e.name.as_str(),
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table(&e.arguments),
    })
}

/// A binding's `properties_key`, which names it in RabbitMQ's binding URLs: the routing key,
/// or `~` for an empty one (bindings with arguments add a hash of them there; not yet).
fn properties_key(key: &str) -> String {
    if key.is_empty() {
        "~".into()
    } else {
        key.into()
    }
}

/// The bindings of a vhost, as RabbitMQ lists them: first the default exchange's implicit
/// binding to every queue, then the declared ones.
pub fn bindings(v: &VHost) -> Vec<Value> {
    let implicit = v.queues().into_iter().map(|q| {
        json!({
            "source": "",
            "vhost": v.name,
            "destination": q.name.as_str(),
            "destination_type": "queue",
            "routing_key": q.name.as_str(),
            "arguments": {},
            "properties_key": properties_key(&q.name),
        })
    });
    let declared = v.bindings().into_iter().map(|(source, b)| {
        let mut j = binding(&v.name, &source, &b);
        j["properties_key"] = json!(properties_key(&b.routing_key));
        j
    });
    implicit.chain(declared).collect()
}

/// A declared binding, as RabbitMQ lists it and writes it in definitions.
pub fn binding(vhost: &str, source: &str, b: &Binding) -> Value {
    json!({
        "source": source,
        "vhost": vhost,
        "destination": b.destination.name().as_str(),
        "destination_type": b.destination.kind(),
        "routing_key": b.routing_key.as_str(),
        "arguments": table(&b.arguments),
    })
}

/// Ready, unacknowledged and total messages over some queues.
fn totals<'a>(queues: impl Iterator<Item = &'a std::sync::Arc<Queue>>) -> (u64, u64) {
    queues.fold((0, 0), |(r, u), q| (r + q.counts().0 as u64, u + q.unacked_count() as u64))
}

pub fn vhost(v: &VHost) -> Value {
    let queues = v.queues();
    let (ready, unacked) = totals(queues.iter());
    json!({
        "name": v.name,
        "description": "",
        "tags": [],
        "tracing": false,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

pub fn overview(broker: &Broker, node: &NodeInfo) -> Value {
    let vhosts = broker.vhosts();
    let queues: Vec<_> = vhosts.iter().flat_map(|v| v.queues()).collect();
    let (ready, unacked) = totals(queues.iter());
    let exchanges: usize = vhosts.iter().map(|v| v.exchanges().len()).sum();
    let consumers: u64 = queues.iter().map(|q| q.counts().1 as u64).sum();
    json!({
        "management_version": API_VERSION,
        "rabbitmq_version": API_VERSION,
        "product_name": "Hare",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node": node.node,
        "cluster_name": node.node,
        "object_totals": {
            "connections": broker.open_connections(),
            "channels": broker.connection_list().iter().map(|c| c.channel_count() as u64).sum::<u64>(),
            "exchanges": exchanges,
            "queues": queues.len(),
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "listeners": [
            { "node": node.node, "protocol": "amqp", "ip_address": node.bind, "port": node.amqp_port },
            { "node": node.node, "protocol": "http", "ip_address": node.bind, "port": node.http_port },
        ],
    })
}
