//! Single active consumer on a connection, as RabbitMQ's stream reader runs it: a
//! subscription with `single-active-consumer` `true` and a `name` joins its group (see
//! `stream::sac`) and sends nothing until it is active and its client has answered the
//! broker's `consumer_update` (with the offset to start from). A subscription told to step
//! down stops sending at once; its client's answer lets the group activate the member due.

use super::{code, deliver, key, Conn, OffsetSpec};
use crate::broker::queue::Queue;
use crate::stream::sac::{GroupKey, Groups, Notify};
use bytes::BufMut;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The node's groups, and how to reach each connection that has members in them.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: parking_lot::Mutex<Groups>,
    connections: parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<Notify>>>,
}

impl Coordinator {
    /// Sends each notification to its connection, and returns those for `me`. One for a
    /// connection that has gone telling a member to step down is answered here (the member
    /// went with its connection): the member due is activated.
    fn send(&self, me: u64, mut effects: Vec<Notify>) -> Vec<Notify> {
        let mut mine = Vec::new();
        while let Some(n) = effects.pop() {
            if n.connection == me {
                mine.push(n);
                continue;
            }
            let delivered = self.connections.lock().get(&n.connection).is_some_and(|tx| tx.send(n.clone()).is_ok());
            if !delivered && n.stepping_down {
                effects.extend(self.groups.lock().activate(&n.key));
            }
        }
        mine
    }
}

/// A single-active-consumer subscription's place in its group.
pub(super) struct Member {
    key: GroupKey,
    /// Where it starts if its client's answer does not say.
    offset: OffsetSpec,
    active: bool,
}

/// The subscription properties that make a single active consumer.
pub(super) struct Properties<'a> {
    pub single_active: bool,
    pub name: Option<&'a str>,
    pub super_stream: Option<&'a str>,
}

impl<'a> Properties<'a> {
    pub fn of(properties: &'a [(String, String)]) -> Self {
        let get = |k: &str| properties.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        Properties {
            single_active: get("single-active-consumer") == Some("true"),
            name: get("name"),
            super_stream: get("super-stream"),
        }
    }
}

impl Conn {
    /// From now on this connection hears of its members' turns through `tx`.
    pub(super) fn join_coordinator(&self, tx: mpsc::UnboundedSender<Notify>) {
        self.shared.sac.connections.lock().insert(self.id, tx);
    }

    /// Subscription `id` (answered already, parked) joins the group `name` of `stream`.
    pub(super) fn join_group(
        &mut self,
        id: u8,
        stream: &str,
        name: &str,
        super_stream: Option<&str>,
        offset: OffsetSpec,
    ) {
        let Some(vhost) = self.vhost.clone() else { return };
        let key = GroupKey { vhost: vhost.name.clone(), stream: stream.to_string(), name: name.to_string() };
        // Its place among the super stream's partitions, which spreads the partitions over
        // the group's members.
        let partition =
            super_stream.and_then(|s| self.partitions(s)).and_then(|ps| ps.iter().position(|p| p == stream));
        self.members.insert(id, Member { key: key.clone(), offset, active: false });
        let (_, effects) = self.shared.sac.groups.lock().register(&key, partition, self.id, id);
        self.notify_all(effects);
    }

    /// Sends the notifications to their connections and acts on this one's.
    fn notify_all(&mut self, effects: Vec<Notify>) {
        for n in self.shared.sac.send(self.id, effects) {
            self.notified(n);
        }
    }

