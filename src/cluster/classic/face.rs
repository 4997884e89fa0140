//! A classic queue's face on a node that does not hold it, and the [`Link`] to each home.
//!
//! - Publishes routed to a face wait in the link's outbox; one task sends them to the home a
//!   batch at a time (all that came while the previous batch was out) and resolves their
//!   tickets with the home's answers, out of order with the node's Raft proposals (see
//!   the node's ticket window): a publisher's confirm waits for its ticket as for a quorum queue's.
//! - Consumers of a face are registered at the home; while a link has consumers, one task
//!   polls the home for their deliveries and hands each to its consumer's connection as a
//!   local queue would (not while those connections have as much waiting as they may).
//! - Acks, rejects and requeues, consumers' registrations and cancels, gets, purges and
//!   deletes go through one task in the order they were asked (settlements gathered into one
//!   request); counts go on their own. All use a small pool of connections to the home.

use super::{Enqueued, Op, Reply, Settle, Wire, HOME_SILENCE, POLL_WAIT_MS};
use crate::broker::consumer::{ConnEvent, Consumer, Delivery, NoOrigin, Origin};
use crate::broker::error::AmqpResult;
use crate::broker::message::QueuedMessage;
use crate::broker::queue::replica::Replica;
use crate::broker::queue::Queue;
use crate::broker::replicated::Refusal;
use crate::broker::store::table_to_hex;
use crate::cluster::node::Cluster;
use crate::cluster::transport::{Peer, Request, Response};
use crate::cluster::types::{node_id, QueueName};
use crate::types::ShortStr;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bytes a delivery is charged to its connection's sink beyond the message.
const DELIVERY_OVERHEAD: usize = 64;
/// A request to a home that has not answered within this long has failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept to each home for requests other than publishes and polls.
const POOL: usize = 4;
/// A face's counts are asked of the home again once they are older than this.
const COUNTS_AGE: Duration = Duration::from_secs(1);
/// After a failed poll, publish or settlement, the next try waits this long.
const RETRY: Duration = Duration::from_millis(100);
/// A publish request carries at most this many messages, or about this many bytes.
const BATCH_MESSAGES: usize = 4096;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Publishes waiting for a home past this many bytes (all homes together) pause their
/// publishers until half of it is sent: a slow or unreachable home does not make this node
/// buffer without bound.
const OUTBOX_HIGH: usize = 64 * 1024 * 1024;

/// One of this node's consumers of a queue another node holds.
struct Remote {
    queue: QueueName,
    consumer: Arc<Consumer>,
    /// The home answered its registration (before, a poll does not name it).
    registered: bool,
}

/// This node's links to the homes of the classic queues it has faces of.
pub struct Faces {
    /// The node, once started (faces are made earlier, as its log is applied again at start;
    /// they reach their homes once it runs).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    me: Weak<Faces>,
    /// Bytes of publishes waiting in every link's outbox, and the publishers paused by them.
    outbox_bytes: Arc<std::sync::atomic::AtomicUsize>,
    waiters: Arc<Mutex<Vec<Arc<Notify>>>>,
}

impl Faces {
    pub fn new() -> Arc<Faces> {
        Arc::new_cyclic(|me| Faces {
            cluster: std::sync::OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            me: me.clone(),
            outbox_bytes: Default::default(),
            waiters: Default::default(),
        })
    }

    /// Whether publishes wait past [`OUTBOX_HIGH`]; if so, `waiter` is notified once they are
    /// below half of it.
    pub fn backlogged(&self, waiter: &Arc<Notify>) -> bool {
        if self.outbox_bytes.load(Ordering::Acquire) < OUTBOX_HIGH {
            return false;
        }
        let mut w = self.waiters.lock();
        if !w.iter().any(|x| Arc::ptr_eq(x, waiter)) {
            w.push(waiter.clone());
        }
        true
    }

