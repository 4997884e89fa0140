//! One AMQP channel: assembling publishes from method, header and body frames, confirms and
//! transactions, consumers and the deliveries owed back to queues.

use super::connection::ConnCtx;
use crate::broker::consumer::{ChannelFlow, Consumer, Delivery};
use crate::broker::exchange::{Binding, Destination};
use crate::broker::message::Message;
use crate::broker::queue::{Queue, QueuedMessage};
use crate::broker::vhost::QueueDeclaration;
use crate::broker::FastMap;
use crate::broker::{AmqpError, AmqpResult, DIRECT_REPLY_TO};
use crate::protocol::constants::NO_ROUTE;
use crate::protocol::method::*;
use crate::protocol::{BasicProperties, ContentHeader, ShortStr};
use bytes::{Bytes, BytesMut};
use rand::Rng;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The most a multi-frame body reserves before its bytes arrive.
const MAX_UPFRONT_RESERVE: usize = 1024 * 1024;

/// A publish waiting for its header and body frames.
struct PendingPublish {
    method: BasicPublish,
    header: Option<ContentHeader>,
    /// Read from the properties when the header arrives (they are decoded once, there).
    persistent: bool,
    priority: u8,
    expiration: Option<u64>,
    body: BytesMut,
    /// The single body frame, kept without a copy when the body arrives in one piece.
    single: Option<Bytes>,
}

/// A delivery the client has not settled yet.
struct Unacked {
    tag: u64,
    queue: Option<Arc<Queue>>,
    consumer: Option<Arc<Consumer>>,
    message: QueuedMessage,
}

struct ConsumerEntry {
    consumer: Arc<Consumer>,
    /// None for the direct reply-to pseudo-queue.
    queue: Option<Arc<Queue>>,
}

/// What a transaction holds until commit.
#[derive(Default)]
struct TxBuffer {
    publishes: Vec<(BasicPublish, Arc<Message>)>,
    settlements: Vec<Method>,
}

pub struct Channel {
    pub id: u16,
    /// We sent channel.close and wait for close-ok; frames are dropped meanwhile.
    pub closing: bool,
    flow: Arc<ChannelFlow>,
    prefetch: u32,
    consumers: FastMap<ShortStr, ConsumerEntry>,
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    publish: Option<PendingPublish>,
    confirm: bool,
    publish_seq: u64,
    /// Confirms owed, in publish order: (publish seq, group-commit ticket, ack or nack).
    confirms: VecDeque<(u64, u64, bool)>,
    tx: Option<TxBuffer>,
    /// tx.commit-ok waits for this ticket to be durable; frames arriving meanwhile wait in
    /// `stash` so that replies keep their order.
    pub pending_commit: Option<u64>,
    pub stash: VecDeque<crate::protocol::Frame>,
    last_queue: Option<ShortStr>,
    reply_key: Option<String>,
    route_buf: Vec<Arc<Queue>>,
}

fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

impl Channel {
    pub fn new(id: u16) -> Self {
        Channel {
            id,
            closing: false,
            flow: Arc::new(ChannelFlow::default()),
            prefetch: 0,
            consumers: FastMap::default(),
            next_tag: 1,
            unacked: VecDeque::new(),
            publish: None,
            confirm: false,
            publish_seq: 0,
            confirms: VecDeque::new(),
            tx: None,
            pending_commit: None,
            stash: VecDeque::new(),
            last_queue: None,
            reply_key: None,
            route_buf: Vec::new(),
        }
    }

