//! The broker's side of the cluster: what a quorum queue is on this node.
//!
//! - As [`QuorumHost`], the bridge declares and deletes quorum queues through the log.
//! - As [`Effects`], it acts on what applying entries asks of this node: a queue's local face
//!   appears in (or leaves) its vhost, a delivery goes to one of this node's consumers, a dead
//!   letter is republished (by the leader).
//! - Each queue's [`Replica`] turns publishes, consumers and purges into proposals; each
//!   consumer's [`ConsumerOrigin`] turns acks, rejects and requeues into settle, discard and
//!   return commands.
//!
//! A publish's confirm waits for its ticket (committed on a majority and applied here); a
//! delivery reaches the consumer's channel when this node applies the entry that made it.

use super::machine::Effects;
use super::node::Cluster;
use super::quorum::{ConsumerKey, Msg, Reason, Settings};
use super::reports::NodeReport;
use super::types::{Command, QueueName};
use crate::broker::arguments::QueueArguments;
use crate::broker::consumer::{ConnEvent, Consumer, Delivery, NoOrigin, Origin};
use crate::broker::dead_letter;
use crate::broker::message::{Message, QueuedMessage};
use crate::broker::queue::replica::{ClusterStatus, Membership, QuorumHost, Replica};
use crate::broker::queue::Queue;
use crate::broker::replicated::{DefinitionChange, Refusal, ReplicatedDefinitions};
use crate::broker::store::{table_from_hex, table_to_hex};
use crate::broker::{AmqpResult, Broker};
use crate::types::{FieldTable, ShortStr};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// Bytes a delivery is charged to its connection's sink beyond the message.
const DELIVERY_OVERHEAD: usize = 64;
/// A consumer with at least this prefetch (and acks) has a lookahead: the queue's state
/// machine may hand its node twice its prefetch, and the node sends the client at most its
/// prefetch, the rest as the client acks. A message's credit comes back only when its
/// settle is committed (a round trip through the log, a few ms), so a consumer held to its
/// prefetch alone idles for that round trip every `prefetch` messages; with the lookahead its
/// next messages are already on its node. Below this prefetch (1 for fair dispatch of long
/// tasks, say) a consumer is held to its prefetch exactly, as in RabbitMQ.
const LOOKAHEAD_MIN_PREFETCH: u32 = 10;
/// A lookahead message unsent for this long (its client acks nothing) goes back to the
/// queue, for other consumers, and the consumer has no lookahead from then on.
const LOOKAHEAD_STALE: std::time::Duration = std::time::Duration::from_secs(1);

/// One of this node's consumers of a quorum queue.
struct Local {
    queue: QueueName,
    consumer: Arc<Consumer>,
    origin: Arc<ConsumerOrigin>,
    /// The client's prefetch while the consumer has a lookahead, else 0 (see
    /// [`Local::held_limit`]).
    lookahead: u32,
    /// Deliveries sent to the client and not yet acked, rejected or requeued by it.
    out: u32,
    /// Deliveries held for the client until it has room, oldest first.
    waiting: std::collections::VecDeque<Waiting>,
}

/// A delivery held on the consumer's node (see [`LOOKAHEAD_MIN_PREFETCH`]).
struct Waiting {
    id: u64,
    msg: Arc<Msg>,
    redelivered: bool,
    delivery_count: u32,
    since: std::time::Instant,
}

/// What the state machine holds a consumer to, and its node's lookahead (0: none).
fn credit_of(consumer: &Consumer) -> (u32, u32) {
    let p = consumer.prefetch;
    if consumer.no_ack || p < LOOKAHEAD_MIN_PREFETCH {
        (p, 0)
    } else {
        (p.saturating_mul(2), p)
    }
}

impl Local {
    /// What the state machine holds the consumer to: its prefetch and its lookahead.
    fn held_limit(&self) -> u32 {
        self.consumer.prefetch.saturating_add(self.lookahead)
    }

