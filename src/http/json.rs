//! The JSON the management API returns, field for field as RabbitMQ's management plugin
//! names them.

use super::NodeInfo;
use crate::broker::connections::{ChannelCard, ConnectionEntry};
use crate::broker::consumer::Consumer;
use crate::broker::exchange::Binding;
use crate::broker::history::{History, Range, Samples};
use crate::broker::queue::Queue;
use crate::broker::stats::{MessageCounts, Percentiles};
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

/// The time ranges a request asked samples for: `msg_rates_age`/`msg_rates_incr` for message
/// counts, `lengths_age`/`lengths_incr` for queue lengths (see `broker::history`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ranges {
    pub msg: Option<Range>,
    pub lengths: Option<Range>,
    pub now_ms: u64,
}

impl Ranges {
    pub fn from_query(q: &std::collections::HashMap<String, String>) -> Result<Ranges, String> {
        let get = |k: &str| q.get(k).map(String::as_str);
        Ok(Ranges {
            msg: Range::parse(get("msg_rates_age"), get("msg_rates_incr"), "msg_rates")?,
            lengths: Range::parse(get("lengths_age"), get("lengths_incr"), "lengths")?,
            now_ms: crate::broker::clock::now_ms(),
        })
    }
}

/// Every field of `h` over `range`, in field order.
pub fn series<const N: usize>(h: &History<N>, range: Option<Range>, now_ms: u64) -> Option<Vec<Samples>> {
    range.map(|r| (0..N).map(|i| h.samples(&r, now_ms, i)).collect())
}

/// A count's `_details`: its rate, and with a range its `samples` (newest first), `avg`
/// and `avg_rate`, as RabbitMQ writes them.
fn details(rate: f64, samples: Option<&Samples>) -> Value {
    let mut d = Map::new();
    d.insert("rate".into(), json!(round(rate)));
    if let Some(s) = samples {
        let points: Vec<Value> = s.points.iter().map(|(t, v)| json!({ "sample": v, "timestamp": t })).collect();
        d.insert("samples".into(), Value::Array(points));
        if let (Some(avg), Some(avg_rate)) = (s.avg, s.avg_rate) {
            d.insert("avg".into(), json!(avg));
            d.insert("avg_rate".into(), json!(avg_rate));
        }
    }
    Value::Object(d)
}

/// Counts by name, each with `<name>_details`; counts that are zero and have never moved
/// are left out, as RabbitMQ leaves them out.
fn counted(names: &[&str], values: &[u64], rates: &[f64], samples: Option<&[Samples]>) -> Value {
    let mut m = Map::new();
    for (i, name) in names.iter().enumerate() {
        let moved = samples.is_some_and(|s| s[i].points.iter().any(|p| p.1 != 0));
        if values[i] == 0 && rates[i] == 0.0 && !moved {
            continue;
        }
        m.insert(name.to_string(), json!(values[i]));
        m.insert(format!("{name}_details"), details(rates[i], samples.map(|s| &s[i])));
    }
    Value::Object(m)
}

/// RabbitMQ's `message_stats`: each count, and beside it `<name>_details` with its rate
/// (and samples when a range was asked for).
pub fn message_stats(counts: &MessageCounts, rates: &[f64; 12], samples: Option<&[Samples]>) -> Value {
    let fields = counts.fields();
    let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
    counted(&names, &counts.values(), rates, samples)
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

pub fn queue(vhost: &str, q: &Queue, node: &str, ranges: &Ranges) -> Value {
    let st = q.stats();
    let now = ranges.now_ms;
    // Copied out under the queue's lock, written out after it.
    let (msg, lengths) = match (ranges.msg, ranges.lengths) {
        (None, None) => (None, None),
        (m, l) => q.with_history(|h| match h {
            Some(h) => (series(&h.counts, m, now), series(&h.lengths, l, now)),
            None => (None, series(&History::<3>::default(), l, now)),
        }),
    };
    let len = |i: usize, rate: f64| details(rate, lengths.as_ref().map(|l| &l[i]));
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
        "messages_details": len(0, st.depth_rates.0 + st.depth_rates.1),
        "messages_ready": st.ready,
        "messages_ready_details": len(1, st.depth_rates.0),
        "messages_unacknowledged": st.unacked,
        "messages_unacknowledged_details": len(2, st.depth_rates.1),
        "messages_ram": st.ready_ram,
        "messages_ready_ram": st.ready_ram,
        "message_bytes": st.ready_bytes,
        "message_bytes_ready": st.ready_bytes,
        "message_bytes_ram": st.ready_bytes_ram,
        "memory": QUEUE_OVERHEAD + st.ready_bytes_ram + st.ready_ram * PER_MESSAGE_OVERHEAD,
        "consumers": st.consumers,
        "idle_since": st.idle_since_ms,
        "message_stats": message_stats(&st.counts, st.rates.rates(), msg.as_deref()),
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
pub fn channel(c: &ConnectionEntry, ch: &ChannelCard, node: &str, ranges: &Ranges) -> Value {
    let rates = *ch.meter.lock().rates();
    let samples = ranges.msg.and_then(|r| series(&ch.history.lock(), Some(r), ranges.now_ms));
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
        "message_stats": message_stats(&ch.counts(), &rates, samples.as_deref()),
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

pub fn exchange(vhost: &str, e: &ExchangeInfo, ranges: &Ranges) -> Value {
    let (rates, samples) = {
        let m = e.stats.meter.lock();
        (m.rates(), series(&m.history, ranges.msg, ranges.now_ms))
    };
    let stats = counted(&["publish_in", "publish_out"], &e.stats.values(), &rates, samples.as_deref());
    // As RabbitMQ: no message_stats at all for an exchange nothing went through.
    let mut v = json!({
        "name": e.name.as_str(),
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table(&e.arguments),
    });
    if stats.as_object().is_some_and(|m| !m.is_empty()) {
        v["message_stats"] = stats;
    }
    v
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

pub fn overview(broker: &Broker, node: &NodeInfo, ranges: &Ranges) -> Value {
    let now = ranges.now_ms;
    let (msg, lengths, length_rates) = broker.with_history(|h| {
        (series(&h.counts, ranges.msg, now), series(&h.lengths.history, ranges.lengths, now), h.lengths.rates())
    });
    let len = |i: usize| details(length_rates[i], lengths.as_ref().map(|l| &l[i]));
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
        "message_stats": message_stats(&broker.message_counts(), broker.message_rates().rates(), msg.as_deref()),
        "object_totals": {
            "connections": broker.open_connections(),
            "channels": broker.connection_list().iter().map(|c| c.channel_count() as u64).sum::<u64>(),
            "exchanges": exchanges,
            "queues": queues.len(),
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": len(0),
            "messages_ready": ready,
            "messages_ready_details": len(1),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": len(2),
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
    let now = crate::broker::clock::now_ms();
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
