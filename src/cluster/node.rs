//! A cluster node: the Raft instance with its log store and state machine, the listener on
//! the cluster port, and what the broker side asks of the cluster (proposals and their
//! tickets, membership, status). Its parts:
//!
//! - [`proposer`]: batches of proposals sent until applied, and the tickets they resolve;
//! - [`membership`]: the first start's bootstrap from the seeds, nodes joining and leaving;
//! - [`duties`]: the leader's periodic work, and a follower's watch on a silent leader.
//!
//! The proposer gathers what the node's channels propose while the previous batch is in flight
//! and sends it as one batch: to openraft when this node leads, else to the leader over the
//! transport. Batches of one process are applied in order and each once (the state machine
//! skips a retried batch it has), so a proposal's ticket is resolved once every earlier one is:
//! channels wait for a watermark, as they wait for the disk's. Requests to another node that
//! are not proposals (a publish to a classic queue that lives there, see `classic`) take
//! tickets from the same sequence and resolve out of order: the watermark moves past a ticket
//! once it and every earlier one are resolved ([`proposer::Window`]).

mod duties;
mod membership;
mod proposer;

use self::duties::{leader_duties, watch_leader};
use self::membership::bootstrap;
use self::proposer::{propose_loop, trim_map, trim_set, write_local, Pending, Window};
use super::host::{Host, Listener};
use super::log_store::LogStore;
use super::machine::{Effects, Machine, Replicated};
use super::quorum::Outcome;
use super::transport::{self, Factory, NetCtx, Request, Response};
use super::types::{node_id, Command, NodeId, Raft};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};

/// A node that answered none of the leader's RPCs for this long is down: its consumers are
/// dropped and what they held goes to others (it registers them again if it comes back).
const NODE_DOWN_AFTER: Duration = Duration::from_secs(5);
/// Proposals waiting past this many bytes pause their publishers (they stop being read) until
/// the backlog is below half of it: a node that cannot reach a quorum does not buffer
/// publishes without bound.
const BACKLOG_HIGH: usize = 64 * 1024 * 1024;

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

    pub fn address_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let addr = m.membership_config.nodes().find(|(n, _)| **n == id).map(|(_, n)| n.addr.clone());
        addr
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
