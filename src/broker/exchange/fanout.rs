//! Fanout exchange: every bound destination gets every message, keys ignored.

use super::{Binding, Destination, Router};
use crate::types::FieldTable;

#[derive(Debug, Default)]
pub struct FanoutRouter {
    /// Each destination with the number of bindings that lead to it.
    dests: Vec<(Destination, usize)>,
}

impl Router for FanoutRouter {
    fn bind(&mut self, b: &Binding) {
        match self.dests.iter_mut().find(|(d, _)| d == &b.destination) {
            Some((_, n)) => *n += 1,
            None => self.dests.push((b.destination.clone(), 1)),
        }
    }
    fn unbind(&mut self, b: &Binding) {
        if let Some(pos) = self.dests.iter().position(|(d, _)| d == &b.destination) {
            self.dests[pos].1 -= 1;
            if self.dests[pos].1 == 0 {
                self.dests.remove(pos);
            }
        }
    }
    fn route(&self, _routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        out.extend(self.dests.iter().map(|(d, _)| d.clone()));
    }
}