    /// Connects the faces to their started node.
    pub fn attach(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The link to node `home` (made on first use; none before the node started).
    pub fn link(&self, home: &str) -> Option<Arc<Link>> {
        let cluster = self.cluster.get()?.clone();
        let mut links = self.links.lock();
        let link = links
            .entry(home.to_string())
            .or_insert_with(|| {
                let (control, requests) = tokio::sync::mpsc::unbounded_channel();
                let link = Arc::new_cyclic(|me| Link {
                    home: home.to_string(),
                    cluster: cluster.clone(),
                    me: me.clone(),
                    outbox: Mutex::new(Vec::new()),
                    publish_wake: Notify::new(),
                    consumers: Mutex::new(HashMap::new()),
                    settles: Mutex::new(Vec::new()),
                    polling: AtomicBool::new(false),
                    next_key: AtomicU64::new(1),
                    pool: Mutex::new(Vec::new()),
                    control,
                    flush_asked: AtomicBool::new(false),
                    outbox_bytes: self.outbox_bytes.clone(),
                    waiters: self.waiters.clone(),
                });
                tokio::spawn(publish_loop(link.clone()));
                tokio::spawn(control_loop(Arc::downgrade(&link), requests));
                link
            })
            .clone();
        Some(link)
    }

    /// The replica of a face of `name`, held by `home`.
    pub fn face(&self, vhost: &str, name: &str, home: &str) -> Arc<dyn Replica> {
        Arc::new(RemoteQueue {
            name: QueueName { vhost: vhost.into(), name: name.into() },
            home: home.to_string(),
            faces: self.me.clone(),
            counts: Arc::new(Mutex::new((None, (0, 0, 0)))),
            refreshing: Arc::new(AtomicBool::new(false)),
            got: Arc::new(Mutex::new(HashMap::new())),
        })
    }
}

/// The way to one home.
pub struct Link {
    home: String,
    cluster: Arc<Cluster>,
    me: Weak<Link>,
    /// Publishes waiting to be sent: (ticket, queue, message).
    outbox: Mutex<Vec<(u64, QueueName, Wire)>>,
    publish_wake: Notify,
    consumers: Mutex<HashMap<u64, Remote>>,
    /// What became of deliveries, for the control task to tell before its next request.
    settles: Mutex<Vec<(u64, Settle)>>,
    /// A poll task runs.
    polling: AtomicBool,
    next_key: AtomicU64,
    pool: Mutex<Vec<Peer>>,
    /// Requests sent in order by one task, settlements first (a cancel never overtakes its
    /// consume; a get comes after the requeues asked before it).
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    /// A `Control::Settle` is queued and not yet taken (so one is queued at a time).
    flush_asked: AtomicBool,
    /// The node's outbox bytes and paused publishers (shared with [`Faces`]).
    outbox_bytes: Arc<std::sync::atomic::AtomicUsize>,
    waiters: Arc<Mutex<Vec<Arc<Notify>>>>,
}

/// What to do with a request's answer.
type Then = Box<dyn FnOnce(Result<Reply, String>) + Send>;

/// What the ordered control task is asked: a request, or to send the settlements.
enum Control {
    Request(Op, Then),
    Settle,
}

impl Link {
    /// One request to the home, over a pooled connection.
    async fn call(&self, op: Op, ttl: Duration) -> Result<Reply, String> {
        let addr =
            self.cluster.address_of(node_id(&self.home)).ok_or_else(|| format!("no address of {}", self.home))?;
        let pooled = self.pool.lock().pop().filter(|p| p.addr == addr);
        let request = Request::Classic(op);
        let answer = match pooled {
            Some(mut peer) => match peer.call(&request, ttl).await {
                // A pooled connection the home closed meanwhile (it restarted, say): once
                // more on a fresh one.
                Err(_) => {
                    let mut fresh = Peer::new(addr, self.cluster.net.clone());
                    let answer = fresh.call(&request, ttl).await;
                    (fresh, answer)
                }
                answer => (peer, answer),
            },
            None => {
                let mut fresh = Peer::new(addr, self.cluster.net.clone());
                let answer = fresh.call(&request, ttl).await;
                (fresh, answer)
            }
        };
        let (peer, answer) = answer;
        match answer {
            Ok(Response::Classic(reply)) => {
                let mut pool = self.pool.lock();
                if pool.len() < POOL {
                    pool.push(peer);
                }
                Ok(reply)
            }
            Ok(_) => Err("unexpected response".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs a request in the background; `then` gets its answer (or why it failed).
    fn spawn(&self, op: Op, then: impl FnOnce(Result<Reply, String>) + Send + 'static) {
        let Some(link) = self.me.upgrade() else { return };
        tokio::spawn(async move { then(link.call(op, CALL_TIMEOUT).await) });
    }

    /// Queues a request behind the earlier ones (and the settlements asked before it).
    fn control(&self, op: Op, then: impl FnOnce(Result<Reply, String>) + Send + 'static) {
        let _ = self.control.send(Control::Request(op, Box::new(then)));
    }

    fn settle(&self, messages: impl IntoIterator<Item = u64>, how: Settle) {
        self.settles.lock().extend(messages.into_iter().map(|id| (id, how)));
        if !self.flush_asked.swap(true, Ordering::AcqRel) {
            let _ = self.control.send(Control::Settle);
        }
    }

    /// Starts the poll task if it is not running.
    fn start_polling(&self) {
        if !self.polling.swap(true, Ordering::AcqRel) {
            if let Some(link) = self.me.upgrade() {
                tokio::spawn(poll_loop(link));
            }
        }
    }

    /// Hands a delivery to its consumer here; one whose consumer went is told back.
    fn deliver(self: &Arc<Self>, d: super::RemoteDelivery) {
        let consumer = self.consumers.lock().get(&d.key).map(|r| r.consumer.clone());
        let Some(c) = consumer else {
            self.settle([d.id], Settle::Undelivered);
            return;
        };
        let item = QueuedMessage {
            seq: d.id,
            redelivered: d.redelivered,
            ..QueuedMessage::unqueued(Arc::new(d.message.message()))
        };
        let size = item.message.size();
        c.charge_unacked(size);
        c.sink.send(ConnEvent::Deliver(Delivery {
            channel: c.channel,
            consumer_tag: c.tag.clone(),
            queue: Some(Arc::new(RemoteOrigin { link: self.clone() }) as Arc<dyn Origin>),
            item,
            no_ack: c.no_ack,
            charge: size + DELIVERY_OVERHEAD,
        }));
    }

    /// Tells consumers here that their queue (or its home) is gone: basic.cancel.
    fn cancel(&self, keys: &[u64]) {
        let gone: Vec<Remote> = {
            let mut consumers = self.consumers.lock();
            keys.iter().filter_map(|k| consumers.remove(k)).collect()
        };
        for r in gone {
            let c = &r.consumer;
            tracing::info!("cluster: consumer '{}' of queue '{}' on node {} cancelled", c.tag, r.queue.name, self.home);
            c.sink.send(ConnEvent::ConsumerCancelled { channel: c.channel, consumer_tag: c.tag.clone() });
        }
    }
}

/// Sends settlements, consumers' registrations and cancels, and gets, in the order they
/// were asked: before each request, every settlement asked earlier (a requeued message is back
/// for the get that follows it).
async fn control_loop(link: Weak<Link>, mut requests: tokio::sync::mpsc::UnboundedReceiver<Control>) {
    let mut failing_since: Option<Instant> = None;
    while let Some(request) = requests.recv().await {
        let Some(l) = link.upgrade() else { return };
        loop {
            l.flush_asked.store(false, Ordering::Release);
            let settles = std::mem::take(&mut *l.settles.lock());
            if settles.is_empty() {
                break;
            }
            match l.call(Op::Settle { settles: settles.clone() }, CALL_TIMEOUT).await {
                Ok(_) => failing_since = None,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > HOME_SILENCE {
                        // The home is gone: what its deliveries became no longer matters
                        // (it requeues what a node that stopped polling held).
                        tracing::debug!("cluster: settlements for node {} dropped: {e}", l.home);
                        break;
                    }
                    l.settles.lock().splice(0..0, settles);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        if let Control::Request(op, then) = request {
            let reply = l.call(op, CALL_TIMEOUT).await;
            drop(l);
            then(reply);
        }
    }
}

/// Sends the outbox to the home a batch at a time and resolves the publishers' tickets.
async fn publish_loop(link: Arc<Link>) {
    loop {
        let batch: Vec<(u64, QueueName, Wire)> = {
            let mut outbox = link.outbox.lock();
            // At most a bounded batch per request; the rest goes with the next.
            let (mut n, mut bytes) = (0, 0);
            while n < outbox.len() && n < BATCH_MESSAGES && bytes < BATCH_BYTES {
                bytes += weight(&outbox[n].2);
                n += 1;
            }
            outbox.drain(..n).collect()
        };
        if batch.is_empty() {
            link.publish_wake.notified().await;
            continue;
        }
        let bytes: usize = batch.iter().map(|(_, _, m)| weight(m)).sum();
        let (tickets, messages): (Vec<u64>, Vec<(QueueName, Wire)>) =
            batch.into_iter().map(|(t, q, m)| (t, (q, m))).unzip();
        let outcomes = match link.call(Op::Publish { messages }, CALL_TIMEOUT).await {
            Ok(Reply::Published(o)) if o.len() == tickets.len() => o,
            other => {
                // Whether the home enqueued them is unknown: nacked, so their publishers
                // may send them again (at least once).
                tracing::warn!("cluster: {} publishes to node {} failed: {other:?}", tickets.len(), link.home);
                tokio::time::sleep(RETRY).await;
                vec![Enqueued::Failed; tickets.len()]
            }
        };
        link.cluster.settle_tickets(tickets.into_iter().zip(outcomes).map(|(t, o)| (t, o != Enqueued::Ok)));
        let before = link.outbox_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if before.saturating_sub(bytes) < OUTBOX_HIGH / 2 {
            let waiters = std::mem::take(&mut *link.waiters.lock());
            waiters.iter().for_each(|w| w.notify_one());
        }
    }
}

/// What a publish weighs in an outbox.
fn weight(m: &Wire) -> usize {
    m.body.len() + m.properties.len() + m.exchange.len() + m.routing_key.len() + 64
}

/// Polls the home for this node's consumers' deliveries while there are consumers; cancels
/// them once the home has not answered for [`HOME_SILENCE`].
async fn poll_loop(link: Arc<Link>) {
    let mut failing_since: Option<Instant> = None;
    loop {
        let (keys, any, room): (Vec<u64>, bool, bool) = {
            let consumers = link.consumers.lock();
            (
                consumers.iter().filter(|(_, r)| r.registered).map(|(k, _)| *k).collect(),
                !consumers.is_empty(),
                consumers.values().all(|r| r.consumer.sink.has_capacity()),
            )
        };
        if !any {
            link.polling.store(false, Ordering::Release);
            // A consumer may have come between the look and the flag.
            if !link.consumers.lock().is_empty() && !link.polling.swap(true, Ordering::AcqRel) {
                continue;
            }
            return;
        }
        if keys.is_empty() {
            // Consumers whose registration is on its way.
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let op = Op::Poll { keys: keys.clone(), wait_ms: POLL_WAIT_MS, deliveries: room };
        match link.call(op, CALL_TIMEOUT + Duration::from_millis(POLL_WAIT_MS)).await {
            Ok(Reply::Deliveries { deliveries, cancelled }) => {
                failing_since = None;
                for d in deliveries {
                    link.deliver(d);
                }
                link.cancel(&cancelled);
                if !room {
                    // Client connections with as much waiting as they may: their deliveries
                    // wait at the home until they drain.
                    tokio::time::sleep(RETRY).await;
                }
            }
            other => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > HOME_SILENCE {
                    tracing::warn!(
                        "cluster: node {} does not answer ({other:?}): its queues' consumers here are cancelled",
                        link.home
                    );
                    link.cancel(&keys);
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Counts as the home last gave them (ready, unacknowledged, consumers), and when.
type Counted = (Option<Instant>, (u32, u32, u32));
/// A basic.get's message and the ready count after it.
type Got = (QueuedMessage, u32);

/// Keeps the counts a `Counts` answer for one queue gives.
fn counted(cell: &Mutex<Counted>, reply: &Reply) {
    if let Reply::Counts(c) = reply {
        if let Some(c) = c.first() {
            *cell.lock() = (Some(Instant::now()), *c);
        }
    }
}

/// A face's replica: what it is asked goes to the home.
#[derive(Debug)]
struct RemoteQueue {
    name: QueueName,
    home: String,
    faces: Weak<Faces>,
    /// The counts the home last gave, and when.
    counts: Arc<Mutex<Counted>>,
    refreshing: Arc<AtomicBool>,
    /// basic.get answers, by ticket, until their channels take them.
    got: Arc<Mutex<HashMap<u64, Option<Got>>>>,
}

impl std::fmt::Debug for Faces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faces").finish_non_exhaustive()
    }
}

impl RemoteQueue {
    fn link(&self) -> Option<Arc<Link>> {
        self.faces.upgrade()?.link(&self.home)
    }

    /// A ticket resolved by a request's answer: with the refusal it carried, if any. `then`
    /// sees the answer first (None: the home did not answer).
    fn request(&self, op: Op, then: impl FnOnce(u64, Option<&Reply>) + Send + 'static) -> u64 {
        let Some(link) = self.link() else { return 0 };
        let cluster = link.cluster.clone();
        let ticket = cluster.take_ticket();
        let (home, name) = (self.home.clone(), self.name.clone());
        link.control(op, move |reply| {
            let refusal = match &reply {
                Ok(r) => {
                    then(ticket, Some(r));
                    match r {
                        Reply::Done(Err(e)) | Reply::Got(Err(e)) | Reply::Count(Err(e)) => Some(e.clone()),
                        _ => None,
                    }
                }
                Err(e) => {
                    then(ticket, None);
                    tracing::debug!("cluster: node {} did not answer: {e}", home);
                    // RabbitMQ's answer for a queue whose node is down.
                    Some(Refusal {
                        code: crate::types::constants::NOT_FOUND,
                        text: format!(
                            "home node '{home}' of durable queue '{}' in vhost '{}' is down or inaccessible",
                            name.name, name.vhost
                        ),
                        connection: false,
                    })
                }
            };
            cluster.settle_ticket(ticket, false, refusal);
        });
        ticket
    }
}

impl Replica for RemoteQueue {
    fn publish(&self, message: &Arc<crate::broker::message::Message>) -> u64 {
        let Some(link) = self.link() else { return 0 };
        let ticket = link.cluster.take_ticket();
        let wire = Wire::of(message);
        link.outbox_bytes.fetch_add(weight(&wire), Ordering::AcqRel);
        let was_empty = {
            let mut outbox = link.outbox.lock();
            outbox.push((ticket, self.name.clone(), wire));
            outbox.len() == 1
        };
        if was_empty {
            link.publish_wake.notify_one();
        }
        ticket
    }

    fn add_consumer(&self, _queue: &Arc<Queue>, consumer: Arc<Consumer>) -> AmqpResult<u64> {
        let Some(link) = self.link() else { return Ok(0) };
        let key = link.next_key.fetch_add(1, Ordering::Relaxed);
        let op = Op::Consume {
            key,
            queue: self.name.clone(),
            prefetch: consumer.prefetch,
            no_ack: consumer.no_ack,
            exclusive: consumer.exclusive,
            priority: consumer.priority,
            arguments: table_to_hex(&consumer.arguments),
        };
        link.consumers.lock().insert(key, Remote { queue: self.name.clone(), consumer, registered: false });
        let weak = link.me.clone();
        // The consume-ok waits for the home's answer; a refusal (exclusive use, say, or no
        // answer: the home is down) closes the channel with it, as RabbitMQ's home node's
        // answer does. The consumer is also cancelled here (basic.cancel), which the channel
        // sends only for a consume with nowait (no consume-ok to hold).
        let ticket = self.request(op, move |_, reply| {
            let Some(link) = weak.upgrade() else { return };
            match reply {
                Some(Reply::Done(Ok(()))) => {
                    if let Some(r) = link.consumers.lock().get_mut(&key) {
                        r.registered = true;
                    }
                    link.start_polling();
                }
                other => {
                    tracing::info!("cluster: a consumer of node {}'s queue was refused: {other:?}", link.home);
                    link.cancel(&[key]);
                }
            }
        });
        Ok(ticket)
    }

    fn remove_consumer(&self, connection_id: u64, channel: u16, tag: &ShortStr) {
        let Some(link) = self.link() else { return };
        let found = {
            let mut consumers = link.consumers.lock();
            let key = consumers
                .iter()
                .find(|(_, r)| r.queue == self.name && r.consumer.is(connection_id, channel, tag))
                .map(|(k, _)| *k);
            key.and_then(|k| consumers.remove(&k).map(|_| k))
        };
        if let Some(key) = found {
            link.control(Op::Cancel { key }, |_| {});
        }
    }

    fn consumers(&self) -> Vec<Arc<Consumer>> {
        let Some(link) = self.link() else { return Vec::new() };
        let consumers = link.consumers.lock();
        consumers.values().filter(|r| r.queue == self.name).map(|r| r.consumer.clone()).collect()
    }

    fn counts(&self) -> (u32, u32, u32) {
        let (at, counts) = *self.counts.lock();
        let stale = at.is_none_or(|t| t.elapsed() > COUNTS_AGE);
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            let refreshing = self.refreshing.clone();
            match self.link() {
                Some(link) => {
                    // Answered from the last counts now; the home's come for the next ask.
                    let cell = self.counts.clone();
                    link.spawn(Op::Counts { queues: vec![self.name.clone()] }, move |reply| {
                        if let Ok(reply) = reply {
                            counted(&cell, &reply);
                        }
                        refreshing.store(false, Ordering::Release);
                    });
                }
                None => refreshing.store(false, Ordering::Release),
            }
        }
        counts
    }

    fn purge(&self) -> u32 {
        let ready = self.counts().0;
        if let Some(link) = self.link() {
            link.control(Op::Purge { queue: self.name.clone() }, |_| {});
        }
        ready
    }

    fn get(&self, no_ack: bool) -> (u64, Arc<dyn Origin>) {
        let Some(link) = self.link() else {
            return (0, Arc::new(NoOrigin));
        };
        let got = self.got.clone();
        let ticket = self.request(Op::Get { queue: self.name.clone(), no_ack }, move |ticket, reply| {
            if let Some(Reply::Got(Ok(answer))) = reply {
                let answer = answer.as_ref().map(|g| {
                    let item = QueuedMessage {
                        seq: g.id,
                        redelivered: g.redelivered,
                        ..QueuedMessage::unqueued(Arc::new(g.message.message()))
                    };
                    (item, g.remaining)
                });
                got.lock().insert(ticket, answer);
            }
        });
        (ticket, Arc::new(RemoteOrigin { link }))
    }

    fn take_got(&self, ticket: u64) -> Option<(QueuedMessage, u32)> {
        self.got.lock().remove(&ticket).flatten()
    }

    fn home(&self) -> Option<&str> {
        Some(&self.home)
    }

    fn refresh(&self) -> u64 {
        let cell = self.counts.clone();
        self.request(Op::Counts { queues: vec![self.name.clone()] }, move |_, reply| {
            if let Some(reply) = reply {
                counted(&cell, reply);
            }
        })
    }

    fn delete(&self, if_unused: bool, if_empty: bool, user: &str) -> u64 {
        let op = Op::Delete { queue: self.name.clone(), if_unused, if_empty, user: user.to_string() };
        self.request(op, |_, _| {})
    }
}

/// Where a channel settles deliveries of a face's queue: the home, through the link's ordered
/// requests.
#[derive(Debug)]
struct RemoteOrigin {
    link: Arc<Link>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("home", &self.home).finish_non_exhaustive()
    }
}

impl Origin for RemoteOrigin {
    fn acked(self: Arc<Self>, messages: &[QueuedMessage]) {
        self.link.settle(messages.iter().map(|m| m.seq), Settle::Ack);
    }
    fn rejected(self: Arc<Self>, messages: Vec<QueuedMessage>) {
        self.link.settle(messages.iter().map(|m| m.seq), Settle::Reject);
    }
    fn requeued(self: Arc<Self>, messages: Vec<QueuedMessage>) {
        self.link.settle(messages.iter().map(|m| m.seq), Settle::Requeue);
    }
    fn undelivered(self: Arc<Self>, message: QueuedMessage, _counted_unacked: bool) {
        self.link.settle([message.seq], Settle::Undelivered);
    }
    /// The home settled it when it sent it (a no-ack consumer's).
    fn sent_no_ack(&self, _message: &QueuedMessage) {}
    fn redispatch(self: Arc<Self>) {}
}
