//! Topic exchange: dot-separated words, `*` for exactly one word and `#` for zero or more,
//! matched as RabbitMQ matches them (empty words count as words).
//!
//! Bindings live in a trie over their words, as in RabbitMQ's topic exchange: each node has
//! children by literal word, a `*` child and a `#` child, and the destinations of the
//! bindings that end there. A publish walks only the branches its words can take, so its
//! cost follows the number of matching paths, not the number of bindings; binding and
//! unbinding cost the number of words. States reached after a `#` are remembered for the
//! walk, so patterns with many `#` cannot make a long key take exponential time.

use super::{Binding, Destination, Router};
use crate::broker::FastMap;
use crate::types::FieldTable;
use std::cell::RefCell;
use std::collections::HashSet;

/// Routing keys are split into at most this many words (the rest are ignored), as before.
const MAX_WORDS: usize = 1024;

type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Debug, Default)]
struct Node {
    literal: FastMap<Box<str>, NodeId>,
    star: Option<NodeId>,
    hash: Option<NodeId>,
    /// Destinations of bindings ending here, with how many bindings (patterns that differ
    /// only in runs of `#` end at the same node) lead to each.
    dests: Vec<(Destination, u32)>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.hash.is_none() && self.dests.is_empty()
    }
}

#[derive(Debug)]
pub struct TopicRouter {
    nodes: Vec<Node>,
    /// Slots of removed nodes, reused by later bindings.
    free: Vec<NodeId>,
}

impl Default for TopicRouter {
    fn default() -> Self {
        TopicRouter { nodes: vec![Node::default()], free: Vec::new() }
    }
}

/// A pattern's words with runs of `#` collapsed into one (`a.#.#` matches as `a.#`).
fn pattern_words(key: &str) -> Vec<&str> {
    let mut words: Vec<&str> = Vec::new();
    for w in key.split('.') {
        if w == "#" && words.last() == Some(&"#") {
            continue;
        }
        words.push(w);
    }
    words
}

#[derive(Clone, Copy)]
enum Edge<'a> {
    Literal(&'a str),
    Star,
    Hash,
}

fn edge(word: &str) -> Edge<'_> {
    match word {
        "*" => Edge::Star,
        "#" => Edge::Hash,
        w => Edge::Literal(w),
    }
}

