//! The JSON the management API returns, field for field as RabbitMQ's management plugin
//! names them.

use super::NodeInfo;
use crate::broker::connections::{ChannelCard, ConnectionEntry};
use crate::broker::consumer::Consumer;
use crate::broker::exchange::Binding;
use crate::broker::queue::Queue;
use crate::broker::stats::{MessageCounts, Percentiles, RateMeter};
use crate::broker::vhost::{ExchangeInfo, VHost};
use crate::broker::Broker;
use crate::protocol::{FieldTable, FieldValue};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

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

/// RabbitMQ's `message_stats`: each count, and beside it `<name>_details` with its rate.
/// Counts that are zero and have never moved are left out, as RabbitMQ leaves them out.
pub fn message_stats(counts: &MessageCounts, rates: &RateMeter) -> Value {
    let mut m = Map::new();
    for ((name, count), rate) in counts.fields().iter().zip(rates.rates()) {
        if *count == 0 && *rate == 0.0 {
            continue;
        }
        m.insert(name.to_string(), json!(count));
        m.insert(format!("{name}_details"), json!({ "rate": round(*rate) }));
    }
    Value::Object(m)
}

fn round(r: f64) -> f64 {
    (r * 10.0).round() / 10.0
}

fn percentiles(p: &Percentiles) -> Value {
    json!({ "count": p.count, "p50": p.p50, "p90": p.p90, "p99": p.p99, "max": p.max })
}

/// Memory a queue is reckoned to use: its messages' bodies in memory and about 160 bytes
/// of bookkeeping for each message and the queue itself.
const QUEUE_OVERHEAD: u64 = 2048;
const PER_MESSAGE_OVERHEAD: u64 = 160;

pub fn queue(vhost: &str, q: &Queue, node: &str) -> Value {
    let st = q.stats();
    let o = &q.options;
    let f = &st.forecast;
    let secs = |v: Option<f64>| v.map(|s| json!((s * 10.0).round() / 10.0)).unwrap_or(Value::Null);
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
        "policy": null,
        "messages": st.ready + st.unacked,
        "messages_details": { "rate": round(st.depth_rates.0 + st.depth_rates.1) },
        "messages_ready": st.ready,
        "messages_ready_details": { "rate": round(st.depth_rates.0) },
        "messages_unacknowledged": st.unacked,
        "messages_unacknowledged_details": { "rate": round(st.depth_rates.1) },
        "messages_ram": st.ready_ram,
        "messages_ready_ram": st.ready_ram,
        "message_bytes": st.ready_bytes,
        "message_bytes_ready": st.ready_bytes,
        "message_bytes_ram": st.ready_bytes_ram,
        "memory": QUEUE_OVERHEAD + st.ready_bytes_ram + st.ready_ram * PER_MESSAGE_OVERHEAD,
        "consumers": st.consumers,
        "idle_since": st.idle_since_ms,
        "message_stats": message_stats(&st.counts, &st.rates),
        // Hare's own: where messages wait and for how long, and where the queue is heading.
        "time_in_queue_us": percentiles(&st.time_in_queue),
        "time_to_ack_us": percentiles(&st.time_to_ack),
        "forecast": {
            "rate_in": round(f.rate_in),
            "rate_out": round(f.rate_out),
            "time_to_empty_s": secs(f.time_to_empty_s),
            "time_to_full_s": secs(f.time_to_full_s),
            "expected_wait_s": secs(f.expected_wait_s),
        },
    })
}

