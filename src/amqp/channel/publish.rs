//! The publish path of a channel: basic.publish, its content header and body frames assembled
//! into a message (a single-frame body kept without a copy), the checks RabbitMQ makes in its
//! order, routing and enqueueing, and the confirms and tx.commit-ok owed once it is durable.

use super::{Channel, Settle, TxBuffer};
use crate::amqp::context::ConnCtx;
use crate::amqp::method::*;
use crate::amqp::ContentHeader;
use crate::broker::consumer::Delivery;
use crate::broker::message::QueuedMessage;
use crate::broker::message::{Body, Message};
use crate::broker::{AmqpError, AmqpResult, DIRECT_REPLY_TO};
use crate::types::constants::NO_ROUTE;
use crate::types::{BasicProperties, ShortStr};
use bytes::Bytes;
use std::sync::Arc;

/// A publish waiting for its header and body frames.
pub(super) struct PendingPublish {
    method: BasicPublish,
    header: Option<ContentHeader>,
    /// Read from the properties when the header arrives (they are decoded once, there).
    persistent: bool,
    priority: u8,
    expiration: Option<u64>,
    /// What is wrong with the properties (user_id, expiration, CC), raised after the exchange
    /// checks.
    invalid: Option<AmqpError>,
    /// The keys of the `CC` and `BCC` headers (sender-selected distribution); empty, and not
    /// allocated, for a publish without them.
    cc: Vec<ShortStr>,
    /// The body frames received so far, kept as they are (no copy): the message's body is
    /// made of them. The first is kept apart, so that a body of one frame (the common case)
    /// allocates nothing.
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    received: usize,
}

impl PendingPublish {
    pub(super) fn new(method: BasicPublish) -> Self {
        PendingPublish {
            method,
            header: None,
            persistent: false,
            priority: 0,
            expiration: None,
            invalid: None,
            cc: Vec::new(),
            first: None,
            rest: Vec::new(),
            received: 0,
        }
    }
}

