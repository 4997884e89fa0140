//! A cluster node: the Raft instance with its log store and state machine, the listener on
//! the cluster port, the first start's bootstrap from the seeds, and the proposer through which
//! this node's commands reach the leader.
//!
//! The proposer gathers what the node's channels propose while the previous batch is in flight
//! and sends it as one batch: to openraft when this node leads, else to the leader over the
//! transport. Batches of one process are applied in order and each once (the state machine
//! skips a retried batch it has), so a proposal's ticket is resolved once every earlier one is:
//! channels wait for a watermark, as they wait for the disk's. Requests to another node that
//! are not proposals (a publish to a classic queue that lives there, see `classic`) take
//! tickets from the same sequence and resolve out of order: the watermark moves past a ticket
//! once it and every earlier one are resolved ([`Window`]).

use super::host::{Host, Listener};
use super::log_store::LogStore;
use super::machine::{Effects, Machine, Replicated};
use super::quorum::Outcome;
use super::transport::{self, Factory, NetCtx, Peer, ProposeError, Request, Response};
use super::types::{node_id, Batch, Command, NodeId, Raft};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};

/// A batch carries at most this many commands, or about this many bytes of messages.
const BATCH_COMMANDS: usize = 4096;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// A node that answered none of the leader's RPCs for this long is down: its consumers are
/// dropped and what they held goes to others (it registers them again if it comes back).
const NODE_DOWN_AFTER: Duration = Duration::from_secs(5);
/// Proposals waiting past this many bytes pause their publishers (they stop being read) until
/// the backlog is below half of it: a node that cannot reach a quorum does not buffer
/// publishes without bound.
const BACKLOG_HIGH: usize = 64 * 1024 * 1024;
/// Batches in Raft at once from a leading node: while one commits, the next are appended.
const PIPELINE: usize = 16;
/// A proposal that found no leader is sent again after at least this long.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Answers kept for their waiters (refusals, enqueues a full queue rejected) past this many,
/// the oldest go: a waiter takes its answer as soon as its ticket resolves, and one that
/// never will (its channel closed meanwhile, a consume with nowait) must not keep it for ever.
const ANSWERS_KEPT: usize = 65_536;
/// A follower that has not heard from its leader for this long (three heartbeats) looks
/// whether the leader's port still takes connections (see [`watch_leader`]).
const PROBE_AFTER: Duration = Duration::from_millis(300);
/// How long that look may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a follower checks when it last heard from its leader.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// How often the leader looks for expired messages and silent nodes.
const LEADER_TICK: Duration = Duration::from_millis(250);

/// How a node joins: its name, where it listens, whom it asks, and the shared secret.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_name: String,
    /// The address this node listens on for other nodes, and the one they reach it at.
    pub listen: String,
    pub advertise: String,
    pub seeds: Vec<String>,
    pub secret: Vec<u8>,
    pub dir: PathBuf,
    /// Raft's timeouts, in ms.
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A snapshot is taken after this many entries (the log before it is then purged, and a
    /// node that lags further catches up from the snapshot).
    pub snapshot_every: u64,
    /// The broker's encryption keys: the Raft log, snapshots and genesis are sealed with them.
    pub keys: Option<Arc<crate::storage::cipher::KeyRing>>,
}

/// The tickets past the resolved watermark, in order: whether each is still unresolved.
/// Tickets are taken in order and pushed here as they are; resolving one marks it, and the
/// watermark moves past the resolved run at the front.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Every ticket at or below this is resolved.
    base: u64,
    unresolved: VecDeque<bool>,
}

impl Window {
    /// Takes the next ticket, unresolved.
    fn push(&mut self) -> u64 {
        self.unresolved.push_back(true);
        self.base + self.unresolved.len() as u64
    }
    /// Whether `ticket` is resolved (it and every earlier one, or it alone past the mark).
    fn is_resolved(&self, ticket: u64) -> bool {
        ticket <= self.base || self.unresolved.get((ticket - self.base - 1) as usize) == Some(&false)
    }
    /// Marks `ticket` resolved; returns the watermark after it.
    fn resolve(&mut self, ticket: u64) -> u64 {
        if ticket > self.base {
            if let Some(u) = self.unresolved.get_mut((ticket - self.base - 1) as usize) {
                *u = false;
            }
        }
        while self.unresolved.front() == Some(&false) {
            self.unresolved.pop_front();
            self.base += 1;
        }
        self.base
    }
}

struct Pending {
    ticket: u64,
    command: Command,
    reply: Option<oneshot::Sender<Outcome>>,
}

