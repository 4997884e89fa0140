//! The holding queue of a delayed-message exchange (see `broker::exchange::delayed`): where
//! a message that asked for a delay waits, ordered by when it is due. It is a `Queue` so that
//! routing and publishing treat it as any other destination (confirms wait for its log, the
//! disk's backlog slows its publishers), but it is in no vhost's list of queues: nothing
//! consumes from it. The vhost's timers (every 20 ms) release what is due, through the
//! exchange's bindings as they are then.
//!
//! A durable delayed exchange keeps its held messages in a queue log, each with its due time
//! as the record's expiry, so they survive a restart (those that fell due while the broker was
//! down go out at the first tick). A released message's record is acked only once the queues
//! it reached have it on disk: a crash in between sends it again rather than losing it.
//!
//! Held messages stay in memory, as the plugin keeps them in a memory table; the memory alarm
//! counts them and blocks publishers past the limit.

use super::{Published, Queue, QueueOptions, QueueOwner};
use crate::broker::exchange::delayed::delay_of;
use crate::broker::message::Message;
use crate::broker::store::{MessageLog, RecoveredQueue, Storage, StoreError};
use crate::types::ShortStr;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};

/// A delayed exchange's held messages.
#[derive(Debug)]
pub struct DelayStore {
    /// The exchange the messages are routed through when due.
    pub exchange: ShortStr,
    /// The log's id in the data directory, for a durable exchange.
    pub log_id: Option<String>,
    state: Mutex<DelayState>,
    /// The group commit's progress, for a durable exchange (see `settle_durable`).
    storage: Option<Arc<dyn Storage>>,
}

#[derive(Debug, Default)]
struct DelayState {
    log: Option<Box<dyn MessageLog>>,
    next_seq: u64,
    /// By (due time in ms since the epoch, seq): the earliest first, ties in publish order.
    due: BTreeMap<(u64, u64), Arc<Message>>,
    /// Released messages (group-commit ticket of their copies, seq) whose records are acked
    /// once that ticket is durable.
    releasing: VecDeque<(u64, u64)>,
}

impl DelayStore {
    /// A store for `exchange`: with `log`, a durable one (its recovered messages held again).
    pub fn new(
        exchange: ShortStr,
        log: Option<(RecoveredQueue, String)>,
        storage: Option<Arc<dyn Storage>>,
    ) -> DelayStore {
        let mut st = DelayState::default();
        let mut log_id = None;
        if let Some((recovered, id)) = log {
            st.next_seq = recovered.next_seq;
            for m in recovered.messages {
                st.due.insert((m.expires_at, m.seq), m.message);
            }
            st.log = Some(recovered.log);
            log_id = Some(id);
        }
        let storage = storage.filter(|_| st.log.is_some());
        DelayStore { exchange, log_id, state: Mutex::new(st), storage }
    }

    /// Holds `message` until `due` (ms since the epoch). A durable store writes it to its log
    /// first; a persistent message's confirm waits for that.
    pub fn hold(&self, message: Arc<Message>, due: u64) -> Result<Published, StoreError> {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        let mut published = Published::default();
        if let Some(log) = st.log.as_mut() {
            let ticket = log.append(seq, &message, due, false)?;
            published.ticket = if message.persistent { ticket } else { 0 };
            published.logged = true;
        }
        st.next_seq += 1;
        st.due.insert((due, seq), message);
        Ok(published)
    }

    /// Holds a message published to the exchange, until the delay its `x-delay` header asks
    /// for (routing sent it here only with one).
    pub fn hold_published(&self, message: Arc<Message>) -> Result<Published, StoreError> {
        let props = crate::types::BasicProperties::decode(message.properties.clone()).ok();
        let delay = delay_of(props.as_ref().and_then(|p| p.headers.as_ref())).unwrap_or(0);
        self.hold(message, crate::broker::clock::now_ms() + delay)
    }