    pub fn method(&mut self, ctx: &mut ConnCtx, method: Method) -> AmqpResult<()> {
        if self.publish.is_some() {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got {} instead",
                method.name()
            )));
        }
        match method {
            Method::ChannelFlow(m) => {
                self.flow.paused.store(!m.active, Ordering::Release);
                ctx.out.method(self.id, ChannelFlowOk { active: m.active });
                if m.active {
                    self.wake_consumer_queues();
                }
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::ExchangeDeclare(m) => {
                ctx.vhost()?.declare_exchange(
                    &m.exchange,
                    &m.kind,
                    m.passive,
                    m.durable,
                    m.auto_delete,
                    m.internal,
                    &m.arguments,
                )?;
                if !m.nowait {
                    ctx.out.method(self.id, ExchangeDeclareOk {});
                }
                Ok(())
            }
            Method::ExchangeDelete(m) => {
                ctx.vhost()?.delete_exchange(&m.exchange, m.if_unused)?;
                if !m.nowait {
                    ctx.out.method(self.id, ExchangeDeleteOk {});
                }
                Ok(())
            }
            Method::ExchangeBind(m) => {
                let b = Binding {
                    destination: Destination::Exchange(m.destination),
                    routing_key: m.routing_key,
                    arguments: m.arguments,
                };
                ctx.vhost()?.bind(&m.source, b, ctx.id)?;
                if !m.nowait {
                    ctx.out.method(self.id, ExchangeBindOk {});
                }
                Ok(())
            }
            Method::ExchangeUnbind(m) => {
                let b = Binding {
                    destination: Destination::Exchange(m.destination),
                    routing_key: m.routing_key,
                    arguments: m.arguments,
                };
                ctx.vhost()?.unbind(&m.source, &b, ctx.id)?;
                if !m.nowait {
                    ctx.out.method(self.id, ExchangeUnbindOk {});
                }
                Ok(())
            }
            Method::QueueDeclare(m) => self.queue_declare(ctx, m),
            Method::QueueBind(m) => {
                let queue = self.queue_name(m.queue)?;
                let routing_key = if m.routing_key.is_empty() { queue.clone() } else { m.routing_key };
                let b = Binding { destination: Destination::Queue(queue), routing_key, arguments: m.arguments };
                ctx.vhost()?.bind(&m.exchange, b, ctx.id)?;
                if !m.nowait {
                    ctx.out.method(self.id, QueueBindOk {});
                }
                Ok(())
            }
            Method::QueueUnbind(m) => {
                let queue = self.queue_name(m.queue)?;
                let routing_key = if m.routing_key.is_empty() { queue.clone() } else { m.routing_key };
                let b = Binding { destination: Destination::Queue(queue), routing_key, arguments: m.arguments };
                ctx.vhost()?.unbind(&m.exchange, &b, ctx.id)?;
                ctx.out.method(self.id, QueueUnbindOk {});
                Ok(())
            }
            Method::QueuePurge(m) => {
                let queue = self.queue_name(m.queue)?;
                let message_count = ctx.vhost()?.purge_queue(&queue, ctx.id)?;
                if !m.nowait {
                    ctx.out.method(self.id, QueuePurgeOk { message_count });
                }
                Ok(())
            }
            Method::QueueDelete(m) => {
                let queue = self.queue_name(m.queue)?;
                let message_count = ctx.vhost()?.delete_queue(&queue, m.if_unused, m.if_empty, ctx.id)?;
                ctx.exclusive_queues.retain(|q| !q.is_deleted());
                if !m.nowait {
                    ctx.out.method(self.id, QueueDeleteOk { message_count });
                }
                Ok(())
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({})", m.prefetch_size)));
                }
                if m.global {
                    self.flow.global_prefetch.store(m.prefetch_count as u32, Ordering::Release);
                    self.wake_consumer_queues();
                } else {
                    self.prefetch = m.prefetch_count as u32;
                }
                ctx.out.method(self.id, BasicQosOk {});
                Ok(())
            }
            Method::BasicConsume(m) => self.consume(ctx, m),
            Method::BasicCancel(m) => {
                self.cancel(ctx, &m.consumer_tag);
                if !m.nowait {
                    ctx.out.method(self.id, BasicCancelOk { consumer_tag: m.consumer_tag });
                }
                Ok(())
            }
            Method::BasicPublish(m) => {
                ctx.is_publisher = true;
                if m.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.publish = Some(PendingPublish {
                    method: m,
                    header: None,
                    persistent: false,
                    priority: 0,
                    expiration: None,
                    body: BytesMut::new(),
                    single: None,
                });
                Ok(())
            }
            Method::BasicGet(m) => self.get(ctx, m),
            Method::BasicAck(_) | Method::BasicNack(_) | Method::BasicReject(_) if self.tx.is_some() => {
                self.check_tag_known(&method)?;
                if let Some(tx) = &mut self.tx {
                    tx.settlements.push(method);
                }
                Ok(())
            }
            Method::BasicAck(m) => self.settle(m.delivery_tag, m.multiple, Settle::Ack),
            Method::BasicNack(m) => {
                self.settle(m.delivery_tag, m.multiple, if m.requeue { Settle::Requeue } else { Settle::Drop })
            }
            Method::BasicReject(m) => {
                self.settle(m.delivery_tag, false, if m.requeue { Settle::Requeue } else { Settle::Drop })
            }
            Method::BasicRecover(_) => {
                self.recover();
                ctx.out.method(self.id, BasicRecoverOk {});
                Ok(())
            }
            Method::BasicRecoverAsync(_) => {
                self.recover();
                Ok(())
            }
            Method::ConfirmSelect(m) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed("cannot switch from tx to confirm mode"));
                }
                self.confirm = true;
                if !m.nowait {
                    ctx.out.method(self.id, ConfirmSelectOk {});
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                if self.confirm {
                    return Err(AmqpError::precondition_failed("cannot switch from confirm to tx mode"));
                }
                self.tx.get_or_insert_with(TxBuffer::default);
                ctx.out.method(self.id, TxSelectOk {});
                Ok(())
            }
            Method::TxCommit(_) => {
                let Some(tx) = self.tx.take() else {
                    return Err(AmqpError::precondition_failed("channel is not transactional"));
                };
                self.tx = Some(TxBuffer::default());
                self.commit(ctx, tx)?;
                // commit-ok means everything before it is on disk: the transaction's publishes
                // and acks, and whatever else this connection did before.
                let ticket = ctx.broker.storage_last_ticket();
                if ticket <= ctx.durable_upto() {
                    ctx.out.method(self.id, TxCommitOk {});
                } else {
                    self.pending_commit = Some(ticket);
                }
                Ok(())
            }
            Method::TxRollback(_) => {
                let Some(tx) = &mut self.tx else {
                    return Err(AmqpError::precondition_failed("channel is not transactional"));
                };
                *tx = TxBuffer::default();
                ctx.out.method(self.id, TxRollbackOk {});
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!("unexpected method {} from client", other.name()))),
        }
    }

    /// An empty queue name means the queue this channel declared last, as in RabbitMQ.
    fn queue_name(&self, name: ShortStr) -> AmqpResult<ShortStr> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    fn queue_declare(&mut self, ctx: &mut ConnCtx, m: QueueDeclare) -> AmqpResult<()> {
        if m.queue.as_str() == DIRECT_REPLY_TO && m.passive {
            ctx.out.method(self.id, QueueDeclareOk { queue: m.queue, message_count: 0, consumer_count: 0 });
            return Ok(());
        }
        let name = if m.queue.is_empty() && !m.passive {
            ShortStr::from(format!("amq.gen-{}", random_suffix(22)))
        } else {
            if !m.passive && m.queue.starts_with("amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    m.queue
                )));
            }
            self.queue_name(m.queue)?
        };
        let decl = QueueDeclaration {
            name: name.clone(),
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        let (queue, message_count, consumer_count) = ctx.vhost()?.declare_queue(&decl, ctx.id)?;
        if queue.options.exclusive_owner == Some(ctx.id) && !ctx.exclusive_queues.iter().any(|q| Arc::ptr_eq(q, &queue))
        {
            ctx.exclusive_queues.push(queue);
        }
        self.last_queue = Some(name.clone());
        if !m.nowait {
            ctx.out.method(self.id, QueueDeclareOk { queue: name, message_count, consumer_count });
        }
        Ok(())
    }

    fn consume(&mut self, ctx: &mut ConnCtx, m: BasicConsume) -> AmqpResult<()> {
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
            return Ok(());
        }
        let queue_name = self.queue_name(m.queue)?;
        let queue = ctx.vhost()?.queue(&queue_name, ctx.id)?;
        queue.add_consumer(consumer.clone())?;
        // Deliveries reach this connection through its event queue, after this consume-ok.
        if !m.nowait {
            ctx.out.method(self.id, BasicConsumeOk { consumer_tag: tag.clone() });
        }
        self.consumers.insert(tag, ConsumerEntry { consumer, queue: Some(queue) });
        Ok(())
    }

    fn cancel(&mut self, ctx: &mut ConnCtx, tag: &ShortStr) {
        let Some(entry) = self.consumers.remove(tag.as_str()) else {
            return;
        };
        match entry.queue {
            Some(q) => {
                if q.remove_consumer(ctx.id, self.id, tag) {
                    if let Some(vhost) = &ctx.vhost {
                        vhost.force_delete_queue(&q);
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
        if self.consumers.remove(tag.as_str()).is_some() && ctx.cancel_notify && !self.closing {
            ctx.out.method(self.id, BasicCancel { consumer_tag: tag, nowait: true });
        }
    }

    fn get(&mut self, ctx: &mut ConnCtx, m: BasicGet) -> AmqpResult<()> {
        let queue_name = self.queue_name(m.queue)?;
        let queue = ctx.vhost()?.queue(&queue_name, ctx.id)?;
        match queue.get(m.no_ack) {
            None => ctx.out.method(self.id, BasicGetEmpty { cluster_id: ShortStr::default() }),
            Some((qm, message_count)) => {
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
                if !m.no_ack {
                    self.unacked.push_back(Unacked { tag, queue: Some(queue), consumer: None, message: qm });
                }
            }
        }
        Ok(())
    }

    /// Writes a delivery a queue dispatched to one of this channel's consumers.
    pub fn deliver(&mut self, ctx: &mut ConnCtx, d: Delivery) {
        let Some(entry) = self.consumers.get(d.consumer_tag.as_str()) else {
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
        if d.no_ack && item.logged {
            if let Some(q) = &d.queue {
                q.settle_delivered(&item);
            }
        }
        if !d.no_ack {
            self.unacked.push_back(Unacked {
                tag,
                queue: d.queue,
                consumer: Some(entry.consumer.clone()),
                message: item,
            });
        }
    }

    /// A delivery that reached no consumer goes back to its queue; its credit is returned.
    pub fn return_undelivered(ctx: &ConnCtx, d: Delivery) {
        ctx.sink.release(d.charge);
        if let Some(q) = d.queue {
            q.requeue_undelivered(d.item, !d.no_ack);
        }
    }

    pub fn content_header(&mut self, ctx: &mut ConnCtx, header: ContentHeader) -> AmqpResult<()> {
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
        let props = BasicProperties::decode(header.properties.clone())
            .map_err(|e| AmqpError::syntax_error(format!("malformed content header properties: {e}")))?;
        p.persistent = props.delivery_mode == Some(2);
        p.priority = props.priority.unwrap_or(0);
        p.expiration = match &props.expiration {
            Some(e) => Some(crate::broker::arguments::parse_expiration(e.as_bytes())?),
            None => None,
        };
        let done = header.body_size == 0;
        p.header = Some(header);
        if done {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    pub fn content_body(&mut self, ctx: &mut ConnCtx, body: Bytes) -> AmqpResult<()> {
        let Some(p) = &mut self.publish else {
            return Err(AmqpError::unexpected_frame("content body frame without a basic.publish before it"));
        };
        let Some(header) = &p.header else {
            return Err(AmqpError::unexpected_frame("content body frame before its content header"));
        };
        let expected = header.body_size as usize;
        let have = p.single.as_ref().map_or(0, Bytes::len) + p.body.len();
        let now = have + body.len();
        if now > expected {
            return Err(AmqpError::frame_error(format!(
                "content body of {} bytes exceeds the declared body size {expected}",
                have + body.len()
            )));
        }
        if have == 0 && body.len() == expected {
            p.single = Some(body);
        } else {
            // Reserve what was declared only up to a bound: memory follows bytes actually received.
            if p.body.is_empty() {
                p.body.reserve(expected.min(MAX_UPFRONT_RESERVE));
            }
            if let Some(first) = p.single.take() {
                p.body.extend_from_slice(&first);
            }
            p.body.extend_from_slice(&body);
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
        let body = match p.single {
            Some(b) => b,
            None => p.body.freeze(),
        };
        let mut properties = header.properties;
        if contains(&properties, DIRECT_REPLY_TO.as_bytes()) {
            properties = self.rewrite_reply_to(properties)?;
        }
        let exchange =
            if p.method.exchange.as_str() == "amq.default" { ShortStr::default() } else { p.method.exchange.clone() };
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
            // Check the exchange now, as RabbitMQ does, so the error names this publish.
            if !message.exchange.is_empty() && !ctx.vhost()?.exchange_exists(&message.exchange) {
                return Err(AmqpError::not_found(format!(
                    "no exchange '{}' in vhost '{}'",
                    message.exchange,
                    ctx.vhost()?.name
                )));
            }
            tx.publishes.push((p.method, message));
            return Ok(());
        }
        let outcome = self.route_and_enqueue(ctx, &p.method, message)?;
        if self.confirm {
            self.publish_seq += 1;
            let (ticket, ok) = match outcome {
                Ok((ticket, rejected)) => (ticket, !rejected),
                Err(_) => (0, false),
            };
            self.confirms.push_back((self.publish_seq, ticket, ok));
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
    ) -> AmqpResult<Result<(u64, bool), String>> {
        let mut ticket = 0;
        let mut rejected = false;
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
                        item: QueuedMessage {
                            seq: 0,
                            message: message.clone(),
                            redelivered: false,
                            logged: false,
                            expires_at: 0,
                            deliveries: 0,
                            priority: 0,
                        },
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
            let result = vhost.route(&message.exchange, rk, &message.properties, &mut queues);
            if message.persistent {
                if let Some(reason) = ctx.broker.storage_failure() {
                    failed = Some(reason);
                }
            }
            for q in &queues {
                match q.publish(message.clone(), Some(&ctx.flow)) {
                    Ok(p) => {
                        ticket = ticket.max(p.ticket);
                        ctx.flow_paused |= p.throttled;
                        rejected |= p.rejected;
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            let routed = !queues.is_empty();
            queues.clear();
            self.route_buf = queues;
            result?;
            routed
        };
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
            None => Ok((ticket, rejected)),
        })
    }

    /// Whether this channel owes something that waits for the disk.
    pub fn waits_for_disk(&self) -> bool {
        self.pending_commit.is_some() || !self.confirms.is_empty()
    }

    /// Sends the confirms whose messages are durable, in publish order: runs of acks as one
    /// basic.ack with multiple=true, nacks one by one. With `fail_pending`, confirms still
    /// waiting for a disk that fails are nacked.
    pub fn flush_confirms(&mut self, ctx: &mut ConnCtx, fail_pending: bool) {
        let durable = ctx.durable_upto();
        let mut run: Option<(u64, u64)> = None;
        while let Some(&(seq, ticket, ok)) = self.confirms.front() {
            let ack = ok && ticket <= durable;
            if !ack && ok && !fail_pending {
                break;
            }
            self.confirms.pop_front();
            if ack {
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

    /// Sends tx.commit-ok once the commit is durable; returns true when it went out.
    pub fn release_commit(&mut self, ctx: &mut ConnCtx) -> bool {
        match self.pending_commit {
            Some(ticket) if ticket <= ctx.durable_upto() => {
                self.pending_commit = None;
                ctx.out.method(self.id, TxCommitOk {});
                true
            }
            _ => false,
        }
    }

    /// Applies a transaction's acks and publishes.
    fn commit(&mut self, ctx: &mut ConnCtx, tx: TxBuffer) -> AmqpResult<()> {
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
        for (method, message) in tx.publishes {
            if let Err(reason) = self.route_and_enqueue(ctx, &method, message)? {
                return Err(AmqpError::internal_error(format!("cannot store the transaction's messages: {reason}")));
            }
        }
        Ok(())
    }

    fn check_tag_known(&self, m: &Method) -> AmqpResult<()> {
        let (tag, multiple) = match m {
            Method::BasicAck(m) => (m.delivery_tag, m.multiple),
            Method::BasicNack(m) => (m.delivery_tag, m.multiple),
            Method::BasicReject(m) => (m.delivery_tag, false),
            _ => return Ok(()),
        };
        if (multiple && tag == 0) || self.unacked.iter().any(|u| u.tag == tag) {
            Ok(())
        } else {
            Err(AmqpError::precondition_failed(format!("unknown delivery tag {tag}")))
        }
    }

    fn settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let taken: Vec<Unacked> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            if tag != 0 && !self.unacked.iter().any(|u| u.tag == tag) {
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

    /// Settles deliveries with their queues and returns the consumers' credit.
    fn release(&mut self, taken: Vec<Unacked>, how: Settle) {
        let mut by_queue: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
        for u in taken {
            if let Some(c) = &u.consumer {
                c.settle(1);
            }
            let Some(q) = u.queue else { continue };
            match by_queue.iter_mut().find(|(bq, _)| Arc::ptr_eq(bq, &q)) {
                Some((_, v)) => v.push(u.message),
                None => by_queue.push((q, vec![u.message])),
            }
        }
        for (q, msgs) in by_queue {
            match how {
                Settle::Requeue => q.requeue(msgs),
                Settle::Ack => {
                    q.settle(&msgs);
                    q.dispatch();
                }
                Settle::Drop => {
                    q.reject(msgs);
                    q.dispatch();
                }
            }
        }
        if self.flow.global_prefetch.load(Ordering::Acquire) > 0 {
            self.wake_consumer_queues();
        }
    }

    fn recover(&mut self) {
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        self.release(all, Settle::Requeue);
    }

    fn wake_consumer_queues(&self) {
        for e in self.consumers.values() {
            if let Some(q) = &e.queue {
                q.dispatch();
            }
        }
    }

    /// Closes the channel's side: cancels consumers and requeues what was not acknowledged.
    pub fn close(&mut self, ctx: &mut ConnCtx) {
        self.closing = true;
        self.publish = None;
        self.pending_commit = None;
        self.stash.clear();
        self.confirms.clear();
        let tags: Vec<ShortStr> = self.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel(ctx, &tag);
        }
        // Undo credit first so requeued messages can go to other consumers at once.
        self.flow.paused.store(true, Ordering::Release);
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        self.release(all, Settle::Requeue);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Drop,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
