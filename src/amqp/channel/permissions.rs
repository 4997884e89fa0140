//! The permission checks of each channel method, where RabbitMQ makes them
//! (`rabbit_channel`): before the broker looks the resource up, after the checks that come
//! first there (an exchange type, the default exchange, reserved `amq.` names), so a refusal
//! names the same problem RabbitMQ's would. The grant is the connection's, recompiled when
//! permissions change (see `ConnCtx::grant`).

use super::super::context::ConnCtx;
use crate::auth::grant::{Kind, Perm};
use crate::broker::audit::AuditEvent;
use crate::broker::exchange::{Destination, ExchangeKind};
use crate::broker::AmqpResult;
use crate::types::{FieldTable, FieldValue};

fn check(ctx: &mut ConnCtx, kind: Kind, name: &str, perm: Perm) -> AmqpResult<()> {
    let result = ctx.grant().check(kind, name, perm);
    audited(ctx, result, kind.name(), name, Some(perm))
}

/// A refusal goes to the audit log (`access.refused`, with what was asked), then to the client.
fn audited(
    ctx: &ConnCtx,
    result: Result<(), crate::auth::Refused>,
    kind: &str,
    name: &str,
    perm: Option<Perm>,
) -> AmqpResult<()> {
    let Err(refused) = result else { return Ok(()) };
    let audit = ctx.broker.audit();
    if audit.is_on() {
        let vhost = ctx.vhost.as_ref().map(|v| v.name.as_str());
        let mut e = AuditEvent::new("access.refused", &ctx.actor, vhost).with("kind", kind).with("name", name);
        if let Some(p) = perm {
            e = e.with("permission", p.name());
        }
        audit.emit(e.refused(refused.text.clone()));
    }
    Err(refused.into())
}

/// The name of an exchange given as an argument (`alternate-exchange`,
/// `x-dead-letter-exchange`), if it is a string.
fn exchange_arg(args: &FieldTable, key: &str) -> Option<String> {
    args.get(key).and_then(FieldValue::as_str).map(str::to_string)
}

/// exchange.declare: configure on the exchange (any permission when passive); creating one
/// with an alternate exchange also needs read on it and write on the alternate.
pub fn exchange_declare(ctx: &mut ConnCtx, name: &str, kind: &str, passive: bool, args: &FieldTable) -> AmqpResult<()> {
    if name.is_empty() || (!passive && ExchangeKind::parse(kind).is_err()) {
        // The broker refuses these first.
        return Ok(());
    }
    if passive {
        let result = ctx.grant().check_any(Kind::Exchange, name);
        return audited(ctx, result, "exchange", name, None);
    }
    check(ctx, Kind::Exchange, name, Perm::Configure)?;
    if ctx.vhost()?.exchange_kind(name).is_none() {
        if let Some(ae) = exchange_arg(args, "alternate-exchange") {
            check(ctx, Kind::Exchange, name, Perm::Read)?;
            check(ctx, Kind::Exchange, &ae, Perm::Write)?;
        }
    }
    Ok(())
}

/// exchange.delete: configure, after the default and `amq.` exchanges are refused.
pub fn exchange_delete(ctx: &mut ConnCtx, name: &str) -> AmqpResult<()> {
    if name.is_empty() || name.starts_with("amq.") {
        return Ok(());
    }
    check(ctx, Kind::Exchange, name, Perm::Configure)
}

/// queue.declare: configure (any permission when passive); creating one with a
/// dead-letter exchange also needs read on the queue and write on that exchange.
pub fn queue_declare(ctx: &mut ConnCtx, name: &str, passive: bool, args: &FieldTable) -> AmqpResult<()> {
    if passive {
        let result = ctx.grant().check_any(Kind::Queue, name);
        return audited(ctx, result, "queue", name, None);
    }
    check(ctx, Kind::Queue, name, Perm::Configure)?;
    if let Some(dlx) = exchange_arg(args, "x-dead-letter-exchange") {
        if !ctx.vhost()?.has_queue(name) {
            check(ctx, Kind::Queue, name, Perm::Read)?;
            check(ctx, Kind::Exchange, &dlx, Perm::Write)?;
        }
    }
    Ok(())
}

pub fn queue_delete(ctx: &mut ConnCtx, name: &str) -> AmqpResult<()> {
    check(ctx, Kind::Queue, name, Perm::Configure)
}

/// basic.consume, basic.get and queue.purge: read on the queue.
pub fn queue_read(ctx: &mut ConnCtx, name: &str) -> AmqpResult<()> {
    check(ctx, Kind::Queue, name, Perm::Read)
}

/// queue.bind, exchange.bind and their unbinds: write on the destination, then (the default
/// exchange being refused by the broker) read on the source, and for a topic exchange the
/// topic read permission on the routing key.
pub fn bind(ctx: &mut ConnCtx, source: &str, destination: &Destination, routing_key: &str) -> AmqpResult<()> {
    match destination {
        Destination::Queue(q) => check(ctx, Kind::Queue, q, Perm::Write)?,
        Destination::Exchange(x) => {
            if x.is_empty() {
                return Ok(());
            }
            check(ctx, Kind::Exchange, x, Perm::Write)?
        }
    }
    if source.is_empty() {
        return Ok(());
    }
    check(ctx, Kind::Exchange, source, Perm::Read)?;
    topic(ctx, source, routing_key, Perm::Read)
}

/// basic.publish: write on the exchange (`amq.default` for ""), and for a topic exchange
/// the topic write permission on the routing key. Costs a load and a branch for a user
/// allowed everything.
pub fn publish(ctx: &mut ConnCtx, exchange: &str, routing_key: &str) -> AmqpResult<()> {
    check(ctx, Kind::Exchange, exchange, Perm::Write)?;
    topic(ctx, exchange, routing_key, Perm::Write)
}

fn topic(ctx: &mut ConnCtx, exchange: &str, routing_key: &str, perm: Perm) -> AmqpResult<()> {
    if !ctx.grant().has_topic_permissions() || ctx.vhost()?.exchange_kind(exchange) != Some(ExchangeKind::Topic) {
        return Ok(());
    }
    match ctx.grant().check_topic(exchange, routing_key, perm) {
        Ok(()) => Ok(()),
        // The name is put together only for a refusal: this check runs on every publish.
        refused => audited(ctx, refused, "topic", &format!("{exchange}/{routing_key}"), Some(perm)),
    }
}
