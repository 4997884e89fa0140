//! The per-connection state MQTT's acknowledgements need, without I/O: packet identifiers
//! of deliveries in flight to the client (QoS 1, until its PUBACK), identifiers of the
//! client's QoS 2 publishes between PUBREC and PUBREL (so a resent one is not routed twice),
//! the client's publishes whose acknowledgement waits for the disk or the cluster, and the
//! topic aliases an MQTT 5 client set.
//!
//! Generic over what a delivery in flight carries, so the model-based test below runs it
//! without a broker.

use super::codec::reason;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// A reply that waits until what it acknowledges is safe: a PUBACK or PUBREC for a publish
/// routed to durable queues, a SUBACK for queues and bindings that must outlive a crash.
/// Sent once the group commit passes `ticket` and the cluster resolves `cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAck {
    pub ticket: u64,
    pub cluster: u64,
    /// The encoded reply (and for a SUBACK, the retained messages that follow it).
    pub reply: bytes::Bytes,
}

#[derive(Debug)]
pub struct Session<T> {
    inflight: BTreeMap<u16, T>,
    next_id: u16,
    awaiting_release: HashSet<u16>,
    pending_acks: VecDeque<PendingAck>,
    aliases: HashMap<u16, String>,
    /// The largest topic alias the client may use (what CONNACK announced; 0 for none).
    pub alias_max: u16,
}

impl<T> Session<T> {
    pub fn new(alias_max: u16) -> Self {
        Session {
            inflight: BTreeMap::new(),
            next_id: 1,
            awaiting_release: HashSet::new(),
            pending_acks: VecDeque::new(),
            aliases: HashMap::new(),
            alias_max,
        }
    }

    /// A packet identifier for a delivery, not used by one still in flight; None when all
    /// 65,535 are (the caller's receive maximum keeps far below that).
    pub fn track(&mut self, delivery: T) -> Result<u16, T> {
        if self.inflight.len() >= u16::MAX as usize {
            return Err(delivery);
        }
        loop {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            if let std::collections::btree_map::Entry::Vacant(e) = self.inflight.entry(id) {
                e.insert(delivery);
                return Ok(id);
            }
        }
    }