    /// Takes the messages due by `now`, earliest first.
    pub fn take_due(&self, now: u64) -> Vec<(u64, Arc<Message>)> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        while let Some(entry) = st.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, seq), m) = entry.remove_entry();
            out.push((seq, m));
        }
        out
    }

    /// Message `seq` went out; its copies are durable once `ticket` is.
    pub fn released(&self, seq: u64, ticket: u64) {
        let mut st = self.state.lock();
        if st.log.is_some() {
            st.releasing.push_back((ticket, seq));
        }
    }

    /// Acks the log records of released messages whose copies are on disk now.
    pub fn settle_durable(&self) {
        let Some(storage) = &self.storage else { return };
        let mut st = self.state.lock();
        if st.releasing.is_empty() {
            return;
        }
        let durable = storage.durable_ticket();
        let st = &mut *st;
        while let Some(&(ticket, seq)) = st.releasing.front() {
            if ticket > durable {
                break;
            }
            st.releasing.pop_front();
            if let Some(log) = st.log.as_mut() {
                if let Err(e) = log.ack(seq) {
                    tracing::error!("delayed exchange '{}': cannot settle a released message: {e}", self.exchange);
                }
            }
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.state.lock().due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every held message and the log's files (the exchange was deleted).
    pub fn destroy(&self) {
        let mut st = self.state.lock();
        st.due.clear();
        st.releasing.clear();
        if let Some(mut log) = st.log.take() {
            log.destroy();
        }
    }
}

impl Queue {
    /// The holding queue of the delayed exchange `store` belongs to; its timers run from now.
    pub fn delay_holder(vhost: &str, store: DelayStore, owner: Weak<dyn QueueOwner>, durable: bool) -> Arc<Queue> {
        // Named as no declared queue can be ("amq." is reserved), for logs and dead-letter
        // cycle checks.
        let name = ShortStr::from(format!("amq.delayed.{}", store.exchange).as_str());
        let options = QueueOptions {
            durable,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Default::default(),
            args: Default::default(),
        };
        let mut q = Queue::kept_elsewhere_parts(name, vhost, options, owner.clone());
        q.delayed = Some(Box::new(store));
        q.timed.store(true, std::sync::atomic::Ordering::Relaxed);
        let q = Arc::new(q);
        if let Some(vhost) = owner.upgrade() {
            vhost.watch_queue_timers(&q);
        }
        q
    }

    /// Whether this is a delayed exchange's holding queue: a message that reached only such
    /// queues counts as unroutable for now (mandatory returns it, as the plugin does).
    pub fn is_delay_holder(&self) -> bool {
        self.delayed.is_some()
    }

    /// Routes what is due by `now` through the exchange, then acks what reached disk.
    pub(super) fn release_due(&self, store: &DelayStore, now: u64) {
        let due = store.take_due(now);
        if !due.is_empty() {
            let Some(owner) = self.owner.upgrade() else { return };
            let mut targets = Vec::new();
            for (seq, m) in due {
                let released = owner.route_delayed(&store.exchange, &m, &mut targets);
                let mut ticket = 0;
                for q in targets.drain(..) {
                    match q.publish(released.clone(), None) {
                        Ok(p) => ticket = ticket.max(p.ticket),
                        Err(e) => tracing::warn!(
                            "delayed exchange '{}': message not stored in '{}': {e}",
                            store.exchange,
                            q.name
                        ),
                    }
                }
                store.released(seq, ticket);
            }
        }
        store.settle_durable();
    }
}

/// Whether a message reached a queue now, not only delayed exchanges' holders.
pub fn reached_now(queues: &[Arc<Queue>]) -> bool {
    queues.iter().any(|q| !q.is_delay_holder())
}

/// Model-based: random holds, releases, settles and reopenings of a durable store against a
/// plain list of what it should hold. A message leaves in due order, exactly when due; after a
/// reopen the store holds what it held plus what it released without the copies being durable
/// (sent again rather than lost), and nothing else.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DiskStorage;
    use bytes::Bytes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn message(id: u64) -> Arc<Message> {
        Arc::new(Message::new("".into(), "k".into(), Bytes::new(), Bytes::from(id.to_be_bytes().to_vec()), true))
    }

    fn id_of(m: &Message) -> u64 {
        u64::from_be_bytes(m.body.to_bytes()[..8].try_into().unwrap())
    }

    #[test]
    fn held_messages_leave_in_due_order_and_survive_reopening() {
        for seed in 0..20u64 {
            let dir = std::env::temp_dir().join(format!("hare-delayed-test-{}-{seed}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let disk = Arc::new(DiskStorage::open(&dir, None).unwrap());
            let storage: Arc<dyn Storage> = disk.clone();
            let open = |fresh| {
                let log = storage.delayed_log("delayed-test", fresh).unwrap();
                DelayStore::new("x".into(), Some((log, "delayed-test".into())), Some(storage.clone()))
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let mut store = open(true);
            // (due, id) held; ids released whose ack is not durable yet.
            let mut held: Vec<(u64, u64)> = Vec::new();
            let mut unsettled: Vec<(u64, u64)> = Vec::new();
            let mut now = 1_000u64;
            let mut next_id = 0u64;
            for step in 0..400 {
                match rng.gen_range(0..100) {
                    0..=49 => {
                        let due = now + rng.gen_range(1..500);
                        store.hold(message(next_id), due).unwrap();
                        held.push((due, next_id));
                        next_id += 1;
                    }
                    50..=79 => {
                        now += rng.gen_range(0..300);
                        let out = store.take_due(now);
                        held.sort();
                        let want: Vec<(u64, u64)> = held.iter().copied().filter(|(d, _)| *d <= now).collect();
                        held.retain(|(d, _)| *d > now);
                        let got: Vec<u64> = out.iter().map(|(_, m)| id_of(m)).collect();
                        // Due order; ties in the order they were held.
                        assert_eq!(got, want.iter().map(|w| w.1).collect::<Vec<_>>(), "seed {seed} step {step}");
                        // Copies made now, durable with the next round.
                        let ticket = storage.last_ticket();
                        for ((seq, _), w) in out.iter().zip(&want) {
                            store.released(*seq, ticket);
                            unsettled.push(*w);
                        }
                    }
                    80..=89 => {
                        disk.syncer.flush_now();
                        store.settle_durable();
                        unsettled.clear();
                        // The acks themselves reach the disk with the next round.
                        disk.syncer.flush_now();
                    }
                    _ => {
                        disk.syncer.flush_now();
                        drop(store);
                        store = open(false);
                        held.append(&mut unsettled);
                        let mut want: Vec<u64> = held.iter().map(|h| h.1).collect();
                        want.sort();
                        let far = store.take_due(u64::MAX);
                        let mut got: Vec<u64> = far.iter().map(|(_, m)| id_of(m)).collect();
                        got.sort();
                        assert_eq!(got, want, "seed {seed} step {step}");
                        // Nothing was released from this look: opened again, it holds them all.
                        drop(store);
                        store = open(false);
                    }
                }
                assert_eq!(store.len(), held.len(), "seed {seed} step {step}");
            }
            store.destroy();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
