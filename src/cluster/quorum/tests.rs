//! Model-based tests of the quorum queue's state machine: random commands, and after each the
//! state checked against a plain model of where every message is (ready, held by which
//! consumer, settled, dead-lettered), plus the rules of dispatch: a consumer never holds more
//! than its prefetch, no message is with two consumers, new messages go out in enqueue order,
//! and nothing stays ready while a consumer has credit.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

fn msg(n: u64) -> Msg {
    Msg {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: Bytes::new(),
        body: Bytes::from(n.to_be_bytes().to_vec()),
        ttl: None,
    }
}

fn body_of(m: &Msg) -> u64 {
    u64::from_be_bytes(m.body[..8].try_into().unwrap())
}

#[derive(Default)]
struct Model {
    /// Message (by body number) -> where it is.
    ready: BTreeSet<u64>,
    held: HashMap<ConsumerKey, BTreeSet<u64>>,
    prefetch: HashMap<ConsumerKey, u32>,
    active: BTreeSet<ConsumerKey>,
    /// Returns so far, and whether it went out before.
    returns: HashMap<u64, u32>,
    delivered: BTreeSet<u64>,
    settled: BTreeSet<u64>,
    dead: BTreeSet<u64>,
    /// The highest never-returned message handed out so far (enqueue order).
    last_new: Option<u64>,
    /// id (the queue's) -> body number.
    ids: HashMap<u64, u64>,
    /// Released by a consumer's node, never sent: out again ahead of newer ones.
    released: BTreeSet<u64>,
}

impl Model {
    fn apply(&mut self, fx: Vec<Effect>, limit: Option<u64>) {
        for e in fx {
            match e {
                Effect::Deliver { consumer, id, msg, redelivered, delivery_count } => {
                    let n = body_of(&msg);
                    assert!(self.ready.remove(&n), "message {n} delivered but not ready");
                    assert!(self.active.contains(&consumer), "delivery to a consumer that is not consuming");
                    assert_eq!(redelivered, self.delivered.contains(&n), "redelivered flag of {n}");
                    assert_eq!(delivery_count, self.returns.get(&n).copied().unwrap_or(0), "delivery count of {n}");
                    if delivery_count == 0 && !redelivered && !self.released.remove(&n) {
                        assert!(self.last_new.is_none_or(|l| l < n), "new message {n} out of enqueue order");
                        self.last_new = Some(n);
                    }
                    self.delivered.insert(n);
                    self.ids.insert(id, n);
                    let held = self.held.entry(consumer).or_default();
                    held.insert(n);
                    let p = self.prefetch[&consumer];
                    assert!(p == 0 || held.len() as u32 <= p, "consumer holds more than its prefetch");
                }
                Effect::DeadLetter { msg, reason, delivery_count } => {
                    let n = body_of(&msg);
                    match reason {
                        Reason::DeliveryLimit => {
                            assert!(limit.is_some_and(|l| delivery_count as u64 > l));
                        }
                        Reason::Rejected => {}
                        other => panic!("unexpected reason {other:?}"),
                    }
                    self.dead.insert(n);
                }
            }
        }
    }
}

