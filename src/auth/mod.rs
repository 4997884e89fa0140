//! Who may do what: users (password hashes, tags, limits), vhosts (limits), and permissions
//! per user and vhost, in RabbitMQ's model. No I/O: the state here changes one
//! [`AccessChange`] at a time, the same commands the definitions journal records (and a
//! cluster would replicate); [`grant::Grant`] is one user's permissions in one vhost,
//! compiled, which a connection checks every operation against.
//!
//! RabbitMQ's rules, kept: a permission is three regular expressions (configure, write, read)
//! matched anywhere in a resource's name (`""` matches nothing); a user without permissions
//! in a vhost cannot open it; topic permissions (write and read expressions on routing keys
//! of one topic exchange, with `{username}` and `{vhost}` expanded) restrict only where they
//! are set.

pub mod grant;
pub mod password;
pub mod sasl;
pub mod throttle;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A limit's value: negative means none, as in RabbitMQ (`-1`).
pub type Limits = BTreeMap<String, i64>;

/// The vhost limits RabbitMQ knows, and the user limits.
pub const VHOST_LIMITS: [&str; 2] = ["max-connections", "max-queues"];
pub const USER_LIMITS: [&str; 2] = ["max-connections", "max-channels"];

/// The management tags RabbitMQ gives meaning to.
pub const TAGS: [&str; 5] = ["administrator", "monitoring", "policymaker", "management", "impersonator"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    /// base64 of salt and hash (see [`password`]); empty for a user who logs in only by
    /// EXTERNAL (a client certificate).
    pub password_hash: String,
    #[serde(default = "default_algorithm")]
    pub hashing_algorithm: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

fn default_algorithm() -> String {
    password::SHA256.to_string()
}

impl UserDef {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// A limit in effect (set and not negative).
    pub fn limit(&self, name: &str) -> Option<u64> {
        limit(&self.limits, name)
    }
}

fn limit(limits: &Limits, name: &str) -> Option<u64> {
    limits.get(name).and_then(|&v| u64::try_from(v).ok())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// The queue type a declare without `x-queue-type` gets, as RabbitMQ's vhost metadata
    /// keeps it (`defaultqueuetype` in the API); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
}

impl VhostDef {
    pub fn new(name: &str) -> Self {
        VhostDef {
            name: name.into(),
            description: String::new(),
            tags: Vec::new(),
            limits: Limits::new(),
            default_queue_type: None,
        }
    }

    pub fn limit(&self, name: &str) -> Option<u64> {
        limit(&self.limits, name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// One change to users, vhosts or permissions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AccessChange {
    PutUser {
        user: UserDef,
    },
    DeleteUser {
        name: String,
    },
    PutVhost {
        vhost: VhostDef,
    },
    DeleteVhost {
        name: String,
    },
    SetPermissions {
        permission: PermissionDef,
    },
    ClearPermissions {
        user: String,
        vhost: String,
    },
    SetTopicPermissions {
        permission: TopicPermissionDef,
    },
    /// `exchange: None` clears every topic permission of the user in the vhost.
    ClearTopicPermissions {
        user: String,
        vhost: String,
        exchange: Option<String>,
    },
}

/// Users, vhosts and permissions as lists (how a snapshot holds them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessLists {
    pub users: Vec<UserDef>,
    pub vhosts: Vec<VhostDef>,
    pub permissions: Vec<PermissionDef>,
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
}

/// Every user, vhost and permission.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "AccessLists", into = "AccessLists")]
pub struct AccessState {
    users: BTreeMap<String, UserDef>,
    vhosts: BTreeMap<String, VhostDef>,
    /// By (user, vhost).
    permissions: BTreeMap<(String, String), PermissionDef>,
    /// By (user, vhost, exchange).
    topic_permissions: BTreeMap<(String, String, String), TopicPermissionDef>,
}

impl From<AccessLists> for AccessState {
    fn from(l: AccessLists) -> Self {
        let mut s = AccessState::default();
        for user in l.users {
            s.apply(&AccessChange::PutUser { user });
        }
        for vhost in l.vhosts {
            s.apply(&AccessChange::PutVhost { vhost });
        }
        for permission in l.permissions {
            s.apply(&AccessChange::SetPermissions { permission });
        }
        for permission in l.topic_permissions {
            s.apply(&AccessChange::SetTopicPermissions { permission });
        }
        s
    }
}

impl From<AccessState> for AccessLists {
    fn from(s: AccessState) -> Self {
        AccessLists {
            users: s.users.into_values().collect(),
            vhosts: s.vhosts.into_values().collect(),
            permissions: s.permissions.into_values().collect(),
            topic_permissions: s.topic_permissions.into_values().collect(),
        }
    }
}

impl AccessState {
    pub fn apply(&mut self, change: &AccessChange) {
        match change {
            AccessChange::PutUser { user } => {
                self.users.insert(user.name.clone(), user.clone());
            }
            AccessChange::DeleteUser { name } => {
                self.users.remove(name);
                self.permissions.retain(|(u, _), _| u != name);
                self.topic_permissions.retain(|(u, _, _), _| u != name);
            }
            AccessChange::PutVhost { vhost } => {
                self.vhosts.insert(vhost.name.clone(), vhost.clone());
            }
            AccessChange::DeleteVhost { name } => {
                self.vhosts.remove(name);
                self.permissions.retain(|(_, v), _| v != name);
                self.topic_permissions.retain(|(_, v, _), _| v != name);
            }
            AccessChange::SetPermissions { permission: p } => {
                self.permissions.insert((p.user.clone(), p.vhost.clone()), p.clone());
            }
            AccessChange::ClearPermissions { user, vhost } => {
                self.permissions.remove(&(user.clone(), vhost.clone()));
            }
            AccessChange::SetTopicPermissions { permission: p } => {
                self.topic_permissions.insert((p.user.clone(), p.vhost.clone(), p.exchange.clone()), p.clone());
            }
            AccessChange::ClearTopicPermissions { user, vhost, exchange } => {
                self.topic_permissions
                    .retain(|(u, v, x), _| !(u == user && v == vhost && exchange.as_ref().is_none_or(|e| e == x)));
            }
        }
    }

    pub fn user(&self, name: &str) -> Option<&UserDef> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &UserDef> {
        self.users.values()
    }

    pub fn vhost(&self, name: &str) -> Option<&VhostDef> {
        self.vhosts.get(name)
    }

    pub fn vhosts(&self) -> impl Iterator<Item = &VhostDef> {
        self.vhosts.values()
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<&PermissionDef> {
        self.permissions.get(&(user.to_string(), vhost.to_string()))
    }

    pub fn permissions(&self) -> impl Iterator<Item = &PermissionDef> {
        self.permissions.values()
    }

    pub fn topic_permissions(&self) -> impl Iterator<Item = &TopicPermissionDef> {
        self.topic_permissions.values()
    }

    /// The topic permissions of `user` in `vhost`, by exchange.
    pub fn topic_permissions_of<'a>(
        &'a self,
        user: &'a str,
        vhost: &'a str,
    ) -> impl Iterator<Item = &'a TopicPermissionDef> + 'a {
        self.topic_permissions.values().filter(move |p| p.user == user && p.vhost == vhost)
    }

    /// The changes that build this state from nothing (for a definitions import or a
    /// replica starting empty).
    pub fn changes(&self) -> Vec<AccessChange> {
        let lists = AccessLists::from(self.clone());
        let mut out: Vec<AccessChange> = lists.users.into_iter().map(|user| AccessChange::PutUser { user }).collect();
        out.extend(lists.vhosts.into_iter().map(|vhost| AccessChange::PutVhost { vhost }));
        out.extend(lists.permissions.into_iter().map(|permission| AccessChange::SetPermissions { permission }));
        out.extend(
            lists.topic_permissions.into_iter().map(|permission| AccessChange::SetTopicPermissions { permission }),
        );
        out
    }
}

/// Why a change to users, vhosts or permissions was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("no_such_user: {0}")]
    NoSuchUser(String),
    #[error("no_such_vhost: {0}")]
    NoSuchVhost(String),
    #[error("invalid regular expression '{0}': {1}")]
    InvalidRegex(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// A resource access refused, with RabbitMQ's text; `not_allowed` (530, closes the
/// connection) for vhost access and limits, else `access_refused` (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct Refused {
    pub text: String,
    pub not_allowed: bool,
}

impl Refused {
    pub fn access(text: String) -> Self {
        Refused { text, not_allowed: false }
    }
    pub fn not_allowed(text: String) -> Self {
        Refused { text, not_allowed: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn user(name: &str) -> UserDef {
        UserDef {
            name: name.into(),
            password_hash: String::new(),
            hashing_algorithm: password::SHA256.into(),
            tags: vec![],
            limits: Limits::new(),
        }
    }

    fn perm(u: &str, v: &str) -> PermissionDef {
        PermissionDef { user: u.into(), vhost: v.into(), configure: ".*".into(), write: ".*".into(), read: ".*".into() }
    }

    fn topic(u: &str, v: &str, x: &str) -> TopicPermissionDef {
        TopicPermissionDef {
            user: u.into(),
            vhost: v.into(),
            exchange: x.into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }

    #[test]
    fn deleting_a_user_or_vhost_takes_its_permissions_along() {
        let mut s = AccessState::default();
        for c in [
            AccessChange::PutUser { user: user("a") },
            AccessChange::PutUser { user: user("b") },
            AccessChange::PutVhost { vhost: VhostDef::new("/") },
            AccessChange::PutVhost { vhost: VhostDef::new("v") },
            AccessChange::SetPermissions { permission: perm("a", "/") },
            AccessChange::SetPermissions { permission: perm("a", "v") },
            AccessChange::SetPermissions { permission: perm("b", "v") },
            AccessChange::SetTopicPermissions { permission: topic("a", "v", "amq.topic") },
        ] {
            s.apply(&c);
        }
        s.apply(&AccessChange::DeleteVhost { name: "v".into() });
        assert_eq!(s.permissions().count(), 1);
        assert_eq!(s.topic_permissions().count(), 0);
        s.apply(&AccessChange::DeleteUser { name: "a".into() });
        assert_eq!(s.permissions().count(), 0);
        assert_eq!(s.users().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    /// Random changes; the state rebuilt from its own changes, and read back from JSON, is
    /// the same state.
    #[test]
    fn random_changes_survive_a_snapshot_and_a_rebuild() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = AccessState::default();
            let name = |rng: &mut StdRng, p: &str| format!("{p}{}", rng.gen_range(0..4));
            for step in 0..100 {
                let (u, v) = (name(&mut rng, "u"), name(&mut rng, "v"));
                let c = match rng.gen_range(0..8) {
                    0 => AccessChange::PutUser { user: user(&u) },
                    1 => AccessChange::DeleteUser { name: u },
                    2 => AccessChange::PutVhost { vhost: VhostDef::new(&v) },
                    3 => AccessChange::DeleteVhost { name: v },
                    4 => AccessChange::SetPermissions { permission: perm(&u, &v) },
                    5 => AccessChange::ClearPermissions { user: u, vhost: v },
                    6 => AccessChange::SetTopicPermissions { permission: topic(&u, &v, &name(&mut rng, "x")) },
                    _ => AccessChange::ClearTopicPermissions {
                        user: u,
                        vhost: v,
                        exchange: rng.gen_bool(0.5).then(|| name(&mut rng, "x")),
                    },
                };
                s.apply(&c);
                let json = serde_json::to_string(&s).unwrap();
                let back: AccessState = serde_json::from_str(&json).unwrap();
                assert_eq!(back, s, "seed {seed} step {step}");
                let mut rebuilt = AccessState::default();
                for c in s.changes() {
                    rebuilt.apply(&c);
                }
                assert_eq!(rebuilt, s, "seed {seed} step {step}");
            }
        }
    }
}