    /// Sends a delivery to the client.
    fn send(&mut self, id: u64, msg: &Msg, redelivered: bool, delivery_count: u32) {
        let c = &self.consumer;
        let item = queued(id, msg, redelivered, delivery_count);
        let size = item.message.size();
        if !c.no_ack {
            c.charge_unacked(size);
            self.out += 1;
        }
        c.sink.send(ConnEvent::Deliver(Delivery {
            channel: c.channel,
            consumer_tag: c.tag.clone(),
            queue: Some(self.origin.clone() as Arc<dyn Origin>),
            item,
            no_ack: c.no_ack,
            charge: size + DELIVERY_OVERHEAD,
        }));
    }

    /// Sends what waits while the client has room.
    fn drain(&mut self) {
        while self.out < self.lookahead {
            let Some(w) = self.waiting.pop_front() else { return };
            self.send(w.id, &w.msg, w.redelivered, w.delivery_count);
        }
    }

    /// The ids of what waits, taken.
    fn take_waiting(&mut self) -> Vec<u64> {
        self.waiting.drain(..).map(|w| w.id).collect()
    }
}

/// The bridge between this node's broker and the cluster.
pub struct Bridge {
    broker: Arc<Broker>,
    cluster: OnceLock<Arc<Cluster>>,
    /// This node as the home of classic queues, and its links to the others' (see `classic`).
    home: Arc<super::classic::home::Home>,
    faces: Arc<super::classic::face::Faces>,
    /// This node's name (known before its Raft starts, which applies its log again).
    name: String,
    homed: Arc<super::classic::placement::Homed>,
    me: Weak<Bridge>,
    consumers: Mutex<HashMap<u64, Local>>,
    next_consumer: AtomicU64,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// The bridge of node `name`, made the broker's quorum host at once: entries applied as
    /// the node starts (its log applied again) find it. `durable`: the broker's group-commit
    /// watermark (a forwarded publish is answered once on disk here).
    pub fn new(broker: Arc<Broker>, durable: Option<tokio::sync::watch::Receiver<u64>>, name: String) -> Arc<Bridge> {
        let bridge = Arc::new_cyclic(|me| Bridge {
            home: super::classic::home::Home::new(broker.clone(), durable),
            broker: broker.clone(),
            cluster: OnceLock::new(),
            faces: super::classic::face::Faces::new(),
            name,
            homed: Default::default(),
            me: me.clone(),
            consumers: Mutex::new(HashMap::new()),
            next_consumer: AtomicU64::new(1),
        });
        broker.set_quorum_host(bridge.clone());
        bridge
    }

    /// Connects the bridge (and the faces) to its started node; starts the placements'
    /// reconciler and the home's sweep of silent nodes.
    pub fn attach(self: &Arc<Self>, cluster: Arc<Cluster>) {
        self.faces.attach(cluster.clone());
        let _ = self.cluster.set(cluster.clone());
        tokio::spawn(super::classic::placement::reconcile(self.broker.clone(), cluster, self.homed.clone()));
        let me = self.me.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOOKAHEAD_STALE / 4).await;
                let Some(b) = me.upgrade() else { return };
                b.release_stale();
            }
        });
        let home = Arc::downgrade(&self.home);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(home) = home.upgrade() else { return };
                home.sweep().await;
            }
        });
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Consumers whose lookahead waited past [`LOOKAHEAD_STALE`] (their clients stopped
    /// acking): held to their prefetch from now on, and what waited goes back to the queue.
    fn release_stale(&self) {
        let Some(cl) = self.cluster() else { return };
        let mut consumers = self.consumers.lock();
        for (id, l) in consumers.iter_mut() {
            if l.waiting.front().is_none_or(|w| w.since.elapsed() < LOOKAHEAD_STALE) {
                continue;
            }
            let consumer = (cl.process, *id);
            l.lookahead = 0;
            let (queue, prefetch, no_ack) = (l.queue.clone(), l.held_limit(), l.consumer.no_ack);
            let ids = l.take_waiting();
            // The smaller prefetch first, so that what is released goes to others.
            cl.propose(Command::Checkout { queue: queue.clone(), consumer, prefetch, no_ack }, None);
            cl.propose(Command::Release { queue, consumer, ids }, None);
        }
    }

    fn propose(&self, c: Command) -> u64 {
        match self.cluster() {
            Some(cl) => cl.propose(c, None),
            None => 0,
        }
    }

    fn replica(&self, queue: &QueueName) -> Arc<dyn Replica> {
        Arc::new(QueueReplica { name: queue.clone(), bridge: self.me.clone() })
    }
}

