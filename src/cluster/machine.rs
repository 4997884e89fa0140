//! The replicated state machine: every quorum queue's [`QuorumQueue`], which process of which
//! node proposed what last, and Raft's membership. openraft applies committed entries here in
//! log order on every node; what an entry asks of this node (a delivery to one of its
//! consumers, a dead letter when it leads, a queue to create or drop locally) goes to the
//! [`Effects`] the broker side implements, after the state's lock is released.
//!
//! Snapshots are the whole state, serialized; the latest is kept on disk so that a node
//! restarting after its log was purged starts from it.

use super::log_store::Seal;
use super::quorum::{Effect, Msg, Outcome, QuorumQueue, Reason, Settings};
use super::types::{Batch, Command, Entry, LogId, NodeId, QueueName, StorageError, StoredMembership, TypeConfig};
use crate::broker::arguments::QueueArguments;
use crate::broker::policy::{PolicyChange, PolicyState, StoredPolicy, Target};
use crate::broker::replicated::{DefinitionChange, Refusal, ReplicatedDefinitions};
use crate::broker::store::table_from_hex;
use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What applying entries asks of this node's broker.
pub trait Effects: Send + Sync + 'static {
    /// A quorum queue exists (declared now, or found in a snapshot): make it routable here.
    fn declared(&self, queue: &QueueName, arguments: &Bytes);
    fn deleted(&self, queue: &QueueName);
    /// Hand a message to this process's consumer `consumer`.
    fn deliver(&self, queue: &QueueName, consumer: u64, id: u64, msg: Arc<Msg>, redelivered: bool, delivery_count: u32);
    /// Republish a dead letter (called on the leader only).
    fn dead_letter(&self, queue: &QueueName, msg: Arc<Msg>, reason: Reason, delivery_count: u32);
    /// The cluster dropped these consumers of this process (it thought the node down): they
    /// should register again.
    fn consumers_lost(&self, queue: &QueueName, consumers: Vec<u64>);
    /// Applies a definition change to this node's broker; its answer is the command's.
    fn definition(&self, change: &DefinitionChange) -> Result<(), Refusal>;
    /// The broker's replicated definitions now (for a snapshot).
    fn definitions(&self) -> ReplicatedDefinitions;
    /// Makes the broker's replicated definitions those of a snapshot.
    fn install_definitions(&self, definitions: &ReplicatedDefinitions);
    /// What this node tells the other members of itself: its alarms and shovels.
    fn report(&self) -> super::reports::NodeReport {
        Default::default()
    }
    /// The other members' reports changed, as (node name, report): their alarms block this
    /// node's publishers too; their shovels are listed here.
    fn remote_reports(&self, _reports: Vec<(String, super::reports::NodeReport)>) {}
    /// Serves another node's request to this node as the home of classic queues.
    fn classic(
        &self,
        _from: &str,
        _op: super::classic::Op,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = super::classic::Reply> + Send + '_>> {
        Box::pin(async { super::classic::Reply::Done(Err(super::classic::unserved())) })
    }
}

/// What a snapshot holds: the replicated state and the definitions as of the same entry.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    state: Replicated,
    definitions: ReplicatedDefinitions,
}

/// What applying one entry asks of this node, in the order its commands asked it.
pub enum Step {
    Created(QueueName, Bytes),
    Dropped(QueueName),
    Effect(QueueName, Effect),
    /// Consumers of a process that the cluster declared down: (queue, process, consumer).
    Lost(QueueName, u64, u64),
    /// A definition change, and the index of its command in the batch (for its outcome).
    Definition(usize, DefinitionChange),
}

/// One quorum queue as replicated.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct QueueEntry {
    pub arguments: Bytes,
    pub queue: QuorumQueue,
}

/// The state every node holds the same.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Replicated {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub queues: BTreeMap<QueueName, QueueEntry>,
    /// Each process that proposed: its node, and the last batch of it applied.
    pub processes: BTreeMap<u64, (NodeId, u64)>,
    /// Node names by id, as each node said hello.
    pub names: BTreeMap<NodeId, String>,
    /// The policies, as the log set them: a quorum queue's settings are its arguments
    /// resolved against them, here, so that every node applies the same settings.
    pub policies: Policies,
}