/// Per-thread scratch space of a walk, so routing allocates nothing once warmed up.
#[derive(Default)]
struct Scratch {
    /// Byte ranges of the routing key's words.
    words: Vec<(usize, usize)>,
    /// (node, word index) states already walked after a `#`.
    seen: HashSet<(NodeId, u32), ahash::RandomState>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl TopicRouter {
    fn child(&self, id: NodeId, e: Edge<'_>) -> Option<NodeId> {
        let n = &self.nodes[id as usize];
        match e {
            Edge::Literal(w) => n.literal.get(w).copied(),
            Edge::Star => n.star,
            Edge::Hash => n.hash,
        }
    }

    fn new_node(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    fn child_or_insert(&mut self, id: NodeId, e: Edge<'_>) -> NodeId {
        if let Some(c) = self.child(id, e) {
            return c;
        }
        let c = self.new_node();
        let n = &mut self.nodes[id as usize];
        match e {
            Edge::Literal(w) => {
                n.literal.insert(w.into(), c);
            }
            Edge::Star => n.star = Some(c),
            Edge::Hash => n.hash = Some(c),
        }
        c
    }

    fn remove_child(&mut self, id: NodeId, e: Edge<'_>) {
        let n = &mut self.nodes[id as usize];
        let removed = match e {
            Edge::Literal(w) => n.literal.remove(w),
            Edge::Star => n.star.take(),
            Edge::Hash => n.hash.take(),
        };
        if let Some(c) = removed {
            self.nodes[c as usize] = Node::default();
            self.free.push(c);
        }
    }

    /// Walks the trie from `id` for the words from `i` on, collecting destinations.
    fn walk(&self, key: &str, s: &mut Scratch, id: NodeId, i: usize, after_hash: bool, out: &mut Vec<Destination>) {
        if after_hash && !s.seen.insert((id, i as u32)) {
            return;
        }
        let n = &self.nodes[id as usize];
        if let Some(h) = n.hash {
            // `#` takes zero or more words: every remaining suffix, each state once.
            for j in i..=s.words.len() {
                self.walk(key, s, h, j, true, out);
            }
        }
        if i == s.words.len() {
            out.extend(n.dests.iter().map(|(d, _)| d.clone()));
            return;
        }
        let (a, b) = s.words[i];
        if let Some(&c) = n.literal.get(&key[a..b]) {
            self.walk(key, s, c, i + 1, after_hash, out);
        }
        if let Some(c) = n.star {
            self.walk(key, s, c, i + 1, after_hash, out);
        }
    }
}

impl Router for TopicRouter {
    fn bind(&mut self, b: &Binding) {
        let mut id = ROOT;
        for w in pattern_words(&b.routing_key) {
            id = self.child_or_insert(id, edge(w));
        }
        let dests = &mut self.nodes[id as usize].dests;
        match dests.iter_mut().find(|(d, _)| d == &b.destination) {
            Some((_, n)) => *n += 1,
            None => dests.push((b.destination.clone(), 1)),
        }
    }

    fn unbind(&mut self, b: &Binding) {
        let words = pattern_words(&b.routing_key);
        let mut path = Vec::with_capacity(words.len() + 1);
        path.push(ROOT);
        for w in &words {
            match self.child(*path.last().unwrap_or(&ROOT), edge(w)) {
                Some(c) => path.push(c),
                None => return,
            }
        }
        let Some(&end) = path.last() else { return };
        let dests = &mut self.nodes[end as usize].dests;
        let Some(pos) = dests.iter().position(|(d, _)| d == &b.destination) else { return };
        dests[pos].1 -= 1;
        if dests[pos].1 == 0 {
            dests.swap_remove(pos);
        }
        // Prune the nodes left with nothing, from the end of the path up.
        for k in (1..path.len()).rev() {
            if !self.nodes[path[k] as usize].is_empty() {
                break;
            }
            self.remove_child(path[k - 1], edge(words[k - 1]));
        }
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        SCRATCH.with(|cell| {
            let Ok(mut s) = cell.try_borrow_mut() else {
                return;
            };
            let s = &mut *s;
            s.words.clear();
            s.seen.clear();
            let mut start = 0;
            for (i, c) in routing_key.bytes().enumerate() {
                if c == b'.' {
                    s.words.push((start, i));
                    start = i + 1;
                }
            }
            s.words.push((start, routing_key.len()));
            s.words.truncate(MAX_WORDS);
            let before = out.len();
            self.walk(routing_key, s, ROOT, 0, false, out);
            // A destination reached by several bindings appears once.
            if out.len() - before > 1 {
                out[before..].sort_unstable();
                let mut w = before + 1;
                for r in before + 1..out.len() {
                    if out[r] != out[w - 1] {
                        out.swap(r, w);
                        w += 1;
                    }
                }
                out.truncate(w);
            }
        });
    }
}

/// Whether pattern words match routing-key words, in time proportional to their product:
/// the matcher the trie replaced, kept as the reference it is tested against.
#[cfg(test)]
fn topic_matches(pattern: &[String], words: &[&str]) -> bool {
    if !pattern.iter().any(|p| p == "#") {
        return pattern.len() == words.len() && pattern.iter().zip(words).all(|(p, w)| p == "*" || p == w);
    }
    let n = words.len();
    // next[j]: the pattern after the current word matches words[j..].
    let mut next = vec![false; n + 1];
    next[n] = true;
    let mut cur = vec![false; n + 1];
    for p in pattern.iter().rev() {
        match p.as_str() {
            "#" => {
                let mut any = false;
                for j in (0..=n).rev() {
                    any |= next[j];
                    cur[j] = any;
                }
            }
            "*" => {
                for j in 0..n {
                    cur[j] = next[j + 1];
                }
                cur[n] = false;
            }
            lit => {
                for j in 0..n {
                    cur[j] = words[j] == lit && next[j + 1];
                }
                cur[n] = false;
            }
        }
        std::mem::swap(&mut next, &mut cur);
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn m(pattern: &str, key: &str) -> bool {
        let pw: Vec<String> = pattern_words(pattern).into_iter().map(String::from).collect();
        let kw: Vec<&str> = key.split('.').collect();
        topic_matches(&pw, &kw)
    }

    fn q(name: &str) -> Destination {
        Destination::Queue(name.to_string().into())
    }

    fn binding(key: &str, dest: &str) -> Binding {
        Binding { destination: q(dest), routing_key: key.to_string().into(), arguments: FieldTable::new() }
    }

    fn routed(r: &TopicRouter, key: &str) -> Vec<Destination> {
        let mut out = Vec::new();
        r.route(key, None, &mut out);
        out.sort();
        out
    }

    #[test]
    fn rabbitmq_topic_semantics() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("*.b.*", "a.b.c", true),
            ("*.b.*", "a.b", false),
            ("#", "", true),
            ("#", "a.b.c", true),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("a.#", "b.a", false),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*", "", true),
            ("*", "a.b", false),
            ("a.*", "a.", true),
            ("", "", true),
            ("", "a", false),
            ("#.#", "a", true),
            ("*.#", "a", true),
            ("*.*", "a", false),
            ("#.*", "a.b", true),
            ("..", "..", true),
            ("*.*.*", "..", true),
            ("#.a.#.a.#", "a.x.a", true),
        ];
        for (pattern, key, expect) in cases {
            assert_eq!(m(pattern, key), expect, "oracle: {pattern} ~ {key}");
            let mut r = TopicRouter::default();
            r.bind(&binding(pattern, "q"));
            assert_eq!(!routed(&r, key).is_empty(), expect, "trie: {pattern} ~ {key}");
        }
        // Many `#` over a long key stays fast, in the oracle and in the trie.
        let key = vec!["x"; 200].join(".");
        assert!(!m("#.y.#.y.#.y.#.y", &key));
        let mut r = TopicRouter::default();
        r.bind(&binding("#.y.#.y.#.y.#.y", "q"));
        r.bind(&binding("#.x.#.x.#.x.#.z", "q"));
        assert!(routed(&r, &key).is_empty());
    }

    /// Model-based: random patterns (with `*`, `#` and empty words) and keys, random binds
    /// and unbinds; the trie must route every key exactly as the reference matcher says.
    #[test]
    fn trie_agrees_with_the_reference_matcher() {
        const WORDS: &[&str] = &["a", "b", "", "*", "#"];
        const KEY_WORDS: &[&str] = &["a", "b", "", "c"];
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut r = TopicRouter::default();
            // The model: bindings as an exchange holds them (each (key, dest) once).
            let mut model: Vec<(String, String)> = Vec::new();
            for _ in 0..60 {
                let len = rng.gen_range(0..5);
                let pattern =
                    (0..len.max(1)).map(|_| WORDS[rng.gen_range(0..WORDS.len())]).collect::<Vec<_>>().join(".");
                let dest = format!("q{}", rng.gen_range(0..4));
                if rng.gen_bool(0.7) {
                    if !model.contains(&(pattern.clone(), dest.clone())) {
                        r.bind(&binding(&pattern, &dest));
                        model.push((pattern, dest));
                    }
                } else if !model.is_empty() {
                    let (p, d) = model.swap_remove(rng.gen_range(0..model.len()));
                    r.unbind(&binding(&p, &d));
                }
                for _ in 0..5 {
                    let klen = rng.gen_range(1..6);
                    let key =
                        (0..klen).map(|_| KEY_WORDS[rng.gen_range(0..KEY_WORDS.len())]).collect::<Vec<_>>().join(".");
                    let mut expect: Vec<Destination> =
                        model.iter().filter(|(p, _)| m(p, &key)).map(|(_, d)| q(d)).collect();
                    expect.sort();
                    expect.dedup();
                    assert_eq!(routed(&r, &key), expect, "seed {seed}, key '{key}', bindings {model:?}");
                }
            }
            // Unbinding everything leaves only the root.
            for (p, d) in model.drain(..) {
                r.unbind(&binding(&p, &d));
            }
            assert!(r.nodes[ROOT as usize].is_empty(), "seed {seed}: trie not empty");
            assert_eq!(r.nodes.len() - r.free.len(), 1, "seed {seed}: nodes leaked");
        }
    }
}
