//! The connection handshake, as RabbitMQ runs it: connection.start with the broker's
//! capabilities, start-ok (SASL: PLAIN, AMQPLAIN, EXTERNAL, and the delay after failures),
//! tune-ok (channel_max, frame_max, heartbeat within the broker's bounds) and open (the vhost,
//! the user's permission on it and the connection limits).

use super::*;

impl Connection {
    pub(super) fn send_start(&mut self) {
        let mut caps = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(cap, FieldValue::Bool(true));
        }
        let mut props = FieldTable::new();
        props.insert("product", FieldValue::string("Hare"));
        props.insert("version", FieldValue::string(env!("CARGO_PKG_VERSION")));
        props.insert("platform", FieldValue::string("Rust"));
        props.insert("information", FieldValue::string("An AMQP 0-9-1 broker"));
        props.insert("cluster_name", FieldValue::string("hare"));
        props.insert("capabilities", FieldValue::Table(caps));
        self.ctx.out.method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                // EXTERNAL only where a client certificate was verified.
                mechanisms: LongStr::from(if self.certificate_name().is_some() {
                    "PLAIN AMQPLAIN EXTERNAL"
                } else {
                    "PLAIN AMQPLAIN"
                }),
                locales: LongStr::from("en_US"),
            },
        );
    }

    pub(super) fn start_ok(&mut self, m: ConnectionStartOk) -> Result<(), AmqpError> {
        self.client_properties = m.client_properties.clone();
        self.mechanism = m.mechanism.to_string();
        let caps = m.client_properties.get("capabilities");
        if let Some(FieldValue::Table(caps)) = caps {
            let cap = |name: &str| caps.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
            self.ctx.cancel_notify = cap("consumer_cancel_notify");
            self.ctx.blocked_notify = cap("connection.blocked");
        }
        if m.mechanism.as_str() == "EXTERNAL" && self.certificate_name().is_none() {
            return Err(AmqpError::command_invalid("unknown authentication mechanism 'EXTERNAL'".to_string()));
        }
        let (user, password) = match crate::auth::sasl::parse(m.mechanism.as_str(), &m.response.0) {
            Ok(c) => (c.user, c.password),
            Err(e @ crate::auth::sasl::SaslError::AmqPlain(_)) => return Err(AmqpError::syntax_error(e.to_string())),
            Err(e) => return Err(AmqpError::command_invalid(e.to_string())),
        };
        let loopback = self.peer.ip().is_loopback();
        let outcome = match self.certificate_name().filter(|_| m.mechanism.as_str() == "EXTERNAL") {
            Some(name) => self.ctx.broker.authenticate_external(&name),
            None => self.ctx.broker.authenticate(&user, &password, loopback, m.mechanism.as_str()),
        };
        let audit = self.ctx.broker.audit();
        let user = match outcome {
            Ok(u) => {
                self.ctx.broker.login_succeeded(self.peer.ip());
                self.pending = None;
                self.ctx.actor.user = u.name.as_str().into();
                if audit.is_on() {
                    let e = AuditEvent::new("user.authentication.success", &self.ctx.actor, None)
                        .with("name", u.name.as_str())
                        .with("auth_mechanism", m.mechanism.as_str())
                        .with("ssl", self.tls.is_some());
                    audit.emit(e);
                }
                u.name
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, user, mechanism = %m.mechanism, "authentication failed");
                self.login_delay = self.ctx.broker.login_failed(self.peer.ip());
                if audit.is_on() {
                    let who = if user.is_empty() { self.certificate_name().unwrap_or_default() } else { user };
                    let by = Actor { user: who.as_str().into(), ..self.ctx.actor.clone() };
                    let ev = AuditEvent::new("user.authentication.failure", &by, None)
                        .with("name", who.as_str())
                        .with("auth_mechanism", m.mechanism.as_str())
                        .with("ssl", self.tls.is_some())
                        .refused(e.text.clone());
                    audit.emit(ev);
                }
                return Err(e);
            }
        };
        self.ctx.user = user;
        self.ctx.out.method(
            0,
            ConnectionTune {
                channel_max: self.channel_max,
                frame_max: self.ctx.config.frame_max,
                heartbeat: self.ctx.config.heartbeat,
            },
        );
        self.state = State::AwaitTuneOk;
        Ok(())
    }

    pub(super) fn tune_ok(&mut self, m: ConnectionTuneOk) -> Result<(), AmqpError> {
        let server_max = self.ctx.config.frame_max;
        let frame_max = if m.frame_max == 0 { server_max } else { m.frame_max };
        if frame_max > server_max {
            return Err(AmqpError::not_allowed(format!("frame_max={frame_max} > {server_max} max")));
        }
        if frame_max < crate::amqp::frame::FRAME_MIN_SIZE {
            return Err(AmqpError::not_allowed(format!("frame_max={frame_max} < 4096 min")));
        }
        let channel_max = if m.channel_max == 0 { self.channel_max } else { m.channel_max };
        if channel_max > self.channel_max {
            return Err(AmqpError::not_allowed(format!("channel_max={channel_max} > {} max", self.channel_max)));
        }
        self.channel_max = channel_max;
        self.frame_max = frame_max as usize;
        self.ctx.out.frame_max = frame_max as usize;
        self.heartbeat = m.heartbeat;
        self.state = State::AwaitOpen;
        Ok(())
    }

    pub(super) fn certificate_name(&self) -> Option<String> {
        self.tls.as_ref().and_then(|t| t.certificate_name.clone())
    }

    /// Keeps the channel count on the connection's card.
    pub(super) fn count_channels(&self) {
        if let Some(e) = &self.entry {
            e.set_channels(self.channels.values().map(|c| c.card.clone()).collect());
        }
    }

    pub(super) fn open(&mut self, m: ConnectionOpen) -> Result<(), AmqpError> {
        let Some(vhost) = self.ctx.broker.vhost(&m.virtual_host) else {
            return Err(AmqpError::not_allowed(format!("vhost '{}' not found", m.virtual_host)));
        };
        // RabbitMQ's order: the vhost's and the user's connection limits, then access.
        self.ctx.broker.check_connection_limits(&self.ctx.user, &vhost.name)?;
        let grant = self.ctx.broker.grant(&self.ctx.user, &vhost.name);
        if !grant.has_vhost_access() {
            tracing::warn!(peer = %self.peer, user = %self.ctx.user, vhost = %vhost.name, "vhost access refused");
            let refused = grant.vhost_refused();
            let audit = self.ctx.broker.audit();
            if audit.is_on() {
                let e = AuditEvent::new("access.refused", &self.ctx.actor, Some(&vhost.name))
                    .with("kind", "vhost")
                    .with("name", vhost.name.as_str())
                    .refused(refused.text.clone());
                audit.emit(e);
            }
            return Err(refused.into());
        }
        self.ctx.grant = grant;
        self.ctx.vhost = Some(vhost);
        self.ctx.out.method(0, ConnectionOpenOk { known_hosts: ShortStr::default() });
        self.state = State::Open;
        let entry = crate::broker::connections::ConnectionEntry::new(
            self.ctx.id,
            self.peer,
            self.local,
            self.ctx.user.clone(),
            m.virtual_host.to_string(),
            std::mem::take(&mut self.client_properties),
            (self.frame_max as u32, self.channel_max, self.heartbeat),
            crate::broker::connections::ConnectionDetails {
                protocol: "AMQP 0-9-1",
                auth_mechanism: std::mem::take(&mut self.mechanism),
                tls: self.tls.as_ref().map(|t| t.details.clone()),
                unwritten: self.unwritten.clone(),
            },
        );
        self.ctx.broker.register_connection(entry.clone());
        let audit = self.ctx.broker.audit();
        if audit.is_on() {
            let e = AuditEvent::new("connection.created", &self.ctx.actor, Some(&entry.vhost))
                .with("name", entry.name.as_str())
                .with("protocol", "AMQP 0-9-1")
                .with("ssl", self.tls.is_some());
            audit.emit(e);
        }
        self.entry = Some(entry);
        tracing::info!(peer = %self.peer, user = %self.ctx.user, vhost = %m.virtual_host, "connection open");
        Ok(())
    }
}
