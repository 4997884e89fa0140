//! Exchanges: the bindings they hold and how each type routes. One file per exchange type.

mod consistent_hash;
pub mod delayed;
mod direct;
mod fanout;
mod headers;
mod topic;

use super::error::{AmqpError, AmqpResult};
use crate::broker::FastMap;
use crate::types::{FieldTable, ShortStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// RabbitMQ's exchange `message_stats`: messages published into the exchange and copies
/// routed out of it to queues, counted with one relaxed add each as a message is routed;
/// rates and history are sampled off the message path.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    pub publish_in: AtomicU64,
    pub publish_out: AtomicU64,
    pub meter: parking_lot::Mutex<super::history::Meter<2>>,
}

impl ExchangeStats {
    /// One message published in, reaching `routed` queues.
    #[inline]
    pub fn count(&self, routed: usize) {
        self.publish_in.fetch_add(1, Ordering::Relaxed);
        if routed > 0 {
            self.publish_out.fetch_add(routed as u64, Ordering::Relaxed);
        }
    }
    /// Copies of a message held by a delayed exchange routed out when it was due.
    #[inline]
    pub fn count_out(&self, routed: usize) {
        if routed > 0 {
            self.publish_out.fetch_add(routed as u64, Ordering::Relaxed);
        }
    }
    /// (publish_in, publish_out).
    pub fn values(&self) -> [u64; 2] {
        [self.publish_in.load(Ordering::Relaxed), self.publish_out.load(Ordering::Relaxed)]
    }
    pub fn sample(&self, now_ms: u64) {
        let values = self.values();
        self.meter.lock().sample(now_ms, values);
    }
}

/// Where a binding sends matching messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(ShortStr),
    Exchange(ShortStr),
}

