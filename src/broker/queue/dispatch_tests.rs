//! Model-based tests of dispatch: a queue with consumers that come and go, each with its own
//! credit, driven by random publishes, reads, acks, nacks, rejects, cancels, channel closes
//! and basic.gets, checked after every step against a model of where each message is.
//!
//! The "client" side does what a connection does with the core's types (see
//! `amqp::channel`): it takes a sink's events as its writer would (returning their bytes to
//! the sink), settles a consumer's credit before telling the queue (through [`Origin`], as a
//! channel does), and hands back deliveries that reach a cancelled consumer. The checks:
//! - every message published is in exactly one place: ready in the queue, waiting in a sink,
//!   held unacknowledged by a client, or gone (acked, rejected, or sent with no-ack);
//! - the queue's unacknowledged count is what clients and sinks hold for acknowledgement;
//! - no consumer holds more than its prefetch, no channel more than its own bound;
//! - ready messages stay in priority, then publish order;
//! - a message is marked redelivered exactly when a client has seen it before;
//! - within a priority, each consumer gets first deliveries in publish order;
//! - no stall: while messages are ready, no consumer that could take one (credit, and
//!   nothing waiting in its sink) is left without.

use super::*;
use crate::broker::consumer::{ChannelFlow, ConnectionSink, UnackedLimits};
use crate::broker::vhost::VHost;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// One consumer on a channel of its own, on a connection of its own.
struct Client {
    consumer: Arc<Consumer>,
    sink: Arc<ConnectionSink>,
    /// Deliveries it received and has not settled, in delivery order.
    held: Vec<QueuedMessage>,
    /// Still registered with the queue.
    active: bool,
    /// The last first-time delivery it got, by priority.
    last_first: HashMap<u8, u64>,
}

fn id_of(m: &QueuedMessage) -> u64 {
    u64::from_be_bytes(m.message.body.to_bytes()[..8].try_into().unwrap())
}

fn message(id: u64, size: usize, priority: u8) -> Arc<Message> {
    let mut body = id.to_be_bytes().to_vec();
    body.resize(size.max(8), b'x');
    // Every third message is persistent, for the queue's persistent counts.
    let mut m = Message::new("".into(), "q".into(), Bytes::new(), Bytes::from(body), id % 3 == 0);
    m.priority = priority;
    Arc::new(m)
}

struct Model {
    rng: StdRng,
    q: Arc<Queue>,
    clients: Vec<Client>,
    /// Messages taken with basic.get and not yet settled.
    got: Vec<QueuedMessage>,
    published: u64,
    /// Settled for good: acked, rejected, or delivered with no-ack.
    gone: Vec<u64>,
    /// Ids some client has received (a delivery or a get).
    seen: std::collections::HashSet<u64>,
    /// Ids handed back undelivered by a cancelled consumer: they keep their place (and flag),
    /// so another consumer may get them first-time after later ones.
    returned: std::collections::HashSet<u64>,
    priorities: bool,
    seed: u64,
    step: usize,
}

