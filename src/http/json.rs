//! The JSON the management API returns, field for field as RabbitMQ's management plugin
//! names them.

use super::NodeInfo;
use crate::broker::connections::{ChannelCard, ConnectionEntry, StreamReaderCard};
use crate::broker::consumer::Consumer;
use crate::broker::exchange::Binding;
use crate::broker::history::{History, Range, Samples};
use crate::broker::queue::Queue;
use crate::broker::stats::{MessageCounts, Percentiles};
use crate::broker::vhost::{ExchangeInfo, VHost};
use crate::broker::Broker;
use crate::types::{FieldTable, FieldValue};
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

/// Counts by name, each with `<name>_details`, in RabbitMQ's groups: a group's counts appear
/// together, zeros included, once one of them has moved (RabbitMQ keeps an object's counters
/// from its first event on), and not at all before.
fn counted(groups: &[&[&str]], names: &[&str], values: &[u64], rates: &[f64], samples: Option<&[Samples]>) -> Value {
    let mut m = Map::new();
    let index = |name: &str| names.iter().position(|n| *n == name);
    for group in groups {
        let moved = group.iter().filter_map(|n| index(n)).any(|i| {
            values[i] != 0 || rates[i] != 0.0 || samples.is_some_and(|s| s[i].points.iter().any(|p| p.1 != 0))
        });
        if !moved {
            continue;
        }
        for name in group.iter() {
            if let Some(i) = index(name) {
                m.insert(name.to_string(), json!(values[i]));
                m.insert(format!("{name}_details"), details(rates[i], samples.map(|s| &s[i])));
            }
        }
    }
    Value::Object(m)
}

/// What publishers did (a channel's, a vhost's, the node's) and what consumers did, as
/// RabbitMQ groups its message counters.
const PUBLISHED: &[&str] = &["publish", "confirm", "return_unroutable", "drop_unroutable"];
const DELIVERED: &[&str] =
    &["ack", "deliver", "deliver_get", "deliver_no_ack", "get", "get_empty", "get_no_ack", "redeliver"];
/// A queue's: what was published to it, and what left it.
const QUEUE_GROUPS: &[&[&str]] = &[&["publish"], DELIVERED];
const CHANNEL_GROUPS: &[&[&str]] = &[PUBLISHED, DELIVERED];

/// RabbitMQ's `message_stats` of a channel, vhost or the node: each count, and beside it
/// `<name>_details` with its rate (and samples when a range was asked for).
pub fn message_stats(counts: &MessageCounts, rates: &[f64; 12], samples: Option<&[Samples]>) -> Value {
    stats_of(CHANNEL_GROUPS, counts, rates, samples)
}