impl QuorumHost for Bridge {
    fn declare(&self, vhost: &str, name: &str, arguments: &FieldTable, args: &QueueArguments) -> u64 {
        let queue = QueueName { vhost: vhost.into(), name: name.into() };
        let arguments = Bytes::from(table_to_hex(arguments).into_bytes());
        self.propose(Command::Declare { queue, arguments, settings: Settings::from_arguments(args) })
    }
    fn delete(&self, vhost: &str, name: &str) -> u64 {
        self.propose(Command::Delete { queue: QueueName { vhost: vhost.into(), name: name.into() } })
    }
    fn last_ticket(&self) -> u64 {
        self.cluster().map_or(0, |c| c.tickets().1)
    }
    fn resolved(&self) -> tokio::sync::watch::Receiver<u64> {
        match self.cluster() {
            Some(c) => c.resolved(),
            None => tokio::sync::watch::channel(0).1,
        }
    }
    fn take_rejected(&self, ticket: u64) -> bool {
        self.cluster().is_some_and(|c| c.take_rejected(ticket))
    }
    fn is_resolved(&self, ticket: u64) -> bool {
        self.cluster().is_none_or(|c| c.is_resolved(ticket))
    }
    fn backlogged(&self, waiter: &Arc<tokio::sync::Notify>) -> bool {
        self.cluster().is_some_and(|c| c.backlogged(waiter)) || self.faces.backlogged(waiter)
    }
    fn propose_definition(&self, change: DefinitionChange) -> u64 {
        self.propose(Command::Definition(change))
    }
    fn take_refusal(&self, ticket: u64) -> Option<Refusal> {
        self.cluster().and_then(|c| c.take_refusal(ticket))
    }
    fn status(&self) -> ClusterStatus {
        self.cluster().map(|c| c.status()).unwrap_or_default()
    }
    fn leads(&self) -> bool {
        self.cluster().is_some_and(|c| c.leads())
    }
    fn node_name(&self) -> String {
        self.name.clone()
    }
    fn face(&self, vhost: &str, name: &str, home: &str) -> Arc<dyn Replica> {
        self.faces.face(vhost, name, home)
    }
    fn place_here(&self, place: DefinitionChange) -> u64 {
        if let DefinitionChange::PlaceQueue { vhost, name, .. } = &place {
            if let Some(id) = self.homed.id_of(vhost, name) {
                let (vhost, name) = (vhost.clone(), name.clone());
                self.propose(Command::Definition(DefinitionChange::UnplaceQueue { vhost, name, id }));
            }
        }
        self.propose(Command::Definition(place))
    }
    fn membership(&self, change: Membership) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let c = self.cluster().cloned();
        Box::pin(async move {
            let Some(c) = c else { return Err("not a cluster node".into()) };
            match change {
                Membership::Join { seed } => c.join(&seed).await,
                Membership::Forget { node } => c.forget(&node).await,
            }
        })
    }
}

impl Effects for Bridge {
    fn declared(&self, queue: &QueueName, arguments: &Bytes) {
        let Some(vhost) = self.broker.vhost(&queue.vhost) else {
            tracing::warn!("quorum queue '{}': vhost '{}' does not exist on this node", queue.name, queue.vhost);
            return;
        };
        let table = std::str::from_utf8(arguments).ok().and_then(|s| table_from_hex(s).ok()).unwrap_or_default();
        vhost.install_replicated(&queue.name, table, self.replica(queue));
    }

