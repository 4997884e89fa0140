//! The consistent-hash exchange (`x-consistent-hash`), as RabbitMQ's plugin of that name:
//! each message goes to one destination, chosen by a hash of its routing key (or of the
//! header named by the exchange's `hash-header` argument, or of its `message_id`,
//! `correlation_id` or `timestamp` property named by `hash-property`). A binding's key is
//! its weight: a destination bound with "3" gets three buckets of the ring, so about three
//! times the messages of one bound with "1". Buckets are numbered in the order destinations
//! were bound and a key picks one with jump consistent hashing (Lamping and Veach), so
//! adding a destination moves only the keys that go to it.
//!
//! The same key always reaches the same destination while the bindings stay the same; which
//! destination that is differs from RabbitMQ's (whose hash is Erlang's own).

use super::{Binding, Destination, Router};
use crate::broker::error::{AmqpError, AmqpResult};
use crate::types::{BasicProperties, FieldTable, FieldValue};

/// What a message is hashed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    RoutingKey,
    Header(String),
    /// `message_id`, `correlation_id` or `timestamp`.
    Property(String),
}

const PROPERTIES: [&str; 3] = ["correlation_id", "message_id", "timestamp"];

impl HashOn {
    /// From the exchange's arguments, checked as RabbitMQ's plugin checks them at declare.
    pub fn of(arguments: &FieldTable) -> AmqpResult<HashOn> {
        let header = arguments.get("hash-header").and_then(FieldValue::as_str);
        let property = arguments.get("hash-property").and_then(FieldValue::as_str);
        match (header, property) {
            (None, None) => Ok(HashOn::RoutingKey),
            (Some(h), None) => Ok(HashOn::Header(h.to_string())),
            (None, Some(p)) if PROPERTIES.contains(&p) => Ok(HashOn::Property(p.to_string())),
            (None, Some(p)) => Err(AmqpError::precondition_failed(format!("Unsupported property: {p}"))),
            (Some(_), Some(_)) => {
                Err(AmqpError::precondition_failed("hash-header and hash-property are mutually exclusive"))
            }
        }
    }

    /// The value hashed for a message whose properties are `props` (decoded only when the
    /// routing key is not what is hashed); empty when the header or property is absent.
    pub fn value(&self, props: Option<&BasicProperties>) -> String {
        match self {
            HashOn::RoutingKey => String::new(),
            HashOn::Header(name) => match props.and_then(|p| p.headers.as_ref()).and_then(|h| h.get(name)) {
                Some(v) => v.as_str().map_or_else(|| format!("{v:?}"), str::to_string),
                None => String::new(),
            },
            HashOn::Property(name) => {
                let p = props;
                match name.as_str() {
                    "message_id" => p.and_then(|p| p.message_id.as_ref()).map(|s| s.to_string()),
                    "correlation_id" => p.and_then(|p| p.correlation_id.as_ref()).map(|s| s.to_string()),
                    _ => p.and_then(|p| p.timestamp).map(|t| t.to_string()),
                }
                .unwrap_or_default()
            }
        }
    }
}

/// A binding's weight: its key, a positive integer (RabbitMQ's texts for the others).
pub fn validate(binding: &Binding) -> AmqpResult<()> {
    match binding.routing_key.as_str().parse::<i64>() {
        Ok(w) if w >= 1 => Ok(()),
        Ok(_) => Err(AmqpError::precondition_failed("The binding key must be greater than 0")),
        Err(_) => Err(AmqpError::precondition_failed(format!(
            "The binding key must be an integer: <<\"{}\">>",
            binding.routing_key
        ))),
    }
}

/// The most buckets one binding gets: a weight beyond it counts as this much, so that a
/// binding key of "1000000000" cannot make the broker allocate a ring of that size.
const MAX_WEIGHT: usize = 10_000;

#[derive(Debug, Default)]
pub struct ConsistentHashRouter {
    /// Bindings in the order they were made, with their weights.
    bindings: Vec<(Destination, String, usize)>,
    /// The ring: each destination's buckets, in the order destinations were first bound (a
    /// destination bound twice keeps its first binding's weight, as RabbitMQ's does).
    buckets: Vec<Destination>,
}

