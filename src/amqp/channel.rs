//! One AMQP channel: the methods a client sends on it, its consumers and the deliveries owed
//! back to queues, acknowledgements and transactions. Publishing (assembling a message from
//! its frames, routing it, confirms) is in `channel/publish.rs`.

mod consume;
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Drop,
}