    fn deleted(&self, queue: &QueueName) {
        if let Some(vhost) = self.broker.vhost(&queue.vhost) {
            vhost.drop_replicated(&queue.name);
        }
        let gone: Vec<Local> = {
            let mut consumers = self.consumers.lock();
            let ids: Vec<u64> = consumers.iter().filter(|(_, l)| l.queue == *queue).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| consumers.remove(&id)).collect()
        };
        for l in gone {
            let c = &l.consumer;
            c.sink.send(ConnEvent::ConsumerCancelled { channel: c.channel, consumer_tag: c.tag.clone() });
        }
    }

    fn deliver(
        &self,
        queue: &QueueName,
        consumer: u64,
        id: u64,
        msg: Arc<Msg>,
        redelivered: bool,
        delivery_count: u32,
    ) {
        let mut consumers = self.consumers.lock();
        let Some(local) = consumers.get_mut(&consumer) else {
            drop(consumers);
            // The consumer went meanwhile: the message goes back for another, as it was.
            if let Some(cl) = self.cluster() {
                let key = (cl.process, consumer);
                cl.propose(Command::Release { queue: queue.clone(), consumer: key, ids: vec![id] }, None);
            }
            return;
        };
        if redelivered && local.waiting.iter().any(|w| w.id == id) {
            // Held here already: delivered again after a snapshot was installed.
            return;
        }
        if local.lookahead == 0 || (local.out < local.lookahead && local.waiting.is_empty()) {
            local.send(id, &msg, redelivered, delivery_count);
        } else {
            let since = std::time::Instant::now();
            local.waiting.push_back(Waiting { id, msg, redelivered, delivery_count, since });
        }
    }

    fn dead_letter(&self, queue: &QueueName, msg: Arc<Msg>, reason: Reason, _delivery_count: u32) {
        let Some(q) = self.broker.vhost(&queue.vhost).and_then(|v| v.replicated_queue(&queue.name)) else { return };
        let message = message_of(&msg);
        let reason = match reason {
            Reason::Rejected => dead_letter::Reason::Rejected,
            Reason::Expired => dead_letter::Reason::Expired,
            Reason::MaxLen => dead_letter::Reason::MaxLen,
            Reason::DeliveryLimit => dead_letter::Reason::DeliveryLimit,
        };
        q.dead_letter_replicated(Arc::new(message), reason);
    }

    fn definition(&self, change: &DefinitionChange) -> Result<(), Refusal> {
        self.broker.apply_definition(change)?;
        self.homed.applied(change, &self.node_name());
        Ok(())
    }

    fn definitions(&self) -> ReplicatedDefinitions {
        self.broker.replicated_definitions()
    }

    fn install_definitions(&self, definitions: &ReplicatedDefinitions) {
        self.broker.install_replicated_definitions(definitions);
        self.homed.installed(&definitions.placements, &self.node_name());
    }

    fn classic(
        &self,
        from: &str,
        op: super::classic::Op,
    ) -> Pin<Box<dyn Future<Output = super::classic::Reply> + Send + '_>> {
        let from = from.to_string();
        Box::pin(async move { self.home.serve(&from, op).await })
    }

    fn report(&self) -> NodeReport {
        let node = self.cluster().map(|c| c.name.clone()).unwrap_or_default();
        NodeReport {
            alarms: self
                .broker
                .alarm()
                .map(|r| vec![crate::broker::alarm_resource(&r).to_string()])
                .unwrap_or_default(),
            shovels: (self.broker.run_states(crate::shovel::COMPONENT).iter())
                .map(|(vhost, name, state)| state.to_json(&node, vhost, name).to_string())
                .collect(),
        }
    }

    fn remote_reports(&self, reports: Vec<(String, NodeReport)>) {
        let alarms: Vec<(String, String)> =
            reports.iter().flat_map(|(node, r)| r.alarms.iter().map(move |a| (node.clone(), a.clone()))).collect();
        let before = self.broker.remote_alarms();
        for (node, resource) in alarms.iter().filter(|a| !before.contains(a)) {
            tracing::warn!("cluster: {resource} alarm on node {node}: publishers here are blocked too");
        }
        for (node, resource) in before.iter().filter(|a| !alarms.contains(a)) {
            tracing::info!("cluster: {resource} alarm on node {node} cleared (or the node is gone)");
        }
        self.broker.set_remote_alarms(alarms);
        let shovels = reports.iter().flat_map(|(_, r)| &r.shovels).filter_map(|s| serde_json::from_str(s).ok());
        self.broker.set_remote_run_states(shovels.collect());
    }

    fn consumers_lost(&self, queue: &QueueName, consumers: Vec<u64>) {
        let Some(cl) = self.cluster() else { return };
        let again: Vec<(u64, u32, bool)> = {
            let mut locals = self.consumers.lock();
            consumers
                .iter()
                .filter_map(|id| {
                    let l = locals.get_mut(id)?;
                    // What waited went back with the rest of what the consumer held.
                    l.waiting.clear();
                    Some((*id, l.held_limit(), l.consumer.no_ack))
                })
                .collect()
        };
        for (id, prefetch, no_ack) in again {
            let key = (cl.process, id);
            cl.propose(Command::Checkout { queue: queue.clone(), consumer: key, prefetch, no_ack }, None);
        }
    }
}