fn check(q: &QuorumQueue, m: &Model) {
    assert_eq!(q.ready_count() as usize, m.ready.len(), "ready count");
    let held: usize = m.held.values().map(BTreeSet::len).sum();
    assert_eq!(q.unacked_count() as usize, held, "unacked count");
    // Work-conserving: nothing ready while a consuming consumer has credit.
    if !m.ready.is_empty() {
        for c in &m.active {
            let p = m.prefetch[c];
            let h = m.held.get(c).map_or(0, BTreeSet::len) as u32;
            assert!(p != 0 && h >= p, "consumer {c:?} has credit while {} messages are ready", m.ready.len());
        }
    }
    // Nothing is in two places.
    let mut seen = BTreeSet::new();
    for set in m.held.values().chain([&m.ready, &m.settled, &m.dead]) {
        for n in set {
            assert!(seen.insert(*n), "message {n} is in two places");
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let limit = if rng.gen_bool(0.3) { Some(rng.gen_range(0..3)) } else { None };
    let settings = Settings { delivery_limit: limit, dead_letters: true, ..Default::default() };
    let mut q = QuorumQueue::new(settings);
    let mut m = Model::default();
    let mut next = 0u64;
    let consumers: Vec<ConsumerKey> = (0..4).map(|i| (i % 2, i)).collect();
    for _ in 0..steps {
        let mut fx = Vec::new();
        let c = consumers[rng.gen_range(0..consumers.len())];
        match rng.gen_range(0..10) {
            0..=2 => {
                let n = next;
                next += 1;
                assert_eq!(q.enqueue(msg(n), 0, &mut fx), Outcome::Ok);
                m.ready.insert(n);
            }
            3 if !m.active.contains(&c) => {
                let p = rng.gen_range(0..4);
                m.prefetch.insert(c, p);
                m.active.insert(c);
                // With acks or without, a consumer holds what it is given until settled.
                q.checkout(c, p, rng.gen_bool(0.3), 0, &mut fx);
            }
            4 => {
                m.active.remove(&c);
                q.cancel(c, 0, &mut fx);
            }
            5..=7 => {
                // Settle, return or discard some of what c holds (ids as the queue knows them).
                let held: Vec<u64> = m.held.get(&c).map(|h| h.iter().copied().collect()).unwrap_or_default();
                let pick: Vec<u64> = held.into_iter().filter(|_| rng.gen_bool(0.6)).collect();
                let ids: Vec<u64> = m.ids.iter().filter(|(_, n)| pick.contains(n)).map(|(id, _)| *id).collect();
                for n in &pick {
                    m.held.get_mut(&c).unwrap().remove(n);
                }
                match rng.gen_range(0..4) {
                    0 => {
                        m.settled.extend(&pick);
                        q.settle(c, &ids, 0, &mut fx);
                    }
                    1 => {
                        for n in &pick {
                            *m.returns.entry(*n).or_default() += 1;
                            if limit.is_none_or(|l| m.returns[n] as u64 <= l) {
                                m.ready.insert(*n);
                            }
                        }
                        q.return_(c, &ids, 0, &mut fx);
                    }
                    2 => {
                        // Never sent to the client: back as they were.
                        for n in &pick {
                            if m.returns.get(n).copied().unwrap_or(0) == 0 {
                                m.delivered.remove(n);
                            }
                            m.released.insert(*n);
                            m.ready.insert(*n);
                        }
                        q.release(c, &ids, 0, &mut fx);
                    }
                    _ => {
                        q.discard(c, &ids, 0, &mut fx);
                    }
                }
            }
            8 => {
                // The consumer's channel closed: what it held comes back.
                let held = m.held.remove(&c).unwrap_or_default();
                for n in held {
                    *m.returns.entry(n).or_default() += 1;
                    if limit.is_none_or(|l| m.returns[&n] as u64 <= l) {
                        m.ready.insert(n);
                    }
                }
                m.active.remove(&c);
                q.down(c.0, Some(c.1), 0, &mut fx);
            }
            _ => {
                let get = (9, 9);
                m.prefetch.insert(get, 0);
                let out = q.dequeue(get, true, 0, &mut fx);
                if let Outcome::Got(Some((_, msg, redelivered, count)), _) = out {
                    let n = body_of(&msg);
                    assert!(m.ready.remove(&n), "basic.get of {n}, which is not ready");
                    assert_eq!(redelivered, m.delivered.contains(&n));
                    assert_eq!(count, m.returns.get(&n).copied().unwrap_or(0));
                    m.delivered.insert(n);
                    m.settled.insert(n);
                } else {
                    assert!(m.ready.is_empty(), "basic.get found nothing while {} were ready", m.ready.len());
                }
            }
        }
        // Discards and over-limit returns dead-letter: the model learns which from the effects.
        let dead_before = m.dead.clone();
        m.apply(fx, limit);
        for n in m.dead.difference(&dead_before) {
            m.ready.remove(n);
        }
        check(&q, &m);
    }
    // Everything enqueued is somewhere.
    let held: usize = m.held.values().map(BTreeSet::len).sum();
    assert_eq!(m.ready.len() + held + m.settled.len() + m.dead.len(), next as usize, "seed {seed}: a message is lost");
}

#[test]
fn random_commands_keep_every_message_in_exactly_one_place() {
    for seed in 0..300 {
        let r = std::panic::catch_unwind(|| run(seed, 300));
        assert!(r.is_ok(), "quorum queue model: seed {seed} fails (run(seed, 300) replays it)");
    }
}

#[test]
fn replaying_the_same_commands_gives_the_same_state() {
    // Determinism: two replicas applying one log agree, through a serialized snapshot too.
    let mut a = QuorumQueue::new(Settings { max_length: Some(5), dead_letters: true, ..Default::default() });
    let mut fx = Vec::new();
    for n in 0..20 {
        a.enqueue(msg(n), n, &mut fx);
    }
    a.checkout((1, 1), 2, false, 30, &mut fx);
    let copy: QuorumQueue = bincode::deserialize(&bincode::serialize(&a).unwrap()).unwrap();
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    let mut b = copy;
    for q in [&mut a, &mut b] {
        let fx = if fa.is_empty() { &mut fa } else { &mut fb };
        q.return_((1, 1), &[15, 16], 40, fx);
        q.enqueue(msg(99), 41, fx);
        q.settle((1, 1), &[17], 42, fx);
    }
    assert_eq!(fa, fb);
    assert_eq!((a.ready_count(), a.unacked_count()), (b.ready_count(), b.unacked_count()));
}

#[test]
fn drop_head_dead_letters_the_oldest_and_reject_publish_refuses() {
    let mut q = QuorumQueue::new(Settings { max_length: Some(2), dead_letters: true, ..Default::default() });
    let mut fx = Vec::new();
    for n in 0..3 {
        assert_eq!(q.enqueue(msg(n), 0, &mut fx), Outcome::Ok);
    }
    assert_eq!(q.ready_count(), 2);
    assert!(matches!(&fx[..], [Effect::DeadLetter { reason: Reason::MaxLen, msg, .. }] if body_of(msg) == 0));
    let mut q =
        QuorumQueue::new(Settings { max_length: Some(1), overflow: Overflow::RejectPublish, ..Default::default() });
    assert_eq!(q.enqueue(msg(0), 0, &mut fx), Outcome::Ok);
    assert_eq!(q.enqueue(msg(1), 0, &mut fx), Outcome::Rejected);
    assert_eq!(q.ready_count(), 1);
}

#[test]
fn ttl_expires_the_head_at_the_stamped_time() {
    let mut q = QuorumQueue::new(Settings { message_ttl: Some(100), dead_letters: true, ..Default::default() });
    let mut fx = Vec::new();
    q.enqueue(msg(0), 1000, &mut fx);
    q.enqueue(Msg { ttl: Some(10), ..msg(1) }, 1050, &mut fx);
    assert_eq!(q.next_expiry(), Some(1100));
    q.expire(1099, &mut fx);
    assert_eq!(q.ready_count(), 2);
    q.expire(1100, &mut fx);
    // The first expired; the second (expired at 1060) went with it once it was the head.
    assert_eq!(q.ready_count(), 0);
    assert_eq!(fx.iter().filter(|e| matches!(e, Effect::DeadLetter { reason: Reason::Expired, .. })).count(), 2);
}

#[test]
fn single_active_consumer_serves_the_first_until_it_cancels() {
    let mut q = QuorumQueue::new(Settings { single_active_consumer: true, ..Default::default() });
    let mut fx = Vec::new();
    q.checkout((1, 1), 0, false, 0, &mut fx);
    q.checkout((2, 1), 0, false, 0, &mut fx);
    for n in 0..3 {
        q.enqueue(msg(n), 0, &mut fx);
    }
    assert!(fx.iter().all(|e| matches!(e, Effect::Deliver { consumer: (1, 1), .. })));
    fx.clear();
    q.cancel((1, 1), 0, &mut fx);
    q.enqueue(msg(3), 0, &mut fx);
    assert!(matches!(&fx[..], [Effect::Deliver { consumer: (2, 1), .. }]));
}

#[test]
fn new_settings_from_a_policy_drop_from_the_head_and_apply_to_later_enqueues() {
    let mut q = QuorumQueue::new(Settings { dead_letters: true, ..Default::default() });
    let mut fx = Vec::new();
    for n in 0..5 {
        assert_eq!(q.enqueue(msg(n), 0, &mut fx), Outcome::Ok);
    }
    assert!(fx.is_empty());
    // A lowered max-length with drop-head: the two newest stay, the others are dead letters.
    q.set_settings(Settings { max_length: Some(2), dead_letters: true, ..Default::default() }, 0, &mut fx);
    let dead: Vec<u64> = fx
        .drain(..)
        .map(|e| match e {
            Effect::DeadLetter { msg, reason: Reason::MaxLen, .. } => body_of(&msg),
            other => panic!("unexpected effect {other:?}"),
        })
        .collect();
    assert_eq!((dead, q.ready_count()), (vec![0, 1, 2], 2));
    // With reject-publish nothing is dropped, and a publish past the limit is refused.
    let reject = Settings { max_length: Some(1), overflow: Overflow::RejectPublish, ..Default::default() };
    q.set_settings(reject, 0, &mut fx);
    assert!(fx.is_empty() && q.ready_count() == 2);
    assert_eq!(q.enqueue(msg(9), 0, &mut fx), Outcome::Rejected);
    // A TTL applies to what is enqueued from then on.
    q.set_settings(Settings { message_ttl: Some(10), ..Default::default() }, 0, &mut fx);
    q.enqueue(msg(10), 100, &mut fx);
    q.expire(111, &mut fx);
    assert_eq!(q.ready_count(), 3, "the older messages do not expire; the new one waits behind them");
}

#[test]
fn released_messages_go_out_first_as_if_never_delivered() {
    let mut q = QuorumQueue::new(Settings { delivery_limit: Some(0), ..Default::default() });
    let mut fx = Vec::new();
    for n in 0..4 {
        q.enqueue(msg(n), 0, &mut fx);
    }
    let a = (1, 1);
    q.checkout(a, 2, false, 0, &mut fx);
    let ids: Vec<u64> = fx
        .drain(..)
        .map(|e| match e {
            Effect::Deliver { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 2);
    // Released, not returned: a delivery limit of 0 does not dead-letter them.
    q.cancel(a, 0, &mut fx);
    q.release(a, &ids, 0, &mut fx);
    assert_eq!(q.ready_count(), 4);
    q.checkout((2, 1), 3, false, 0, &mut fx);
    let got: Vec<(u64, bool, u32)> = fx
        .drain(..)
        .map(|e| match e {
            Effect::Deliver { msg, redelivered, delivery_count, .. } => (body_of(&msg), redelivered, delivery_count),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(0, false, 0), (1, false, 0), (2, false, 0)]);
}