/// The policies of the replicated state, kept as JSON in snapshots (their definitions are
/// JSON values, which bincode cannot carry).
#[derive(Clone, Debug, Default)]
pub struct Policies(pub PolicyState);

impl Serialize for Policies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(&self.0.to_list()).map_err(serde::ser::Error::custom)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Policies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let list: Vec<StoredPolicy> = serde_json::from_str(&text).map_err(serde::de::Error::custom)?;
        Ok(Policies(PolicyState::from_list(&list)))
    }
}

impl Replicated {
    /// Resolves the quorum queues of `vhost` (or only `only`) against the policies again;
    /// a queue whose settings change applies them at once (see `QuorumQueue::set_settings`).
    fn apply_policies(&mut self, vhost: &str, only: Option<&QueueName>, now: u64, steps: &mut Vec<Step>) {
        let compiled = self.policies.0.compile(vhost);
        let mut local = Vec::new();
        for (name, e) in self.queues.iter_mut().filter(|(n, _)| n.vhost == vhost && only.is_none_or(|o| o == *n)) {
            let hex = String::from_utf8_lossy(&e.arguments).into_owned();
            let Ok(table) = table_from_hex(&hex) else { continue };
            let declared = QueueArguments::stored(&table, &name.name, &name.vhost);
            let resolved = compiled.matching(&name.name, Target::QuorumQueue).resolve_queue(&declared, &table);
            let settings = Settings::from_arguments(&resolved);
            if settings != e.queue.settings {
                e.queue.set_settings(settings, now, &mut local);
                for x in local.drain(..) {
                    steps.push(Step::Effect(name.clone(), x));
                }
            }
        }
    }