/// A replicated message as the broker holds one (persistent: a quorum queue's are).
fn message_of(msg: &Msg) -> Message {
    Message::new(
        ShortStr::from(msg.exchange.as_str()),
        ShortStr::from(msg.routing_key.as_str()),
        msg.properties.clone(),
        msg.body.clone(),
        true,
    )
}

/// A replicated message as a queue hands it out: a redelivery carries its
/// `x-delivery-count`, as RabbitMQ's quorum queues add it.
fn queued(id: u64, msg: &Msg, redelivered: bool, delivery_count: u32) -> QueuedMessage {
    let mut message = message_of(msg);
    if delivery_count > 0 {
        message = dead_letter::with_delivery_count(&message, delivery_count as u64);
    }
    // `logged`: it is in the Raft log, and the channel tells its origin when it writes it out
    // to a no-ack consumer (ConsumerOrigin::sent_no_ack settles it then).
    QueuedMessage {
        seq: id,
        redelivered,
        deliveries: delivery_count,
        logged: true,
        ..QueuedMessage::unqueued(Arc::new(message))
    }
}

/// A quorum queue's local face forwards here.
#[derive(Debug)]
struct QueueReplica {
    name: QueueName,
    bridge: Weak<Bridge>,
}

impl Replica for QueueReplica {
    fn publish(&self, message: &Arc<Message>) -> u64 {
        let Some(b) = self.bridge.upgrade() else { return 0 };
        let msg = Msg {
            exchange: message.exchange.to_string(),
            routing_key: message.routing_key.to_string(),
            properties: message.properties.clone(),
            body: message.body.to_bytes(),
            ttl: message.expiration,
        };
        b.propose(Command::Enqueue { queue: self.name.clone(), msg })
    }

    fn add_consumer(&self, _queue: &Arc<Queue>, consumer: Arc<Consumer>) -> AmqpResult<u64> {
        let Some(b) = self.bridge.upgrade() else { return Ok(0) };
        let Some(cl) = b.cluster().cloned() else { return Ok(0) };
        let id = b.next_consumer.fetch_add(1, Ordering::Relaxed);
        let key: ConsumerKey = (cl.process, id);
        let origin = Arc::new(ConsumerOrigin {
            queue: self.name.clone(),
            key,
            cluster: cl.clone(),
            local: Some((self.bridge.clone(), id)),
        });
        let ((prefetch, lookahead), no_ack) = (credit_of(&consumer), consumer.no_ack);
        let local =
            Local { queue: self.name.clone(), consumer, origin, lookahead, out: 0, waiting: Default::default() };
        b.consumers.lock().insert(id, local);
        cl.propose(Command::Checkout { queue: self.name.clone(), consumer: key, prefetch, no_ack }, None);
        Ok(0)
    }

    fn remove_consumer(&self, connection_id: u64, channel: u16, tag: &ShortStr) {
        let Some(b) = self.bridge.upgrade() else { return };
        let Some(cl) = b.cluster().cloned() else { return };
        let found = {
            let mut consumers = b.consumers.lock();
            let id = consumers
                .iter()
                .find(|(_, l)| l.queue == self.name && l.consumer.is(connection_id, channel, tag))
                .map(|(id, _)| *id);
            id.and_then(|id| consumers.remove(&id).map(|mut l| (id, l.take_waiting())))
        };
        if let Some((id, waiting)) = found {
            let consumer = (cl.process, id);
            cl.propose(Command::Cancel { queue: self.name.clone(), consumer }, None);
            // After the cancel, so that they go to others.
            if !waiting.is_empty() {
                cl.propose(Command::Release { queue: self.name.clone(), consumer, ids: waiting }, None);
            }
        }
    }

    fn consumers(&self) -> Vec<Arc<Consumer>> {
        let Some(b) = self.bridge.upgrade() else { return Vec::new() };
        let consumers = b.consumers.lock();
        consumers.values().filter(|l| l.queue == self.name).map(|l| l.consumer.clone()).collect()
    }

