//! A message's two directions: a client's PUBLISH into the core (to `amq.topic`, with its
//! permission checks, QoS 2's once-only receipt, the retained store, and the
//! acknowledgement owed once it is safe), and a delivery from a subscription queue out as a
//! PUBLISH. Properties map as RabbitMQ's plugin maps them: QoS and DUP as the
//! `x-mqtt-publish-qos` and `x-mqtt-dup` headers, MQTT 5's content type, correlation data,
//! response topic (to reply-to, as a routing key), user properties (to headers) and message
//! expiry (to expiration).

use super::super::codec::{self, reason, Ack, Packet, Properties, Publish, V5};
use super::super::session::PendingAck;
use super::super::topic;
use super::{Conn, InFlight, EXCHANGE, TAGS};
use crate::auth::grant::{Kind, Perm};
use crate::broker::connections::bump;
use crate::broker::consumer::Delivery;
use crate::broker::message::Message;
use crate::net::writer::ZERO_COPY_MIN;
use crate::storage::retained::Retained;
use crate::types::{BasicProperties, FieldTable, FieldValue, ShortStr};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

impl Conn {
    /// A client's PUBLISH.
    pub(super) fn publish(&mut self, p: Publish) {
        let v5 = self.level == V5;
        let Publish { qos, retain, dup, packet_id, properties, payload, .. } = p;
        let topic_name = match self.session.resolve_topic(p.topic, properties.topic_alias) {
            Ok(t) => t,
            Err(code) => {
                self.closing = Some((code, "topic alias not valid".into()));
                return;
            }
        };
        let routing_key = topic::to_amqp(&topic_name);
        if topic::check_name(&topic_name).is_err() || routing_key.len() > 255 {
            self.closing = Some((reason::TOPIC_NAME_INVALID, format!("topic name '{topic_name}' not valid")));
            return;
        }
        // QoS 2: a resent identifier not yet released was routed already.
        if qos == 2 && !self.session.received_qos2(packet_id.unwrap_or(0)) {
            self.reply(qos, packet_id, reason::SUCCESS, 0, 0);
            return;
        }
        self.refresh_grant();
        if let Err(refused) = may_publish(&self.grant, &routing_key) {
            if !v5 {
                // As RabbitMQ's plugin: a 3.1.1 client has no way to hear a refusal.
                self.closing = Some((reason::NOT_AUTHORIZED, refused));
            } else {
                self.reply(qos, packet_id, reason::NOT_AUTHORIZED, 0, 0);
            }
            return;
        }
        self.published = true;
        bump(&self.card.publish, 1);
        let amqp_properties = amqp_properties(qos, dup, &properties);
        if retain {
            self.shared.retained_set(&self.vhost.name, &topic_name, qos, &payload, &amqp_properties);
        }
        let message = Arc::new(Message::new(
            ShortStr::from(EXCHANGE),
            ShortStr::from(routing_key),
            amqp_properties,
            payload,
            qos > 0,
        ));
        let outcome = route(self, message);
        let code = match outcome {
            Routed { rejected: true, .. } => reason::QUOTA_EXCEEDED,
            Routed { failed: true, .. } => reason::UNSPECIFIED_ERROR,
            Routed { queues: 0, .. } if v5 => reason::NO_MATCHING_SUBSCRIBERS,
            _ => reason::SUCCESS,
        };
        if !v5 && code >= 0x80 {
            // 3.1.1 cannot say no: the publish is not acknowledged, and the client sends it
            // again after it reconnects.
            return;
        }
        self.reply(qos, packet_id, code, outcome.ticket, outcome.cluster);
    }

    /// Permissions changed since the grant was compiled: compile it again.
    pub(super) fn refresh_grant(&mut self) {
        self.shared.broker.refresh_grant(&mut self.grant, &self.user, &self.vhost.name);
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) once `ticket` and `cluster` are passed.
    fn reply(&mut self, qos: u8, packet_id: Option<u16>, code: u8, ticket: u64, cluster: u64) {
        let Some(packet_id) = packet_id.filter(|_| qos > 0) else { return };
        let ack = Ack { packet_id, code, properties: Properties::default() };
        let packet = if qos == 1 { Packet::PubAck(ack) } else { Packet::PubRec(ack) };
        let mut reply = BytesMut::new();
        codec::encode(&mut reply, &packet, self.level);
        if qos == 1 {
            bump(&self.card.confirm, 1);
        }
        self.session.push_ack(PendingAck { ticket, cluster, reply: reply.freeze() });
    }