/// A running node, shared by the broker side.
pub struct Cluster {
    pub id: NodeId,
    pub name: String,
    /// The address other nodes reach this one at.
    pub advertise: String,
    pub raft: Raft,
    pub state: Arc<RwLock<Replicated>>,
    /// This process's id in consumer keys and batches.
    pub process: u64,
    pub net: Arc<NetCtx>,
    pending: Mutex<(u64, VecDeque<Pending>, usize)>,
    wake: Notify,
    /// Which tickets past the watermark are resolved (taken after `pending`'s lock).
    window: Mutex<Window>,
    /// Every ticket at or below this is resolved (committed and applied, or failed).
    resolved: watch::Sender<u64>,
    /// Tickets of enqueues a full queue refused (reject-publish): nacked, not acked.
    rejected: Mutex<BTreeSet<u64>>,
    leading: Arc<AtomicBool>,
    /// Publishers paused by a backlog of proposals, woken when it drains.
    backlog_waiters: Mutex<Vec<Arc<Notify>>>,
    /// The answers of basic.get proposals, by ticket, until their channels take them.
    got: Mutex<std::collections::HashMap<u64, Outcome>>,
    /// Definition changes refused when applied, by ticket, until their proposers ask.
    refused: Mutex<BTreeMap<u64, crate::broker::replicated::Refusal>>,
    /// The broker this node serves (its alarms; the machine holds it for applying entries).
    pub(super) effects: Arc<dyn Effects>,
    /// When this node last had an AppendEntries (a heartbeat at least) from a leader.
    heard: Mutex<Option<tokio::time::Instant>>,
    /// The other members' alarms and shovels, as they last answered.
    pub(super) reports: super::reports::PeerReports,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the node: Raft on its log and state machine, the cluster listener, the
    /// proposer and the leader's duties; the first start of a cluster forms it from the seeds.
    ///
    /// `host` is the machine: TCP and the system clock in the broker, simulated in tests.
    pub async fn start(
        s: ClusterSettings,
        effects: Arc<dyn Effects>,
        host: Arc<dyn Host>,
    ) -> Result<Arc<Cluster>, String> {
        let id = node_id(&s.node_name);
        // From the runtime's generator: the simulation's seed decides it there.
        let process: u64 = rand::RngCore::next_u64(&mut super::runtime::ThreadRng) | 1;
        let config = openraft::Config {
            cluster_name: "hare".into(),
            heartbeat_interval: s.heartbeat_ms,
            election_timeout_min: s.election_min_ms,
            election_timeout_max: s.election_max_ms,
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(s.snapshot_every),
            max_in_snapshot_log_to_keep: (s.snapshot_every / 20).max(1),
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| format!("raft settings: {e}"))?);
        let seal = super::log_store::Seal::new(s.keys.clone());
        let log = LogStore::open(&s.dir, host.synced_log(), seal.clone())
            .map_err(|e| format!("raft log in {}: {e}", s.dir.display()))?;
        let machine = Machine::open(s.dir.clone(), process, effects.clone(), host.synced_log(), seal)
            .map_err(|e| format!("raft state in {}: {e}", s.dir.display()))?;
        let state = machine.state.clone();
        let leading = machine.leading.clone();
        let net = NetCtx::new(s.node_name.clone(), s.secret.clone(), host.clone());
        let raft = Raft::new(id, config, Factory { ctx: net.clone() }, log, machine)
            .await
            .map_err(|e| format!("raft: {e}"))?;
        let listener = host.listen(s.listen.clone()).await.map_err(|e| format!("cluster port {}: {e}", s.listen))?;
        let (resolved, _) = watch::channel(0);
        let cluster = Arc::new(Cluster {
            id,
            name: s.node_name.clone(),
            advertise: s.advertise.clone(),
            raft,
            state,
            process,
            net,
            pending: Mutex::new((0, VecDeque::new(), 0)),
            wake: Notify::new(),
            window: Mutex::new(Window::default()),
            resolved,
            rejected: Mutex::new(BTreeSet::new()),
            leading,
            backlog_waiters: Mutex::new(Vec::new()),
            got: Mutex::new(std::collections::HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            effects,
            reports: Default::default(),
            heard: Mutex::new(None),
        });
        tokio::spawn(serve(listener, cluster.clone()));
        tokio::spawn(bootstrap(cluster.clone(), s.clone()));
        tokio::spawn(propose_loop(cluster.clone()));
        tokio::spawn(leader_duties(cluster.clone()));
        tokio::spawn(watch_leader(cluster.clone(), Duration::from_millis(s.election_max_ms)));
        // This process says hello first: consumers of the node's earlier process are gone.
        cluster.propose(Command::Hello { node: id, name: s.node_name.clone() }, None);
        tracing::info!("cluster node {} (id {id:016x}) listening on {}", s.node_name, s.listen);
        Ok(cluster)
    }

