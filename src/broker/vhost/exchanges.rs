//! A vhost's exchanges and bindings: exchange.declare and delete, queue.bind and
//! exchange.bind, unbind, each with RabbitMQ's checks in RabbitMQ's order, journalled and
//! audited.

use super::*;

impl VHost {
    pub fn declare_exchange(
        &self,
        name: &ShortStr,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: &FieldTable,
        by: &Actor,
    ) -> AmqpResult<u64> {
        // RabbitMQ's order: the type (a connection error), the default exchange, then lookup.
        if passive {
            if name.is_empty() {
                return Err(default_exchange_refused());
            }
            return match self.topology.read().exchanges.get(name.as_str()) {
                Some(_) => Ok(0),
                None => Err(self.no_exchange(name)),
            };
        }
        let kind = ExchangeKind::parse(kind)?;
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topo = self.topology.write();
        if let Some(ex) = topo.exchanges.get(name.as_str()) {
            if ex.kind != kind {
                return Err(self.inequivalent(
                    "exchange",
                    "type",
                    name,
                    format!("'{}'", kind.as_str()),
                    format!("'{}'", ex.kind.as_str()),
                ));
            }
            for (arg, got, cur) in [
                ("durable", durable, ex.durable),
                ("auto_delete", auto_delete, ex.auto_delete),
                ("internal", internal, ex.internal),
            ] {
                if got != cur {
                    return Err(self.inequivalent("exchange", arg, name, format!("'{got}'"), format!("'{cur}'")));
                }
            }
            // Of an exchange's arguments RabbitMQ compares only the alternate exchange.
            let key = "alternate-exchange";
            return self
                .assert_arg_equivalence("exchange", name, key, ex.arguments.get(key), arguments.get(key))
                .map(|()| 0);
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!("exchange name '{name}' contains reserved prefix 'amq.*'")));
        }
        Exchange::validate_arguments(kind, arguments)?;
        let mut ex = Exchange::new(name.clone(), kind, durable, auto_delete, internal, arguments.clone());
        ex.declared_by = ShortStr::from(&*by.user);
        ex.set_policy(self.policy_for_exchange(name));
        let saved = saved_exchange(&ex);
        if kind == ExchangeKind::DelayedMessage {
            let holder = self
                .delay_holder(name, saved, true)
                .map_err(|e| AmqpError::internal_error(format!("cannot create the log of exchange '{name}': {e}")))?;
            topo.delayed.insert(name.clone(), holder);
        }
        let def = saved.then(|| ExchangeDef {
            name: name.to_string(),
            kind: ex.kind.as_str().into(),
            internal: ex.internal,
            arguments: table_to_hex(&ex.arguments),
            user: Some(by.user.to_string()),
        });
        topo.exchanges.insert(name.clone(), ex);
        if self.audit.is_on() {
            let e = AuditEvent::new("exchange.created", by, Some(&self.name))
                .with("name", name.as_str())
                .with("type", kind.as_str())
                .with("durable", durable)
                .with("auto_delete", auto_delete)
                .with("internal", internal);
            self.audit.emit(e);
        }
        Ok(def.map_or(0, |exchange| self.record(|vhost| Change::DeclareExchange { vhost, exchange })))
    }

    pub fn delete_exchange(&self, name: &ShortStr, if_unused: bool, by: &Actor) -> AmqpResult<u64> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut topo = self.topology.write();
        let Some(ex) = topo.exchanges.get(name.as_str()) else {
            // RabbitMQ answers delete-ok for an exchange that does not exist.
            return Ok(0);
        };
        // In use means: bindings from it (being a destination does not count, as in RabbitMQ).
        if if_unused && ex.has_bindings() {
            return Err(AmqpError::precondition_failed(format!("exchange '{name}' in vhost '{}' in use", self.name)));
        }
        let dest = Destination::Exchange(name.clone());
        // Only a durable exchange is saved, or the destination of saved bindings.
        let mut removed = Removed::default();
        if let Some(ex) = topo.remove_exchange(name, &mut removed) {
            if self.audit.is_on() {
                removed.bindings.extend(ex.bindings().iter().map(|b| (name.clone(), b.clone())));
            }
        }
        Self::remove_destination(&mut topo, &dest, &mut removed);
        Ok(self.record_removed(removed, by))
    }

    /// Removes every binding to `dest`, deleting auto-delete exchanges left with none; both
    /// are added to `removed`, exchanges with whether they were durable (for the journal).
    pub(super) fn remove_destination(topo: &mut Topology, dest: &Destination, removed: &mut Removed) {
        let mut emptied = Vec::new();
        for ex in topo.exchanges.values_mut() {
            let gone = ex.unbind_destination(dest);
            if gone.is_empty() {
                continue;
            }
            if ex.auto_delete && !ex.has_bindings() {
                emptied.push(ex.name.clone());
            }
            removed.bindings.extend(gone.into_iter().map(|b| (ex.name.clone(), b)));
        }
        for name in emptied {
            topo.remove_exchange(&name, removed);
            Self::remove_destination(topo, &Destination::Exchange(name), removed);
        }
    }

    /// queue.bind and exchange.bind. RabbitMQ's order: the default exchange is refused, the
    /// source must exist, then the destination, the binding's arguments must suit the
    /// exchange type, and an exclusive queue must belong to this connection.
    pub fn bind(&self, source: &ShortStr, binding: Binding, by: &Actor) -> AmqpResult<u64> {
        let connection_id = by.connection;
        check_not_default(source, &binding.destination)?;
        let mut topo = self.topology.write();
        let Some(ex) = topo.exchanges.get(source.as_str()) else {
            return Err(self.no_exchange(source));
        };
        match &binding.destination {
            Destination::Queue(n) => {
                let q = topo.queues.get(n.as_str()).ok_or_else(|| self.no_queue(n))?;
                ex.validate_binding(&binding)?;
                q.check_access(connection_id)?;
            }
            Destination::Exchange(n) => {
                if !topo.exchanges.contains_key(n.as_str()) {
                    return Err(self.no_exchange(n));
                }
                ex.validate_binding(&binding)?;
            }
        }
        let def = binding_is_saved(&topo, source, &binding.destination).then(|| binding_def(source, &binding));
        self.binding_event("binding.created", by, source, &binding);
        if let Some(ex) = topo.exchanges.get_mut(source.as_str()) {
            ex.bind(binding);
        }
        Ok(def.map_or(0, |binding| self.record(|vhost| Change::Bind { vhost, binding })))
    }

    /// queue.unbind and exchange.unbind. Idempotent as in RabbitMQ: a missing source,
    /// destination or binding is unbind-ok; only removing a binding to another connection's
    /// exclusive queue is refused.
    pub fn unbind(&self, source: &ShortStr, binding: &Binding, by: &Actor) -> AmqpResult<u64> {
        let connection_id = by.connection;
        check_not_default(source, &binding.destination)?;
        let mut topo = self.topology.write();
        let dest_exists = match &binding.destination {
            Destination::Queue(n) => topo.queues.get(n.as_str()).map(|q| q.check_access(connection_id)),
            Destination::Exchange(n) => topo.exchanges.contains_key(n.as_str()).then_some(Ok(())),
        };
        let Some(access) = dest_exists else { return Ok(0) };
        let saved = binding_is_saved(&topo, source, &binding.destination);
        let Some(ex) = topo.exchanges.get_mut(source.as_str()) else {
            return Ok(0);
        };
        if !ex.has_binding(binding) {
            return Ok(0);
        }
        access?;
        let mut removed = Removed::default();
        self.binding_event("binding.deleted", by, source, binding);
        if ex.unbind(binding) && ex.auto_delete && !ex.has_bindings() {
            let name = ex.name.clone();
            topo.remove_exchange(&name, &mut removed);
            Self::remove_destination(&mut topo, &Destination::Exchange(name), &mut removed);
        }
        let mut ticket = self.record_removed(removed, by);
        if saved {
            let binding = binding_def(source, binding);
            ticket = ticket.max(self.record(|vhost| Change::Unbind { vhost, binding }));
        }
        Ok(ticket)
    }

    pub(super) fn binding_event(&self, event: &'static str, by: &Actor, source: &str, b: &Binding) {
        if !self.audit.is_on() {
            return;
        }
        let (kind, dest) = match &b.destination {
            Destination::Queue(q) => ("queue", q.as_str()),
            Destination::Exchange(x) => ("exchange", x.as_str()),
        };
        let e = AuditEvent::new(event, by, Some(&self.name))
            .with("source_name", source)
            .with("source_kind", "exchange")
            .with("destination_name", dest)
            .with("destination_kind", kind)
            .with("routing_key", b.routing_key.as_str())
            .with("arguments", crate::broker::audit::table_text(&b.arguments));
        self.audit.emit(e);
    }
}
