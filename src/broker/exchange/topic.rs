//! Topic exchange: dot-separated words, `*` for exactly one word and `#` for zero or more,
//! matched as RabbitMQ matches them (empty words count as words).

use super::{Binding, Destination, Router};
use crate::protocol::FieldTable;

#[derive(Debug)]
struct TopicBinding {
    key: String,
    /// The pattern's words with runs of `#` collapsed into one.
    words: Vec<String>,
    destination: Destination,
}

#[derive(Debug, Default)]
pub struct TopicRouter {
    bindings: Vec<TopicBinding>,
}

impl Router for TopicRouter {
    fn bind(&mut self, b: &Binding) {
        let mut words: Vec<String> = Vec::new();
        for w in b.routing_key.split('.') {
            if w == "#" && words.last().map(String::as_str) == Some("#") {
                continue;
            }
            words.push(w.to_string());
        }
        self.bindings.push(TopicBinding { key: b.routing_key.to_string(), words, destination: b.destination.clone() });
    }
    fn unbind(&mut self, b: &Binding) {
        if let Some(pos) =
            self.bindings.iter().position(|t| t.key == b.routing_key.as_str() && t.destination == b.destination)
        {
            self.bindings.remove(pos);
        }
    }
    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let mut words: Vec<&str> = routing_key.split('.').collect();
        if words.len() > 1024 {
            words.truncate(1024);
        }
        for b in &self.bindings {
            if topic_matches(&b.words, &words) && !out.contains(&b.destination) {
                out.push(b.destination.clone());
            }
        }
    }
}

/// Whether pattern words match routing-key words, in time proportional to their product.
pub fn topic_matches(pattern: &[String], words: &[&str]) -> bool {
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

    fn m(pattern: &str, key: &str) -> bool {
        let mut pw: Vec<String> = Vec::new();
        for w in pattern.split('.') {
            if w == "#" && pw.last().map(String::as_str) == Some("#") {
                continue;
            }
            pw.push(w.to_string());
        }
        let kw: Vec<&str> = key.split('.').collect();
        topic_matches(&pw, &kw)
    }

    #[test]
    fn rabbitmq_topic_semantics() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("*.b.*", "a.b.c"));
        assert!(!m("*.b.*", "a.b"));
        assert!(m("#", ""));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(!m("a.#", "b.a"));
        assert!(m("#.c", "c"));
        assert!(m("#.c", "a.b.c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.x.y.c"));
        assert!(!m("a.#.c", "a.x.y.d"));
        assert!(m("*", ""));
        assert!(!m("*", "a.b"));
        assert!(m("a.*", "a."));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("#.#", "a"));
        assert!(m("*.#", "a"));
        assert!(!m("*.*", "a"));
        assert!(m("#.*", "a.b"));
        assert!(m("..", ".."));
        assert!(m("*.*.*", ".."));
        assert!(m("#.a.#.a.#", "a.x.a"));
        // Many `#` over a long key stays fast.
        let key = vec!["x"; 200].join(".");
        assert!(!m("#.y.#.y.#.y.#.y", &key));
    }
}