/// A channel as RabbitMQ lists it: `<connection name> (<number>)`.
pub fn channel(c: &ConnectionEntry, ch: &ChannelCard, node: &str) -> Value {
    let l = |a: &std::sync::atomic::AtomicU32| a.load(Ordering::Relaxed);
    let b = |a: &std::sync::atomic::AtomicBool| a.load(Ordering::Relaxed);
    json!({
        "name": format!("{} ({})", c.name, ch.number),
        "number": ch.number,
        "node": node,
        "vhost": c.vhost,
        "user": c.user,
        "connection_details": { "name": c.name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port() },
        "consumer_count": l(&ch.consumers),
        "messages_unacknowledged": l(&ch.unacked),
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": l(&ch.prefetch_count),
        "global_prefetch_count": l(&ch.global_prefetch_count),
        "confirm": b(&ch.confirm_mode),
        "transactional": b(&ch.transactional),
        "state": "running",
        "message_stats": message_stats(&ch.counts(), &ch.meter.lock()),
    })
}

/// A consumer as RabbitMQ lists it, with the channel it belongs to when that is known.
pub fn consumer(vhost: &str, q: &Queue, c: &Consumer, conn: Option<&ConnectionEntry>, node: &str) -> Value {
    let channel_details = match conn {
        Some(conn) => json!({
            "name": format!("{} ({})", conn.name, c.channel),
            "number": c.channel,
            "connection_name": conn.name,
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
            "user": conn.user,
            "node": node,
        }),
        None => json!({}),
    };
    json!({
        "consumer_tag": c.tag.as_str(),
        "queue": { "name": q.name.as_str(), "vhost": vhost },
        "channel_details": channel_details,
        "ack_required": !c.no_ack,
        "prefetch_count": c.prefetch,
        "exclusive": c.exclusive,
        "arguments": table(&c.arguments),
        "active": true,
        "activity_status": "up",
        "priority": c.priority,
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
        "recv_oct": c.recv_oct.load(Ordering::Relaxed),
        "send_oct": c.send_oct.load(Ordering::Relaxed),
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

pub fn vhost(v: &VHost, def: Option<&crate::auth::VhostDef>) -> Value {
    let queues = v.queues();
    let (ready, unacked) = totals(queues.iter());
    json!({
        "name": v.name,
        "description": def.map_or("", |d| d.description.as_str()),
        "tags": def.map_or(&[][..], |d| &d.tags[..]),
        "metadata": { "description": def.map_or("", |d| d.description.as_str()), "tags": def.map_or(&[][..], |d| &d.tags[..]) },
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
        "message_stats": message_stats(&broker.message_counts(), &broker.message_rates()),
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
        "listeners": listeners(node),
    })
}

/// The listeners, with RabbitMQ's protocol names.
fn listeners(node: &NodeInfo) -> Vec<Value> {
    [
        Some(("amqp", node.amqp_port)),
        node.amqps_port.map(|p| ("amqp/ssl", p)),
        Some(("http", node.http_port)),
        node.https_port.map(|p| ("https", p)),
    ]
    .into_iter()
    .flatten()
    .map(|(protocol, port)| json!({ "node": node.node, "protocol": protocol, "ip_address": node.bind, "port": port }))
    .collect()
}

/// This node, as RabbitMQ's `/api/nodes` lists one.
pub fn node(broker: &Broker, node: &NodeInfo) -> Value {
    use crate::server::alarms;
    let mem_used = alarms::resident_bytes().unwrap_or(0);
    let disk_free = alarms::free_disk_bytes(&node.data_dir).unwrap_or(0);
    let (fd_used, fd_total) = alarms::file_descriptors();
    let alarm = broker.alarm().unwrap_or_default();
    let now = crate::broker::queue::now_ms();
    let exchange_types: Vec<Value> = ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| json!({ "name": t, "description": "", "enabled": true }))
        .collect();
    json!({
        "name": node.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": mem_used,
        "mem_limit": node.memory_limit,
        "mem_alarm": alarm.contains("memory"),
        "disk_free": disk_free,
        "disk_free_limit": node.disk_free_limit,
        "disk_free_alarm": alarm.contains("disk"),
        "fd_used": fd_used,
        "fd_total": fd_total,
        "sockets_used": broker.open_connections(),
        "sockets_total": fd_total,
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "uptime": now.saturating_sub(node.started_at_ms),
        "partitions": [],
        "exchange_types": exchange_types,
    })
}
