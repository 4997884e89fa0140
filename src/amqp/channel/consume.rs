//! A channel's consumers and what they are sent: basic.consume (with RabbitMQ's checks, and
//! the wait for a classic queue's home in a cluster), basic.cancel, deliveries, and acks,
//! nacks, rejects and recover of what was delivered.

use super::*;

impl Channel {
    pub(super) fn consume(&mut self, ctx: &mut ConnCtx, m: BasicConsume) -> AmqpResult<()> {
        // RabbitMQ's first check: a new tag beyond the channel's consumer limit.
        let max = ctx.config.consumer_max_per_channel as usize;
        if self.consumers.len() >= max && !self.consumers.contains_key(m.consumer_tag.as_str()) {
            return Err(AmqpError::not_allowed(format!("reached maximum ({max}) of consumers per channel")));
        }
        let tag = if m.consumer_tag.is_empty() {
            ShortStr::from(format!("amq.ctag-{}", random_suffix(22)))
        } else {
            m.consumer_tag
        };
        if self.consumers.contains_key(tag.as_str()) {
            return Err(AmqpError::not_allowed(format!("attempt to reuse consumer tag '{tag}'")));
        }
        let priority = crate::broker::arguments::consumer_priority(&m.arguments, &m.queue, &ctx.vhost()?.name)?;
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            channel: self.id,
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            priority,
            arguments: m.arguments,
            prefetch: self.prefetch,
            unacked: Default::default(),
            flow: self.flow.clone(),
            sink: ctx.sink.clone(),
        });
        if m.queue.as_str() == DIRECT_REPLY_TO {
            if !m.no_ack {
                return Err(AmqpError::precondition_failed("reply consumer cannot acknowledge"));
            }
            if self.reply_key.is_some() {
                return Err(AmqpError::precondition_failed("reply consumer already set"));
            }
            let key = format!("{DIRECT_REPLY_TO}.{}.{}.{}", ctx.id, self.id, random_suffix(16));
            ctx.broker.register_reply_consumer(key.clone(), consumer.clone());
            self.reply_key = Some(key);
            if !m.nowait {
                ctx.out.method(self.id, BasicConsumeOk { consumer_tag: tag.clone() });
            }
            self.consumers.insert(tag, ConsumerEntry { consumer, queue: None });
            self.card.consumers.store(self.consumers.len() as u32, Ordering::Relaxed);
            return Ok(());
        }
        let queue_name = self.queue_name(m.queue)?;
        permissions::queue_read(ctx, &queue_name)?;
        let queue = ctx.vhost()?.queue(&queue_name, ctx.id)?;
        let mut ticket = 0;
        if queue.stream.is_some() {
            let start = self.stream_consume_checks(&queue, &consumer)?;
            queue.add_stream_consumer(consumer.clone(), start)?;
        } else {
            if consumer.arguments.get("x-stream-offset").is_some() {
                let kind = if queue.options.args.quorum { "rabbit_quorum_queue" } else { "rabbit_classic_queue" };
                return Err(invalid_consumer_arg("x-stream-offset", &queue, kind));
            }
            ticket = queue.add_consumer(consumer.clone())?;
        }
        // Deliveries reach this connection through its event queue, after this consume-ok.
        if !m.nowait {
            let reply = BasicConsumeOk { consumer_tag: tag.clone() };
            if ticket != 0 {
                // A classic queue another node holds: the consume-ok waits for the home's
                // answer, and its refusal (exclusive use, the home down) closes the channel
                // instead; deliveries meanwhile wait in `deferred`.
                self.hold_for_cluster(ticket, false, (60, 20), reply);
            } else {
                ctx.out.method(self.id, reply);
            }
        }
        self.consumers.insert(tag, ConsumerEntry { consumer, queue: Some(queue) });
        self.card.consumers.store(self.consumers.len() as u32, Ordering::Relaxed);
        Ok(())
    }

    /// What RabbitMQ checks of a consumer of a stream, in its order: the consumer arguments
    /// (`x-stream-offset` parsed into where it starts), a prefetch, manual acks, no global
    /// qos.
    pub(super) fn stream_consume_checks(&self, queue: &Queue, consumer: &Consumer) -> AmqpResult<StreamOffset> {
        let now = crate::broker::clock::now_ms();
        let start = stream_offset(&consumer.arguments, &queue.name, &queue.vhost, now)?;
        if let Some(key) =
            ["x-priority", "x-cancel-on-ha-failover"].into_iter().find(|k| consumer.arguments.get(k).is_some())
        {
            return Err(invalid_consumer_arg(key, queue, "rabbit_stream_queue"));
        }
        let name = format!("queue '{}' in vhost '{}'", queue.name, queue.vhost);
        if consumer.prefetch == 0 {
            return Err(AmqpError::precondition_failed(format!("consumer prefetch count is not set for '{name}'")));
        }
        if consumer.no_ack {
            return Err(AmqpError::not_implemented(format!(
                "automatic acknowledgement not supported by stream queues {name}"
            )));
        }
        if self.flow.global_prefetch.load(Ordering::Acquire) > 0 {
            return Err(AmqpError::not_implemented(format!("{name} does not support global qos")));
        }
        Ok(start)
    }

    pub(super) fn cancel(&mut self, ctx: &mut ConnCtx, tag: &ShortStr) {
        let Some(entry) = self.consumers.remove(tag.as_str()) else {
            return;
        };
        self.card.consumers.store(self.consumers.len() as u32, Ordering::Relaxed);
        match entry.queue {
            Some(q) => {
                if q.remove_consumer(ctx.id, self.id, tag) {
                    if let Some(vhost) = &ctx.vhost {
                        vhost.force_delete_queue(&q, &ctx.actor);
                    }
                }
            }
            None => {
                if let Some(key) = self.reply_key.take() {
                    ctx.broker.unregister_reply_consumer(&key);
                }
            }
        }
    }

    /// The queue was deleted under the consumer: tell the client if it asked to be told.
    pub fn consumer_cancelled(&mut self, ctx: &mut ConnCtx, tag: ShortStr) {
        if self.consume_held(&tag) {
            // Told after its consume-ok (or the refusal that closes the channel).
            self.cancelled_while_held = Some(tag);
            return;
        }
        if self.consumers.remove(tag.as_str()).is_some() && ctx.cancel_notify && !self.closing {
            ctx.out.method(self.id, BasicCancel { consumer_tag: tag, nowait: true });
        }
    }

    /// Whether the basic.consume-ok of consumer `tag` is held.
    pub(super) fn consume_held(&self, tag: &ShortStr) -> bool {
        matches!(&self.held, Some((_, _, Method::BasicConsumeOk(ok))) if ok.consumer_tag == *tag)
    }

    /// After a held basic.consume-ok is sent: the deliveries that waited for it, and the
    /// queue's cancel if one came meanwhile.
    pub(super) fn consume_released(&mut self, ctx: &mut ConnCtx) {
        for d in std::mem::take(&mut self.deferred) {
            self.deliver(ctx, d);
        }
        if let Some(tag) = self.cancelled_while_held.take() {
            self.consumer_cancelled(ctx, tag);
        }
    }

    /// Writes a delivery a queue dispatched to one of this channel's consumers.
    pub fn deliver(&mut self, ctx: &mut ConnCtx, d: Delivery) {
        if self.consume_held(&d.consumer_tag) {
            self.deferred.push_back(d);
            return;
        }
        let Some(entry) = self.consumers.get(d.consumer_tag.as_str()) else {
            // Cancelled meanwhile: the channel's credit for it comes back with it.
            if !d.no_ack {
                let was_at_limit = self.flow.at_limit();
                self.flow.settle(d.item.message.size());
                if was_at_limit {
                    self.wake_consumer_queues();
                }
            }
            Self::return_undelivered(ctx, d);
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let item = d.item;
        let msg = &item.message;
        ctx.out.method(
            self.id,
            BasicDeliver {
                consumer_tag: d.consumer_tag.clone(),
                delivery_tag: tag,
                redelivered: item.redelivered,
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
            },
        );
        ctx.out.content(self.id, &msg.properties, &msg.body);
        ctx.out.charge += d.charge;
        bump(if d.no_ack { &self.card.deliver_no_ack } else { &self.card.deliver }, 1);
        if item.redelivered {
            bump(&self.card.redeliver, 1);
        }
        if d.no_ack && item.logged {
            if let Some(q) = &d.queue {
                q.sent_no_ack(&item);
            }
        }
        if !d.no_ack {
            self.unacked_bytes += item.message.size() as u64;
            self.unacked.push_back(Unacked {
                tag,
                queue: d.queue,
                consumer: Some(entry.consumer.clone()),
                message: item,
            });
            self.card.unacked.store(self.unacked.len() as u32, Ordering::Relaxed);
        }
    }

    /// A delivery that reached no consumer goes back to its queue; its credit is returned.
    pub fn return_undelivered(ctx: &ConnCtx, d: Delivery) {
        ctx.sink.return_undelivered(d);
    }

    pub(super) fn check_tag_known(&self, m: &Method) -> AmqpResult<()> {
        let (tag, multiple) = match m {
            Method::BasicAck(m) => (m.delivery_tag, m.multiple),
            Method::BasicNack(m) => (m.delivery_tag, m.multiple),
            Method::BasicReject(m) => (m.delivery_tag, false),
            _ => return Ok(()),
        };
        if (multiple && tag == 0) || self.is_unacked(tag) {
            Ok(())
        } else {
            Err(AmqpError::precondition_failed(format!("unknown delivery tag {tag}")))
        }
    }

    pub(super) fn settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        if how != Settle::Ack {
            // A stream's deliveries are only acknowledged (RabbitMQ's 540).
            let upto = if multiple && tag == 0 { u64::MAX } else { tag };
            let from = if multiple { 0 } else { self.unacked.partition_point(|u| u.tag < tag) };
            let to = self.unacked.partition_point(|u| u.tag <= upto);
            let refused = self.unacked.range(from..to.max(from)).find_map(|u| u.queue.as_ref()?.refuses_reject());
            if let Some(e) = refused {
                return Err(e);
            }
        }
        let taken: Vec<Unacked> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            if tag != 0 && !self.is_unacked(tag) {
                return Err(AmqpError::precondition_failed(format!("unknown delivery tag {tag}")));
            }
            let n = self.unacked.partition_point(|u| u.tag <= upto);
            self.unacked.drain(..n).collect()
        } else {
            let pos = self.unacked.binary_search_by_key(&tag, |u| u.tag);
            match pos {
                Ok(i) => self.unacked.remove(i).into_iter().collect(),
                Err(_) => return Err(AmqpError::precondition_failed(format!("unknown delivery tag {tag}"))),
            }
        };
        self.release(taken, how);
        Ok(())
    }

    pub(super) fn is_unacked(&self, tag: u64) -> bool {
        self.unacked.binary_search_by_key(&tag, |u| u.tag).is_ok()
    }

    /// Settles deliveries with their queues and returns the consumers' credit.
    pub(super) fn release(&mut self, taken: Vec<Unacked>, how: Settle) {
        if matches!(how, Settle::Ack) {
            bump(&self.card.ack, taken.len() as u64);
        }
        self.card.unacked.store(self.unacked.len() as u32, Ordering::Relaxed);
        let was_at_limit = self.flow.at_limit();
        let mut by_queue: Vec<(Arc<dyn Origin>, Vec<QueuedMessage>)> = Vec::new();
        for u in taken {
            let size = u.message.message.size();
            self.unacked_bytes = self.unacked_bytes.saturating_sub(size as u64);
            if let Some(c) = &u.consumer {
                c.settle(size);
            }
            let Some(q) = u.queue else { continue };
            match by_queue.iter_mut().find(|(bq, _)| Arc::ptr_eq(bq, &q)) {
                Some((_, v)) => v.push(u.message),
                None => by_queue.push((q, vec![u.message])),
            }
        }
        for (q, msgs) in by_queue {
            match how {
                Settle::Requeue => q.requeued(msgs),
                Settle::Ack => q.acked(&msgs),
                Settle::Drop => q.rejected(msgs),
            }
        }
        // Credit that spans the channel came back: queues that skipped its consumers for
        // lack of it dispatch again.
        if was_at_limit || self.flow.global_prefetch.load(Ordering::Acquire) > 0 {
            self.wake_consumer_queues();
        }
    }

    pub(super) fn recover(&mut self) {
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        self.release(all, Settle::Requeue);
    }

    pub(super) fn wake_consumer_queues(&self) {
        for e in self.consumers.values() {
            if let Some(q) = &e.queue {
                q.dispatch();
            }
        }
    }
}

/// RabbitMQ's 406 for a consumer argument the queue's type does not take.
fn invalid_consumer_arg(key: &str, queue: &Queue, kind: &str) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "invalid arg '{key}' for queue '{}' in vhost '{}' of queue type {kind}",
        queue.name, queue.vhost
    ))
}