    /// A delivery from a subscription queue, as a PUBLISH.
    pub(super) fn deliver(&mut self, d: Delivery) {
        let from_qos1 = d.consumer_tag.as_str() == TAGS[1];
        let item = d.item;
        let message = item.message.clone();
        let props = message.decode_properties();
        let published_qos = props
            .headers
            .as_ref()
            .and_then(|h| h.get("x-mqtt-publish-qos"))
            .and_then(FieldValue::as_i64)
            .map_or(1, |q| q.clamp(0, 1) as u8);
        let qos = if from_qos1 { published_qos } else { 0 };
        let mut publish = Publish {
            dup: item.redelivered && qos > 0,
            qos,
            retain: false,
            topic: topic::to_mqtt(&message.routing_key),
            packet_id: None,
            properties: if self.level == V5 { mqtt_properties(&props) } else { Properties::default() },
            payload: Bytes::new(),
        };
        // Only an MQTT 5 client sets a maximum packet size; its header is encoded to be sized.
        let size = if self.max_out < codec::MAX_REMAINING {
            codec::publish_header(&mut BytesMut::new(), &publish, message.body.len(), self.level)
        } else {
            0
        };
        let origin = d.queue.clone();
        let consumer = self.queues[usize::from(from_qos1)].as_ref().map(|s| s.consumer.clone());
        if size > self.max_out {
            // Larger than the client takes: MQTT 5 says drop it, as delivered.
            tracing::debug!(client_id = %self.client_id, "a message of {size} bytes is over the client's maximum packet size");
        } else {
            if qos == 1 {
                let tracked = InFlight { origin: origin.clone().zip(consumer.clone()), item: Some(item.clone()) };
                match self.session.track(tracked) {
                    Ok(id) => publish.packet_id = Some(id),
                    Err(_) => {
                        // Every identifier in flight (never with the prefetch in force).
                        if let Some(q) = d.queue {
                            q.requeued(vec![item]);
                        }
                        self.sink.release(d.charge);
                        return;
                    }
                }
            }
            codec::publish_header(&mut self.out.buf, &publish, message.body.len(), self.level);
            // A large payload goes out as the slices it arrived in, not copied.
            let large = message.body.len() >= ZERO_COPY_MIN;
            for part in message.body.parts() {
                if large {
                    self.out.push_slice(part.clone());
                } else {
                    self.out.buf.extend_from_slice(part);
                }
            }
            self.charge += d.charge;
            bump(if d.no_ack { &self.card.deliver_no_ack } else { &self.card.deliver }, 1);
            if item.redelivered {
                bump(&self.card.redeliver, 1);
            }
            if qos == 1 {
                return;
            }
        }
        // Not awaiting a PUBACK: settled now.
        match (d.no_ack, origin, consumer) {
            (true, Some(q), _) if item.logged => q.sent_no_ack(&item),
            (false, Some(q), Some(c)) => {
                c.settle(message.size());
                q.acked(std::slice::from_ref(&item));
            }
            _ => {}
        }
    }

    /// The will: published as the client would have, if it may publish there.
    pub(super) fn send_will(&mut self, will: codec::Will) {
        let delay = will.properties.will_delay.unwrap_or(0).min(self.session_expiry);
        if delay > 0 {
            // MQTT 5: the will waits; a connection with the same client identifier that comes
            // back meanwhile cancels it.
            let (shared, vhost, client_id) = (self.shared.clone(), self.vhost.clone(), self.client_id.clone());
            let grant_user = self.user.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(delay as u64)).await;
                if shared.clients.is_connected(&vhost.name, &client_id) {
                    return;
                }
                let grant = shared.broker.grant(&grant_user, &vhost.name);
                publish_will(&shared, &vhost, &grant, will);
            });
            return;
        }
        self.refresh_grant();
        publish_will(&self.shared, &self.vhost, &self.grant, will);
    }
}

/// What routing a message did.
#[derive(Clone, Copy)]
struct Routed {
    queues: usize,
    ticket: u64,
    cluster: u64,
    rejected: bool,
    failed: bool,
}

fn route(conn: &mut Conn, message: Arc<Message>) -> Routed {
    let mut queues = Vec::new();
    let mut r = Routed { queues: 0, ticket: 0, cluster: 0, rejected: false, failed: false };
    if conn.vhost.route(EXCHANGE, &message.routing_key, &[], &message.properties, &mut queues).is_err() {
        r.failed = true;
        return r;
    }
    if message.persistent && conn.shared.broker.storage_failure().is_some() {
        r.failed = true;
    }
    let mut logged = false;
    for q in &queues {
        match q.publish(message.clone(), Some(&conn.queue_flow)) {
            Ok(p) => {
                r.ticket = r.ticket.max(p.ticket);
                r.cluster = r.cluster.max(p.cluster);
                r.rejected |= p.rejected;
                conn.flow_paused |= p.throttled;
                logged |= p.logged;
            }
            Err(_) => r.failed = true,
        }
    }
    let broker = &conn.shared.broker;
    if logged && broker.storage_backlogged(&conn.queue_flow) {
        conn.flow_paused = true;
    }
    if r.cluster != 0 && broker.quorum_host().is_some_and(|h| h.backlogged(&conn.queue_flow)) {
        conn.flow_paused = true;
    }
    r.queues = queues.len();
    r
}

