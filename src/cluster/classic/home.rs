//! A classic queue's home: what it does for the other nodes of the cluster.
//!
//! Each node that asks gets a [`Proxy`]: a connection sink of its own, as a client
//! connection has one, through which this node's queues hand out deliveries for that node's
//! consumers. The consumers are ordinary consumers of the real queue (with their prefetch),
//! so dispatch, priorities, single active consumer and flow control are the queue's own. The
//! node takes what waits in the sink when it polls, and its polls carry back what became of
//! earlier deliveries, by the ids they were sent with. A node that stops polling for
//! [`POLL_SILENCE`] is gone: its consumers are removed and what they held is requeued.

use super::{no_queue, Enqueued, Got, Op, RemoteDelivery, Reply, Settle, Wire, POLL_SILENCE};
use crate::broker::audit::Actor;
use crate::broker::consumer::{ChannelFlow, ConnEvent, ConnectionSink, Consumer, Origin};
use crate::broker::message::QueuedMessage;
use crate::broker::queue::Queue;
use crate::broker::replicated::{DefinitionChange, Refusal};
use crate::broker::store::table_from_hex;
use crate::broker::Broker;
use crate::cluster::types::QueueName;
use crate::types::ShortStr;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The channel number proxy consumers carry (each proxy is a connection of its own).
const CHANNEL: u16 = 1;

/// A delivery sent to another node, until it settles it.
struct Out {
    origin: Arc<dyn Origin>,
    item: QueuedMessage,
    /// The consumer it went to (None: a basic.get).
    key: Option<u64>,
}

#[derive(Default)]
struct ProxyState {
    consumers: HashMap<u64, (Arc<Consumer>, Arc<Queue>)>,
    out: HashMap<u64, Out>,
    next_id: u64,
}

/// Another node, as this node's queues see it.
struct Proxy {
    node: String,
    sink: Arc<ConnectionSink>,
    state: Mutex<ProxyState>,
    last_poll: Mutex<Instant>,
}

impl Proxy {
    fn tag(&self, key: u64) -> ShortStr {
        ShortStr::from(format!("{key}@{}", self.node))
    }
}

/// The key a proxy consumer's tag carries.
fn key_of(tag: &str) -> Option<u64> {
    tag.split('@').next()?.parse().ok()
}

/// What this node serves as the home of classic queues.
pub struct Home {
    broker: Arc<Broker>,
    durable: Option<watch::Receiver<u64>>,
    proxies: Mutex<HashMap<String, Arc<Proxy>>>,
}

impl Home {
    pub fn new(broker: Arc<Broker>, durable: Option<watch::Receiver<u64>>) -> Arc<Home> {
        Arc::new(Home { broker, durable, proxies: Mutex::new(HashMap::new()) })
    }