fn stats_of(groups: &[&[&str]], counts: &MessageCounts, rates: &[f64; 12], samples: Option<&[Samples]>) -> Value {
    let fields = counts.fields();
    let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
    counted(groups, &names, &counts.values(), rates, samples)
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
    // RabbitMQ counts persistent messages only in a durable queue, where they survive.
    let persistent = if o.durable { st.persistent } else { (0, 0) };
    let applied = q.applied_policy();
    let kind = if q.stream.is_some() {
        "stream"
    } else if o.args.quorum {
        "quorum"
    } else {
        "classic"
    };
    // A stream's deliveries stay in it: its length is its messages, acknowledged or not.
    let messages = if q.stream.is_some() { st.ready } else { st.ready + st.unacked };
    let mut v = json!({
        "name": q.name.as_str(),
        "vhost": vhost,
        "durable": o.durable,
        "auto_delete": o.auto_delete,
        "exclusive": o.exclusive_owner.is_some(),
        "arguments": table(&o.arguments),
        "node": node,
        "state": "running",
        "type": kind,
        "messages": messages,
        "messages_details": len(0, st.depth_rates.0 + st.depth_rates.1),
        "messages_ready": st.ready,
        "messages_ready_details": len(1, st.depth_rates.0),
        "messages_unacknowledged": st.unacked,
        "messages_unacknowledged_details": len(2, st.depth_rates.1),
        "messages_ram": st.ready_ram + st.unacked,
        "messages_ready_ram": st.ready_ram,
        "messages_unacknowledged_ram": st.unacked,
        "messages_paged_out": st.ready.saturating_sub(st.ready_ram),
        "messages_persistent": persistent.0,
        "message_bytes": st.ready_bytes + st.unacked_bytes,
        "message_bytes_ready": st.ready_bytes,
        "message_bytes_unacknowledged": st.unacked_bytes,
        "message_bytes_ram": st.ready_bytes_ram + st.unacked_bytes,
        "message_bytes_paged_out": st.ready_bytes.saturating_sub(st.ready_bytes_ram),
        "message_bytes_persistent": persistent.1,
        "head_message_timestamp": st.head_timestamp,
    });
    for (k, val) in super::policy::applied_json(&applied) {
        v[k] = val;
    }
    // In two parts: one json! of every field passes the macro's recursion limit.
    let more = json!({
        "memory": QUEUE_OVERHEAD + st.ready_bytes_ram + st.ready_ram * PER_MESSAGE_OVERHEAD,
        "consumers": st.consumers,
        "consumer_capacity": st.consumer_capacity,
        "consumer_utilisation": st.consumer_capacity,
        "exclusive_consumer_tag": st.exclusive_consumer.as_deref(),
        "single_active_consumer_tag": st.single_active_consumer.as_deref(),
        "idle_since": st.idle_since_ms,
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
    });
    if let (Value::Object(v), Value::Object(more)) = (&mut v, more) {
        v.extend(more);
    }
    if q.replica.is_some() {
        // A cluster's queue held elsewhere (a classic queue's home) or in the replicated
        // state (a quorum queue): its counts as they are known there.
        let (ready, consumers) = q.counts();
        let unacked = q.unacked_count();
        v["messages"] = json!(ready as usize + unacked);
        v["messages_ready"] = json!(ready);
        v["messages_unacknowledged"] = json!(unacked);
        v["consumers"] = json!(consumers);
    }
    if let Some(home) = q.home() {
        v["node"] = json!(home);
    }
    super::stream::queue_fields(&mut v, q, node);
    let stats = stats_of(QUEUE_GROUPS, &st.counts, st.rates.rates(), msg.as_deref());
    if stats.as_object().is_some_and(|m| !m.is_empty()) {
        v["message_stats"] = stats;
    }
    v
}

/// What the single-queue GET adds to a queue's object: its consumers, and the per-channel
/// breakdowns of RabbitMQ's `detailed` statistics mode (empty in the `basic` mode that Hare
/// keeps, as they are in RabbitMQ's default).
pub fn queue_details(v: &mut Value, consumers: Vec<Value>) {
    v["consumer_details"] = Value::Array(consumers);
    v["deliveries"] = json!([]);
    v["incoming"] = json!([]);
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
        "user_who_performed_action": c.user,
        "pending_raft_commands": 0,
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
    })
}

/// A stream protocol subscription among a queue's consumers, as RabbitMQ's stream plugin
/// registers it (rabbit_stream_metrics): tagged `stream.subid-N`, no acks and no prefetch
/// (its credit is in /api/stream/consumers), its subscription properties as arguments, and
/// a single active consumer's turn as its activity. It has no channel.
pub fn stream_consumer(vhost: &str, card: &StreamReaderCard) -> Value {
    let single_active = card.properties.iter().any(|(k, v)| k == "single-active-consumer" && v == "true");
    let active = card.active.load(Ordering::Relaxed);
    let status = match (single_active, active) {
        (false, _) => "up",
        (true, true) => "single_active",
        (true, false) => "waiting",
    };
    let arguments: Map<String, Value> = card.properties.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({
        "consumer_tag": format!("stream.subid-{}", card.subscription),
        "queue": { "name": card.stream, "vhost": vhost },
        "channel_details": {},
        "ack_required": false,
        "prefetch_count": 0,
        "exclusive": false,
        "arguments": arguments,
        "active": active,
        "activity_status": status,
    })
}

