//! Single active consumer for the stream protocol, as RabbitMQ's
//! rabbit_stream_sac_coordinator: subscriptions that name a group (`single-active-consumer`
//! `true` and a `name`) take turns, one at a time, on a stream. A state machine of
//! register, unregister and activate; what it asks of connections comes out as [`Notify`]
//! effects. No I/O here.
//!
//! - On a plain stream the first member is active; when it leaves, the next one in the
//!   order they came takes over.
//! - On a partition of a super stream (a `super-stream` property), members spread over the
//!   partitions: partition `i` goes to member `i % n`, so a group of consumers scales out as
//!   Kafka's do. When a newcomer or a departure moves a partition to another member, the
//!   active one is first told to step down; once its client has answered, the connection
//!   calls [`Groups::activate`] and the member now due is activated. A partition is never
//!   read by two members at once.

use std::collections::HashMap;

/// A group: consumers of one stream under one name, in one vhost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub vhost: String,
    pub stream: String,
    pub name: String,
}

/// A member: a connection's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub connection: u64,
    pub subscription: u8,
    pub active: bool,
}

/// What a connection is told about one of its subscriptions: it is now active or not, and
/// whether it is stepping down (its answer then activates the member due).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub connection: u64,
    pub subscription: u8,
    pub key: GroupKey,
    pub active: bool,
    pub stepping_down: bool,
}

#[derive(Debug, Clone)]
struct Group {
    /// The stream's place among its super stream's partitions; None for a plain stream.
    partition: Option<usize>,
    members: Vec<Member>,
}

impl Group {
    fn active(&self) -> Option<usize> {
        self.members.iter().position(|m| m.active)
    }
    /// The member a partition goes to now.
    fn due(&self, partition: usize) -> usize {
        partition % self.members.len()
    }
    fn notify(&self, key: &GroupKey, at: usize, active: bool, stepping_down: bool) -> Notify {
        let m = self.members[at];
        Notify { connection: m.connection, subscription: m.subscription, key: key.clone(), active, stepping_down }
    }
    /// With a partition: if the active member is not the one due, it is told to step down.
    fn rebalance(&mut self, key: &GroupKey, partition: usize, out: &mut Vec<Notify>) {
        if let Some(a) = self.active() {
            if a != self.due(partition) {
                self.members[a].active = false;
                out.push(self.notify(key, a, false, true));
            }
        }
    }
}

/// Every group of the node.
#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<GroupKey, Group>,
}

impl Groups {
    /// A subscription joins `key`'s group (`partition`: its stream's place in a super
    /// stream). Returns whether it is active now, with the notifications to send.
    pub fn register(
        &mut self,
        key: &GroupKey,
        partition: Option<usize>,
        connection: u64,
        subscription: u8,
    ) -> (bool, Vec<Notify>) {
        let group = self.groups.entry(key.clone()).or_insert(Group { partition, members: Vec::new() });
        let mut out = Vec::new();
        let first = group.members.is_empty();
        // On a plain stream, the newcomer is active only if no one is.
        let active = first || (group.partition.is_none() && group.active().is_none());
        group.members.push(Member { connection, subscription, active });
        if active {
            out.push(group.notify(key, group.members.len() - 1, true, false));
        } else if let Some(p) = group.partition {
            group.rebalance(key, p, &mut out);
        }
        (active, out)
    }

    /// A subscription leaves its group (unsubscribed, or its connection closed).
    pub fn unregister(&mut self, key: &GroupKey, connection: u64, subscription: u8) -> Vec<Notify> {
        let mut out = Vec::new();
        let Some(group) = self.groups.get_mut(key) else { return out };
        let Some(at) = group.members.iter().position(|m| m.connection == connection && m.subscription == subscription)
        else {
            return out;
        };
        let gone = group.members.remove(at);
        if group.members.is_empty() {
            self.groups.remove(key);
            return out;
        }
        match group.partition {
            None if gone.active => {
                group.members[0].active = true;
                out.push(group.notify(key, 0, true, false));
            }
            None => {}
            Some(p) => {
                if group.active().is_some() {
                    group.rebalance(key, p, &mut out);
                } else if gone.active {
                    let due = group.due(p);
                    group.members[due].active = true;
                    out.push(group.notify(key, due, true, false));
                }
                // Else a member is stepping down: its answer activates the one due.
            }
        }
        out
    }