impl Channel {
    pub fn content_header(&mut self, ctx: &mut ConnCtx, mut header: ContentHeader) -> AmqpResult<()> {
        let Some(p) = &mut self.publish else {
            return Err(AmqpError::unexpected_frame("content header frame without a basic.publish before it"));
        };
        if p.header.is_some() {
            return Err(AmqpError::unexpected_frame("second content header for one publish"));
        }
        if header.class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "content header for class {} does not match basic.publish",
                header.class_id
            )));
        }
        let max = ctx.config.max_message_size;
        if header.body_size > max {
            self.publish = None;
            return Err(AmqpError::precondition_failed(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            )));
        }
        let mut props = BasicProperties::decode(header.properties.clone())
            .map_err(|e| AmqpError::syntax_error(format!("malformed content header properties: {e}")))?;
        p.persistent = props.delivery_mode == Some(2);
        p.priority = props.priority.unwrap_or(0);
        // Property errors are raised once the publish is complete, after the exchange checks.
        if let Some(uid) = props.user_id.as_ref().filter(|u| u.as_str() != ctx.user) {
            p.invalid = Some(AmqpError::precondition_failed(format!(
                "user_id property set to '{uid}' but authenticated user was '{}'",
                ctx.user
            )));
        }
        match props.expiration.as_ref().map(|e| crate::broker::arguments::parse_expiration(e.as_bytes())) {
            Some(Ok(ms)) => p.expiration = Some(ms),
            Some(Err(e)) => p.invalid = p.invalid.take().or(Some(e)),
            None => {}
        }
        // Sender-selected distribution: a publish whose headers hold neither CC nor BCC pays
        // two scans of its header names for it.
        if let Some(headers) = props.headers.as_mut().filter(|h| h.get("CC").is_some() || h.get("BCC").is_some()) {
            match crate::broker::message::header_routes(headers) {
                Ok(keys) => p.cc = keys,
                Err(e) => p.invalid = p.invalid.take().or(Some(e)),
            }
            // As RabbitMQ: BCC is routed to but never delivered.
            if headers.remove("BCC").is_some() {
                header.properties = props.to_bytes();
            }
        }
        let done = header.body_size == 0;
        p.header = Some(header);
        if done {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    /// Whether a body frame of `size` bytes would be taken whole as part of the publish under
    /// way, so that it may be passed on in pieces (see `amqp::reader`).
    pub fn accepts_body(&self, size: usize) -> bool {
        let Some(p) = &self.publish else { return false };
        p.header.as_ref().is_some_and(|h| (p.received as u64).saturating_add(size as u64) <= h.body_size)
    }

    pub fn content_body(&mut self, ctx: &mut ConnCtx, body: Bytes) -> AmqpResult<()> {
        let Some(p) = &mut self.publish else {
            return Err(AmqpError::unexpected_frame("content body frame without a basic.publish before it"));
        };
        let Some(header) = &p.header else {
            return Err(AmqpError::unexpected_frame("content body frame before its content header"));
        };
        let expected = header.body_size as usize;
        let now = p.received + body.len();
        if now > expected {
            return Err(AmqpError::frame_error(format!(
                "content body of {now} bytes exceeds the declared body size {expected}"
            )));
        }
        p.received = now;
        if !body.is_empty() {
            if p.first.is_none() {
                p.first = Some(body);
            } else {
                p.rest.push(body);
            }
        }
        if now == expected {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    fn finish_publish(&mut self, ctx: &mut ConnCtx) -> AmqpResult<()> {
        let Some(p) = self.publish.take() else {
            return Ok(());
        };
        let Some(header) = p.header else {
            return Ok(());
        };
        let body = match (p.first, p.rest.is_empty()) {
            (Some(one), true) => Body::One(one),
            (None, _) => Body::One(Bytes::new()),
            (Some(first), false) => {
                let mut parts = p.rest;
                parts.insert(0, first);
                Body::from_parts(parts)
            }
        };
        let exchange =
            if p.method.exchange.as_str() == "amq.default" { ShortStr::default() } else { p.method.exchange.clone() };
        // RabbitMQ's order: write permission on the exchange before it is looked up.
        super::permissions::publish(ctx, &exchange, &p.method.routing_key)?;
        // RabbitMQ's order: the exchange exists and is not internal, then reply-to, user_id
        // and expiration. The happy path leaves the exchange checks to routing.
        if p.invalid.is_some() || self.tx.is_some() {
            ctx.vhost()?.check_publish(&exchange)?;
        }
        let mut properties = header.properties;
        if contains(&properties, DIRECT_REPLY_TO.as_bytes()) {
            properties = self.rewrite_reply_to(properties)?;
        }
        if let Some(e) = p.invalid {
            return Err(e);
        }
        let message = Arc::new(Message {
            exchange,
            routing_key: p.method.routing_key.clone(),
            properties,
            body,
            persistent: p.persistent,
            priority: p.priority,
            expiration: p.expiration,
        });
        if let Some(tx) = &mut self.tx {
            tx.publishes.push((p.method, message, p.cc));
            return Ok(());
        }
        crate::broker::connections::bump(&self.card.publish, 1);
        let outcome = self.route_and_enqueue(ctx, &p.method, message, &p.cc)?;
        if self.confirm {
            self.publish_seq += 1;
            let (ticket, cluster, ok) = match outcome {
                Ok((ticket, cluster, rejected)) => (ticket, cluster, !rejected),
                Err(_) => (0, 0, false),
            };
            self.confirms.push_back((self.publish_seq, ticket, cluster, ok));
        }
        Ok(())
    }

    /// Publishes with reply-to `amq.rabbitmq.reply-to` get this channel's reply key instead.
    fn rewrite_reply_to(&self, raw: Bytes) -> AmqpResult<Bytes> {
        let mut props = BasicProperties::decode(raw.clone())
            .map_err(|e| AmqpError::syntax_error(format!("malformed content header properties: {e}")))?;
        if props.reply_to.as_deref() != Some(DIRECT_REPLY_TO) {
            return Ok(raw);
        }
        let Some(key) = &self.reply_key else {
            return Err(AmqpError::precondition_failed("fast reply consumer does not exist"));
        };
        props.reply_to = Some(ShortStr::from(key.as_str()));
        Ok(props.to_bytes())
    }

    /// Routes and enqueues a message. The outer error is a channel or connection error; the
    /// inner result is the ticket to wait for and whether a full queue refused the message
    /// (reject-publish), or a storage failure; either of those is nacked.
    fn route_and_enqueue(
        &mut self,
        ctx: &mut ConnCtx,
        method: &BasicPublish,
        message: Arc<Message>,
        cc: &[ShortStr],
    ) -> AmqpResult<Result<(u64, u64, bool), String>> {
        let mut ticket = 0;
        let mut cluster = 0;
        let mut rejected = false;
        let mut logged = false;
        let mut failed = None;
        let rk = message.routing_key.as_str();
        let routed = if message.exchange.is_empty() && rk.starts_with("amq.rabbitmq.reply-to.") {
            match ctx.broker.reply_consumer(rk) {
                Some(c) => {
                    let charge = message.size() + 64;
                    c.sink.send(crate::broker::consumer::ConnEvent::Deliver(Delivery {
                        channel: c.channel,
                        consumer_tag: c.tag.clone(),
                        queue: None,
                        item: QueuedMessage::unqueued(message.clone()),
                        no_ack: true,
                        charge,
                    }));
                    true
                }
                None => false,
            }
        } else {
            let vhost = ctx.vhost()?.clone();
            let mut queues = std::mem::take(&mut self.route_buf);
            let result = vhost.route(&message.exchange, rk, cc, &message.properties, &mut queues);
            if message.persistent {
                if let Some(reason) = ctx.broker.storage_failure() {
                    failed = Some(reason);
                }
            }
            for q in &queues {
                match q.publish(message.clone(), Some(&ctx.flow)) {
                    Ok(p) => {
                        ticket = ticket.max(p.ticket);
                        cluster = cluster.max(p.cluster);
                        ctx.flow_paused |= p.throttled;
                        rejected |= p.rejected;
                        logged |= p.logged;
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            // Writing to logs faster than the disk takes: this publisher waits for the disk.
            if logged && ctx.broker.storage_backlogged(&ctx.flow) {
                ctx.flow_paused = true;
            }
            // Proposing faster than the cluster commits (a minority, say): it waits for that.
            if cluster != 0 && ctx.broker.quorum_host().is_some_and(|h| h.backlogged(&ctx.flow)) {
                ctx.flow_paused = true;
            }
            // A delayed exchange holding it is not a route yet (as RabbitMQ's plugin).
            let routed = crate::broker::queue::delayed::reached_now(&queues);
            queues.clear();
            self.route_buf = queues;
            result?;
            routed
        };
        if !routed {
            let c = if method.mandatory { &self.card.return_unroutable } else { &self.card.drop_unroutable };
            crate::broker::connections::bump(c, 1);
        }
        if !routed && method.mandatory {
            ctx.out.method(
                self.id,
                BasicReturn {
                    reply_code: NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: method.exchange.clone(),
                    routing_key: method.routing_key.clone(),
                },
            );
            ctx.out.content(self.id, &message.properties, &message.body);
        }
        Ok(match failed {
            Some(reason) => Err(reason),
            None => Ok((ticket, cluster, rejected)),
        })
    }

    /// Whether this channel owes something that waits for the disk.
    pub fn waits_for_disk(&self) -> bool {
        self.held.is_some() || !self.confirms.is_empty()
    }

    /// Whether frames for this channel wait (behind a held reply or a basic.get's answer).
    pub fn is_holding(&self) -> bool {
        self.held.is_some() || self.held_get.is_some()
    }

    /// Whether this channel owes something that waits for the cluster.
    pub fn waits_for_cluster(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.1 != 0)
            || self.held_get.is_some()
            || self.confirms.iter().any(|c| c.2 != 0)
    }

    /// Sends the confirms whose messages are durable, in publish order: runs of acks as one
    /// basic.ack with multiple=true, nacks one by one. With `fail_pending`, confirms still
    /// waiting for a disk that fails are nacked. A message in a quorum queue of a cluster is
    /// durable once its enqueue is committed (on a majority's disks) and applied here; a
    /// full quorum queue that refused it (reject-publish) makes it a nack.
    pub fn flush_confirms(&mut self, ctx: &mut ConnCtx, fail_pending: bool) {
        let durable = ctx.durable_upto();
        let mut run: Option<(u64, u64)> = None;
        while let Some(&(seq, ticket, cluster, mut ok)) = self.confirms.front() {
            let resolved = ctx.cluster_done(cluster);
            if cluster != 0 && resolved {
                if let Some(host) = ctx.broker.quorum_host() {
                    ok &= !host.take_rejected(cluster);
                }
            }
            let ack = ok && ticket <= durable && resolved;
            if !ack && ok && !fail_pending {
                break;
            }
            self.confirms.pop_front();
            if ack {
                crate::broker::connections::bump(&self.card.confirm, 1);
                run = Some(run.map_or((seq, seq), |(first, _)| (first, seq)));
                continue;
            }
            if let Some((first, last)) = run.take() {
                ctx.out.method(self.id, BasicAck { delivery_tag: last, multiple: first != last });
            }
            ctx.out.method(self.id, BasicNack { delivery_tag: seq, multiple: false, requeue: false });
        }
        if let Some((first, last)) = run {
            ctx.out.method(self.id, BasicAck { delivery_tag: last, multiple: first != last });
        }
    }

    /// Sends the held reply once its ticket is durable (and its change applied, on a cluster
    /// node); returns true when it went out, or the error the cluster's apply refused the
    /// change with.
    pub fn release_held(&mut self, ctx: &mut ConnCtx) -> AmqpResult<bool> {
        if self.held_get.is_some() {
            return Ok(self.answer_held_get(ctx));
        }
        match self.held.take() {
            Some((ticket, cluster, reply)) if ticket <= ctx.durable_upto() && ctx.cluster_done(cluster) => {
                let refusal = if self.held_request == super::NO_REFUSAL {
                    None
                } else {
                    ctx.broker.quorum_host().and_then(|h| h.take_refusal(cluster))
                };
                if let Some(r) = refusal {
                    return Err(AmqpError::from(r).with_method(self.held_request));
                }
                let reply = match reply {
                    // A declare of a classic queue another node holds: its counts as the
                    // home gave them for this declare.
                    Method::QueueDeclareOk(mut ok) => {
                        let face = ctx.vhost().ok().and_then(|v| v.replicated_queue(&ok.queue));
                        if let Some(q) = face.filter(|q| q.home().is_some()) {
                            (ok.message_count, ok.consumer_count) = q.counts();
                        }
                        Method::QueueDeclareOk(ok)
                    }
                    other => other,
                };
                let consume_ok = matches!(reply, Method::BasicConsumeOk(_));
                ctx.out.method(self.id, reply);
                if consume_ok {
                    self.consume_released(ctx);
                }
                Ok(true)
            }
            held => {
                self.held = held;
                Ok(false)
            }
        }
    }

    /// Applies a transaction's acks and publishes.
    pub(super) fn commit(&mut self, ctx: &mut ConnCtx, tx: TxBuffer) -> AmqpResult<()> {
        for m in tx.settlements {
            match m {
                Method::BasicAck(m) => self.settle(m.delivery_tag, m.multiple, Settle::Ack)?,
                Method::BasicNack(m) => {
                    self.settle(m.delivery_tag, m.multiple, if m.requeue { Settle::Requeue } else { Settle::Drop })?
                }
                Method::BasicReject(m) => {
                    self.settle(m.delivery_tag, false, if m.requeue { Settle::Requeue } else { Settle::Drop })?
                }
                _ => {}
            }
        }
        for (method, message, cc) in tx.publishes {
            if let Err(reason) = self.route_and_enqueue(ctx, &method, message, &cc)? {
                return Err(AmqpError::internal_error(format!("cannot store the transaction's messages: {reason}")));
            }
        }
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