pub fn connection(c: &ConnectionEntry, node: &str) -> Value {
    let oct_rates = c.oct_meter.lock().rates();
    let tls = c.details.tls.as_ref();
    let s = |f: fn(&crate::broker::connections::TlsDetails) -> &str| tls.map(f);
    let cert = |f: fn(&crate::broker::connections::TlsDetails) -> &Option<String>| tls.and_then(|t| f(t).as_deref());
    let mut j = json!({
        "name": c.name,
        "node": node,
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "protocol": c.details.protocol,
        "auth_mechanism": c.details.auth_mechanism,
        "type": "network",
        "state": if c.is_closed() { "closed" } else { "running" },
        "ssl": tls.is_some(),
        "ssl_protocol": s(|t| &t.protocol),
        "ssl_key_exchange": s(|t| &t.key_exchange),
        "ssl_cipher": s(|t| &t.cipher),
        "ssl_hash": s(|t| &t.hash),
        "peer_cert_subject": cert(|t| &t.peer_cert_subject),
        "peer_cert_issuer": cert(|t| &t.peer_cert_issuer),
        "peer_cert_validity": cert(|t| &t.peer_cert_validity),
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
        "recv_oct_details": { "rate": round(oct_rates[0]) },
        "recv_cnt": c.recv_cnt.load(Ordering::Relaxed),
        "send_oct": c.send_oct.load(Ordering::Relaxed),
        "send_oct_details": { "rate": round(oct_rates[1]) },
        "send_cnt": c.send_cnt.load(Ordering::Relaxed),
        "send_pend": c.details.unwritten.load(Ordering::Relaxed),
    });
    // As RabbitMQ: only when the client named its connection.
    if let Some(name) = c.user_provided_name() {
        j["user_provided_name"] = json!(name);
    }
    j
}

pub fn exchange(vhost: &str, e: &ExchangeInfo, ranges: &Ranges) -> Value {
    let (rates, samples) = {
        let m = e.stats.meter.lock();
        (m.rates(), series(&m.history, ranges.msg, ranges.now_ms))
    };
    let names = ["publish_in", "publish_out"];
    let values = e.stats.values();
    // Two groups, as RabbitMQ keeps them: what came in, and what went out to queues.
    let stats = counted(&[&names[..1], &names[1..]], &names, &values, &rates, samples.as_deref());
    let mut v = json!({
        "name": e.name.as_str(),
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table(&e.arguments),
        "user_who_performed_action": e.declared_by.as_str(),
    });
    // As RabbitMQ's delayed-message plugin reports it.
    if let Some(n) = e.messages_delayed {
        v["messages_delayed"] = json!(n);
    }
    // As RabbitMQ: `policy` only on an exchange a policy applies to.
    if let Some(p) = e.applied.policy_name() {
        v["policy"] = json!(p);
    }
    // As RabbitMQ: no message_stats until a message came in.
    if stats.as_object().is_some_and(|m| !m.is_empty()) {
        v["message_stats"] = stats;
    }
    v
}

/// What the single-exchange GET adds: the per-channel and per-queue breakdowns of RabbitMQ's
/// `detailed` statistics mode, empty in the `basic` mode that Hare keeps.
pub fn exchange_details(v: &mut Value) {
    v["incoming"] = json!([]);
    v["outgoing"] = json!([]);
}

