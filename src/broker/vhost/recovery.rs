//! Bringing a vhost back at start: its durable exchanges, queues (with their messages) and
//! bindings, as storage recorded them.

use super::VHost;
use crate::broker::arguments::QueueArguments;
use crate::broker::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::broker::queue::{Queue, QueueOptions, QueueOwner, MEMORY_WINDOW, MEMORY_WINDOW_BYTES};
use crate::broker::store::{table_from_hex, StoreError};
use crate::types::ShortStr;

impl VHost {
    /// Recreates durable exchanges, queues (with their messages) and bindings from storage.
    pub fn restore(&self) -> Result<(), StoreError> {
        let Some(storage) = &self.storage else { return Ok(()) };
        let defs = storage.load_definitions(&self.name)?;
        let mut topo = self.topology.write();
        for e in &defs.exchanges {
            let Ok(kind) = ExchangeKind::parse(&e.kind) else {
                tracing::error!("skipping exchange '{}' of unknown type '{}'", e.name, e.kind);
                continue;
            };
            let mut ex =
                Exchange::new(e.name.as_str().into(), kind, true, false, e.internal, table_from_hex(&e.arguments)?);
            if let Some(user) = &e.user {
                ex.declared_by = user.as_str().into();
            }
            ex.set_policy(self.policy_for_exchange(&e.name));
            if kind == ExchangeKind::DelayedMessage {
                let holder = self.delay_holder(&ex.name, true, false)?;
                topo.delayed.insert(ex.name.clone(), holder);
            }
            topo.exchanges.insert(e.name.as_str().into(), ex);
        }
        let mut total = 0usize;
        let mut policied = Vec::new();
        for q in &defs.queues {
            let name = ShortStr::from(q.name.as_str());
            let label = format!("queue '{}' in vhost '{}'", q.name, self.name);
            let arguments = table_from_hex(&q.arguments)?;
            let args = QueueArguments::stored(&arguments, &q.name, &self.name);
            let queue = if args.stream {
                let store = storage.open_stream(&q.log, super::stream::stream_settings(&args))?;
                crate::broker::queue::stream::recover_writers(&store, &label);
                let options =
                    QueueOptions { durable: true, exclusive_owner: None, auto_delete: false, arguments, args };
                Queue::stream(name.clone(), &self.name, options, store, self.me.clone())
            } else {
                // A priority queue holds all its messages in memory, to order them.
                let (window, bytes) = if args.max_priority.is_some() {
                    (usize::MAX, u64::MAX)
                } else {
                    (MEMORY_WINDOW, MEMORY_WINDOW_BYTES)
                };
                let recovered = storage.recover_queue_log(&q.log, &label, window, bytes)?;
                let options =
                    QueueOptions { durable: true, exclusive_owner: None, auto_delete: false, arguments, args };
                Queue::restore(name.clone(), &self.name, options, recovered, self.me.clone())
            };
            // Applied before the queue is routable; what a lowered limit drops from a
            // recovered queue is dead-lettered once the topology is unlocked.
            let applied = self.policy_for_queue(&queue);
            if !applied.is_empty() {
                policied.push((queue.clone(), applied));
            }
            if queue.has_timers() {
                self.watch_queue_timers(&queue);
            }
            let (count, _) = queue.counts();
            total += count as usize;
            topo.queues.insert(name.clone(), queue);
            topo.logs.insert(name, q.log.clone());
        }
        for b in &defs.bindings {
            let destination = match b.destination_kind.as_str() {
                "queue" => Destination::Queue(b.destination.as_str().into()),
                _ => Destination::Exchange(b.destination.as_str().into()),
            };
            let binding = Binding {
                destination,
                routing_key: b.routing_key.as_str().into(),
                arguments: table_from_hex(&b.arguments)?,
            };
            if let Some(ex) = topo.exchanges.get_mut(b.source.as_str()) {
                ex.bind(binding);
            }
        }
        drop(topo);
        for (queue, applied) in policied {
            queue.set_policy(applied);
        }
        tracing::info!(
            "vhost '{}': recovered {} exchanges, {} queues with {total} messages, {} bindings",
            self.name,
            defs.exchanges.len(),
            defs.queues.len(),
            defs.bindings.len()
        );
        Ok(())
    }
}