    /// A member that stepped down has answered (or left meanwhile): the member due now is
    /// activated.
    pub fn activate(&mut self, key: &GroupKey) -> Vec<Notify> {
        let mut out = Vec::new();
        let Some(group) = self.groups.get_mut(key) else { return out };
        let due = match group.partition {
            Some(p) => group.due(p),
            None => 0,
        };
        for m in group.members.iter_mut() {
            m.active = false;
        }
        group.members[due].active = true;
        out.push(group.notify(key, due, true, false));
        out
    }

    /// A group's members, in the order they came (for the model-based test).
    #[cfg(test)]
    fn members(&self, key: &GroupKey) -> Vec<Member> {
        self.groups.get(key).map(|g| g.members.clone()).unwrap_or_default()
    }
}

/// Model-based: random joins, departures and step-down answers over a few groups, as
/// connections would send them, against the rules: at most one member active per group, and
/// once the step-down answers are in, exactly one, the one due (the first member of a plain
/// stream's group, member `i % n` of partition `i`). Every notification names a member that
/// is there, and a member is told it is active exactly when it became so.
#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn one_active_member_per_group_whatever_the_order() {
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut groups = Groups::default();
            let keys: Vec<(GroupKey, Option<usize>)> = (0..3)
                .map(|i| {
                    let key = GroupKey { vhost: "/".into(), stream: format!("s-{i}"), name: "app".into() };
                    (key, if i == 0 { None } else { Some(i) })
                })
                .collect();
            // What each connection was last told, per (group, connection, subscription).
            let mut told: HashMap<(usize, u64, u8), bool> = HashMap::new();
            // Step-downs not answered yet, per group.
            let mut stepping: Vec<Vec<(u64, u8)>> = vec![Vec::new(); keys.len()];
            let mut next_sub = 0u8;
            for step in 0..200 {
                let g = rng.gen_range(0..keys.len());
                let (key, partition) = &keys[g];
                let effects = match rng.gen_range(0..10) {
                    0..=4 => {
                        let (conn, sub) = (rng.gen_range(1..4u64), next_sub);
                        next_sub = next_sub.wrapping_add(1);
                        let (active, effects) = groups.register(key, *partition, conn, sub);
                        told.insert((g, conn, sub), false);
                        assert_eq!(
                            active,
                            effects.iter().any(|n| n.active && (n.connection, n.subscription) == (conn, sub))
                        );
                        effects
                    }
                    5..=7 => {
                        let members = groups.members(key);
                        if members.is_empty() {
                            continue;
                        }
                        let m = members[rng.gen_range(0..members.len())];
                        let mut effects = groups.unregister(key, m.connection, m.subscription);
                        told.remove(&(g, m.connection, m.subscription));
                        // A member that leaves while stepping down: its connection activates.
                        if let Some(i) = stepping[g].iter().position(|s| *s == (m.connection, m.subscription)) {
                            stepping[g].remove(i);
                            effects.extend(groups.activate(key));
                        }
                        effects
                    }
                    _ => match stepping[g].pop() {
                        Some(_) => groups.activate(key),
                        None => continue,
                    },
                };
                for n in effects {
                    let gi = keys.iter().position(|(k, _)| *k == n.key).unwrap();
                    assert!(
                        groups
                            .members(&n.key)
                            .iter()
                            .any(|m| (m.connection, m.subscription) == (n.connection, n.subscription)),
                        "seed {seed} step {step}: a notification for a member not there"
                    );
                    told.insert((gi, n.connection, n.subscription), n.active);
                    if n.stepping_down {
                        stepping[gi].push((n.connection, n.subscription));
                    }
                }
                for (gi, (key, partition)) in keys.iter().enumerate() {
                    let members = groups.members(key);
                    let active: Vec<usize> = (0..members.len()).filter(|&i| members[i].active).collect();
                    assert!(active.len() <= 1, "seed {seed} step {step}: two active");
                    for m in &members {
                        assert_eq!(
                            told.get(&(gi, m.connection, m.subscription)).copied(),
                            Some(m.active),
                            "seed {seed} step {step}"
                        );
                    }
                    if !members.is_empty() && stepping[gi].is_empty() {
                        let due = partition.map_or(0, |p| p % members.len());
                        assert_eq!(active, vec![due], "seed {seed} step {step}: group {gi}");
                    }
                }
            }
        }
    }
}