    /// Applies one batch; the outcomes answer its commands in order, and `steps` gets what
    /// they ask of the broker, in order.
    fn apply_batch(&mut self, b: &Batch, steps: &mut Vec<Step>) -> Vec<Outcome> {
        match self.processes.get(&b.from) {
            Some(&(_, last)) if b.seq <= last => {
                // A retry of a batch already applied: applied once.
                return vec![Outcome::Ok; b.commands.len()];
            }
            _ => {}
        }
        let mut out = Vec::with_capacity(b.commands.len());
        let now = b.now;
        for (index, c) in b.commands.iter().enumerate() {
            let mut local = Vec::new();
            let outcome = match c {
                Command::Hello { node, name } => {
                    self.names.insert(*node, name.clone());
                    // Earlier processes of this node are gone: their consumers with them.
                    let old: Vec<u64> = self
                        .processes
                        .iter()
                        .filter(|(p, (n, _))| *n == *node && **p != b.from)
                        .map(|(p, _)| *p)
                        .collect();
                    for p in old {
                        self.processes.remove(&p);
                        for (name, e) in self.queues.iter_mut() {
                            e.queue.down(p, None, now, &mut local);
                            for x in local.drain(..) {
                                steps.push(Step::Effect(name.clone(), x));
                            }
                        }
                    }
                    Outcome::Ok
                }
                Command::NodeDown { node } => {
                    let procs: Vec<u64> =
                        self.processes.iter().filter(|(_, (n, _))| n == node).map(|(p, _)| *p).collect();
                    for p in procs {
                        for (name, e) in self.queues.iter_mut() {
                            let mine: Vec<u64> = e.queue.consumers().filter(|k| k.0 == p).map(|k| k.1).collect();
                            for c in mine {
                                steps.push(Step::Lost(name.clone(), p, c));
                            }
                            e.queue.down(p, None, now, &mut local);
                            for x in local.drain(..) {
                                steps.push(Step::Effect(name.clone(), x));
                            }
                        }
                    }
                    Outcome::Ok
                }
                Command::Declare { queue, arguments, settings } => {
                    if !self.queues.contains_key(queue) {
                        self.queues.insert(
                            queue.clone(),
                            QueueEntry { arguments: arguments.clone(), queue: QuorumQueue::new(settings.clone()) },
                        );
                        steps.push(Step::Created(queue.clone(), arguments.clone()));
                        self.apply_policies(&queue.vhost.clone(), Some(queue), now, steps);
                    }
                    Outcome::Ok
                }
                Command::Delete { queue } => match self.queues.remove(queue) {
                    Some(e) => {
                        steps.push(Step::Dropped(queue.clone()));
                        Outcome::Count(e.queue.ready_count() + e.queue.unacked_count())
                    }
                    None => Outcome::Count(0),
                },
                Command::Definition(change) => {
                    // Applied to the broker with the entry's other steps; the answer is filled
                    // in then.
                    steps.push(Step::Definition(index, change.clone()));
                    // A vhost that goes takes its quorum queues (as RabbitMQ's does).
                    if let Some(vhost) = change.deleted_vhost() {
                        let gone: Vec<QueueName> = self.queues.keys().filter(|q| q.vhost == vhost).cloned().collect();
                        for q in gone {
                            self.queues.remove(&q);
                            steps.push(Step::Dropped(q));
                        }
                        self.policies.0.forget_vhost(&vhost);
                    }
                    // A policy changed: the quorum queues of its vhost take it.
                    if let DefinitionChange::Policy { change, .. } = change {
                        if let Ok(p) = serde_json::from_str::<PolicyChange>(change) {
                            self.policies.0.apply(&p);
                            self.apply_policies(&p.vhost().to_string(), None, now, steps);
                        }
                    }
                    Outcome::Ok
                }
                Command::Tick => {
                    for (name, e) in self.queues.iter_mut() {
                        e.queue.expire(now, &mut local);
                        for x in local.drain(..) {
                            steps.push(Step::Effect(name.clone(), x));
                        }
                    }
                    Outcome::Ok
                }
                other => {
                    let Some(name) = queue_of(other) else { continue };
                    let Some(e) = self.queues.get_mut(name) else {
                        out.push(Outcome::Count(0));
                        continue;
                    };
                    let q = &mut e.queue;
                    let o = match other {
                        Command::Enqueue { msg, .. } => q.enqueue(msg.clone(), now, &mut local),
                        Command::Checkout { consumer, prefetch, no_ack, .. } => {
                            q.checkout(*consumer, *prefetch, *no_ack, now, &mut local);
                            Outcome::Ok
                        }
                        Command::Cancel { consumer, .. } => {
                            q.cancel(*consumer, now, &mut local);
                            Outcome::Ok
                        }
                        Command::Settle { consumer, ids, .. } => {
                            q.settle(*consumer, ids, now, &mut local);
                            Outcome::Ok
                        }
                        Command::Return { consumer, ids, .. } => {
                            q.return_(*consumer, ids, now, &mut local);
                            Outcome::Ok
                        }
                        Command::Discard { consumer, ids, .. } => {
                            q.discard(*consumer, ids, now, &mut local);
                            Outcome::Ok
                        }
                        Command::Release { consumer, ids, .. } => {
                            q.release(*consumer, ids, now, &mut local);
                            Outcome::Ok
                        }
                        Command::Down { consumer, .. } => {
                            q.down(consumer.0, Some(consumer.1), now, &mut local);
                            Outcome::Ok
                        }
                        Command::Purge { .. } => Outcome::Count(q.purge()),
                        Command::Dequeue { consumer, no_ack, .. } => q.dequeue(*consumer, *no_ack, now, &mut local),
                        _ => Outcome::Ok,
                    };
                    for x in local.drain(..) {
                        steps.push(Step::Effect(name.clone(), x));
                    }
                    o
                }
            };
            out.push(outcome);
        }
        let node = match b.commands.first() {
            Some(Command::Hello { node, .. }) => Some(*node),
            _ => None,
        };
        let entry = self.processes.entry(b.from).or_insert((node.unwrap_or(0), 0));
        if let Some(n) = node {
            entry.0 = n;
        }
        entry.1 = b.seq;
        out
    }
}