    /// A member's turn changed: the client is asked (`consumer_update`), and a member no
    /// longer active stops sending now.
    pub(super) fn notified(&mut self, n: Notify) {
        let Some(m) = self.members.get_mut(&n.subscription).filter(|m| m.key == n.key) else {
            // The subscription is gone: a step-down it will never answer is answered now.
            if n.stepping_down {
                let effects = self.shared.sac.groups.lock().activate(&n.key);
                self.notify_all(effects);
            }
            return;
        };
        m.active = n.active;
        if let Some(s) = self.subscriptions.get_mut(&n.subscription) {
            s.card().active.store(n.active, std::sync::atomic::Ordering::Relaxed);
            if !n.active {
                s.cancel();
            }
        }
        let corr = self.next_corr;
        self.next_corr = self.next_corr.wrapping_add(1);
        codec_consumer_update(&mut self.out, corr, n.subscription, n.active);
        self.updates.insert(corr, n);
    }

    /// The client answered a consumer update: an active member starts sending from the
    /// offset it names (or its subscription's); one that stepped down lets the member due
    /// take over.
    pub(super) fn consumer_update_answered(&mut self, corr: u32, answer: u16, offset: Option<OffsetSpec>) {
        if answer != code::OK {
            tracing::info!(peer = %self.link.peer, "stream connection: consumer update answered with code {answer}");
        }
        let Some(n) = self.updates.remove(&corr) else { return };
        // The member may have left meanwhile: then only a step-down is owed an answer.
        let active = self.members.get(&n.subscription).filter(|m| m.key == n.key && m.active);
        if let Some(m) = active {
            let offset = offset.unwrap_or(m.offset);
            let stream = m.key.stream.clone();
            if let Some(queue) = self.stream(&stream) {
                let start = self.deliver_start(n.subscription, stream, queue, offset, 0);
                if let Some(s) = self.subscriptions.get_mut(&n.subscription) {
                    s.resume(start);
                }
            }
        } else if n.stepping_down {
            let effects = self.shared.sac.groups.lock().activate(&n.key);
            self.notify_all(effects);
        }
    }

    /// Subscription `id` leaves its group, if it is in one (unsubscribed, or its stream
    /// deleted). A step-down it had not answered is answered now.
    pub(super) fn leave_group(&mut self, id: u8) {
        let Some(m) = self.members.remove(&id) else { return };
        let mut effects = self.shared.sac.groups.lock().unregister(&m.key, self.id, id);
        let pending: Vec<u32> =
            self.updates.iter().filter(|(_, n)| n.subscription == id && n.key == m.key).map(|(c, _)| *c).collect();
        for corr in pending {
            if self.updates.remove(&corr).is_some_and(|n| n.stepping_down) {
                effects.extend(self.shared.sac.groups.lock().activate(&m.key));
            }
        }
        self.notify_all(effects);
    }

    /// The connection ends: every member leaves, and notifications that came meanwhile are
    /// answered as a gone member's are.
    pub(super) fn leave_all_groups(&mut self, rx: &mut mpsc::UnboundedReceiver<Notify>) {
        let ids: Vec<u8> = self.members.keys().copied().collect();
        for id in ids {
            self.leave_group(id);
        }
        // No more notifications reach this connection once it is out of the list; those
        // sent before are in `rx`.
        self.shared.sac.connections.lock().remove(&self.id);
        while let Ok(n) = rx.try_recv() {
            self.notified(n);
        }
    }

    /// What a subscription's task starts from.
    pub(super) fn deliver_start(
        &self,
        id: u8,
        stream: String,
        queue: Arc<Queue>,
        offset: OffsetSpec,
        credit: u16,
    ) -> deliver::Start {
        deliver::Start {
            id,
            stream,
            queue,
            offset,
            credit,
            writer: self.writer.clone(),
            frame_max: self.frame_max,
            deliver_v2: self.deliver_v2,
            entry: self.entry.clone(),
            gone: self.gone_tx.clone(),
        }
    }
}

/// The broker's `consumer_update` request: the subscription and whether it is active now.
fn codec_consumer_update(out: &mut bytes::BytesMut, corr: u32, subscription: u8, active: bool) {
    super::put_frame(out, key::CONSUMER_UPDATE, |o| {
        o.put_u32(corr);
        o.put_u8(subscription);
        o.put_u8(active as u8);
    });
}