/// Publishes a will (after its connection is gone): permissions checked as for a publish.
fn publish_will(
    shared: &super::Shared,
    vhost: &crate::broker::vhost::VHost,
    grant: &crate::auth::grant::Grant,
    will: codec::Will,
) {
    let routing_key = topic::to_amqp(&will.topic);
    if topic::check_name(&will.topic).is_err() || routing_key.len() > 255 {
        return;
    }
    if let Err(refused) = may_publish(grant, &routing_key) {
        tracing::warn!(topic = %will.topic, "the will is not published: {refused}");
        return;
    }
    let properties = amqp_properties(will.qos, false, &will.properties);
    if will.retain {
        shared.retained_set(&vhost.name, &will.topic, will.qos, &will.payload, &properties);
    }
    let message = Arc::new(Message::new(
        ShortStr::from(EXCHANGE),
        ShortStr::from(routing_key),
        properties,
        will.payload,
        will.qos > 0,
    ));
    let mut queues = Vec::new();
    if vhost.route(EXCHANGE, &message.routing_key, &[], &message.properties, &mut queues).is_ok() {
        for q in &queues {
            let _ = q.publish(message.clone(), None);
        }
    }
}

/// Write permission on `amq.topic`, and the topic permission on the routing key: what a
/// publish and a will both need.
fn may_publish(grant: &crate::auth::grant::Grant, routing_key: &str) -> Result<(), String> {
    grant.check(Kind::Exchange, EXCHANGE, Perm::Write).map_err(|r| r.text)?;
    if grant.has_topic_permissions() {
        grant.check_topic(EXCHANGE, routing_key, Perm::Write).map_err(|r| r.text)?;
    }
    Ok(())
}

impl super::super::Shared {
    /// Retains a publish for its topic (an empty payload clears it), on disk when it
    /// returns: the write and its fsync block this worker, not the others.
    fn retained_set(&self, vhost: &str, topic: &str, qos: u8, payload: &Bytes, properties: &Bytes) {
        let message = (!payload.is_empty()).then(|| Retained {
            qos: qos.min(1),
            payload: payload.clone(),
            properties: properties.clone(),
        });
        if let Err(e) = tokio::task::block_in_place(|| self.retained.set(vhost, topic, message)) {
            tracing::error!("cannot store a retained message in {}: {e}", self.retained.path().display());
        }
    }
}

/// The AMQP properties of an MQTT publish.
pub(super) fn amqp_properties(qos: u8, dup: bool, p: &Properties) -> Bytes {
    let mut headers = FieldTable::new();
    headers.insert("x-mqtt-publish-qos", FieldValue::I8(qos as i8));
    headers.insert("x-mqtt-dup", FieldValue::Bool(dup));
    for (k, v) in &p.user {
        if k.len() <= 255 {
            headers.insert(k, FieldValue::string(v));
        }
    }
    let short = |s: &str| (s.len() <= 255).then(|| ShortStr::from(s));
    BasicProperties {
        delivery_mode: Some(if qos > 0 { 2 } else { 1 }),
        headers: Some(headers),
        content_type: p.content_type.as_deref().and_then(short),
        correlation_id: p
            .correlation_data
            .as_ref()
            .filter(|c| c.len() <= 255)
            .and_then(|c| std::str::from_utf8(c).ok())
            .map(ShortStr::from),
        reply_to: p.response_topic.as_deref().map(topic::to_amqp).as_deref().and_then(short),
        expiration: p.message_expiry.map(|s| ShortStr::from((s as u64 * 1000).to_string())),
        ..Default::default()
    }
    .to_bytes()
}

/// The MQTT 5 properties of a delivered message.
fn mqtt_properties(p: &BasicProperties) -> Properties {
    let mut out = Properties {
        content_type: p.content_type.as_ref().map(|c| c.to_string()),
        correlation_data: p.correlation_id.as_ref().map(|c| Bytes::copy_from_slice(c.as_bytes())),
        response_topic: p.reply_to.as_ref().map(|r| topic::to_mqtt(r)),
        ..Default::default()
    };
    if let Some(h) = &p.headers {
        for (k, v) in h.iter() {
            if k.starts_with("x-mqtt-") {
                continue;
            }
            if let Some(s) = v.as_str() {
                out.user.push((k.to_string(), s.to_string()));
            }
        }
    }
    out
}
