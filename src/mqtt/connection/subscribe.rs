//! A client's session in the core: its subscription queues (`mqtt-subscription-<client
//! id>qos0` and `...qos1`, as RabbitMQ's plugin names them), their consumers, and the
//! bindings of `amq.topic` its SUBSCRIBE and UNSUBSCRIBE make and remove; a retained
//! message for each new subscription that matches one.

use super::super::codec::{self, reason, Packet, Properties, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe, V5};
use super::super::session::PendingAck;
use super::super::topic;
use super::{Conn, InFlight, SubQueue, EXCHANGE, TAGS};
use crate::auth::grant::{Kind, Perm};
use crate::broker::consumer::Consumer;
use crate::broker::exchange::{Binding, Destination};
use crate::broker::replicated::DefinitionChange;
use crate::broker::vhost::QueueDeclaration;
use crate::types::{FieldTable, FieldValue, ShortStr};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

impl Conn {
    fn queue_name(&self, qos: usize) -> String {
        format!("mqtt-subscription-{}qos{qos}", self.client_id)
    }

    /// At CONNECT: a clean start removes what a previous session left; otherwise a durable
    /// session queue that exists means the session is present. Returns session present.
    pub(super) fn open_session(&mut self, clean_start: bool) -> bool {
        let name = self.queue_name(1);
        let existing = self.vhost.queue(&name, self.id).ok();
        match existing {
            Some(q) if clean_start => {
                self.vhost.force_delete_queue(&q, &self.actor);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// After CONNACK: a present session's queue is consumed again, and its bindings are its
    /// subscriptions.
    pub(super) fn resume_session(&mut self) {
        let name = self.queue_name(1);
        if !self.vhost.has_queue(&name) {
            return;
        }
        if let Err(e) = self.ensure_queue(1) {
            tracing::warn!(client_id = %self.client_id, "the session's queue cannot be consumed: {e}");
            return;
        }
        for (source, b) in self.vhost.bindings() {
            if source.as_str() == EXCHANGE && b.destination == Destination::Queue(ShortStr::from(name.as_str())) {
                self.subscriptions.insert(topic::to_mqtt(&b.routing_key), 1);
            }
        }
    }

    /// The subscription queue for `qos`, declared and consumed the first time.
    fn ensure_queue(&mut self, qos: usize) -> Result<(), String> {
        if self.queues[qos].is_some() {
            return Ok(());
        }
        let name = self.queue_name(qos);
        self.refresh_grant();
        let queue = match self.vhost.queue(&name, self.id) {
            Ok(q) => q,
            Err(_) => {
                self.grant.check(Kind::Queue, &name, Perm::Configure).map_err(|r| r.text)?;
                let mut arguments = FieldTable::new();
                if qos == 1 && !self.ends_with_connection && self.session_expiry != u32::MAX {
                    arguments.insert("x-expires", FieldValue::I64(self.session_expiry as i64 * 1000));
                }
                let d = QueueDeclaration {
                    name: ShortStr::from(name.as_str()),
                    passive: false,
                    durable: qos == 1,
                    exclusive: false,
                    auto_delete: qos == 0 || self.ends_with_connection,
                    arguments,
                };
                let (q, ..) = self.vhost.declare_queue(&d, &self.actor).map_err(|e| e.text.to_string())?;
                q
            }
        };
        self.grant.check(Kind::Queue, &name, Perm::Read).map_err(|r| r.text)?;
        let consumer = Arc::new(Consumer {
            tag: ShortStr::from(TAGS[qos]),
            channel: 1,
            no_ack: qos == 0,
            exclusive: false,
            arguments: FieldTable::new(),
            priority: 0,
            prefetch: if qos == 0 { 0 } else { self.prefetch as u32 },
            unacked: Default::default(),
            flow: self.flow.clone(),
            sink: self.sink.clone(),
        });
        // The session's queue is this node's own: nothing to wait for.
        queue.add_consumer(consumer.clone()).map_err(|e| e.text.to_string())?;
        self.queues[qos] = Some(SubQueue { queue, consumer, placed: false });
        self.card.consumers.store(self.queues.iter().flatten().count() as u32, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Binds one topic filter at `qos` (0 or 1); Err is why not.
    ///
    /// On a cluster node the binding is the cluster's, as queue.bind's to a classic queue of
    /// a cluster is: proposed through the log after the queue's placement (proposed here the
    /// first time), so that publishers on every node reach the subscription; the SUBACK waits
    /// until it is applied here (`self.cluster_ticket`).
    fn bind(&mut self, filter: &str, qos: usize) -> Result<(), String> {
        let key = topic::to_amqp(filter);
        let name = self.queue_name(qos);
        self.refresh_grant();
        // queue.bind's checks: write on the queue, read on the exchange, the topic's read.
        self.grant.check(Kind::Queue, &name, Perm::Write).map_err(|r| r.text)?;
        self.grant.check(Kind::Exchange, EXCHANGE, Perm::Read).map_err(|r| r.text)?;
        if self.grant.has_topic_permissions() {
            self.grant.check_topic(EXCHANGE, &key, Perm::Read).map_err(|r| r.text)?;
        }
        self.ensure_queue(qos)?;
        let binding = Binding {
            destination: Destination::Queue(ShortStr::from(name)),
            routing_key: ShortStr::from(key),
            arguments: FieldTable::new(),
        };
        if let Some(host) = self.shared.broker.quorum_host().cloned() {
            if let Some(sub) = self.queues[qos].as_mut().filter(|s| !s.placed) {
                sub.placed = true;
                let broker = &self.shared.broker;
                if let Some(t) = broker.place_local_queue(&self.vhost.name, &sub.queue, &self.actor.user) {
                    self.cluster_ticket = self.cluster_ticket.max(t);
                }
            }
            let change = DefinitionChange::binding(true, &self.vhost.name, EXCHANGE, &binding, &self.actor.user);
            self.cluster_ticket = self.cluster_ticket.max(host.propose_definition(change));
            return Ok(());
        }
        self.vhost.bind(&ShortStr::from(EXCHANGE), binding, &self.actor).map_err(|e| e.text.to_string())?;
        Ok(())
    }

    fn unbind(&mut self, filter: &str, qos: usize) {
        let binding = Binding {
            destination: Destination::Queue(ShortStr::from(self.queue_name(qos))),
            routing_key: ShortStr::from(topic::to_amqp(filter)),
            arguments: FieldTable::new(),
        };
        if let Some(host) = self.shared.broker.quorum_host().cloned() {
            let change = DefinitionChange::binding(false, &self.vhost.name, EXCHANGE, &binding, &self.actor.user);
            self.cluster_ticket = self.cluster_ticket.max(host.propose_definition(change));
            return;
        }
        let _ = self.vhost.unbind(&ShortStr::from(EXCHANGE), &binding, &self.actor);
    }

    pub(super) fn subscribe(&mut self, s: Subscribe) {
        let v5 = self.level == V5;
        if !s.properties.subscription_ids.is_empty() {
            self.closing = Some((
                reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported".into(),
            ));
            return;
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            let code = if f.filter.starts_with("$share/") {
                reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if topic::check_filter(&f.filter).is_err() || topic::to_amqp(&f.filter).len() > 255 {
                reason::TOPIC_FILTER_INVALID
            } else {
                let granted = f.qos.min(1);
                let before = self.subscriptions.get(&f.filter).copied();
                match self.bind(&f.filter, granted as usize) {
                    Ok(()) => {
                        // A filter subscribed again at another QoS moves to that QoS's queue.
                        if let Some(old) = before.filter(|&o| o != granted) {
                            self.unbind(&f.filter, old as usize);
                        }
                        self.subscriptions.insert(f.filter.clone(), granted);
                        let send_retained = match f.retain_handling {
                            0 => true,
                            1 => before.is_none(),
                            _ => false,
                        };
                        if send_retained {
                            let filter = f.filter.clone();
                            for (t, m) in
                                self.shared.retained.matching(&self.vhost.name, |t| topic::matches(&filter, t))
                            {
                                retained.push((t, m, granted));
                            }
                        }
                        granted
                    }
                    Err(why) => {
                        tracing::warn!(client_id = %self.client_id, filter = %f.filter, "subscription refused: {why}");
                        reason::NOT_AUTHORIZED
                    }
                }
            };
            codes.push(code);
        }
        let mut reply = BytesMut::new();
        let properties = Properties::default();
        codec::encode(&mut reply, &Packet::SubAck(SubAck { packet_id: s.packet_id, properties, codes }), self.level);
        for (t, m, granted) in retained {
            let qos = m.qos.min(granted);
            let mut p = Publish {
                dup: false,
                qos,
                retain: true,
                topic: t,
                packet_id: None,
                properties: Properties::default(),
                payload: m.payload,
            };
            if v5 {
                if let Ok(props) = crate::types::BasicProperties::decode(m.properties) {
                    p.properties.content_type = props.content_type.map(|c| c.to_string());
                }
            }
            if qos == 1 {
                match self.session.track(InFlight { origin: None, item: None }) {
                    Ok(id) => p.packet_id = Some(id),
                    Err(_) => continue,
                }
            }
            codec::encode(&mut reply, &Packet::Publish(p), self.level);
        }
        // The queues and bindings are on disk (and, in a cluster, applied) before the SUBACK
        // says they exist.
        let ticket = self.shared.broker.storage_last_ticket();
        let cluster = std::mem::take(&mut self.cluster_ticket);
        self.session.push_ack(PendingAck { ticket, cluster, reply: reply.freeze() });
    }

    pub(super) fn unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let code = match self.subscriptions.remove(filter) {
                Some(qos) => {
                    self.unbind(filter, qos as usize);
                    reason::SUCCESS
                }
                None => reason::NO_SUBSCRIPTION_EXISTED,
            };
            codes.push(code);
        }
        let mut reply = BytesMut::new();
        codec::encode(
            &mut reply,
            &Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, properties: Properties::default(), codes }),
            self.level,
        );
        let ticket = self.shared.broker.storage_last_ticket();
        let cluster = std::mem::take(&mut self.cluster_ticket);
        self.session.push_ack(PendingAck { ticket, cluster, reply: Bytes::from(reply) });
    }
}