fn queue_of(c: &Command) -> Option<&QueueName> {
    match c {
        Command::Enqueue { queue, .. }
        | Command::Checkout { queue, .. }
        | Command::Cancel { queue, .. }
        | Command::Settle { queue, .. }
        | Command::Return { queue, .. }
        | Command::Release { queue, .. }
        | Command::Discard { queue, .. }
        | Command::Down { queue, .. }
        | Command::Dequeue { queue, .. }
        | Command::Purge { queue }
        | Command::Declare { queue, .. }
        | Command::Delete { queue } => Some(queue),
        Command::Hello { .. } | Command::NodeDown { .. } | Command::Tick | Command::Definition(_) => None,
    }
}

/// The state machine openraft applies to.
pub struct Machine {
    pub state: Arc<RwLock<Replicated>>,
    /// This process's id (consumers' keys start with it).
    pub process: u64,
    /// Whether this node leads now (dead letters are republished by the leader alone).
    pub leading: Arc<AtomicBool>,
    effects: Arc<dyn Effects>,
    dir: PathBuf,
    /// Whether snapshot files are synced (not in the simulation: see `Host::synced_log`).
    synced: bool,
    /// Snapshot and genesis files are sealed with the broker's keys, if it has any.
    seal: Seal,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from(openraft::StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    ))
}

impl Machine {
    /// The state machine, from the snapshot on disk if there is one.
    pub fn open(
        dir: PathBuf,
        process: u64,
        effects: Arc<dyn Effects>,
        synced: bool,
        seal: Seal,
    ) -> std::io::Result<Machine> {
        let mut m = Machine { state: Arc::default(), process, leading: Arc::default(), effects, dir, synced, seal };
        if let Some((_, data)) = load(&m.dir, &m.seal)? {
            let snapshot = bincode::deserialize::<SnapshotData>(&data)
                .map_err(|e| std::io::Error::other(format!("{}: unreadable: {e}", m.dir.join("snapshot").display())))?;
            m.install(snapshot.state, &snapshot.definitions);
        } else {
            // No snapshot yet: the log is applied from its start, on the definitions the
            // broker had before the first entry (its genesis, kept from the first start), not
            // on those its journal has now (they may be ahead of the log).
            let path = m.dir.join("genesis");
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let bytes =
                        m.seal.open(&bytes).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
                    let defs: ReplicatedDefinitions = bincode::deserialize(&bytes)
                        .map_err(|e| std::io::Error::other(format!("{}: unreadable: {e}", path.display())))?;
                    m.effects.install_definitions(&defs);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let bytes = bincode::serialize(&m.effects.definitions()).map_err(std::io::Error::other)?;
                    write_synced(&m.dir, "genesis", &m.seal.seal(bytes), m.synced)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(m)
    }

    /// Replaces the state and the definitions with a snapshot's, and tells the broker which
    /// queues exist now. What this process's consumers hold is delivered again: the entries
    /// that delivered it were not applied here (redelivered, as after any doubt).
    fn install(&mut self, state: Replicated, definitions: &ReplicatedDefinitions) {
        self.effects.install_definitions(definitions);
        let mut again = Vec::new();
        for (name, e) in &state.queues {
            for fx in e.queue.held_by(self.process) {
                again.push(Step::Effect(name.clone(), fx));
            }
        }
        let old: Vec<QueueName> = self.state.read().queues.keys().cloned().collect();
        let new: Vec<(QueueName, Bytes)> = state.queues.iter().map(|(k, v)| (k.clone(), v.arguments.clone())).collect();
        *self.state.write() = state;
        for q in old {
            if !new.iter().any(|(n, _)| *n == q) {
                self.effects.deleted(&q);
            }
        }
        for (q, args) in &new {
            self.effects.declared(q, args);
        }
        self.run(again, &mut []);
    }
}

impl Machine {
    /// Carries out an entry's steps on this node: queues appear and go, deliveries reach this
    /// process's consumers, the leader republishes dead letters, lost consumers register
    /// again, definition changes apply (their outcomes replacing the placeholders).
    fn run(&self, steps: Vec<Step>, outcomes: &mut [Outcome]) {
        let leading = self.leading.load(Ordering::Acquire);
        let mut lost: BTreeMap<QueueName, Vec<u64>> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Created(q, args) => self.effects.declared(&q, &args),
                Step::Dropped(q) => self.effects.deleted(&q),
                Step::Effect(q, Effect::Deliver { consumer, id, msg, redelivered, delivery_count }) => {
                    if consumer.0 == self.process {
                        self.effects.deliver(&q, consumer.1, id, msg, redelivered, delivery_count);
                    }
                }
                Step::Effect(q, Effect::DeadLetter { msg, reason, delivery_count }) => {
                    if leading {
                        self.effects.dead_letter(&q, msg, reason, delivery_count);
                    }
                }
                Step::Lost(q, p, c) => {
                    if p == self.process {
                        lost.entry(q).or_default().push(c);
                    }
                }
                Step::Definition(i, change) => {
                    if let Err(r) = self.effects.definition(&change) {
                        if let Some(o) = outcomes.get_mut(i) {
                            *o = Outcome::Refused(r);
                        }
                    }
                }
            }
        }
        for (q, cs) in lost {
            self.effects.consumers_lost(&q, cs);
        }
    }
}

