//! One user's permissions in one vhost, compiled once: what a connection checks each
//! declare, bind, publish, consume and get against. The common grant, `.*` for everything,
//! costs a branch per check; a regular expression costs a match on the resource's name.
//!
//! The checks and their order are RabbitMQ's (`rabbit_channel`): configure to declare or
//! delete, write on the destination and read on the source to bind, write on the exchange
//! to publish, read on the queue to consume, get or purge; a passive declare needs any of the
//! three. The default exchange is checked under the name `amq.default`.

use super::{AccessState, Refused};
use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

impl Perm {
    pub fn name(self) -> &'static str {
        match self {
            Perm::Configure => "configure",
            Perm::Write => "write",
            Perm::Read => "read",
        }
    }
}

/// What a resource is, as RabbitMQ names it in its refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queue,
    Exchange,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Exchange => "exchange",
        }
    }
}

/// A permission's regular expression.
#[derive(Debug, Clone)]
enum Pattern {
    /// `.*` (or any expression that matches every name): no match needed.
    All,
    /// `""`: matches nothing, as RabbitMQ reads it (`^$`).
    Nothing,
    Regex(Regex),
}

impl Pattern {
    /// Compiles `expr`; an invalid one matches nothing (RabbitMQ denies on a regex error).
    fn compile(expr: &str) -> Pattern {
        match expr {
            ".*" | "^.*" | "^.*$" | ".*$" => Pattern::All,
            "" | "^$" => Pattern::Nothing,
            _ => Regex::new(expr).map_or(Pattern::Nothing, Pattern::Regex),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Nothing => false,
            Pattern::Regex(r) => r.is_match(name),
        }
    }
}

/// Checks that `expr` is a regular expression a permission may hold.
pub fn validate(expr: &str) -> Result<(), super::AccessError> {
    // The patterns `Pattern::compile` reads without a regex are valid without compiling one.
    if matches!(expr, ".*" | "^.*" | "^.*$" | ".*$" | "" | "^$") {
        return Ok(());
    }
    Regex::new(expr).map(|_| ()).map_err(|e| super::AccessError::InvalidRegex(expr.to_string(), e.to_string()))
}

/// Checks a topic permission's expression, with its variables filled in.
pub fn validate_topic(expr: &str) -> Result<(), super::AccessError> {
    Regex::new(&expand(expr, "user", "vhost"))
        .map(|_| ())
        .map_err(|e| super::AccessError::InvalidRegex(expr.to_string(), e.to_string()))
}

#[derive(Debug, Clone)]
struct TopicGrant {
    exchange: String,
    write: Pattern,
    read: Pattern,
}

/// `user`'s permissions in `vhost`, as of `generation` of the broker's access state.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user: String,
    pub vhost: String,
    /// The access state's generation this was compiled from.
    pub generation: u64,
    /// None: the user has no permissions in the vhost (and may not open it).
    perms: Option<[Pattern; 3]>,
    topics: Vec<TopicGrant>,
}

/// Replaces `{username}` and `{vhost}` in a topic permission by their values, escaped.
fn expand(expr: &str, user: &str, vhost: &str) -> String {
    expr.replace("{username}", &regex::escape(user)).replace("{vhost}", &regex::escape(vhost))
}

impl Grant {
    pub fn compile(state: &AccessState, user: &str, vhost: &str, generation: u64) -> Grant {
        let perms = state
            .permission(user, vhost)
            .map(|p| [Pattern::compile(&p.configure), Pattern::compile(&p.write), Pattern::compile(&p.read)]);
        let topics = state
            .topic_permissions_of(user, vhost)
            .map(|t| TopicGrant {
                exchange: t.exchange.clone(),
                write: Pattern::compile(&expand(&t.write, user, vhost)),
                read: Pattern::compile(&expand(&t.read, user, vhost)),
            })
            .collect();
        Grant { user: user.into(), vhost: vhost.into(), generation, perms, topics }
    }

    /// A grant of everything (a broker-internal actor).
    pub fn everything(user: &str, vhost: &str) -> Grant {
        Grant {
            user: user.into(),
            vhost: vhost.into(),
            generation: 0,
            perms: Some([Pattern::All, Pattern::All, Pattern::All]),
            topics: Vec::new(),
        }
    }

    /// Whether the user may open the vhost at all.
    pub fn has_vhost_access(&self) -> bool {
        self.perms.is_some()
    }

    /// RabbitMQ's 530 on connection.open without permissions.
    pub fn vhost_refused(&self) -> Refused {
        Refused::not_allowed(format!("access to vhost '{}' refused for user '{}'", self.vhost, self.user))
    }

