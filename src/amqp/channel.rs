//! One AMQP channel: the methods a client sends on it, its consumers and the deliveries owed
//! back to queues, acknowledgements and transactions. Publishing (assembling a message from
//! its frames, routing it, confirms) is in `channel/publish.rs`.

mod get;
mod permissions;
mod publish;

use publish::PendingPublish;

use super::context::ConnCtx;
use crate::amqp::method::*;
use crate::broker::arguments::{stream_offset, StreamOffset};
use crate::broker::connections::{bump, ChannelCard};
use crate::broker::consumer::{ChannelFlow, Consumer, Delivery, Origin, UnackedLimits};
use crate::broker::exchange::{Binding, Destination};
use crate::broker::message::{Message, QueuedMessage};
use crate::broker::queue::Queue;
use crate::broker::replicated::DefinitionChange;
use crate::broker::vhost::QueueDeclaration;
use crate::broker::FastMap;
use crate::broker::{AmqpError, AmqpResult, DIRECT_REPLY_TO};
use crate::types::ShortStr;
use rand::Rng;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The request a held reply answers when it is no change of the cluster's own (a tx.commit
/// waiting for this node's proposals): no refusal is looked up for its ticket.
pub(super) const NO_REFUSAL: (u16, u16) = (0, 0);

/// A delivery the client has not settled yet.
struct Unacked {
    tag: u64,
    /// None for direct reply-to deliveries.
    queue: Option<Arc<dyn Origin>>,
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
pub(super) struct TxBuffer {
    /// Each publish with its message and its `CC`/`BCC` keys.
    publishes: Vec<(BasicPublish, Arc<Message>, Vec<ShortStr>)>,
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
    /// In delivery-tag order (tags only grow), so a tag is found by binary search.
    unacked: VecDeque<Unacked>,
    /// Bytes of the messages in `unacked`, deliveries and basic.get alike.
    unacked_bytes: u64,
    publish: Option<PendingPublish>,
    confirm: bool,
    publish_seq: u64,
    /// Confirms owed, in publish order: (publish seq, group-commit ticket, cluster ticket,
    /// ack or nack).
    confirms: VecDeque<(u64, u64, u64, bool)>,
    tx: Option<TxBuffer>,
    /// A reply that waits for its ticket to be durable: tx.commit-ok, and the -ok of a
    /// durable declare, delete, bind or unbind. Frames arriving meanwhile wait in `stash` so
    /// that replies keep their order.
    pub held: Option<(u64, u64, Method)>,
    /// A basic.get from a quorum queue of a cluster waits here for its answer; frames after
    /// it wait in `stash` too.
    pub(super) held_get: Option<get::HeldGet>,
    /// The method behind a reply held for the cluster (class and method ids), to name it if
    /// the change is refused when applied.
    held_request: (u16, u16),
    pub stash: VecDeque<crate::amqp::Frame>,
    /// Deliveries to a consumer whose basic.consume-ok is held (its queue's home node has
    /// not answered yet): written after the consume-ok.
    deferred: VecDeque<Delivery>,
    /// That consumer was cancelled by its queue meanwhile: basic.cancel after the consume-ok.
    cancelled_while_held: Option<ShortStr>,
    last_queue: Option<ShortStr>,
    reply_key: Option<String>,
    route_buf: Vec<Arc<Queue>>,
    /// Settings and counters the management API reads.
    pub card: Arc<ChannelCard>,
}

fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

impl Channel {
    pub fn new(id: u16, limits: UnackedLimits) -> Self {
        Channel {
            id,
            closing: false,
            flow: Arc::new(ChannelFlow::new(limits)),
            prefetch: 0,
            consumers: FastMap::default(),
            next_tag: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            publish: None,
            confirm: false,
            publish_seq: 0,
            confirms: VecDeque::new(),
            tx: None,
            held: None,
            held_get: None,
            held_request: (0, 0),
            stash: VecDeque::new(),
            deferred: VecDeque::new(),
            cancelled_while_held: None,
            last_queue: None,
            reply_key: None,
            route_buf: Vec::new(),
            card: ChannelCard::new(id),
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
            // As RabbitMQ 3.x: a client may not stop the broker's deliveries with flow; it
            // has basic.qos for that. The Go client's own tests rely on this answer.
            Method::ChannelFlow(m) if !m.active => Err(AmqpError::not_implemented("active=false")),
            Method::ChannelFlow(_) => {
                ctx.out.method(self.id, ChannelFlowOk { active: true });
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::ExchangeDeclare(m) => {
                permissions::exchange_declare(ctx, &m.exchange, &m.kind, m.passive, &m.arguments)?;
                if !m.passive && ctx.vhost()?.exchange_kind(&m.exchange).is_none() {
                    let flags = (m.durable, m.auto_delete, m.internal);
                    let user = ctx.actor.user.to_string();
                    let vhost = ctx.vhost()?.name.clone();
                    let change =
                        DefinitionChange::declare_exchange(&vhost, &m.exchange, &m.kind, flags, &m.arguments, &user);
                    if self.replicate(ctx, change, m.nowait, (40, 10), ExchangeDeclareOk {}) {
                        return Ok(());
                    }
                }
                let ticket = ctx.vhost()?.declare_exchange(
                    &m.exchange,
                    &m.kind,
                    m.passive,
                    m.durable,
                    m.auto_delete,
                    m.internal,
                    &m.arguments,
                    &ctx.actor,
                )?;
                if !m.nowait {
                    self.reply_when_durable(ctx, ticket, ExchangeDeclareOk {});
                }
                Ok(())
            }
            Method::ExchangeDelete(m) => {
                permissions::exchange_delete(ctx, &m.exchange)?;
                let change = DefinitionChange::DeleteExchange {
                    vhost: ctx.vhost()?.name.clone(),
                    name: m.exchange.to_string(),
                    if_unused: m.if_unused,
                    user: ctx.actor.user.to_string(),
                };
                if self.replicate(ctx, change, m.nowait, (40, 20), ExchangeDeleteOk {}) {
                    return Ok(());
                }
                let ticket = ctx.vhost()?.delete_exchange(&m.exchange, m.if_unused, &ctx.actor)?;
                if !m.nowait {
                    self.reply_when_durable(ctx, ticket, ExchangeDeleteOk {});
                }
                Ok(())
            }
            Method::ExchangeBind(m) => {
                let b = Binding {
                    destination: Destination::Exchange(m.destination),
                    routing_key: m.routing_key,
                    arguments: m.arguments,
                };
                permissions::bind(ctx, &m.source, &b.destination, &b.routing_key)?;
                let change = DefinitionChange::binding(true, &ctx.vhost()?.name, &m.source, &b, &ctx.actor.user);
                if self.replicate(ctx, change, m.nowait, (40, 30), ExchangeBindOk {}) {
                    return Ok(());
                }
                let ticket = ctx.vhost()?.bind(&m.source, b, &ctx.actor)?;
                if !m.nowait {
                    self.reply_when_durable(ctx, ticket, ExchangeBindOk {});
                }
                Ok(())
            }
            Method::ExchangeUnbind(m) => {
                let b = Binding {
                    destination: Destination::Exchange(m.destination),
                    routing_key: m.routing_key,
                    arguments: m.arguments,
                };
                permissions::bind(ctx, &m.source, &b.destination, &b.routing_key)?;
                let change = DefinitionChange::binding(false, &ctx.vhost()?.name, &m.source, &b, &ctx.actor.user);
                if self.replicate(ctx, change, m.nowait, (40, 40), ExchangeUnbindOk {}) {
                    return Ok(());
                }
                let ticket = ctx.vhost()?.unbind(&m.source, &b, &ctx.actor)?;
                if !m.nowait {
                    self.reply_when_durable(ctx, ticket, ExchangeUnbindOk {});
                }
                Ok(())
            }
            Method::QueueDeclare(m) => self.queue_declare(ctx, m),
            Method::QueueBind(m) => {
                let (queue, routing_key) = self.binding_names(m.queue, m.routing_key)?;
                // Bindings to a quorum queue are the cluster's; to a classic queue, its node's.
                let replicated = ctx.vhost()?.replicated_queue(&queue).is_some();
                let b = Binding { destination: Destination::Queue(queue), routing_key, arguments: m.arguments };
                permissions::bind(ctx, &m.exchange, &b.destination, &b.routing_key)?;
                if replicated {
                    let change = DefinitionChange::binding(true, &ctx.vhost()?.name, &m.exchange, &b, &ctx.actor.user);
                    if self.replicate(ctx, change, m.nowait, (50, 20), QueueBindOk {}) {
                        return Ok(());
                    }
                }
                let ticket = ctx.vhost()?.bind(&m.exchange, b, &ctx.actor)?;
                if !m.nowait {
                    self.reply_when_durable(ctx, ticket, QueueBindOk {});
                }
                Ok(())
            }
            Method::QueueUnbind(m) => {
                let (queue, routing_key) = self.binding_names(m.queue, m.routing_key)?;
                // Bindings to a quorum queue are the cluster's; to a classic queue, its node's.
                let replicated = ctx.vhost()?.replicated_queue(&queue).is_some();
                let b = Binding { destination: Destination::Queue(queue), routing_key, arguments: m.arguments };
                permissions::bind(ctx, &m.exchange, &b.destination, &b.routing_key)?;
                if replicated {
                    let change = DefinitionChange::binding(false, &ctx.vhost()?.name, &m.exchange, &b, &ctx.actor.user);
                    if self.replicate(ctx, change, false, (50, 50), QueueUnbindOk {}) {
                        return Ok(());
                    }
                }
                let ticket = ctx.vhost()?.unbind(&m.exchange, &b, &ctx.actor)?;
                self.reply_when_durable(ctx, ticket, QueueUnbindOk {});
                Ok(())
            }
            Method::QueuePurge(m) => {
                let queue = self.queue_name(m.queue)?;
                permissions::queue_read(ctx, &queue)?;
                let message_count = ctx.vhost()?.purge_queue(&queue, ctx.id)?;
                if !m.nowait {
                    ctx.out.method(self.id, QueuePurgeOk { message_count });
                }
                Ok(())
            }
            Method::QueueDelete(m) => {
                let queue = self.queue_name(m.queue)?;
                permissions::queue_delete(ctx, &queue)?;
                if let (Some(q), Some(host)) =
                    (ctx.vhost()?.replicated_queue(&queue), ctx.broker.quorum_host().cloned())
                {
                    if let (Some(r), Some(_)) = (&q.replica, q.home()) {
                        // A classic queue another node holds: its home deletes it (with its
                        // checks) and answers.
                        let ticket = r.delete(m.if_unused, m.if_empty, &ctx.actor.user);
                        let reply = QueueDeleteOk { message_count: q.message_count() };
                        self.hold_for_cluster(ticket, m.nowait, (50, 40), reply);
                        return Ok(());
                    }
                    if q.replica.is_some() {
                        // A quorum queue goes on every node once its deletion is applied.
                        let ready = ctx.vhost()?.check_delete(&q, m.if_unused, m.if_empty)?;
                        let ticket = host.delete(&ctx.vhost()?.name, &queue);
                        self.hold_for_cluster(ticket, m.nowait, (50, 40), QueueDeleteOk { message_count: ready });
                        return Ok(());
                    }
                    // A classic queue held here: deleted here, then its faces on the other
                    // nodes go once its end is applied.
                    let vhost = ctx.vhost()?.clone();
                    let (message_count, ticket) = vhost.delete_queue(&queue, m.if_unused, m.if_empty, &ctx.actor)?;
                    let end = DefinitionChange::UnplaceQueue {
                        vhost: vhost.name.clone(),
                        name: queue.to_string(),
                        id: q.placement(),
                    };
                    let cluster = host.propose_definition(end);
                    if !m.nowait {
                        self.held = Some((ticket, cluster, QueueDeleteOk { message_count }.into()));
                        self.held_request = (50, 40);
                    }
                    return Ok(());
                }
                let (message_count, ticket) = ctx.vhost()?.delete_queue(&queue, m.if_unused, m.if_empty, &ctx.actor)?;
                ctx.exclusive_queues.retain(|q| !q.is_deleted());
                if !m.nowait {
                    self.reply_when_durable(ctx, ticket, QueueDeleteOk { message_count });
                }
                Ok(())
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({})", m.prefetch_size)));
                }
                if m.global {
                    self.flow.global_prefetch.store(m.prefetch_count as u32, Ordering::Release);
                    self.card.global_prefetch_count.store(m.prefetch_count as u32, Ordering::Relaxed);
                    self.wake_consumer_queues();
                } else {
                    self.prefetch = m.prefetch_count as u32;
                    self.card.prefetch_count.store(m.prefetch_count as u32, Ordering::Relaxed);
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
                self.publish = Some(PendingPublish::new(m));
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
                self.card.confirm_mode.store(true, Ordering::Relaxed);
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
                self.card.transactional.store(true, Ordering::Relaxed);
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
                // On a cluster node, publishes to quorum queues are on disk once committed by
                // a majority: commit-ok waits for this node's proposals so far too.
                let cluster = ctx.broker.quorum_host().map_or(0, |h| h.last_ticket());
                if cluster > ctx.cluster_resolved {
                    self.held = Some((ticket, cluster, TxCommitOk {}.into()));
                    self.held_request = NO_REFUSAL;
                } else {
                    self.reply_when_durable(ctx, ticket, TxCommitOk {});
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

    /// Sends `reply` now if `ticket` is durable (0 always is), else holds it, and the frames
    /// after it, until the ticket is on disk.
    fn reply_when_durable(&mut self, ctx: &mut ConnCtx, ticket: u64, reply: impl Into<Method>) {
        if ticket <= ctx.durable_upto() {
            ctx.out.method(self.id, reply);
        } else {
            self.held = Some((ticket, 0, reply.into()));
        }
    }

    /// On a cluster node: proposes a definition change, to be applied on every node, and
    /// holds `reply` (and the frames after it) until it is applied here; returns false on a
    /// single node, where the caller makes the change itself.
    fn replicate(
        &mut self,
        ctx: &mut ConnCtx,
        change: DefinitionChange,
        nowait: bool,
        request: (u16, u16),
        reply: impl Into<Method>,
    ) -> bool {
        let Some(host) = ctx.broker.quorum_host() else { return false };
        let ticket = host.propose_definition(change);
        self.hold_for_cluster(ticket, nowait, request, reply);
        true
    }

    /// Holds `reply` to `request` (and the frames after it) until the cluster has applied
    /// `ticket` on this node; nothing with `nowait`.
    fn hold_for_cluster(&mut self, ticket: u64, nowait: bool, request: (u16, u16), reply: impl Into<Method>) {
        if !nowait {
            self.held = Some((0, ticket, reply.into()));
            self.held_request = request;
        }
    }

    /// An empty queue name means the queue this channel declared last, as in RabbitMQ.
    fn queue_name(&self, name: ShortStr) -> AmqpResult<ShortStr> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// queue.bind and queue.unbind: an empty queue name is the last declared queue, and the
    /// routing key becomes that queue's name only when both are empty (as RabbitMQ expands
    /// them; the spec's wider rule would bind `queue_bind('q', 'x', '')` with key 'q').
    fn binding_names(&self, queue: ShortStr, routing_key: ShortStr) -> AmqpResult<(ShortStr, ShortStr)> {
        if !queue.is_empty() {
            return Ok((queue, routing_key));
        }
        let last = self.queue_name(queue)?;
        let key = if routing_key.is_empty() { last.clone() } else { routing_key };
        Ok((last, key))
    }

    fn queue_declare(&mut self, ctx: &mut ConnCtx, m: QueueDeclare) -> AmqpResult<()> {
        if m.queue.as_str() == DIRECT_REPLY_TO && m.passive {
            ctx.out.method(self.id, QueueDeclareOk { queue: m.queue, message_count: 0, consumer_count: 0 });
            return Ok(());
        }
        let name = if m.queue.is_empty() && !m.passive {
            // Quorum queues and streams are never server-named (RabbitMQ's server_named).
            let kind = match m.arguments.get("x-queue-type").and_then(|v| v.as_str()) {
                Some("quorum") => Some("rabbit_quorum_queue"),
                Some("stream") => Some("rabbit_stream_queue"),
                _ => None,
            };
            if let Some(kind) = kind {
                return Err(AmqpError::precondition_failed(format!(
                    "Cannot declare a server-named queue for type {kind}"
                )));
            }
            ShortStr::from(format!("amq.gen-{}", random_suffix(22)))
        } else {
            if !m.passive && m.queue.starts_with("amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    m.queue
                )));
            }
            // A passive declare takes the name as given: '' names no queue (as in RabbitMQ).
            if m.passive {
                m.queue
            } else {
                self.queue_name(m.queue)?
            }
        };
        permissions::queue_declare(ctx, &name, m.passive, &m.arguments)?;
        let decl = QueueDeclaration {
            name: name.clone(),
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        if let Some(host) = ctx.broker.quorum_host().cloned() {
            let vhost = ctx.vhost()?.clone();
            let quorum = matches!(decl.arguments.get("x-queue-type"), Some(v) if v.as_str() == Some("quorum"));
            if quorum && !m.passive && !vhost.has_queue(&name) {
                // A quorum queue on a cluster node: declared through the replicated log; the
                // declare-ok waits until the declaration is committed and applied here.
                let args = crate::broker::arguments::QueueArguments::parse(&decl.arguments, &name, &vhost.name)?;
                crate::broker::arguments::check_type_properties(
                    m.auto_delete,
                    m.exclusive,
                    m.durable,
                    &name,
                    &vhost.name,
                )?;
                let ticket = host.declare(&vhost.name, &name, &decl.arguments, &args);
                self.last_queue = Some(name.clone());
                let reply = QueueDeclareOk { queue: name, message_count: 0, consumer_count: 0 };
                self.hold_for_cluster(ticket, m.nowait, (50, 10), reply);
                return Ok(());
            }
            if !quorum && !m.passive && !m.exclusive && !vhost.has_queue(&name) {
                // A classic queue on a cluster node: placed through the replicated log; the
                // declare-ok waits until the placement is applied here.
                if let Some(ticket) = ctx.broker.place_new_queue(&vhost.name, &decl, &ctx.actor.user)? {
                    self.last_queue = Some(name.clone());
                    let reply = QueueDeclareOk { queue: name, message_count: 0, consumer_count: 0 };
                    self.hold_for_cluster(ticket, m.nowait, (50, 10), reply);
                    return Ok(());
                }
            }
        }
        let (queue, message_count, consumer_count, ticket) = ctx.vhost()?.declare_queue(&decl, &ctx.actor)?;
        if let (Some(r), Some(_)) = (&queue.replica, queue.home()) {
            // A classic queue another node holds: the declare-ok waits for its counts there
            // (filled in as it is sent, see `release_held`).
            let ticket = r.refresh();
            self.last_queue = Some(name.clone());
            self.hold_for_cluster(
                ticket,
                m.nowait,
                (50, 10),
                QueueDeclareOk { queue: name, message_count, consumer_count },
            );
            return Ok(());
        }
        if queue.options.exclusive_owner == Some(ctx.id) && !ctx.exclusive_queues.iter().any(|q| Arc::ptr_eq(q, &queue))
        {
            ctx.exclusive_queues.push(queue);
        }
        self.last_queue = Some(name.clone());
        if !m.nowait {
            self.reply_when_durable(ctx, ticket, QueueDeclareOk { queue: name, message_count, consumer_count });
        }
        Ok(())
    }

    fn consume(&mut self, ctx: &mut ConnCtx, m: BasicConsume) -> AmqpResult<()> {
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
    fn stream_consume_checks(&self, queue: &Queue, consumer: &Consumer) -> AmqpResult<StreamOffset> {
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

    fn cancel(&mut self, ctx: &mut ConnCtx, tag: &ShortStr) {
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
    fn consume_held(&self, tag: &ShortStr) -> bool {
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

    fn check_tag_known(&self, m: &Method) -> AmqpResult<()> {
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

    fn settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
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

    fn is_unacked(&self, tag: u64) -> bool {
        self.unacked.binary_search_by_key(&tag, |u| u.tag).is_ok()
    }

    /// Settles deliveries with their queues and returns the consumers' credit.
    fn release(&mut self, taken: Vec<Unacked>, how: Settle) {
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
        self.held = None;
        if let Some(g) = self.held_get.take() {
            // Its answer will not be read: a message it took goes back.
            if let Some((qm, _)) = g.queue.replica.as_ref().and_then(|r| r.take_got(g.ticket)) {
                if !g.no_ack {
                    g.origin.requeued(vec![qm]);
                }
            }
        }
        self.stash.clear();
        self.confirms.clear();
        let tags: Vec<ShortStr> = self.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel(ctx, &tag);
        }
        // Deliveries that waited for a consume-ok: back to their queue (no consumer now).
        self.cancelled_while_held = None;
        for d in std::mem::take(&mut self.deferred) {
            self.deliver(ctx, d);
        }
        // Undo credit first so requeued messages can go to other consumers at once.
        self.flow.paused.store(true, Ordering::Release);
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        self.release(all, Settle::Requeue);
    }
}

/// RabbitMQ's 406 for a consumer argument the queue's type does not take.
fn invalid_consumer_arg(key: &str, queue: &Queue, kind: &str) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "invalid arg '{key}' for queue '{}' in vhost '{}' of queue type {kind}",
        queue.name, queue.vhost
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Drop,
}