    /// Queues a command for the next batch; returns its ticket (see [`Cluster::resolved`]).
    pub fn propose(&self, command: Command, reply: Option<oneshot::Sender<Outcome>>) -> u64 {
        let size = command.weight();
        let ticket = {
            let mut p = self.pending.lock();
            p.0 += 1;
            let ticket = p.0;
            self.window.lock().push();
            p.1.push_back(Pending { ticket, command, reply });
            p.2 += size;
            ticket
        };
        self.wake.notify_one();
        ticket
    }

    /// A ticket for a request that is not a proposal (it is resolved by [`Cluster::settle_ticket`]).
    pub fn take_ticket(&self) -> u64 {
        let mut p = self.pending.lock();
        p.0 += 1;
        self.window.lock().push();
        p.0
    }

    /// Resolves a ticket of [`Cluster::take_ticket`]: refused by a full queue (`rejected`), or
    /// with a refusal for its waiter to take.
    pub fn settle_ticket(&self, ticket: u64, rejected: bool, refusal: Option<crate::broker::replicated::Refusal>) {
        if let Some(r) = refusal {
            let mut refused = self.refused.lock();
            refused.insert(ticket, r);
            trim_map(&mut refused);
        }
        self.settle_tickets([(ticket, rejected)]);
    }

    /// Resolves many tickets of [`Cluster::take_ticket`] at once, each refused by a full
    /// queue or not (`rejected`); their waiters are woken once.
    pub fn settle_tickets(&self, tickets: impl IntoIterator<Item = (u64, bool)>) {
        let tickets: Vec<(u64, bool)> = tickets.into_iter().collect();
        // The refusals first, under their own lock (`resolve` takes the window's inside it).
        {
            let mut rejected = self.rejected.lock();
            rejected.extend(tickets.iter().filter(|(_, rejected)| *rejected).map(|(t, _)| *t));
            trim_set(&mut rejected);
        }
        let mark = {
            let mut window = self.window.lock();
            let mut mark = window.base;
            for (ticket, _) in tickets {
                mark = window.resolve(ticket);
            }
            mark
        };
        // Waiters wake whether or not the mark moved: theirs may be resolved past it.
        self.resolved.send_modify(|r| *r = mark);
    }

    /// Whether `ticket` is resolved, even while an earlier one is not (a request to a node that
    /// does not answer holds the watermark back, not the proposals and requests after it).
    pub fn is_resolved(&self, ticket: u64) -> bool {
        let mark = *self.resolved.borrow();
        ticket <= mark || self.window.lock().is_resolved(ticket)
    }

    /// Tickets resolved so far, as a watch channel.
    pub fn resolved(&self) -> watch::Receiver<u64> {
        self.resolved.subscribe()
    }

    /// Why the definition change proposed as `ticket` was refused, if it was (taken once).
    pub fn take_refusal(&self, ticket: u64) -> Option<crate::broker::replicated::Refusal> {
        self.refused.lock().remove(&ticket)
    }

    /// The answer to the basic.get proposed as `ticket` (taken once).
    pub fn take_got(&self, ticket: u64) -> Option<Outcome> {
        self.got.lock().remove(&ticket)
    }

    /// Whether the enqueue of `ticket` was refused by a full queue (asked once per ticket).
    pub fn take_rejected(&self, ticket: u64) -> bool {
        self.rejected.lock().remove(&ticket)
    }

    /// Whether everything proposed so far is resolved.
    pub fn idle(&self) -> bool {
        let (resolved, last, _) = self.tickets();
        resolved >= last
    }

    /// The resolved watermark, the last ticket, and how many proposals wait to be sent.
    pub fn tickets(&self) -> (u64, u64, usize) {
        let p = self.pending.lock();
        (*self.resolved.borrow(), p.0, p.1.len())
    }

    /// Bytes of commands waiting to be proposed.
    pub fn backlog_bytes(&self) -> usize {
        self.pending.lock().2
    }