/// Writes a snapshot to `dir/snapshot`: a new file, synced, renamed over the old one.
fn save(
    dir: &std::path::Path,
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    data: &[u8],
    sync: bool,
    seal: &Seal,
) -> std::io::Result<()> {
    let bytes = bincode::serialize(&(meta, data)).map_err(std::io::Error::other)?;
    write_synced(dir, "snapshot", &seal.seal(bytes), sync)
}

/// Writes `dir/name`: a new file, synced (if `sync`), renamed over the old one.
fn write_synced(dir: &std::path::Path, name: &str, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    if sync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The snapshot on disk, if there is one; an unreadable one (another key, say) is an error,
/// not "none": starting without it would replay a log that was purged.
#[allow(clippy::type_complexity)]
fn load(
    dir: &std::path::Path,
    seal: &Seal,
) -> std::io::Result<Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>> {
    let path = dir.join("snapshot");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = seal.open(&bytes).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
    let s = bincode::deserialize(&bytes)
        .map_err(|e| std::io::Error::other(format!("{}: unreadable: {e}", path.display())))?;
    Ok(Some(s))
}

/// Builds a snapshot from the state and the definitions as they were when openraft asked
/// for it (between two applies: the two agree), and keeps it on disk (openraft purges the log
/// entries it covers next).
pub struct Builder {
    data: Result<Vec<u8>, String>,
    last: Option<LogId>,
    membership: StoredMembership,
    dir: PathBuf,
    synced: bool,
    seal: Seal,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data =
            std::mem::replace(&mut self.data, Err("built already".into())).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let (last, membership) = (self.last, self.membership.clone());
        let id = last.map_or("0-0".to_string(), |l| format!("{}-{}", l.leader_id, l.index));
        let meta = SnapshotMeta { last_log_id: last, last_membership: membership, snapshot_id: id };
        save(&self.dir, &meta, &data, self.synced, &self.seal).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for e in entries {
            // The state changes under its lock; what the entry asks of the broker runs after,
            // in order, with the lock released (the broker reads the state for statistics).
            let mut steps = Vec::new();
            let mut outcomes = {
                let mut st = self.state.write();
                st.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(e.log_id), m);
                        Vec::new()
                    }
                    EntryPayload::Normal(b) => st.apply_batch(&b, &mut steps),
                }
            };
            self.run(steps, &mut outcomes);
            replies.push(outcomes);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let st = self.state.read().clone();
        let (last, membership) = (st.last_applied, st.membership.clone());
        let snapshot = SnapshotData { state: st, definitions: self.effects.definitions() };
        let data = bincode::serialize(&snapshot).map_err(|e| e.to_string());
        Builder { data, last, membership, dir: self.dir.clone(), synced: self.synced, seal: self.seal.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let s: SnapshotData = bincode::deserialize(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        save(&self.dir, meta, &data, self.synced, &self.seal).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let upto = meta.last_log_id.map_or(0, |l| l.index);
        tracing::info!("cluster: installed a snapshot up to log index {upto} ({} bytes)", data.len());
        self.install(s.state, &s.definitions);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let loaded = load(&self.dir, &self.seal).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(loaded.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
