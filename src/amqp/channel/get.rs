//! basic.get: a message handed to the channel from a queue, not a consumer. From a quorum
//! queue of a cluster the dequeue goes through the cluster's log, and the answer (with the
//! frames after it) waits until it is applied on this node.

use super::{bump, permissions, Channel, Unacked};
use crate::amqp::context::ConnCtx;
use crate::amqp::method::*;
use crate::broker::consumer::Origin;
use crate::broker::message::QueuedMessage;
use crate::broker::queue::Queue;
use crate::broker::{AmqpError, AmqpResult};
use crate::types::ShortStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A basic.get from a replicated queue, waiting for its dequeue to be applied here.
pub(crate) struct HeldGet {
    pub(super) ticket: u64,
    pub(super) queue: Arc<Queue>,
    pub(super) origin: Arc<dyn Origin>,
    pub(super) no_ack: bool,
}

impl Channel {
    pub(super) fn get(&mut self, ctx: &mut ConnCtx, m: BasicGet) -> AmqpResult<()> {
        let queue_name = self.queue_name(m.queue)?;
        permissions::queue_read(ctx, &queue_name)?;
        let queue = ctx.vhost()?.queue(&queue_name, ctx.id)?;
        if let Some(refused) = queue.stream_refusal("basic.get") {
            return Err(refused);
        }
        let limits = self.flow.limits;
        if !m.no_ack && (self.unacked.len() as u64 >= limits.count as u64 || self.unacked_bytes >= limits.bytes) {
            return Err(AmqpError::precondition_failed(format!(
                "reached maximum ({} messages, {} bytes) of unacknowledged deliveries per channel",
                limits.count, limits.bytes
            )));
        }
        if let Some(r) = &queue.replica {
            // The dequeue goes through the cluster's log; the answer is sent once it is
            // applied here (`answer_held_get`), and the channel's later frames wait for it.
            let (ticket, origin) = r.get(m.no_ack);
            self.held_get = Some(HeldGet { ticket, queue: queue.clone(), origin, no_ack: m.no_ack });
            return Ok(());
        }
        let got = queue.get(m.no_ack);
        self.answer_get(ctx, Some(queue as Arc<dyn Origin>), got, m.no_ack);
        Ok(())
    }

    /// Sends a waiting basic.get's answer once its dequeue is applied; true when it went out.
    pub(super) fn answer_held_get(&mut self, ctx: &mut ConnCtx) -> bool {
        match self.held_get.take() {
            Some(g) if ctx.cluster_done(g.ticket) => {
                let got = g.queue.replica.as_ref().and_then(|r| r.take_got(g.ticket));
                self.answer_get(ctx, Some(g.origin), got, g.no_ack);
                true
            }
            held => {
                let none = held.is_none();
                self.held_get = held;
                none
            }
        }
    }

    /// basic.get-ok with the message (recorded as unacknowledged unless `no_ack`), or
    /// basic.get-empty.
    fn answer_get(
        &mut self,
        ctx: &mut ConnCtx,
        origin: Option<Arc<dyn Origin>>,
        got: Option<(QueuedMessage, u32)>,
        no_ack: bool,
    ) {
        match got {
            None => {
                bump(&self.card.get_empty, 1);
                ctx.out.method(self.id, BasicGetEmpty { cluster_id: ShortStr::default() })
            }
            Some((qm, message_count)) => {
                bump(if no_ack { &self.card.get_no_ack } else { &self.card.get }, 1);
                if qm.redelivered {
                    bump(&self.card.redeliver, 1);
                }
                let tag = self.next_tag;
                self.next_tag += 1;
                let msg = &qm.message;
                ctx.out.method(
                    self.id,
                    BasicGetOk {
                        delivery_tag: tag,
                        redelivered: qm.redelivered,
                        exchange: msg.exchange.clone(),
                        routing_key: msg.routing_key.clone(),
                        message_count,
                    },
                );
                ctx.out.content(self.id, &msg.properties, &msg.body);
                if !no_ack {
                    self.unacked_bytes += qm.message.size() as u64;
                    self.unacked.push_back(Unacked { tag, queue: origin, consumer: None, message: qm });
                    self.card.unacked.store(self.unacked.len() as u32, Ordering::Relaxed);
                }
            }
        }
    }
}