    fn counts(&self) -> (u32, u32, u32) {
        let Some(cl) = self.bridge.upgrade().and_then(|b| b.cluster().cloned()) else { return (0, 0, 0) };
        let st = cl.state.read();
        st.queues
            .get(&self.name)
            .map_or((0, 0, 0), |e| (e.queue.ready_count(), e.queue.unacked_count(), e.queue.consumer_count()))
    }

    fn purge(&self) -> u32 {
        let ready = self.counts().0;
        if let Some(b) = self.bridge.upgrade() {
            b.propose(Command::Purge { queue: self.name.clone() });
        }
        ready
    }

    fn get(&self, no_ack: bool) -> (u64, Arc<dyn Origin>) {
        let cl = self.bridge.upgrade().and_then(|b| {
            let id = b.next_consumer.fetch_add(1, Ordering::Relaxed);
            b.cluster().cloned().map(|c| (c, id))
        });
        let Some((cl, id)) = cl else {
            return (0, Arc::new(NoOrigin));
        };
        // The get's holder is a consumer key of its own, settled through this origin.
        let key = (cl.process, id);
        let ticket = cl.propose(Command::Dequeue { queue: self.name.clone(), consumer: key, no_ack }, None);
        (ticket, Arc::new(ConsumerOrigin { queue: self.name.clone(), key, cluster: cl, local: None }))
    }

    fn take_got(&self, ticket: u64) -> Option<(QueuedMessage, u32)> {
        let cl = self.bridge.upgrade()?.cluster()?.clone();
        match cl.take_got(ticket)? {
            super::quorum::Outcome::Got(Some((id, msg, redelivered, count)), left) => {
                Some((queued(id, &msg, redelivered, count), left))
            }
            _ => None,
        }
    }
}

/// What a channel tells about the deliveries of one consumer of a quorum queue.
#[derive(Debug)]
pub struct ConsumerOrigin {
    queue: QueueName,
    key: ConsumerKey,
    cluster: Arc<Cluster>,
    /// The bridge and the consumer's id there (none for a basic.get's holder).
    local: Option<(Weak<Bridge>, u64)>,
}

impl ConsumerOrigin {
    fn ids(messages: &[QueuedMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    /// The client is done with `n` of its deliveries: what waits may go out.
    fn done(&self, n: usize) {
        let Some((bridge, id)) = &self.local else { return };
        let Some(b) = bridge.upgrade() else { return };
        let mut consumers = b.consumers.lock();
        if let Some(l) = consumers.get_mut(id) {
            l.out = l.out.saturating_sub(n as u32);
            l.drain();
        }
    }
}

impl Origin for ConsumerOrigin {
    fn acked(self: Arc<Self>, messages: &[QueuedMessage]) {
        let ids = Self::ids(messages);
        self.cluster.propose(Command::Settle { queue: self.queue.clone(), consumer: self.key, ids }, None);
        self.done(messages.len());
    }
    fn rejected(self: Arc<Self>, messages: Vec<QueuedMessage>) {
        let ids = Self::ids(&messages);
        self.cluster.propose(Command::Discard { queue: self.queue.clone(), consumer: self.key, ids }, None);
        self.done(messages.len());
    }
    fn requeued(self: Arc<Self>, messages: Vec<QueuedMessage>) {
        let ids = Self::ids(&messages);
        self.cluster.propose(Command::Return { queue: self.queue.clone(), consumer: self.key, ids }, None);
        self.done(messages.len());
    }
    fn undelivered(self: Arc<Self>, message: QueuedMessage, _counted_unacked: bool) {
        let ids = vec![message.seq];
        self.cluster.propose(Command::Return { queue: self.queue.clone(), consumer: self.key, ids }, None);
        self.done(1);
    }
    fn sent_no_ack(&self, message: &QueuedMessage) {
        // Written to the client: settled, which makes room for the next (see
        // quorum::UNLIMITED_PREFETCH).
        let ids = vec![message.seq];
        self.cluster.propose(Command::Settle { queue: self.queue.clone(), consumer: self.key, ids }, None);
    }
    fn redispatch(self: Arc<Self>) {}
}