    /// The client acknowledged `id`: what was in flight under it, if anything was.
    pub fn acked(&mut self, id: u16) -> Option<T> {
        self.inflight.remove(&id)
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Everything still in flight, in packet identifier order (the connection ends).
    pub fn take_in_flight(&mut self) -> Vec<T> {
        std::mem::take(&mut self.inflight).into_values().collect()
    }

    /// A QoS 2 publish with `id` arrived: true when it is new (route it), false when it is
    /// the client's resend of one not yet released (answer PUBREC again, route nothing).
    pub fn received_qos2(&mut self, id: u16) -> bool {
        self.awaiting_release.insert(id)
    }

    /// PUBREL for `id`: true when it was awaited (PUBCOMP with success), else PUBCOMP with
    /// "packet identifier not found".
    pub fn released(&mut self, id: u16) -> bool {
        self.awaiting_release.remove(&id)
    }

    pub fn push_ack(&mut self, ack: PendingAck) {
        self.pending_acks.push_back(ack);
    }

    pub fn waits_for_acks(&self) -> bool {
        !self.pending_acks.is_empty()
    }

    /// The publishes now safe to acknowledge, in the order they came: their tickets are at
    /// or below `durable` and their cluster proposals at or below `resolved`.
    pub fn ready_acks(&mut self, durable: u64, resolved: u64) -> Vec<PendingAck> {
        let mut out = Vec::new();
        while let Some(a) = self.pending_acks.front() {
            if a.ticket > durable || a.cluster > resolved {
                break;
            }
            out.extend(self.pending_acks.pop_front());
        }
        out
    }

    /// The topic of a PUBLISH, with MQTT 5's topic alias: a topic with an alias sets it, an
    /// empty topic with an alias uses it. Err is the reason code to disconnect with.
    pub fn resolve_topic(&mut self, topic: String, alias: Option<u16>) -> Result<String, u8> {
        let Some(alias) = alias else {
            return if topic.is_empty() { Err(reason::PROTOCOL_ERROR) } else { Ok(topic) };
        };
        if alias == 0 || alias > self.alias_max {
            return Err(reason::TOPIC_ALIAS_INVALID);
        }
        if topic.is_empty() {
            return self.aliases.get(&alias).cloned().ok_or(reason::PROTOCOL_ERROR);
        }
        self.aliases.insert(alias, topic.clone());
        Ok(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random tracks, acks, QoS 2 receipts and releases against plain maps: identifiers in
    /// flight are never 0 and never handed out twice, an ack returns what was tracked under
    /// its identifier, a QoS 2 identifier is routed once until released.
    #[test]
    fn model_of_random_operations() {
        let seeds: u64 = std::env::var("HARE_MQTT_SESSION_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
        for seed in 0..seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut s: Session<u64> = Session::new(4);
            let mut model: HashMap<u16, u64> = HashMap::new();
            let mut qos2: HashSet<u16> = HashSet::new();
            let mut aliases: HashMap<u16, String> = HashMap::new();
            for step in 0..2_000u64 {
                let ctx = format!("seed {seed} step {step} (HARE_MQTT_SESSION_SEEDS replays)");
                match rng.gen_range(0..6) {
                    0 | 1 => {
                        let id = s.track(step).unwrap_or_else(|_| panic!("{ctx}: no identifier"));
                        assert_ne!(id, 0, "{ctx}");
                        assert!(model.insert(id, step).is_none(), "{ctx}: {id} handed out twice");
                    }
                    2 => {
                        let id = if rng.gen_bool(0.8) && !model.is_empty() {
                            *model.keys().nth(rng.gen_range(0..model.len())).unwrap()
                        } else {
                            rng.gen_range(1..=u16::MAX)
                        };
                        assert_eq!(s.acked(id), model.remove(&id), "{ctx}: ack of {id}");
                    }
                    3 => {
                        let id = rng.gen_range(1..20);
                        assert_eq!(s.received_qos2(id), qos2.insert(id), "{ctx}: QoS 2 receipt of {id}");
                    }
                    4 => {
                        let id = rng.gen_range(1..20);
                        assert_eq!(s.released(id), qos2.remove(&id), "{ctx}: release of {id}");
                    }
                    _ => {
                        let alias = rng.gen_range(0..6u16);
                        let topic =
                            if rng.gen_bool(0.5) { String::new() } else { format!("t/{}", rng.gen_range(0..3)) };
                        let want = if alias == 0 || alias > 4 {
                            Err(reason::TOPIC_ALIAS_INVALID)
                        } else if topic.is_empty() {
                            aliases.get(&alias).cloned().ok_or(reason::PROTOCOL_ERROR)
                        } else {
                            aliases.insert(alias, topic.clone());
                            Ok(topic.clone())
                        };
                        assert_eq!(s.resolve_topic(topic, Some(alias)), want, "{ctx}: alias {alias}");
                    }
                }
                assert_eq!(s.in_flight(), model.len(), "{ctx}");
            }
            let mut rest = s.take_in_flight();
            rest.sort();
            let mut want: Vec<u64> = model.into_values().collect();
            want.sort();
            assert_eq!(rest, want, "seed {seed}: what was left in flight");
        }
    }

    #[test]
    fn identifiers_wrap_and_skip_those_in_flight() {
        let mut s: Session<()> = Session::new(0);
        let first = s.track(()).unwrap();
        assert_eq!(first, 1);
        for _ in 2..=u16::MAX {
            s.track(()).unwrap();
        }
        assert!(s.track(()).is_err(), "all 65,535 in flight");
        s.acked(7);
        assert_eq!(s.track(()).ok(), Some(7));
    }

    #[test]
    fn acknowledgements_wait_for_the_disk_and_the_cluster_in_order() {
        let mut s: Session<()> = Session::new(0);
        for (id, ticket, cluster) in [(1u8, 5, 0), (2, 3, 0), (3, 9, 2)] {
            s.push_ack(PendingAck { ticket, cluster, reply: bytes::Bytes::from(vec![id]) });
        }
        assert!(s.ready_acks(4, 0).is_empty(), "the first waits, and the rest behind it");
        assert_eq!(s.ready_acks(5, 0).iter().map(|a| a.reply[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert!(s.ready_acks(10, 1).is_empty());
        assert_eq!(s.ready_acks(10, 2).len(), 1);
        assert!(!s.waits_for_acks());
    }
}