/// A binding's `properties_key`, which names it in RabbitMQ's binding URLs
/// (`rabbit_mgmt_format:pack_binding_props`): `~` for an empty key without arguments, else
/// the key URL-quoted (quote_plus, `~` as `%7E`), then for a binding with arguments `~` and a
/// 6-character hash of them. RabbitMQ hashes the Erlang term of the arguments (phash2), which
/// Hare does not have; its hash is of their encoded table (docs/compatibility.md). Either way
/// it is a name to pass back, unique among one pair's bindings.
pub fn properties_key(key: &str, arguments: &FieldTable) -> String {
    if arguments.is_empty() {
        return if key.is_empty() { "~".into() } else { quote_binding(key) };
    }
    let mut encoded = bytes::BytesMut::new();
    crate::types::codec::Encoder::new(&mut encoded).table(arguments);
    let hash = crc32c::crc32c(&encoded).to_be_bytes();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, hash);
    format!("{}~{}", quote_binding(key), quote_binding(&b64))
}

/// RabbitMQ's quote_plus with `~` quoted too: letters, digits, `.`, `-`, `_` stay, a space is
/// `+`, every other byte `%XX`.
fn quote_binding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A properties key as a URL's path carried it, unquoted (`%XX`, `+`), so that a key given
/// quoted once or twice names the same binding.
pub fn unquote_binding(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            "properties_key": properties_key(&q.name, &FieldTable::new()),
        })
    });
    let declared = v.bindings().into_iter().map(|(source, b)| {
        let mut j = binding(&v.name, &source, &b);
        j["properties_key"] = json!(properties_key(&b.routing_key, &b.arguments));
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

/// A vhost, as RabbitMQ shows one: its metadata, and, as its statistics come to exist, its
/// message totals (once it has a queue), its connections' bytes (once it had a connection)
/// and its channels' message counts (once they moved).
pub fn vhost(broker: &Broker, v: &VHost, def: Option<&crate::auth::VhostDef>, node: &str) -> Value {
    let queues = v.queues();
    let (ready, unacked) = totals(queues.iter());
    let description = def.map_or("", |d| d.description.as_str());
    let tags = def.map_or(&[][..], |d| &d.tags[..]);
    let mut j = json!({
        "name": v.name,
        "description": description,
        "tags": tags,
        "metadata": { "description": description, "tags": tags },
        "tracing": false,
        "default_queue_type": def.and_then(|d| d.default_queue_type.as_deref()).unwrap_or("undefined"),
        "cluster_state": { node: "running" },
    });
    if v.had_queue() {
        let (r, u) = queues.iter().fold((0.0, 0.0), |(r, u), q| {
            let d = q.depth_rates();
            (r + d.0, u + d.1)
        });
        j["messages"] = json!(ready + unacked);
        j["messages_details"] = json!({ "rate": round(r + u) });
        j["messages_ready"] = json!(ready);
        j["messages_ready_details"] = json!({ "rate": round(r) });
        j["messages_unacknowledged"] = json!(unacked);
        j["messages_unacknowledged_details"] = json!({ "rate": round(u) });
    }
    let (counts, oct, totals) = broker.vhost_totals(&v.name);
    if oct.iter().any(|&b| b > 0) {
        j["recv_oct"] = json!(oct[0]);
        let rates = totals.oct_rates.rates();
        j["recv_oct_details"] = json!({ "rate": round(rates[0]) });
        j["send_oct"] = json!(oct[1]);
        j["send_oct_details"] = json!({ "rate": round(rates[1]) });
    }
    let stats = message_stats(&counts, totals.rates.rates(), None);
    if stats.as_object().is_some_and(|m| !m.is_empty()) {
        j["message_stats"] = stats;
    }
    j
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
    // As RabbitMQ: queue totals once there has been a queue to total.
    let queue_totals = if !vhosts.iter().any(|v| v.had_queue()) {
        json!({})
    } else {
        json!({
            "messages": ready + unacked,
            "messages_details": len(0),
            "messages_ready": ready,
            "messages_ready_details": len(1),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": len(2),
        })
    };
    json!({
        "management_version": API_VERSION,
        "rabbitmq_version": API_VERSION,
        "product_name": "Hare",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node": node.node,
        "cluster_name": node.node,
        "rates_mode": "basic",
        // How long Hare keeps the samples behind `msg_rates_age` / `lengths_age`, in seconds:
        // ten minutes for the node's totals, two for each object's.
        "sample_retention_policies": {
            "global": [crate::broker::history::GLOBAL_RETENTION_MS / 1000],
            "basic": [crate::broker::history::OBJECT_RETENTION_MS / 1000],
            "detailed": [],
        },
        "disable_stats": false,
        "enable_queue_totals": false,
        "exchange_types": exchange_types(),
        "message_stats": overview_stats(broker, &vhosts, msg.as_deref()),
        "churn_rates": churn(broker),
        "object_totals": {
            "connections": broker.open_connections(),
            "channels": broker.connection_list().iter().map(|c| c.channel_count() as u64).sum::<u64>(),
            "exchanges": exchanges,
            "queues": queues.len(),
            "consumers": consumers,
        },
        "queue_totals": queue_totals,
        "listeners": listeners(node),
        "contexts": contexts(node, true),
    })
}

/// The node's message counts, and, once it has had a queue, what its queues wrote to and
/// read from disk (RabbitMQ's `disk_writes`, `disk_reads`).
fn overview_stats(broker: &Broker, vhosts: &[std::sync::Arc<VHost>], samples: Option<&[Samples]>) -> Value {
    let mut stats = message_stats(&broker.message_counts(), broker.message_rates().rates(), samples);
    if vhosts.iter().any(|v| v.had_queue()) {
        let io = broker.io_counters();
        let rates = broker.io_rates();
        if let Value::Object(m) = &mut stats {
            // msg_store_write_count and msg_store_read_count in IO_COUNTERS.
            for (name, i) in [("disk_writes", 8), ("disk_reads", 7)] {
                m.insert(name.into(), json!(io[i]));
                m.insert(format!("{name}_details"), json!({ "rate": round(rates[i]) }));
            }
        }
    }
    stats
}

/// The exchange types, with RabbitMQ's descriptions.
fn exchange_types() -> Vec<Value> {
    ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| json!({ "name": t, "description": format!("AMQP {t} exchange, as per the AMQP specification"), "enabled": true }))
        .collect()
}

/// The churn counters with their rates, as the overview's `churn_rates` (and a node's fields).
fn churn(broker: &Broker) -> Map<String, Value> {
    let rates = broker.churn_rates();
    let mut m = Map::new();
    for (i, (name, value)) in crate::broker::stats::Churn::NAMES.iter().zip(broker.churn.values()).enumerate() {
        m.insert(name.to_string(), json!(value));
        m.insert(format!("{name}_details"), json!({ "rate": round(rates[i]) }));
    }
    m
}

/// The management API's listeners as RabbitMQ's `contexts` (the node named in the overview's).
fn contexts(node: &NodeInfo, with_node: bool) -> Vec<Value> {
    [Some(node.http_port), node.https_port]
        .into_iter()
        .flatten()
        .map(|port| {
            let mut c =
                json!({ "description": "RabbitMQ Management", "path": "/", "ip": node.bind, "port": port.to_string() });
            if with_node {
                c["node"] = json!(node.node);
            }
            c
        })
        .collect()
}

/// The listeners of this node by RabbitMQ's protocol names, with their ports.
pub fn listener_ports(node: &NodeInfo) -> Vec<(&'static str, u16)> {
    [
        Some(("amqp", node.amqp_port)),
        node.amqps_port.map(|p| ("amqp/ssl", p)),
        Some(("http", node.http_port)),
        node.https_port.map(|p| ("https", p)),
    ]
    .into_iter()
    .flatten()
    .chain(node.other_listeners.iter().copied())
    .collect()
}

/// The listeners, as the overview lists them.
fn listeners(node: &NodeInfo) -> Vec<Value> {
    listener_ports(node)
        .into_iter()
        .map(|(protocol, port)| json!({ "node": node.node, "protocol": protocol, "ip_address": node.bind, "port": port }))
        .collect()
}

/// This node, as RabbitMQ's `/api/nodes` lists one.
pub fn node(broker: &Broker, node: &NodeInfo) -> Value {
    use crate::net::alarms;
    let mem_used = alarms::resident_bytes().unwrap_or(0);
    let disk_free = alarms::free_disk_bytes(&node.data_dir).unwrap_or(0);
    let (fd_used, fd_total) = alarms::file_descriptors();
    let alarm = broker.alarm().unwrap_or_default();
    let now = crate::broker::clock::now_ms();
    let gauges = broker.gauge_rates();
    let rate = |r: f64| json!({ "rate": round(r) });
    let mechanism = |name: &str, description: &str, enabled: bool| json!({ "name": name, "description": description, "enabled": enabled });
    let mut j = json!({
        "name": node.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": mem_used,
        "mem_used_details": rate(gauges[0] as f64),
        "mem_limit": node.memory_limit,
        "mem_alarm": alarm.contains("memory"),
        // Hare measures its memory as the process's resident set.
        "mem_calculation_strategy": "rss",
        "disk_free": disk_free,
        "disk_free_details": rate(gauges[1]),
        "disk_free_limit": node.disk_free_limit,
        "disk_free_alarm": alarm.contains("disk"),
        "fd_used": fd_used,
        "fd_used_details": rate(gauges[2]),
        "fd_total": fd_total,
        "sockets_used": broker.open_connections(),
        "sockets_used_details": rate(gauges[3]),
        "sockets_total": fd_total,
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "context_switches": alarms::context_switches(),
        "context_switches_details": rate(gauges[4]),
        "uptime": now.saturating_sub(node.started_at_ms),
        "rates_mode": "basic",
        "partitions": [],
        "cluster_links": [],
        "exchange_types": exchange_types(),
        "auth_mechanisms": [
            mechanism("PLAIN", "SASL PLAIN authentication mechanism", true),
            mechanism("AMQPLAIN", "QPid AMQPLAIN mechanism", true),
            mechanism("EXTERNAL", "SASL EXTERNAL authentication mechanism", node.external_auth),
        ],
        // What Hare serves of RabbitMQ's plugins: the management API and its agent, the
        // Prometheus endpoint, the web page.
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_management_agent", "rabbitmq_prometheus", "rabbitmq_web_dispatch"],
        "config_files": node.config_file.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "db_dir": node.data_dir.display().to_string(),
        // Hare logs to its standard output, as RabbitMQ names that.
        "log_files": ["<stdout>"],
        "contexts": contexts(node, false),
    });
    if let Value::Object(m) = &mut j {
        m.extend(churn(broker));
        let io = broker.io_counters();
        let rates = broker.io_rates();
        for (i, name) in crate::broker::IO_COUNTERS.iter().enumerate().take(10) {
            m.insert(name.to_string(), json!(io[i]));
            m.insert(format!("{name}_details"), rate(rates[i]));
        }
        // Average times in milliseconds, overall and over the last sampling interval.
        for (name, count, us) in
            [("io_read_avg_time", 0, 10), ("io_write_avg_time", 2, 11), ("io_sync_avg_time", 4, 12)]
        {
            let avg = |us: f64, n: f64| if n > 0.0 { us / n / 1000.0 } else { 0.0 };
            m.insert(name.to_string(), json!(avg(io[us] as f64, io[count] as f64)));
            m.insert(format!("{name}_details"), rate(avg(rates[us], rates[count])));
        }
        m.insert("io_seek_avg_time".into(), json!(0.0));
        m.insert("io_seek_avg_time_details".into(), rate(0.0));
    }
    j
}