    fn allows(&self, name: &str, perm: Perm) -> bool {
        let name = if name.is_empty() { "amq.default" } else { name };
        self.perms.as_ref().is_some_and(|p| p[perm as usize].matches(name))
    }

    fn refused(&self, kind: Kind, name: &str) -> Refused {
        let name = if name.is_empty() && kind == Kind::Exchange { "amq.default" } else { name };
        Refused::access(format!(
            "access to {} '{}' in vhost '{}' refused for user '{}'",
            kind.name(),
            name,
            self.vhost,
            self.user
        ))
    }

    /// `perm` on the queue or exchange `name`, or RabbitMQ's 403.
    pub fn check(&self, kind: Kind, name: &str, perm: Perm) -> Result<(), Refused> {
        if self.allows(name, perm) {
            Ok(())
        } else {
            Err(self.refused(kind, name))
        }
    }

    /// Any of the three permissions (a passive declare).
    pub fn check_any(&self, kind: Kind, name: &str) -> Result<(), Refused> {
        if [Perm::Read, Perm::Write, Perm::Configure].iter().any(|&p| self.allows(name, p)) {
            Ok(())
        } else {
            Err(self.refused(kind, name))
        }
    }

    /// Whether any topic permission is set: if none, topic checks are skipped entirely.
    pub fn has_topic_permissions(&self) -> bool {
        !self.topics.is_empty()
    }

    /// `perm` (write or read) for `routing_key` on the topic exchange `exchange`: allowed
    /// unless a topic permission for that exchange says otherwise.
    pub fn check_topic(&self, exchange: &str, routing_key: &str, perm: Perm) -> Result<(), Refused> {
        let Some(t) = self.topics.iter().find(|t| t.exchange == exchange) else {
            return Ok(());
        };
        let pattern = if perm == Perm::Write { &t.write } else { &t.read };
        if pattern.matches(routing_key) {
            return Ok(());
        }
        Err(Refused::access(format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn state(configure: &str, write: &str, read: &str) -> AccessState {
        let mut s = AccessState::default();
        s.apply(&AccessChange::SetPermissions {
            permission: PermissionDef {
                user: "u".into(),
                vhost: "/".into(),
                configure: configure.into(),
                write: write.into(),
                read: read.into(),
            },
        });
        s
    }

    #[test]
    fn expressions_match_anywhere_and_empty_matches_nothing() {
        let g = Grant::compile(&state("^app\\.", "", "log"), "u", "/", 1);
        assert!(g.check(Kind::Queue, "app.jobs", Perm::Configure).is_ok());
        assert!(g.check(Kind::Queue, "my.app.jobs", Perm::Configure).is_err());
        assert!(g.check(Kind::Exchange, "anything", Perm::Write).is_err());
        assert!(g.check(Kind::Queue, "audit-log-2", Perm::Read).is_ok());
        assert_eq!(
            g.check(Kind::Exchange, "", Perm::Write).unwrap_err().text,
            "access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
        // A passive declare needs any one of them.
        assert!(g.check_any(Kind::Queue, "log").is_ok());
        assert!(g.check_any(Kind::Queue, "other").is_err());
    }

    #[test]
    fn no_permissions_no_vhost() {
        let g = Grant::compile(&AccessState::default(), "u", "/", 1);
        assert!(!g.has_vhost_access());
        assert_eq!(g.vhost_refused().text, "access to vhost '/' refused for user 'u'");
        assert!(g.check(Kind::Queue, "q", Perm::Read).is_err());
    }

    #[test]
    fn topic_permissions_expand_variables_and_apply_to_their_exchange_only() {
        let mut s = state(".*", ".*", ".*");
        s.apply(&AccessChange::SetTopicPermissions {
            permission: TopicPermissionDef {
                user: "u.1".into(),
                vhost: "/".into(),
                exchange: "amq.topic".into(),
                write: "^{username}\\.".into(),
                read: "^public\\.".into(),
            },
        });
        let g = Grant::compile(&s, "u.1", "/", 1);
        assert!(g.check_topic("amq.topic", "u.1.temp", Perm::Write).is_ok());
        // The user name is escaped: its dot matches only a dot.
        assert!(g.check_topic("amq.topic", "uX1.temp", Perm::Write).is_err());
        assert_eq!(
            g.check_topic("amq.topic", "other.temp", Perm::Write).unwrap_err().text,
            "access to topic 'other.temp' in exchange 'amq.topic' in vhost '/' refused for user 'u.1'"
        );
        assert!(g.check_topic("amq.topic", "public.news", Perm::Read).is_ok());
        assert!(g.check_topic("other", "anything", Perm::Write).is_ok());
    }
}
