//! The proposer: what this node's channels propose, gathered into batches and sent until
//! applied, and the tickets they wait on.
//!
//! While this node leads, up to [`PIPELINE`] batches are in openraft at once; a follower
//! sends one batch at a time to the leader over the transport. Batches of one process are
//! applied in order and each once (the state machine skips a retried batch it has), so a
//! proposal's ticket is resolved once every earlier one is; requests that are not proposals
//! (see `classic`) resolve out of order, and [`Window`] keeps the watermark honest.

use super::{Cluster, BACKLOG_HIGH};
use crate::cluster::quorum::Outcome;
use crate::cluster::transport::{Peer, ProposeError, Request, Response};
use crate::cluster::types::{Batch, Command, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A batch carries at most this many commands, or about this many bytes of messages.
const BATCH_COMMANDS: usize = 4096;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches in Raft at once from a leading node: while one commits, the next are appended.
const PIPELINE: usize = 16;
/// A proposal that found no leader is sent again after at least this long.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Answers kept for their waiters (refusals, enqueues a full queue rejected) past this many,
/// the oldest go: a waiter takes its answer as soon as its ticket resolves, and one that
/// never will (its channel closed meanwhile, a consume with nowait) must not keep it for ever.
const ANSWERS_KEPT: usize = 65_536;

/// The tickets past the resolved watermark, in order: whether each is still unresolved.
/// Tickets are taken in order and pushed here as they are; resolving one marks it, and the
/// watermark moves past the resolved run at the front.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Every ticket at or below this is resolved.
    pub(super) base: u64,
    unresolved: VecDeque<bool>,
}

impl Window {
    /// Takes the next ticket, unresolved.
    pub(super) fn push(&mut self) -> u64 {
        self.unresolved.push_back(true);
        self.base + self.unresolved.len() as u64
    }
    /// Whether `ticket` is resolved (it and every earlier one, or it alone past the mark).
    pub(super) fn is_resolved(&self, ticket: u64) -> bool {
        ticket <= self.base || self.unresolved.get((ticket - self.base - 1) as usize) == Some(&false)
    }
    /// Marks `ticket` resolved; returns the watermark after it.
    pub(super) fn resolve(&mut self, ticket: u64) -> u64 {
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

/// A proposal waiting for the next batch: its ticket, the command, and who waits for its
/// outcome.
pub(super) struct Pending {
    pub(super) ticket: u64,
    pub(super) command: Command,
    pub(super) reply: Option<oneshot::Sender<Outcome>>,
}

/// Proposes a batch to this node's Raft (which must lead).
/// Answers the entry's index and the outcomes (applied here when it answers).
pub(super) async fn write_local(c: &Cluster, batch: Batch) -> Result<(u64, Vec<Outcome>), ProposeError> {
    match c.raft.client_write(batch).await {
        Ok(r) => Ok((r.log_id.index, r.data)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
        Err(e) => Err(ProposeError::Failed(e.to_string())),
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
pub(super) async fn propose_loop(c: Arc<Cluster>) {
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
pub(super) fn trim_set(set: &mut BTreeSet<u64>) {
    while set.len() > ANSWERS_KEPT {
        set.pop_first();
    }
}

pub(super) fn trim_map<T>(map: &mut BTreeMap<u64, T>) {
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