impl Model {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut args = QueueArguments::default();
        let priorities = rng.gen_bool(0.3);
        if priorities {
            args.max_priority = Some(3);
        }
        args.single_active_consumer = rng.gen_bool(0.2);
        let options = QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            args,
        };
        let q = Queue::new("q".into(), "/", options, None, None, Weak::<VHost>::new());
        Model {
            rng,
            q,
            clients: Vec::new(),
            got: Vec::new(),
            published: 0,
            gone: Vec::new(),
            seen: Default::default(),
            returned: Default::default(),
            priorities,
            seed,
            step: 0,
        }
    }

    fn add_client(&mut self) {
        let n = self.clients.len() as u64;
        let limits = if self.rng.gen_bool(0.3) {
            UnackedLimits { count: self.rng.gen_range(1..6), bytes: u64::MAX }
        } else {
            UnackedLimits::default()
        };
        let sink = ConnectionSink::new(n + 1);
        let consumer = Arc::new(Consumer {
            tag: format!("c{n}").into(),
            channel: 1,
            no_ack: self.rng.gen_bool(0.2),
            exclusive: false,
            arguments: FieldTable::default(),
            priority: if self.rng.gen_bool(0.3) { 1 } else { 0 },
            prefetch: self.rng.gen_range(0..5),
            unacked: Default::default(),
            flow: Arc::new(ChannelFlow::new(limits)),
            sink: sink.clone(),
        });
        self.q.add_consumer(consumer.clone()).unwrap();
        self.clients.push(Client { consumer, sink, held: Vec::new(), active: true, last_first: HashMap::new() });
    }

    fn publish(&mut self) {
        // Mostly small; now and then large enough that a few fill a sink.
        let size = if self.rng.gen_bool(0.05) { 900 * 1024 } else { self.rng.gen_range(8..200) };
        let priority = if self.priorities { self.rng.gen_range(0..5) } else { 0 };
        let p = self.q.publish(message(self.published, size, priority), None).unwrap();
        assert!(!p.rejected);
        self.published += 1;
    }

    /// Checks a message reaching a client, then records that it has seen it.
    fn receive(&mut self, c: usize, m: &QueuedMessage) {
        let (seed, step, id) = (self.seed, self.step, id_of(m));
        assert_eq!(m.redelivered, self.seen.contains(&id), "seed {seed} step {step}: redelivered flag of {id}");
        if !m.redelivered && !self.returned.contains(&id) {
            let last = self.clients[c].last_first.insert(m.priority, id);
            assert!(
                last.is_none_or(|l| l < id),
                "seed {seed} step {step}: {id} after {last:?} at priority {}",
                m.priority
            );
        }
        self.seen.insert(id);
    }

    /// The client's writer takes what its sink holds; its channel handles each delivery.
    fn read(&mut self, c: usize) {
        let events = self.clients[c].sink.take_events();
        for e in events {
            let ConnEvent::Deliver(d) = e else { panic!("seed {}: the queue was not deleted", self.seed) };
            let client = &self.clients[c];
            if !client.active {
                // As Channel::deliver for a cancelled consumer: the credit and the message go back.
                if !d.no_ack {
                    client.consumer.flow.settle(d.item.message.size());
                }
                client.sink.release(d.charge);
                self.returned.insert(id_of(&d.item));
                self.q.clone().undelivered(d.item, !d.no_ack);
                continue;
            }
            client.sink.release(d.charge);
            self.receive(c, &d.item);
            if d.no_ack {
                self.gone.push(id_of(&d.item));
            } else {
                self.clients[c].held.push(d.item);
            }
        }
    }

    /// Takes some of a client's unsettled deliveries back from it, as its channel does.
    fn take_held(&mut self, c: usize) -> Vec<QueuedMessage> {
        let held = &mut self.clients[c].held;
        let n = self.rng.gen_range(0..=held.len());
        let mut taken = Vec::new();
        for _ in 0..n {
            let i = self.rng.gen_range(0..held.len());
            taken.push(held.remove(i));
        }
        for m in &taken {
            self.clients[c].consumer.settle(m.message.size());
        }
        taken
    }

    fn step(&mut self) {
        let c = self.rng.gen_range(0..self.clients.len());
        match self.rng.gen_range(0..100) {
            0..=34 => self.publish(),
            35..=54 => self.read(c),
            55..=69 => {
                let taken = self.take_held(c);
                self.gone.extend(taken.iter().map(id_of));
                self.q.clone().acked(&taken);
            }
            70..=77 => {
                let taken = self.take_held(c);
                self.q.clone().requeued(taken);
            }
            78..=81 => {
                let taken = self.take_held(c);
                self.gone.extend(taken.iter().map(id_of));
                self.q.clone().rejected(taken);
            }
            82..=85 if self.clients[c].active => {
                // basic.cancel: what the client holds stays its to settle.
                let cl = &mut self.clients[c];
                cl.active = false;
                self.q.remove_consumer(cl.sink.connection_id, cl.consumer.channel, &cl.consumer.tag);
            }
            86..=88 => {
                // channel.close: cancel, then everything unsettled goes back.
                let cl = &mut self.clients[c];
                cl.consumer.flow.paused.store(true, Ordering::Release);
                if cl.active {
                    cl.active = false;
                    self.q.remove_consumer(cl.sink.connection_id, cl.consumer.channel, &cl.consumer.tag);
                }
                let held = std::mem::take(&mut cl.held);
                for m in &held {
                    cl.consumer.settle(m.message.size());
                }
                self.q.clone().requeued(held);
            }
            89..=91 if self.clients.len() < 8 => self.add_client(),
            92..=95 => {
                let no_ack = self.rng.gen_bool(0.5);
                if let Some((m, _)) = self.q.get(no_ack) {
                    let id = id_of(&m);
                    assert_eq!(
                        m.redelivered,
                        self.seen.contains(&id),
                        "seed {} step {}: get of {id}",
                        self.seed,
                        self.step
                    );
                    self.seen.insert(id);
                    if no_ack {
                        self.gone.push(id);
                    } else {
                        self.got.push(m);
                    }
                }
            }
            _ => {
                // Settle what basic.get took: ack or requeue.
                if !self.got.is_empty() {
                    let m = self.got.swap_remove(self.rng.gen_range(0..self.got.len()));
                    if self.rng.gen_bool(0.5) {
                        self.gone.push(id_of(&m));
                        self.q.clone().acked(&[m]);
                    } else {
                        self.q.clone().requeued(vec![m]);
                    }
                }
            }
        }
        // Keep at least one consumer, so messages keep flowing.
        if !self.clients.iter().any(|c| c.active) {
            self.add_client();
        }
    }

    fn check(&self) {
        let (seed, step) = (self.seed, self.step);
        let st = self.q.state.lock();
        // Where every message is.
        let mut place: HashMap<u64, &str> = HashMap::new();
        let mut put = |id: u64, at: &'static str| {
            if let Some(before) = place.insert(id, at) {
                panic!("seed {seed} step {step}: message {id} both {before} and {at}");
            }
        };
        for m in &st.ready {
            put(id_of(m), "ready");
        }
        let mut owed = 0;
        // (count, bytes) of what is out unacked, and of its persistent messages.
        let mut out_bytes = 0u64;
        let mut out_persistent = (0u64, 0u64);
        let mut owe = |m: &QueuedMessage| {
            out_bytes += m.message.body.len() as u64;
            if m.message.persistent {
                out_persistent.0 += 1;
                out_persistent.1 += m.message.body.len() as u64;
            }
        };
        for c in &self.clients {
            let mut waiting_unacked = 0;
            c.sink.waiting_events(|events| {
                for e in events {
                    if let ConnEvent::Deliver(d) = e {
                        put(id_of(&d.item), "in a sink");
                        waiting_unacked += usize::from(!d.no_ack);
                        if !d.no_ack {
                            owe(&d.item);
                        }
                    }
                }
            });
            for m in &c.held {
                put(id_of(m), "held");
                owe(m);
            }
            owed += waiting_unacked + c.held.len();
            // A consumer's count is what it was sent minus what it settled: its waiting and
            // held deliveries (a cancelled one may still be sent nothing new).
            if c.active {
                assert_eq!(
                    c.consumer.unacked.load(Ordering::Acquire) as usize,
                    waiting_unacked + c.held.len(),
                    "seed {seed} step {step}: {} unacked count",
                    c.consumer.tag
                );
            }
            let prefetch = c.consumer.prefetch;
            assert!(
                prefetch == 0 || c.consumer.no_ack || c.consumer.unacked.load(Ordering::Acquire) <= prefetch,
                "seed {seed} step {step}: {} over its prefetch of {prefetch}",
                c.consumer.tag
            );
            let flow = &c.consumer.flow;
            assert!(
                flow.unacked.load(Ordering::Acquire) <= flow.limits.count,
                "seed {seed} step {step}: {} over its channel's bound",
                c.consumer.tag
            );
        }
        for m in &self.got {
            put(id_of(m), "got");
            owe(m);
        }
        owed += self.got.len();
        for &id in &self.gone {
            put(id, "gone");
        }
        assert_eq!(place.len() as u64, self.published, "seed {seed} step {step}: messages lost");
        assert_eq!(st.unacked, owed, "seed {seed} step {step}: the queue's unacked count");
        assert_eq!(st.unacked_bytes, out_bytes, "seed {seed} step {step}: the queue's unacked bytes");
        assert_eq!(st.persistent_unacked, out_persistent, "seed {seed} step {step}: persistent unacked");
        let ready_persistent = st
            .ready
            .iter()
            .filter(|m| m.message.persistent)
            .fold((0, 0), |(n, b), m| (n + 1, b + m.message.body.len() as u64));
        assert_eq!(st.persistent_ready, ready_persistent, "seed {seed} step {step}: persistent ready");
        // Priority, then publish order.
        assert!(
            st.ready.iter().zip(st.ready.iter().skip(1)).all(|(a, b)| a.order() < b.order()),
            "seed {seed} step {step}: ready messages out of order"
        );
        // No stall: a consumer that could take a message has been given one.
        if !st.ready.is_empty() {
            let eligible =
                if self.q.options.args.single_active_consumer { st.consumers.len().min(1) } else { st.consumers.len() };
            for consumer in &st.consumers[..eligible] {
                let idle = consumer.sink.waiting_events(|e| e.is_empty());
                assert!(
                    !(idle && consumer.has_credit()),
                    "seed {seed} step {step}: {} has credit and nothing to write, with {} ready",
                    consumer.tag,
                    st.ready.len()
                );
            }
        }
    }
}

#[test]
fn dispatch_loses_nothing_keeps_order_and_credit_and_never_stalls() {
    for seed in 0..200u64 {
        let mut model = Model::new(seed);
        for _ in 0..model.rng.gen_range(1..4) {
            model.add_client();
        }
        for step in 0..600 {
            model.step = step;
            model.step();
            model.check();
        }
        // Drain: clients read and ack everything until the queue is empty.
        for round in 0..10_000 {
            model.step = 600 + round;
            for c in 0..model.clients.len() {
                model.read(c);
                let held = std::mem::take(&mut model.clients[c].held);
                for m in &held {
                    model.clients[c].consumer.settle(m.message.size());
                }
                model.gone.extend(held.iter().map(id_of));
                model.q.clone().acked(&held);
            }
            for m in std::mem::take(&mut model.got) {
                model.gone.push(id_of(&m));
                model.q.settle(&[m]);
            }
            model.q.dispatch();
            model.check();
            if model.gone.len() as u64 == model.published {
                break;
            }
        }
        assert_eq!(model.gone.len() as u64, model.published, "seed {seed}: not drained");
    }
}