    /// Whether proposals wait past [`BACKLOG_HIGH`]; if so, `waiter` is notified once they
    /// are below half of it.
    pub fn backlogged(&self, waiter: &Arc<Notify>) -> bool {
        if self.backlog_bytes() < BACKLOG_HIGH {
            return false;
        }
        let mut w = self.backlog_waiters.lock();
        if !w.iter().any(|x| Arc::ptr_eq(x, waiter)) {
            w.push(waiter.clone());
        }
        true
    }

    /// Whether this node belongs to a formed cluster (it has a membership).
    pub fn formed(&self) -> bool {
        self.raft.metrics().borrow().membership_config.nodes().next().is_some()
    }

    /// Adds a node (as a learner that catches up, then a voter) or removes one; on a node that
    /// does not lead, the request goes to the leader.
    pub async fn change_members(&self, add: Option<(NodeId, String)>, remove: Option<NodeId>) -> Result<(), String> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.id => {}
            Some(l) => {
                let addr = self.address_of(l).ok_or("the leader's address is unknown")?;
                let req = match (add, remove) {
                    (Some((id, addr)), _) => Request::Join { id, addr },
                    (None, Some(id)) => Request::Forget { id },
                    (None, None) => return Ok(()),
                };
                let mut p = Peer::new(addr, self.net.clone());
                return match p.call(&req, Duration::from_secs(60)).await {
                    Ok(Response::Membership(r)) => r,
                    Ok(_) => Err("unexpected response".into()),
                    Err(e) => Err(format!("the leader did not answer: {e}")),
                };
            }
            None => return Err("the cluster has no leader now".into()),
        }
        if let Some((id, addr)) = add {
            // A learner first: it receives the log (or a snapshot) without voting, then votes.
            self.raft.add_learner(id, BasicNode { addr }, true).await.map_err(|e| e.to_string())?;
            let voters: BTreeSet<NodeId> = [id].into();
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(id) = remove {
            let voters: BTreeSet<NodeId> = [id].into();
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub fn address_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let addr = m.membership_config.nodes().find(|(n, _)| **n == id).map(|(_, n)| n.addr.clone());
        addr
    }

    /// Asks the cluster `seed` belongs to to take this node in.
    pub async fn join(&self, seed: &str) -> Result<(), String> {
        let mut p = Peer::new(seed.to_string(), self.net.clone());
        match p.call(&Request::Join { id: self.id, addr: self.advertise.clone() }, Duration::from_secs(60)).await {
            Ok(Response::Membership(r)) => r,
            Ok(_) => Err("unexpected response".into()),
            Err(e) => Err(format!("{seed}: {e}")),
        }
    }

    /// Takes the node named `name` out of the cluster.
    pub async fn forget(&self, name: &str) -> Result<(), String> {
        let id = node_id(name);
        if self.address_of(id).is_none() {
            return Err(format!("node '{name}' is not a member"));
        }
        self.change_members(None, Some(id)).await
    }

    /// Whether this node leads (as its leader duties last saw it, every 250 ms).
    pub fn leads(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Starts asking the other members for their alarms and shovels (see [`super::reports`]).
    pub fn watch_reports(self: &Arc<Self>) {
        tokio::spawn(super::reports::watch(self.clone()));
    }

    /// A member's name: from its `Hello` in the log, else from its handshake, else its id.
    pub fn name_of(&self, id: NodeId) -> String {
        let known = if id == self.id { Some(self.name.clone()) } else { self.net.name_of(id) };
        self.state.read().names.get(&id).cloned().or(known).unwrap_or_else(|| format!("{id:016x}"))
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> crate::broker::queue::replica::ClusterStatus {
        use crate::broker::queue::replica::{ClusterStatus, MemberStatus};
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, n)| {
                let matched = m.replication.as_ref().and_then(|r| r.get(id)).map(|l| l.map_or(0, |l| l.index));
                MemberStatus {
                    name: self.name_of(*id),
                    id: format!("{id:016x}"),
                    address: n.addr.clone(),
                    voter: voters.contains(id),
                    reachable: *id == self.id
                        || self.net.silent_for(*id).is_some_and(|d| d < NODE_DOWN_AFTER)
                        || self.reports.answers(*id),
                    matched_index: if *id == self.id { Some(last) } else { matched },
                    lag: if *id == self.id { Some(0) } else { matched.map(|x| last.saturating_sub(x)) },
                    alarms: if *id == self.id { self.effects.report().alarms } else { self.reports.alarms_of(*id) },
                }
            })
            .collect();
        // Not under the state's lock: `name_of` takes it (a second read lock could wait on a
        // writer waiting on the first).
        let leader = m.current_leader.map(|id| self.name_of(id));
        let st = self.state.read();
        ClusterStatus {
            node: self.name.clone(),
            leader,
            term: m.current_term,
            last_log_index: last,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
            quorum_queues: st.queues.keys().map(|q| format!("{} in vhost '{}'", q.name, q.vhost)).collect(),
        }
    }

    /// The members as (id, address), and the current leader.
    pub fn members(&self) -> (Vec<(NodeId, String)>, Option<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        let nodes = m.membership_config.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        (nodes, m.current_leader)
    }
}

