//! Routing a publish: from the exchange named, through exchange-to-exchange bindings and
//! alternate exchanges, to the set of queues it reaches, under the topology's read lock and
//! without allocating on the common path.

use super::{Topology, VHost};
use crate::broker::error::{AmqpError, AmqpResult};
use crate::broker::exchange::{delayed, Destination, Exchange, ExchangeKind};
use crate::broker::queue::Queue;
use crate::types::{BasicProperties, ShortStr};
use bytes::Bytes;
use std::sync::Arc;

thread_local! {
    /// Destinations found while routing, reused by every publish on this thread.
    static ROUTE_SCRATCH: std::cell::RefCell<Vec<Destination>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One publish's walk through exchanges.
struct Walk<'t, 'a> {
    topo: &'t Topology,
    /// The exchange published to; it is never routed through twice.
    root: &'t str,
    routing_key: &'a str,
    /// The keys of the `CC` and `BCC` headers, each routed to as well (see
    /// [`crate::broker::message::header_routes`]); empty for almost every publish.
    cc: &'a [ShortStr],
    properties: &'a Bytes,
    /// The message's properties, decoded once if an exchange routes on them (a headers
    /// exchange, a consistent-hash exchange hashing a header or property, a delayed
    /// exchange reading `x-delay`).
    decoded: &'a mut Option<Option<BasicProperties>>,
    /// Delayed exchanges' holding queues among the destinations found (they do not count as
    /// routed: see [`crate::broker::queue::delayed`]).
    held: usize,
}

impl<'t> Walk<'t, '_> {
    /// Routes through `ex`: its destinations are appended to `dests` past what is there, and
    /// taken off again once followed (exchange bindings recurse on the same buffer).
    fn through(
        &mut self,
        ex: &'t Exchange,
        visited: &mut Vec<&'t str>,
        dests: &mut Vec<Destination>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        let props = if ex.reads_properties() {
            let properties = self.properties;
            self.decoded.get_or_insert_with(|| BasicProperties::decode(properties.clone()).ok()).as_ref()
        } else {
            None
        };
        if ex.kind == ExchangeKind::DelayedMessage {
            // A delay asked for: held by the exchange, routed by its bindings (or its alternate
            // exchange) only when due.
            if delayed::delay_of(props.and_then(|p| p.headers.as_ref())).is_some() {
                if let Some(holder) = self.topo.delayed.get(ex.name.as_str()) {
                    if !out.iter().any(|o| Arc::ptr_eq(o, holder)) {
                        out.push(holder.clone());
                        self.held += 1;
                    }
                    return;
                }
            }
        }
        let table = if ex.routing == ExchangeKind::Headers { props.and_then(|p| p.headers.as_ref()) } else { None };
        // A consistent-hash exchange may hash a header or property instead of the key.
        let hashed = ex.hash_input(props);
        let start = dests.len();
        ex.route(hashed.as_deref().unwrap_or(self.routing_key), table, dests);
        if !self.cc.is_empty() && ex.uses_routing_key() {
            for key in self.cc {
                ex.route(key, table, dests);
            }
        }
        // As RabbitMQ: an exchange (the first or one reached through a binding) whose own
        // bindings matched nothing, not even another exchange, passes the message to its
        // alternate exchange. Each exchange routes a message once.
        if dests.len() == start {
            if let Some(ae) = ex.alternate_exchange() {
                dests.push(Destination::Exchange(ae.into()));
            }
        }
        let end = dests.len();
        for k in start..end {
            let found = match &dests[k] {
                Destination::Queue(n) => {
                    if let Some(q) = self.topo.queues.get(n.as_str()) {
                        if !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                            out.push(q.clone());
                        }
                    }
                    continue;
                }
                Destination::Exchange(n) => self.topo.exchanges.get_key_value(n.as_str()),
            };
            if let Some((name, next)) = found {
                let name = name.as_str();
                if name != self.root && !visited.contains(&name) {
                    visited.push(name);
                    self.through(next, visited, dests, out);
                }
            }
        }
        dests.truncate(start);
    }
}

