//! Declaring a stream queue in a vhost: RabbitMQ's checks for the queue type, then a new log
//! in storage (see `queue::stream`).

use super::{QueueDeclaration, Topology, VHost};
use crate::broker::arguments::{check_type_properties, MAX_STREAM_SEGMENT_BYTES};
use crate::broker::audit::Actor;
use crate::broker::definitions::QueueDef;
use crate::broker::error::{AmqpError, AmqpResult};
use crate::broker::queue::{Queue, QueueOptions};
use crate::broker::store::table_to_hex;
use std::sync::Arc;

pub use crate::broker::queue::stream::stream_settings;

impl VHost {
    /// Creates a stream queue: durable, neither exclusive nor auto-delete, checked in
    /// RabbitMQ's order (rabbit_stream_queue:declare).
    pub(super) fn declare_stream(
        &self,
        topo: &mut Topology,
        d: &QueueDeclaration,
        options: QueueOptions,
        by: &Actor,
    ) -> AmqpResult<(Arc<Queue>, u32, u32, u64)> {
        check_type_properties(d.auto_delete, d.exclusive, d.durable, &d.name, &self.name)?;
        if options.args.max_segment_bytes.is_some_and(|b| b > MAX_STREAM_SEGMENT_BYTES) {
            return Err(AmqpError::precondition_failed("Exceeded max value for x-stream-max-segment-size-bytes"));
        }
        let Some(storage) = &self.storage else {
            return Err(AmqpError::internal_error(format!(
                "cannot declare stream '{}': streams need a data directory",
                d.name
            )));
        };
        let (store, id) = storage
            .create_stream(stream_settings(&options.args))
            .map_err(|e| AmqpError::internal_error(format!("cannot create the log of stream '{}': {e}", d.name)))?;
        let def = QueueDef { name: d.name.to_string(), arguments: table_to_hex(&options.arguments), log: id.clone() };
        topo.logs.insert(d.name.clone(), id);
        let q = Queue::stream(d.name.clone(), &self.name, options, store, self.me.clone());
        let ticket = self.add_queue(topo, d, &q, Some(def), by);
        Ok((q, 0, 0, ticket))
    }
}