    fn proxy(&self, node: &str) -> Arc<Proxy> {
        let mut proxies = self.proxies.lock();
        proxies
            .entry(node.to_string())
            .or_insert_with(|| {
                Arc::new(Proxy {
                    node: node.to_string(),
                    sink: ConnectionSink::new(self.broker.next_id()),
                    state: Mutex::new(ProxyState::default()),
                    last_poll: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// The queue this node holds for the cluster under that name.
    fn held(&self, queue: &QueueName) -> Result<Arc<Queue>, Refusal> {
        self.broker
            .vhost(&queue.vhost)
            .and_then(|v| v.replicated_queue(&queue.name))
            .filter(|q| q.replica.is_none())
            .ok_or_else(|| no_queue(queue))
    }

    fn actor(user: &str) -> Actor {
        Actor { user: Arc::from(user), source: None, via: "cluster", connection: Actor::NO_CONNECTION }
    }

    async fn durable(&self, ticket: u64) {
        if let (Some(mut w), true) = (self.durable.clone(), ticket != 0) {
            let _ = w.wait_for(|d| *d >= ticket).await;
        }
    }

    /// Serves one request of node `from`.
    pub async fn serve(&self, from: &str, op: Op) -> Reply {
        match op {
            Op::Publish { messages } => Reply::Published(self.publish(messages).await),
            Op::Consume { key, queue, prefetch, no_ack, exclusive, priority, arguments } => {
                let proxy = self.proxy(from);
                let done = self.held(&queue).and_then(|q| {
                    let consumer = Arc::new(Consumer {
                        tag: proxy.tag(key),
                        channel: CHANNEL,
                        no_ack,
                        exclusive,
                        arguments: table_from_hex(&arguments).unwrap_or_default(),
                        priority,
                        prefetch,
                        unacked: Default::default(),
                        flow: Arc::new(ChannelFlow::default()),
                        sink: proxy.sink.clone(),
                    });
                    q.add_consumer(consumer.clone()).map_err(Refusal::from)?;
                    proxy.state.lock().consumers.insert(key, (consumer, q));
                    Ok(())
                });
                Reply::Done(done)
            }
            Op::Cancel { key } => {
                let proxy = self.proxy(from);
                let found = proxy.state.lock().consumers.remove(&key);
                if let Some((c, q)) = found {
                    self.remove_consumer(&c, &q).await;
                }
                Reply::Done(Ok(()))
            }
            Op::Settle { settles } => {
                let proxy = self.proxy(from);
                self.settle(&proxy, settles);
                Reply::Done(Ok(()))
            }
            Op::Poll { keys, wait_ms, deliveries } => {
                let proxy = self.proxy(from);
                *proxy.last_poll.lock() = Instant::now();
                let wait_ms = if deliveries { wait_ms } else { 0 };
                let (deliveries, cancelled) = self.poll(&proxy, keys, wait_ms, deliveries).await;
                *proxy.last_poll.lock() = Instant::now();
                Reply::Deliveries { deliveries, cancelled }
            }
            Op::Get { queue, no_ack } => {
                let proxy = self.proxy(from);
                let got = self.held(&queue).map(|q| {
                    let (item, remaining) = q.get(no_ack)?;
                    let message = Wire::of(&item.message);
                    let redelivered = item.redelivered;
                    let mut st = proxy.state.lock();
                    st.next_id += 1;
                    let id = st.next_id;
                    if !no_ack {
                        st.out.insert(id, Out { origin: q.clone() as Arc<dyn Origin>, item, key: None });
                    }
                    Some(Got { id, message, redelivered, remaining })
                });
                Reply::Got(got)
            }
            Op::Purge { queue } => Reply::Count(self.held(&queue).map(|q| q.purge())),
            Op::Delete { queue, if_unused, if_empty, user } => {
                Reply::Count(self.delete(&queue, if_unused, if_empty, &user).await)
            }
            Op::Counts { queues } => Reply::Counts(
                queues
                    .iter()
                    .map(|n| match self.held(n) {
                        Ok(q) => {
                            let (ready, consumers) = q.counts();
                            (ready, q.unacked_count() as u32, consumers)
                        }
                        Err(_) => (0, 0, 0),
                    })
                    .collect(),
            ),
        }
    }

    /// Enqueues forwarded publishes; answers once those the queues logged are on disk.
    async fn publish(&self, messages: Vec<(QueueName, Wire)>) -> Vec<Enqueued> {
        let mut ticket = 0;
        let failing = self.broker.storage_failure().is_some();
        let outcomes = messages
            .into_iter()
            .map(|(name, wire)| {
                let Ok(q) = self.held(&name) else { return Enqueued::Failed };
                if failing && wire.persistent {
                    return Enqueued::Failed;
                }
                match q.publish(Arc::new(wire.message()), None) {
                    Ok(p) if p.rejected => Enqueued::Rejected,
                    Ok(p) => {
                        ticket = ticket.max(p.ticket);
                        Enqueued::Ok
                    }
                    Err(_) => Enqueued::Failed,
                }
            })
            .collect();
        self.durable(ticket).await;
        outcomes
    }

    /// Applies what became of deliveries, in the order they were told.
    fn settle(&self, proxy: &Proxy, settles: Vec<(u64, Settle)>) {
        if settles.is_empty() {
            return;
        }
        let outs: Vec<(Out, Settle, Option<Arc<Consumer>>)> = {
            let mut st = proxy.state.lock();
            settles
                .into_iter()
                .filter_map(|(id, how)| {
                    let out = st.out.remove(&id)?;
                    let consumer = out.key.and_then(|k| st.consumers.get(&k).map(|(c, _)| c.clone()));
                    Some((out, how, consumer))
                })
                .collect()
        };
        for (out, how, consumer) in outs {
            if let Some(c) = consumer {
                c.settle(out.item.message.size());
            }
            match how {
                Settle::Ack => out.origin.acked(std::slice::from_ref(&out.item)),
                Settle::Reject => out.origin.rejected(vec![out.item]),
                Settle::Requeue => out.origin.requeued(vec![out.item]),
                Settle::Undelivered => out.origin.undelivered(out.item, true),
            }
        }
    }

    /// The deliveries waiting for the node's consumers (waiting up to `wait_ms` for the first),
    /// and which of `keys` this node has no consumer for (any more).
    async fn poll(&self, proxy: &Proxy, keys: Vec<u64>, wait_ms: u64, take: bool) -> (Vec<RemoteDelivery>, Vec<u64>) {
        if !take {
            let st = proxy.state.lock();
            return (Vec::new(), keys.into_iter().filter(|k| !st.consumers.contains_key(k)).collect());
        }
        let events = {
            let mut events = proxy.sink.take_events();
            if events.is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(wait_ms), proxy.sink.notified()).await;
                events = proxy.sink.take_events();
            }
            events
        };
        let mut deliveries = Vec::with_capacity(events.len());
        let mut cancelled = Vec::new();
        let mut released = 0;
        {
            let mut st = proxy.state.lock();
            for e in events {
                match e {
                    ConnEvent::Deliver(d) => {
                        released += d.charge;
                        let Some(key) = key_of(&d.consumer_tag) else { continue };
                        st.next_id += 1;
                        let id = st.next_id;
                        deliveries.push(RemoteDelivery {
                            key,
                            id,
                            message: Wire::of(&d.item.message),
                            redelivered: d.item.redelivered,
                        });
                        if let Some(origin) = d.queue {
                            if d.no_ack {
                                origin.sent_no_ack(&d.item);
                            } else {
                                st.out.insert(id, Out { origin, item: d.item, key: Some(key) });
                            }
                        }
                    }
                    ConnEvent::ConsumerCancelled { consumer_tag, .. } => {
                        if let Some(key) = key_of(&consumer_tag) {
                            st.consumers.remove(&key);
                            cancelled.push(key);
                        }
                    }
                }
            }
            let unknown: Vec<u64> =
                keys.into_iter().filter(|k| !st.consumers.contains_key(k) && !cancelled.contains(k)).collect();
            cancelled.extend(unknown);
        }
        proxy.sink.release(released);
        (deliveries, cancelled)
    }

    /// Removes a proxy consumer; deletes an auto-delete queue it was the last consumer of.
    async fn remove_consumer(&self, c: &Consumer, q: &Arc<Queue>) {
        if q.remove_consumer(c.connection_id(), c.channel, &c.tag) {
            if let Some(v) = self.broker.vhost(&q.vhost) {
                let id = q.placement();
                v.force_delete_queue(q, &Self::actor("cluster"));
                self.unplace(&q.vhost, &q.name, id).await;
            }
        }
    }

    /// Proposes the end of a placement and waits until it is applied here.
    async fn unplace(&self, vhost: &str, name: &str, id: u64) -> Option<Refusal> {
        let host = self.broker.quorum_host()?.clone();
        let ticket =
            host.propose_definition(DefinitionChange::UnplaceQueue { vhost: vhost.into(), name: name.into(), id });
        let mut resolved = host.resolved();
        let _ = resolved.wait_for(|r| *r >= ticket || host.is_resolved(ticket)).await;
        host.take_refusal(ticket)
    }

    async fn delete(&self, queue: &QueueName, if_unused: bool, if_empty: bool, user: &str) -> Result<u32, Refusal> {
        let q = self.held(queue)?;
        let v = self.broker.vhost(&queue.vhost).ok_or_else(|| no_queue(queue))?;
        let name = ShortStr::from(queue.name.as_str());
        let id = q.placement();
        let (count, ticket) = v.delete_queue(&name, if_unused, if_empty, &Self::actor(user)).map_err(Refusal::from)?;
        self.durable(ticket).await;
        match self.unplace(&queue.vhost, &queue.name, id).await {
            Some(r) => Err(r),
            None => Ok(count),
        }
    }

    /// Drops the consumers of nodes that stopped polling, and requeues what they held.
    pub async fn sweep(&self) {
        let silent: Vec<String> = self
            .proxies
            .lock()
            .iter()
            .filter(|(_, p)| p.last_poll.lock().elapsed() > POLL_SILENCE)
            .map(|(n, _)| n.clone())
            .collect();
        for node in silent {
            self.drop_node(&node).await;
        }
    }

    /// Forgets node `node`: its consumers are removed and what they held is requeued.
    async fn drop_node(&self, node: &str) {
        let Some(p) = self.proxies.lock().remove(node) else { return };
        let (consumers, outs) = {
            let mut st = p.state.lock();
            (std::mem::take(&mut st.consumers), std::mem::take(&mut st.out))
        };
        if !consumers.is_empty() || !outs.is_empty() {
            tracing::warn!(
                "cluster: node {} stopped polling its consumers: {} removed, {} deliveries requeued",
                p.node,
                consumers.len(),
                outs.len()
            );
        }
        for (_, (c, q)) in consumers {
            self.remove_consumer(&c, &q).await;
        }
        for (_, out) in outs {
            out.origin.requeued(vec![out.item]);
        }
        for e in p.sink.take_events() {
            if let ConnEvent::Deliver(d) = e {
                p.sink.return_undelivered(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::vhost::QueueDeclaration;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn a_proxy_consumer_s_tag_gives_its_key_back() {
        assert_eq!(super::key_of("42@n2"), Some(42));
        assert_eq!(super::key_of("x@n2"), None);
    }

    fn wire(body: &str) -> Wire {
        Wire {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: bytes::Bytes::from_static(b"\x00\x00"),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            persistent: false,
        }
    }

    /// What the model holds of one delivery out with a node: its body and consumer.
    type Held = HashMap<(String, u64), (String, Option<u64>)>;

    /// Random publishes, consumers (prefetch, no-ack), cancels, polls, settlements of every
    /// kind, gets and nodes going silent, from two nodes, against a model of which messages
    /// are alive and which are out: nothing is delivered that is not alive or is out already,
    /// no consumer holds past its prefetch, and at the end what is left is exactly what the
    /// model says, each once.
    #[tokio::test]
    async fn the_home_hands_out_each_message_once_until_it_is_settled() {
        for seed in 0..40u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let broker = Arc::new(Broker::new());
            let vhost = broker.vhost("/").expect("the default vhost");
            let decl = QueueDeclaration {
                name: ShortStr::from("q"),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: Default::default(),
            };
            let (q, ..) = vhost.declare_queue(&decl, &Home::actor("test")).expect("declared");
            q.set_placement(1);
            let queue = QueueName { vhost: "/".into(), name: "q".into() };
            let home = Home::new(broker.clone(), None);
            let nodes = ["a", "b"];
            let mut alive: BTreeSet<String> = BTreeSet::new();
            let mut held: Held = HashMap::new();
            // Active consumers: (node, key) to (prefetch, no_ack).
            let mut consumers: HashMap<(String, u64), (u32, bool)> = HashMap::new();
            // Every consumer there was, and whether it was no-ack.
            let mut ever: HashMap<(String, u64), bool> = HashMap::new();
            let mut next = 0u64;
            for step in 0..300 {
                let node = nodes[rng.gen_range(0..2)].to_string();
                let ctx = format!("seed {seed} step {step}");
                match rng.gen_range(0..9) {
                    0 | 1 => {
                        let n = rng.gen_range(1..6);
                        let messages: Vec<(QueueName, Wire)> = (0..n)
                            .map(|_| {
                                next += 1;
                                alive.insert(format!("m{next}"));
                                (queue.clone(), wire(&format!("m{next}")))
                            })
                            .collect();
                        let Reply::Published(o) = home.serve(&node, Op::Publish { messages }).await else {
                            panic!("{ctx}: publish answered otherwise")
                        };
                        assert!(o.iter().all(|e| *e == Enqueued::Ok), "{ctx}");
                    }
                    2 => {
                        next += 1;
                        let (prefetch, no_ack) = (rng.gen_range(0..4), rng.gen_bool(0.2));
                        let op = Op::Consume {
                            key: next,
                            queue: queue.clone(),
                            prefetch,
                            no_ack,
                            exclusive: false,
                            priority: 0,
                            arguments: String::new(),
                        };
                        let Reply::Done(Ok(())) = home.serve(&node, op).await else { panic!("{ctx}: consume refused") };
                        consumers.insert((node.clone(), next), (prefetch, no_ack));
                        ever.insert((node.clone(), next), no_ack);
                    }
                    3 => {
                        let mine: Vec<u64> = consumers.keys().filter(|(n, _)| *n == node).map(|(_, k)| *k).collect();
                        if let Some(&key) = mine.get(rng.gen_range(0..mine.len().max(1))) {
                            home.serve(&node, Op::Cancel { key }).await;
                            consumers.remove(&(node.clone(), key));
                        }
                    }
                    4 | 5 => {
                        let keys: Vec<u64> = consumers.keys().filter(|(n, _)| *n == node).map(|(_, k)| *k).collect();
                        let op = Op::Poll { keys, wait_ms: 0, deliveries: true };
                        let Reply::Deliveries { deliveries, .. } = home.serve(&node, op).await else {
                            panic!("{ctx}: poll answered otherwise")
                        };
                        for d in deliveries {
                            let body = String::from_utf8_lossy(&d.message.body).into_owned();
                            assert!(alive.contains(&body), "{ctx}: {body} delivered but not alive");
                            assert!(!held.values().any(|(b, _)| *b == body), "{ctx}: {body} out twice");
                            let no_ack =
                                *ever.get(&(node.clone(), d.key)).expect("a delivery for a consumer there was");
                            if no_ack {
                                alive.remove(&body);
                            } else {
                                held.insert((node.clone(), d.id), (body, Some(d.key)));
                            }
                        }
                        for ((n, key), (prefetch, no_ack)) in &consumers {
                            let out = held.iter().filter(|((hn, _), (_, k))| hn == n && *k == Some(*key)).count();
                            assert!(*no_ack || *prefetch == 0 || out <= *prefetch as usize, "{ctx}: past prefetch");
                        }
                    }
                    6 => {
                        let mine: Vec<(String, u64)> = held.keys().filter(|(n, _)| *n == node).cloned().collect();
                        let mut settles: Vec<(u64, Settle)> = Vec::new();
                        for (_, id) in &mine {
                            if rng.gen_bool(0.6) {
                                let kinds = [Settle::Ack, Settle::Reject, Settle::Requeue, Settle::Undelivered];
                                settles.push((*id, kinds[rng.gen_range(0..4)]));
                            }
                        }
                        for (id, how) in &settles {
                            let (body, _) = held.remove(&(node.clone(), *id)).expect("held");
                            if matches!(how, Settle::Ack | Settle::Reject) {
                                alive.remove(&body);
                            }
                        }
                        home.serve(&node, Op::Settle { settles }).await;
                    }
                    7 => {
                        let no_ack = rng.gen_bool(0.5);
                        let Reply::Got(Ok(got)) = home.serve(&node, Op::Get { queue: queue.clone(), no_ack }).await
                        else {
                            panic!("{ctx}: get refused")
                        };
                        if let Some(g) = got {
                            let body = String::from_utf8_lossy(&g.message.body).into_owned();
                            assert!(alive.contains(&body), "{ctx}: {body} got but not alive");
                            assert!(!held.values().any(|(b, _)| *b == body), "{ctx}: {body} out twice");
                            if no_ack {
                                alive.remove(&body);
                            } else {
                                held.insert((node.clone(), g.id), (body, None));
                            }
                        }
                    }
                    _ => {
                        // The node goes silent: its consumers go, what it held comes back.
                        home.drop_node(&node).await;
                        held.retain(|(n, _), _| *n != node);
                        consumers.retain(|(n, _), _| *n != node);
                    }
                }
            }
            // The end: both nodes gone, then the queue emptied by gets; what comes is exactly
            // what the model has alive, each once.
            for node in nodes {
                home.drop_node(node).await;
            }
            let mut left = BTreeSet::new();
            for _ in 0..=alive.len() {
                let Reply::Got(Ok(Some(g))) = home.serve("c", Op::Get { queue: queue.clone(), no_ack: true }).await
                else {
                    break;
                };
                assert!(left.insert(String::from_utf8_lossy(&g.message.body).into_owned()), "seed {seed}: twice");
            }
            assert_eq!(left, alive, "seed {seed}");
        }
    }
}