impl VHost {
    /// What basic.publish checks before the message's own properties, in RabbitMQ's order:
    /// the exchange exists (404) and is not internal (403).
    pub fn check_publish(&self, exchange: &str) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Ok(());
        }
        let topo = self.topology.read();
        let ex = topo.exchanges.get(exchange).ok_or_else(|| self.no_exchange(exchange))?;
        if ex.internal {
            return Err(self.internal_refused(exchange));
        }
        Ok(())
    }

    fn internal_refused(&self, exchange: &str) -> AmqpError {
        AmqpError::access_refused(format!("cannot publish to internal exchange '{exchange}' in vhost '{}'", self.name))
    }

    /// Routes a publish to its queues, following exchange-to-exchange bindings and alternate
    /// exchanges. `out` is cleared first; each queue appears once.
    /// `cc` are the keys of the message's `CC` and `BCC` headers, routed to as well.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        cc: &[ShortStr],
        properties: &Bytes,
        out: &mut Vec<Arc<Queue>>,
    ) -> AmqpResult<()> {
        self.route_with(exchange, routing_key, cc, properties, out, Via::Client)
    }

    /// Routes what the broker itself publishes (audit events): internal exchanges too.
    pub fn route_internal(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &Bytes,
        out: &mut Vec<Arc<Queue>>,
    ) -> AmqpResult<()> {
        self.route_with(exchange, routing_key, &[], properties, out, Via::Broker)
    }

    /// Routes for `via`: what `route` and `route_internal` do, and a delayed exchange's held
    /// message when due (`Via::Released`: internal exchanges too, and the exchange's count of
    /// messages in not bumped again).
    #[inline]
    pub(super) fn route_with(
        &self,
        exchange: &str,
        routing_key: &str,
        cc: &[ShortStr],
        properties: &Bytes,
        out: &mut Vec<Arc<Queue>>,
        via: Via,
    ) -> AmqpResult<()> {
        let internal_ok = via != Via::Client;
        out.clear();
        let topo = self.topology.read();
        if exchange.is_empty() {
            if let Some(q) = topo.queues.get(routing_key) {
                out.push(q.clone());
            }
            let mut named = 1;
            for (i, key) in cc.iter().enumerate() {
                if key.as_str() != routing_key && !cc[..i].contains(key) {
                    named += 1;
                }
                if let Some(q) = topo.queues.get(key.as_str()) {
                    if !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                        out.push(q.clone());
                    }
                }
            }
            // As RabbitMQ counts the default exchange: every queue named goes out, whether it
            // exists or not (its router names queues without looking them up).
            self.default_stats.count(named);
            return Ok(());
        }
        let ex = topo.exchanges.get(exchange).ok_or_else(|| self.no_exchange(exchange))?;
        if ex.internal && !internal_ok {
            return Err(self.internal_refused(exchange));
        }
        let mut decoded: Option<Option<BasicProperties>> = None;
        // Exchanges routed through besides the first; allocates only when bindings lead on to
        // other exchanges.
        let mut visited: Vec<&str> = Vec::new();
        let mut walk =
            Walk { topo: &topo, root: ex.name.as_str(), routing_key, cc, properties, decoded: &mut decoded, held: 0 };
        ROUTE_SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut dests) => {
                dests.clear();
                walk.through(ex, &mut visited, &mut dests, out);
            }
            Err(_) => walk.through(ex, &mut visited, &mut Vec::new(), out),
        });
        let routed = out.len() - walk.held;
        match via {
            Via::Released => ex.stats.count_out(routed),
            _ => ex.stats.count(routed),
        }
        Ok(())
    }
}

/// Who a message is routed for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// A client's publish: internal exchanges refuse it.
    Client,
    /// The broker's own (audit events): internal exchanges take it.
    Broker,
    /// A delayed exchange's message, due: counted as routed out, not as published in again.
    Released,
}