impl ConsistentHashRouter {
    fn rebuild(&mut self) {
        self.buckets.clear();
        let mut seen: Vec<&Destination> = Vec::new();
        for (d, _, weight) in &self.bindings {
            if seen.contains(&d) {
                continue;
            }
            seen.push(d);
            self.buckets.extend(std::iter::repeat_n(d.clone(), *weight));
        }
    }
}

impl Router for ConsistentHashRouter {
    fn bind(&mut self, b: &Binding) {
        let weight = b.routing_key.as_str().parse::<usize>().unwrap_or(1).clamp(1, MAX_WEIGHT);
        self.bindings.push((b.destination.clone(), b.routing_key.to_string(), weight));
        self.rebuild();
    }
    fn unbind(&mut self, b: &Binding) {
        if let Some(at) = self.bindings.iter().position(|(d, k, _)| d == &b.destination && k == b.routing_key.as_str())
        {
            self.bindings.remove(at);
            self.rebuild();
        }
    }
    /// `routing_key` is what is hashed: the routing key, or the header's or property's value.
    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        if self.buckets.is_empty() {
            return;
        }
        let bucket = jump_hash(hash(routing_key.as_bytes()), self.buckets.len());
        let d = &self.buckets[bucket];
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
}

/// FNV-1a over the bytes, then SplitMix64's finaliser to spread it: stable across builds
/// and platforms, so a key keeps its destination across restarts.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..buckets` for `key`, such
/// that going from n to n + 1 buckets moves about 1/(n + 1) of the keys, all to the new one.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(q: &str, weight: &str) -> Binding {
        Binding { destination: Destination::Queue(q.into()), routing_key: weight.into(), arguments: FieldTable::new() }
    }

    fn spread(r: &ConsistentHashRouter, keys: u32) -> std::collections::HashMap<String, u32> {
        let mut counts = std::collections::HashMap::new();
        for k in 0..keys {
            let mut out = Vec::new();
            r.route(&format!("key-{k}"), None, &mut out);
            assert_eq!(out.len(), 1, "one destination per message");
            *counts.entry(out[0].name().to_string()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn weights_share_the_keys_and_a_new_destination_moves_only_its_own() {
        let mut r = ConsistentHashRouter::default();
        r.bind(&binding("a", "1"));
        r.bind(&binding("b", "3"));
        let counts = spread(&r, 40_000);
        let share = counts["b"] as f64 / 40_000.0;
        assert!((0.72..0.78).contains(&share), "b has 3 of 4 buckets: {share}");
        // Each key keeps its destination unless it now goes to the new one.
        let before: Vec<Vec<Destination>> = (0..5_000)
            .map(|k| {
                let mut out = Vec::new();
                r.route(&format!("key-{k}"), None, &mut out);
                out
            })
            .collect();
        r.bind(&binding("c", "4"));
        let mut moved = 0;
        for (k, was) in before.iter().enumerate() {
            let mut out = Vec::new();
            r.route(&format!("key-{k}"), None, &mut out);
            if &out != was {
                assert_eq!(out[0].name().as_str(), "c", "a key moved only to the new destination");
                moved += 1;
            }
        }
        assert!((2_250..2_750).contains(&moved), "about half the keys go to c's 4 of 8 buckets: {moved}");
        // Unbinding gives the ring back as it was.
        r.unbind(&binding("c", "4"));
        for (k, was) in before.iter().enumerate() {
            let mut out = Vec::new();
            r.route(&format!("key-{k}"), None, &mut out);
            assert_eq!(&out, was);
        }
    }

    #[test]
    fn binding_keys_and_arguments_are_checked_with_rabbitmqs_texts() {
        assert!(validate(&binding("q", "5")).is_ok());
        assert_eq!(validate(&binding("q", "0")).unwrap_err().text, "The binding key must be greater than 0");
        assert_eq!(validate(&binding("q", "x")).unwrap_err().text, "The binding key must be an integer: <<\"x\">>");
        let mut args = FieldTable::new();
        args.insert("hash-property", FieldValue::string("priority"));
        assert_eq!(HashOn::of(&args).unwrap_err().text, "Unsupported property: priority");
        args.insert("hash-header", FieldValue::string("h"));
        assert_eq!(HashOn::of(&args).unwrap_err().text, "hash-header and hash-property are mutually exclusive");
    }
}