/// Answers other nodes' requests on the cluster port.
async fn serve(mut listener: Box<dyn Listener>, cluster: Arc<Cluster>) {
    loop {
        let Ok((sock, peer_addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let c = cluster.clone();
        tokio::spawn(async move {
            let hs = tokio::time::timeout(Duration::from_secs(5), async {
                let mut sock = c.net.host.secure(sock).await?;
                let name = transport::handshake_server(&mut sock, &c.net).await?;
                Ok::<_, transport::WireError>((sock, name))
            })
            .await;
            let (mut sock, peer) = match hs {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::warn!("cluster: refused a peer from {peer_addr}: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!("cluster: refused a peer from {peer_addr}: no handshake within 5 s");
                    return;
                }
            };
            let mut buf = Vec::new();
            loop {
                let req: Request = match transport::read_frame(&mut sock, &mut buf).await {
                    Ok(r) => r,
                    Err(transport::WireError::Io(_)) => return,
                    Err(e) => {
                        tracing::warn!("cluster: dropped peer {peer}: {e}");
                        return;
                    }
                };
                let resp = match req {
                    Request::Append(r) => {
                        *c.heard.lock() = Some(tokio::time::Instant::now());
                        Response::Append(c.raft.append_entries(r).await)
                    }
                    Request::Vote(r) => Response::Vote(c.raft.vote(r).await),
                    Request::Snapshot(r) => Response::Snapshot(c.raft.install_snapshot(r).await),
                    Request::Propose(b) => Response::Proposed(write_local(&c, b).await),
                    Request::Info => Response::Info { name: c.name.clone(), formed: c.formed() },
                    Request::Join { id, addr } => Response::Membership(c.change_members(Some((id, addr)), None).await),
                    Request::Forget { id } => Response::Membership(c.change_members(None, Some(id)).await),
                    Request::Report => Response::Report(c.effects.report()),
                    Request::Classic(op) => Response::Classic(c.effects.classic(&peer, op).await),
                };
                if transport::write_frame(&mut sock, &mut buf, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Proposes a batch to this node's Raft (which must lead).
/// Answers the entry's index and the outcomes (applied here when it answers).
async fn write_local(c: &Cluster, batch: Batch) -> Result<(u64, Vec<Outcome>), ProposeError> {
    match c.raft.client_write(batch).await {
        Ok(r) => Ok((r.log_id.index, r.data)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
        Err(e) => Err(ProposeError::Failed(e.to_string())),
    }
}

/// The first start of a cluster: once every seed answers, the node with the lowest id among
/// them makes the membership of all of them. A node that has a membership already (it was
/// formed before, or another node added it) does nothing here.
async fn bootstrap(c: Arc<Cluster>, s: ClusterSettings) {
    let formed = |c: &Cluster| c.raft.metrics().borrow().membership_config.nodes().next().is_some();
    if s.seeds.is_empty() {
        // A cluster of one.
        if !formed(&c) {
            let mut m = BTreeMap::new();
            m.insert(c.id, BasicNode { addr: s.advertise.clone() });
            let _ = c.raft.initialize(m).await;
        }
        return;
    }
    for attempt in 0u64.. {
        if formed(&c) {
            return;
        }
        let mut found = BTreeMap::new();
        let mut member = None;
        for addr in &s.seeds {
            let mut p = Peer::new(addr.clone(), c.net.clone());
            match p.call(&Request::Info, Duration::from_secs(5)).await {
                Ok(Response::Info { name, formed }) => {
                    found.insert(node_id(&name), BasicNode { addr: addr.clone() });
                    if formed && name != c.name {
                        member = Some(addr.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if attempt % 20 == 0 {
                        tracing::info!("cluster: seed {addr} not reachable yet: {e}");
                    }
                }
            }
        }
        if let Some(seed) = member {
            // A cluster exists already: this node asks to be taken in rather than forming one.
            match c.join(&seed).await {
                Ok(()) => tracing::info!("cluster: joined through {seed}"),
                Err(e) => tracing::info!("cluster: joining through {seed}: {e}"),
            }
        } else if found.len() == s.seeds.len() && found.keys().next() == Some(&c.id) {
            match c.raft.initialize(found.clone()).await {
                Ok(()) => tracing::info!("cluster: formed with {} nodes", found.len()),
                Err(e) => tracing::info!("cluster: not formed by this node: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Takes the next batch's worth of waiting proposals.
fn take_batch(c: &Cluster) -> Vec<Pending> {
    let mut p = c.pending.lock();
    let mut bytes = 0;
    let mut n = 0;
    while n < p.1.len() && n < BATCH_COMMANDS && bytes < BATCH_BYTES {
        bytes += p.1[n].command.weight();
        n += 1;
    }
    p.2 = p.2.saturating_sub(bytes);
    p.1.drain(..n).collect()
}

/// A batch sent to this node's Raft as its leader, its answer to come.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Outcome>, ProposeError>> + Send>>;

/// Sends what was proposed until each batch is applied, and resolves its tickets in order.
///
/// While this node leads, up to [`PIPELINE`] batches are in Raft at once (openraft appends
/// them in the order given, so they commit in that order); a batch's answer that is an error
/// (leadership lost) sends it and every later one again, one at a time, to whoever leads
/// then: the state machine applies a batch of a process once, so a batch that did commit
/// is not applied twice. On a follower, one batch at a time goes to the leader.
async fn propose_loop(c: Arc<Cluster>) {
    let mut seq = 0u64;
    let mut peer: Option<(NodeId, Peer)> = None;
    let mut inflight: VecDeque<(Vec<Pending>, Batch, Answer)> = VecDeque::new();
    loop {
        let leads = c.raft.metrics().borrow().current_leader == Some(c.id);
        if leads && inflight.len() < PIPELINE {
            let taken = take_batch(&c);
            if !taken.is_empty() {
                seq += 1;
                let batch = batch_of(&c, seq, &taken);
                let answer: Answer = match c.raft.client_write_ff(batch.clone()).await {
                    Ok(rx) => Box::pin(async move {
                        match rx.await {
                            Ok(Ok(r)) => Ok(r.data),
                            Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
                            Ok(Err(e)) => Err(ProposeError::Failed(e.to_string())),
                            Err(e) => Err(ProposeError::Failed(e.to_string())),
                        }
                    }),
                    Err(e) => {
                        let e = e.to_string();
                        Box::pin(async move { Err(ProposeError::Failed(e)) })
                    }
                };
                inflight.push_back((taken, batch, answer));
                continue;
            }
        }
        let room = inflight.len() < PIPELINE;
        if let Some((_, _, answer)) = inflight.front_mut() {
            // The oldest answer, or more to send while there is room in the pipeline.
            let outcome = tokio::select! {
                biased;
                o = answer => Some(o),
                // openraft may keep a deposed leader's uncommitted entries waiting (a new
                // leader may commit them or not): send again, and let the state machine drop
                // a batch it has already.
                _ = leadership_lost(&c) => Some(Err(ProposeError::NotLeader(None))),
                _ = c.wake.notified(), if room => None,
            };
            let Some(outcome) = outcome else { continue };
            let (taken, batch, _) = inflight.pop_front().expect("front exists");
            match outcome {
                Ok(outcomes) => resolve(&c, taken, outcomes),
                Err(e) => {
                    tracing::debug!("cluster: batch {} answered {e:?}: sent again", batch.seq);
                    let outcomes = send_until_applied(&c, &batch, &mut peer).await;
                    resolve(&c, taken, outcomes);
                    // Later batches went to the same leader: again, in order.
                    while let Some((taken, batch, _)) = inflight.pop_front() {
                        let outcomes = send_until_applied(&c, &batch, &mut peer).await;
                        resolve(&c, taken, outcomes);
                    }
                }
            }
            continue;
        }
        // Nothing in flight: a follower sends one batch to the leader.
        let taken = take_batch(&c);
        if taken.is_empty() {
            c.wake.notified().await;
            continue;
        }
        seq += 1;
        let batch = batch_of(&c, seq, &taken);
        let outcomes = send_until_applied(&c, &batch, &mut peer).await;
        resolve(&c, taken, outcomes);
    }
}

/// Returns once this node no longer leads.
async fn leadership_lost(c: &Cluster) {
    let mut m = c.raft.metrics();
    loop {
        if m.borrow_and_update().current_leader != Some(c.id) {
            return;
        }
        if m.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn batch_of(c: &Cluster, seq: u64, taken: &[Pending]) -> Batch {
    Batch {
        from: c.process,
        seq,
        now: c.net.host.now_ms(),
        commands: taken.iter().map(|p| p.command.clone()).collect(),
    }
}

/// Sends one batch to whoever leads (this node, or the leader over the transport) until it is
/// applied, on the leader and on this node (so that what its proposer answers, this node's
/// state shows: a queue declared through a follower is there for the next publish); returns
/// its outcomes.
async fn send_until_applied(c: &Cluster, batch: &Batch, peer: &mut Option<(NodeId, Peer)>) -> Vec<Outcome> {
    loop {
        let leader = c.raft.metrics().borrow().current_leader;
        let result = match leader {
            Some(l) if l == c.id => write_local(c, batch.clone()).await,
            Some(l) => match c.address_of(l) {
                Some(addr) => {
                    if peer.as_ref().is_none_or(|(id, p)| *id != l || p.addr != addr) {
                        *peer = Some((l, Peer::new(addr, c.net.clone())));
                    }
                    let (_, p) = peer.as_mut().expect("set above");
                    match p.call(&Request::Propose(batch.clone()), Duration::from_secs(10)).await {
                        Ok(Response::Proposed(r)) => r,
                        Ok(_) => Err(ProposeError::Failed("unexpected response".into())),
                        Err(e) => Err(ProposeError::Failed(e.to_string())),
                    }
                }
                None => Err(ProposeError::NotLeader(None)),
            },
            None => Err(ProposeError::NotLeader(None)),
        };
        match result {
            Ok((index, o)) => {
                let mut m = c.raft.metrics();
                let _ = m.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index)).await;
                return o;
            }
            Err(e) => {
                tracing::debug!("cluster: batch {} waits: {e:?}", batch.seq);
                // No leader yet, or it moved: wait for a change (or a short while) and retry.
                // At least RETRY_PAUSE: Raft's metrics change at each of its steps, and a
                // node that still believes itself leader answers at once that it is not.
                let mut m = c.raft.metrics();
                tokio::time::sleep(RETRY_PAUSE).await;
                if tokio::time::timeout(Duration::from_millis(100), m.changed()).await.is_ok_and(|r| r.is_err()) {
                    // Raft has stopped (the node is shutting down).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Drops the oldest answers past [`ANSWERS_KEPT`].
fn trim_set(set: &mut BTreeSet<u64>) {
    while set.len() > ANSWERS_KEPT {
        set.pop_first();
    }
}

fn trim_map<T>(map: &mut BTreeMap<u64, T>) {
    while map.len() > ANSWERS_KEPT {
        map.pop_first();
    }
}

/// Hands a batch's outcomes to its proposals and moves the resolved watermark past them.
fn resolve(c: &Cluster, taken: Vec<Pending>, outcomes: Vec<Outcome>) {
    let mut mark = None;
    {
        let mut rejected = c.rejected.lock();
        let mut got = c.got.lock();
        for (p, o) in taken.into_iter().zip(outcomes.into_iter().chain(std::iter::repeat(Outcome::Ok))) {
            if o == Outcome::Rejected {
                rejected.insert(p.ticket);
            }
            if matches!(p.command, Command::Dequeue { .. }) {
                got.insert(p.ticket, o.clone());
            }
            if let Outcome::Refused(r) = &o {
                let mut refused = c.refused.lock();
                refused.insert(p.ticket, r.clone());
                trim_map(&mut refused);
            }
            if let Some(tx) = p.reply {
                let _ = tx.send(o);
            }
            mark = Some(c.window.lock().resolve(p.ticket));
        }
        trim_set(&mut rejected);
    }
    if let Some(mark) = mark {
        // Waiters wake whether or not the mark moved (see Cluster::is_resolved).
        c.resolved.send_modify(|r| *r = mark);
    }
    if c.backlog_bytes() < BACKLOG_HIGH / 2 {
        let waiters = std::mem::take(&mut *c.backlog_waiters.lock());
        waiters.iter().for_each(|w| w.notify_one());
    }
}

/// Makes a follower whose leader's process died stand for election as soon as it may.
///
/// openraft's voters refuse to vote for as long as the election timeout's maximum (its
/// leader lease) after they last heard from the leader, and a follower that knew a leader
/// stands for election only after that lease plus its own election timeout: 1.5 to 2 s with
/// the default timeouts. A leader whose port refuses connections (its host is up, its
/// process is not) is gone for certain: the surviving voter with the lowest id then asks for
/// an election just after the lease ends, and the others, who heard the leader last at about
/// the same time, vote for it. A leader unreachable another way (a partition, a host down) is left to
/// the timers, as is everything when this node is not the lowest id.
async fn watch_leader(c: Arc<Cluster>, lease: Duration) {
    // The term of the last election this asked for: once per leader's term.
    let mut asked_in: Option<u64> = None;
    // The last look: a leader that is up but slow, or cut off, is looked at no more often
    // than this (a look it answers costs it a connection dropped before its handshake).
    let mut probed: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let m = c.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader.filter(|l| *l != c.id) else { continue };
        let Some(heard) = *c.heard.lock() else { continue };
        if heard.elapsed() < PROBE_AFTER
            || asked_in == Some(m.current_term)
            || probed.is_some_and(|p| p.elapsed() < PROBE_AFTER)
        {
            continue;
        }
        let lowest = m.membership_config.membership().voter_ids().filter(|v| *v != leader).min();
        if lowest != Some(c.id) {
            continue;
        }
        let Some(addr) = c.address_of(leader) else { continue };
        probed = Some(tokio::time::Instant::now());
        match tokio::time::timeout(PROBE_TIMEOUT, c.net.host.dial(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => continue,
        }
        tokio::time::sleep_until(heard + lease + WATCH_EVERY).await;
        // Heard from a leader meanwhile (this one back, or another elected): nothing to do.
        if *c.heard.lock() != Some(heard) {
            continue;
        }
        asked_in = Some(m.current_term);
        tracing::info!(
            "cluster: leader {} refuses connections: node {} stands for election",
            c.name_of(leader),
            c.name
        );
        let _ = c.raft.trigger().elect().await;
    }
}

/// While this node leads: keeps the state machine's `leading` flag, expires messages (a Tick
/// when a queue's head is due), and declares silent nodes down.
async fn leader_duties(c: Arc<Cluster>) {
    let mut down: BTreeSet<NodeId> = BTreeSet::new();
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(LEADER_TICK).await;
        let leads = c.raft.metrics().borrow().current_leader == Some(c.id);
        if c.leading.swap(leads, Ordering::AcqRel) != leads {
            if leads {
                tracing::info!("cluster: node {} leads now", c.name);
            } else {
                tracing::info!("cluster: node {} no longer leads", c.name);
            }
        }
        if !leads {
            down.clear();
            since = None;
            continue;
        }
        // A new leader gives every peer the same time to answer it first.
        let since = *since.get_or_insert_with(tokio::time::Instant::now);
        let now = c.net.host.now_ms();
        let due = c.state.read().queues.values().any(|e| e.queue.next_expiry().is_some_and(|t| t <= now));
        if due {
            c.propose(Command::Tick, None);
        }
        let (members, _) = c.members();
        for (id, _) in members {
            if id == c.id {
                continue;
            }
            let silent = since.elapsed() > NODE_DOWN_AFTER && c.net.silent_for(id).is_none_or(|d| d > NODE_DOWN_AFTER);
            if silent && !down.contains(&id) {
                let has_process = c.state.read().processes.values().any(|(n, _)| *n == id);
                if has_process {
                    tracing::warn!(
                        "cluster: node {id:016x} silent for {} s: its consumers are dropped",
                        NODE_DOWN_AFTER.as_secs()
                    );
                    c.propose(Command::NodeDown { node: id }, None);
                }
                down.insert(id);
            } else if !silent {
                down.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

    /// Tickets resolved out of order move the watermark only past a run with no gap,
    /// checked against a model (the smallest unresolved ticket, minus one) over random orders.
    #[test]
    fn the_watermark_passes_only_tickets_resolved_with_every_earlier_one() {
        use rand::{seq::SliceRandom, Rng, SeedableRng};
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut w = Window::default();
            let mut open: Vec<u64> = Vec::new();
            let mut resolved = std::collections::BTreeSet::new();
            let mut last = 0;
            for _ in 0..200 {
                if open.is_empty() || rng.gen_bool(0.5) {
                    last = w.push();
                    open.push(last);
                } else {
                    open.shuffle(&mut rng);
                    let t = open.pop().expect("not empty");
                    resolved.insert(t);
                    let mark = w.resolve(t);
                    let model = (1..=last).find(|t| !resolved.contains(t)).map_or(last, |t| t - 1);
                    assert_eq!(mark, model, "seed {seed}");
                    for t in 1..=last {
                        assert_eq!(w.is_resolved(t), resolved.contains(&t), "seed {seed} ticket {t}");
                    }
                }
            }
        }
    }
}