impl Destination {
    pub fn name(&self) -> &ShortStr {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
    /// `queue` or `exchange`, as definitions and the management API name the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Queue(_) => "queue",
            Destination::Exchange(_) => "exchange",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-consistent-hash`, as RabbitMQ's plugin (see [`consistent_hash`]).
    ConsistentHash,
    /// `x-delayed-message`, as RabbitMQ's plugin (see [`delayed`]): routes as the type its
    /// `x-delayed-type` argument names, after holding messages that ask for a delay.
    DelayedMessage,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> AmqpResult<Self> {
        Ok(match name {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            "x-consistent-hash" => ExchangeKind::ConsistentHash,
            "x-delayed-message" => ExchangeKind::DelayedMessage,
            other => return Err(AmqpError::command_invalid(format!("unknown exchange type '{other}'"))),
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => "x-consistent-hash",
            ExchangeKind::DelayedMessage => "x-delayed-message",
        }
    }
}

/// Routing state of one exchange type.
trait Router: Send + Sync + std::fmt::Debug {
    fn bind(&mut self, binding: &Binding);
    fn unbind(&mut self, binding: &Binding);
    fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>);
}

#[derive(Debug)]
pub struct Exchange {
    pub name: ShortStr,
    pub kind: ExchangeKind,
    /// The type whose routing it follows: its own, or for a delayed exchange the type its
    /// `x-delayed-type` names.
    pub routing: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    bindings: Vec<Binding>,
    /// Positions in `bindings` by destination and key, so that a bind or unbind finds an
    /// equal binding without scanning them all.
    index: FastMap<(Destination, ShortStr), Vec<u32>>,
    /// The keys each destination is bound with (each once): removing a destination (a queue
    /// deleted) finds its bindings through them, at the cost of its own bindings only.
    keys: FastMap<Destination, Vec<ShortStr>>,
    router: Box<dyn Router>,
    /// Shared with the vhost for the default exchange, whose publishes are counted without
    /// looking it up.
    pub stats: Arc<ExchangeStats>,
    /// Who declared it: a user, or `rmq-internal` for those the broker makes itself (as
    /// RabbitMQ's `user_who_performed_action`).
    pub declared_by: ShortStr,
    /// The policy and operator policy that apply to it, and the alternate exchange they give
    /// it when its arguments name none (resolved when either changes, not per publish).
    pub applied: crate::broker::policy::Applied,
    policy_alternate: Option<ShortStr>,
    /// What a consistent-hash exchange hashes (the routing key for every other type).
    hash_on: consistent_hash::HashOn,
}

impl Exchange {
    pub fn new(
        name: ShortStr,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        // Checked at declare (see [`Exchange::validate_arguments`]); one recovered from disk
        // with arguments that no longer pass routes as a direct exchange, or hashes its
        // routing key.
        let routing = match kind {
            ExchangeKind::DelayedMessage => delayed::routing_kind(&arguments).unwrap_or(ExchangeKind::Direct),
            other => other,
        };
        let router: Box<dyn Router> = match routing {
            ExchangeKind::Direct | ExchangeKind::DelayedMessage => Box::<direct::DirectRouter>::default(),
            ExchangeKind::Fanout => Box::<fanout::FanoutRouter>::default(),
            ExchangeKind::Topic => Box::<topic::TopicRouter>::default(),
            ExchangeKind::Headers => Box::<headers::HeadersRouter>::default(),
            ExchangeKind::ConsistentHash => Box::<consistent_hash::ConsistentHashRouter>::default(),
        };
        let hash_on = if routing == ExchangeKind::ConsistentHash {
            consistent_hash::HashOn::of(&arguments).unwrap_or(consistent_hash::HashOn::RoutingKey)
        } else {
            consistent_hash::HashOn::RoutingKey
        };
        Exchange {
            name,
            kind,
            routing,
            durable,
            auto_delete,
            internal,
            arguments,
            declared_by: ShortStr::from_static("rmq-internal"),
            bindings: Vec::new(),
            index: FastMap::default(),
            keys: FastMap::default(),
            router,
            stats: Arc::default(),
            applied: Default::default(),
            policy_alternate: None,
            hash_on,
        }
    }

    /// Checks a new exchange's arguments for its type, as RabbitMQ's exchange types
    /// validate them at declare.
    pub fn validate_arguments(kind: ExchangeKind, arguments: &FieldTable) -> AmqpResult<()> {
        match kind {
            ExchangeKind::ConsistentHash => {
                consistent_hash::HashOn::of(arguments)?;
            }
            // The plugin checks its own argument, then the arguments as the type it names.
            ExchangeKind::DelayedMessage => Self::validate_arguments(delayed::routing_kind(arguments)?, arguments)?,
            _ => {}
        }
        Ok(())
    }

    /// What a consistent-hash exchange hashes when it is not the routing key: the header's
    /// or property's value in `props` (None for every other exchange, and for the key).
    pub fn hash_input(&self, props: Option<&crate::types::BasicProperties>) -> Option<String> {
        (self.routing == ExchangeKind::ConsistentHash && self.hash_on != consistent_hash::HashOn::RoutingKey)
            .then(|| self.hash_on.value(props))
    }

    /// Whether routing reads the message's properties (headers exchanges, consistent-hash
    /// exchanges that hash a header or a property, delayed exchanges for `x-delay`).
    pub fn reads_properties(&self) -> bool {
        self.kind == ExchangeKind::DelayedMessage
            || self.routing == ExchangeKind::Headers
            || (self.routing == ExchangeKind::ConsistentHash && self.hash_on != consistent_hash::HashOn::RoutingKey)
    }

    /// The alternate exchange for unroutable messages: the `alternate-exchange` argument, else
    /// the policy's.
    pub fn alternate_exchange(&self) -> Option<&str> {
        match self.arguments.get("alternate-exchange").and_then(|v| v.as_str()) {
            Some(ae) => Some(ae),
            None => self.policy_alternate.as_deref(),
        }
    }

    /// Applies a policy (or none); returns whether anything changed.
    pub fn set_policy(&mut self, applied: crate::broker::policy::Applied) -> bool {
        if self.applied == applied {
            return false;
        }
        self.policy_alternate = applied.alternate_exchange(&FieldTable::new());
        self.applied = applied;
        true
    }

    /// Checks a binding's arguments for this exchange type before it is added.
    pub fn validate_binding(&self, binding: &Binding) -> AmqpResult<()> {
        match self.routing {
            ExchangeKind::Headers => headers::validate(&binding.arguments),
            ExchangeKind::ConsistentHash => consistent_hash::validate(binding),
            _ => Ok(()),
        }
    }

    /// Where an equal binding is in `bindings`, if there is one.
    fn position(&self, binding: &Binding) -> Option<usize> {
        let key = (binding.destination.clone(), binding.routing_key.clone());
        let positions = self.index.get(&key)?;
        positions.iter().map(|&p| p as usize).find(|&p| same_binding(&self.bindings[p], binding))
    }

    /// Adds a binding; an identical one already present is left as is.
    pub fn bind(&mut self, binding: Binding) {
        if self.position(&binding).is_some() {
            return;
        }
        self.router.bind(&binding);
        let key = (binding.destination.clone(), binding.routing_key.clone());
        let positions = self.index.entry(key).or_default();
        if positions.is_empty() {
            self.keys.entry(binding.destination.clone()).or_default().push(binding.routing_key.clone());
        }
        positions.push(self.bindings.len() as u32);
        self.bindings.push(binding);
    }

    /// Whether an equal binding is present.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.position(binding).is_some()
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(pos) = self.position(binding) else {
            return false;
        };
        self.remove_at(pos);
        true
    }

    /// Removes the binding at `pos`, keeping the indexes in step; returns it.
    fn remove_at(&mut self, pos: usize) -> Binding {
        let b = self.bindings.swap_remove(pos);
        self.router.unbind(&b);
        let key = (b.destination.clone(), b.routing_key.clone());
        if let Some(positions) = self.index.get_mut(&key) {
            positions.retain(|&p| p as usize != pos);
            if positions.is_empty() {
                self.index.remove(&key);
                if let Some(keys) = self.keys.get_mut(&key.0) {
                    keys.retain(|k| *k != key.1);
                    if keys.is_empty() {
                        self.keys.remove(&key.0);
                    }
                }
            }
        }
        // The last binding moved into the freed place.
        if let Some(moved) = self.bindings.get(pos) {
            let key = (moved.destination.clone(), moved.routing_key.clone());
            if let Some(p) =
                self.index.get_mut(&key).and_then(|ps| ps.iter_mut().find(|p| **p as usize == self.bindings.len()))
            {
                *p = pos as u32;
            }
        }
        b
    }

    /// Removes every binding to `dest`; returns them. Costs what `dest` had, not what the
    /// exchange has.
    pub fn unbind_destination(&mut self, dest: &Destination) -> Vec<Binding> {
        let Some(keys) = self.keys.get(dest).cloned() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for key in keys {
            // Each removal moves the last binding into the freed place: look the positions up
            // again each time.
            while let Some(&pos) = self.index.get(&(dest.clone(), key.clone())).and_then(|ps| ps.first()) {
                gone.push(self.remove_at(pos as usize));
            }
        }
        gone
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Whether the routing key decides where a message goes (direct and topic; fanout and
    /// headers exchanges ignore it, so extra keys from `CC` need not be routed twice).
    pub fn uses_routing_key(&self) -> bool {
        matches!(self.routing, ExchangeKind::Direct | ExchangeKind::Topic)
    }

    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        self.router.route(routing_key, headers, out)
    }
}

fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.destination == b.destination && a.routing_key == b.routing_key && a.arguments.equivalent(&b.arguments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FieldValue;

    fn route(ex: &Exchange, key: &str, headers: Option<&FieldTable>) -> Vec<String> {
        let mut out = Vec::new();
        ex.route(key, headers, &mut out);
        let mut names: Vec<String> = out.iter().map(|d| d.name().to_string()).collect();
        names.sort();
        names
    }

    fn binding(q: &str, key: &str, args: FieldTable) -> Binding {
        Binding { destination: Destination::Queue(q.into()), routing_key: key.into(), arguments: args }
    }

    #[test]
    fn direct_and_fanout() {
        let mut d = Exchange::new("d".into(), ExchangeKind::Direct, false, false, false, FieldTable::new());
        d.bind(binding("q1", "k", FieldTable::new()));
        d.bind(binding("q2", "k", FieldTable::new()));
        d.bind(binding("q3", "other", FieldTable::new()));
        assert_eq!(route(&d, "k", None), ["q1", "q2"]);
        assert!(d.unbind(&binding("q1", "k", FieldTable::new())));
        assert_eq!(route(&d, "k", None), ["q2"]);
        let mut f = Exchange::new("f".into(), ExchangeKind::Fanout, false, false, false, FieldTable::new());
        f.bind(binding("a", "x", FieldTable::new()));
        f.bind(binding("b", "", FieldTable::new()));
        assert_eq!(route(&f, "anything", None), ["a", "b"]);
    }

    /// Model-based: random binds, unbinds and destination removals keep the bindings, their
    /// index and the router in step with a plain list.
    #[test]
    fn binding_index_follows_random_changes() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..50u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ex = Exchange::new("d".into(), ExchangeKind::Direct, false, false, false, FieldTable::new());
            let mut model: Vec<(String, String)> = Vec::new();
            for _ in 0..300 {
                let q = format!("q{}", rng.gen_range(0..5));
                let k = format!("k{}", rng.gen_range(0..4));
                match rng.gen_range(0..10) {
                    0..=5 => {
                        ex.bind(binding(&q, &k, FieldTable::new()));
                        if !model.contains(&(q.clone(), k.clone())) {
                            model.push((q, k));
                        }
                    }
                    6..=8 => {
                        let existed = ex.unbind(&binding(&q, &k, FieldTable::new()));
                        assert_eq!(existed, model.contains(&(q.clone(), k.clone())), "seed {seed}");
                        model.retain(|m| m != &(q.clone(), k.clone()));
                    }
                    _ => {
                        ex.unbind_destination(&Destination::Queue(q.as_str().into()));
                        model.retain(|(mq, _)| mq != &q);
                    }
                }
                let mut have: Vec<(String, String)> = ex
                    .bindings()
                    .iter()
                    .map(|b| (b.destination.name().to_string(), b.routing_key.to_string()))
                    .collect();
                have.sort();
                let mut want = model.clone();
                want.sort();
                assert_eq!(have, want, "seed {seed}");
                for (mq, mk) in &model {
                    assert!(ex.has_binding(&binding(mq, mk, FieldTable::new())), "seed {seed}");
                }
                // The keys by destination are exactly the bound ones.
                let mut by_dest: Vec<(String, String)> = ex
                    .keys
                    .iter()
                    .flat_map(|(d, ks)| ks.iter().map(move |k| (d.name().to_string(), k.to_string())))
                    .collect();
                by_dest.sort();
                assert_eq!(by_dest, want, "seed {seed}");
                let key = format!("k{}", rng.gen_range(0..4));
                let mut expect: Vec<String> =
                    model.iter().filter(|(_, mk)| *mk == key).map(|(mq, _)| mq.clone()).collect();
                expect.sort();
                assert_eq!(route(&ex, &key, None), expect, "seed {seed}");
            }
        }
    }

    #[test]
    fn headers_binding_validation() {
        let ex = Exchange::new("h".into(), ExchangeKind::Headers, false, false, false, FieldTable::new());
        let mut args = FieldTable::new();
        args.insert("x-match", FieldValue::string("some"));
        let err = ex.validate_binding(&binding("q", "", args)).unwrap_err();
        assert_eq!(err.code, 406);
    }
}
