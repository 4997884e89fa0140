//! The leader's duties (expiring messages, declaring silent nodes down) and a follower's
//! watch on a leader that went silent (see [`watch_leader`]).

use super::{Cluster, NODE_DOWN_AFTER};
use crate::cluster::types::{Command, NodeId};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A follower that has not heard from its leader for this long (three heartbeats) looks
/// whether the leader's port still takes connections (see [`watch_leader`]).
const PROBE_AFTER: Duration = Duration::from_millis(300);
/// How long that look may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a follower checks when it last heard from its leader.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// How often the leader looks for expired messages and silent nodes.
const LEADER_TICK: Duration = Duration::from_millis(250);

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
pub(super) async fn watch_leader(c: Arc<Cluster>, lease: Duration) {
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
pub(super) async fn leader_duties(c: Arc<Cluster>) {
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
