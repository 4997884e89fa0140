//! The handshake of a stream protocol connection, in RabbitMQ's order: peer properties, SASL
//! handshake and authenticate (PLAIN, or EXTERNAL with a client certificate over TLS), the
//! broker's tune and the client's answer, then open with the vhost's access and limits.

use super::{code, key, put_frame, put_map, put_response, put_string, Command, Conn, Step, FRAME_MAX, HEARTBEAT};
use crate::broker::connections::{ConnectionDetails, ConnectionEntry};
use crate::types::{FieldTable, FieldValue};
use bytes::{BufMut, Bytes};

impl Conn {
    /// The commands before open, in RabbitMQ's order; anything else ends the connection.
    pub(super) fn handshake(&mut self, command: Command) {
        match (self.step, command) {
            (_, Command::Heartbeat) => {}
            (Step::Start, Command::PeerProperties { corr, properties }) => {
                self.client_properties = properties;
                let version = env!("CARGO_PKG_VERSION");
                let props = [
                    ("product", "Hare"),
                    ("version", version),
                    ("platform", "Rust"),
                    ("cluster_name", "hare"),
                    ("information", "A message broker that speaks RabbitMQ's protocols"),
                ];
                put_response(&mut self.out, key::PEER_PROPERTIES, corr, code::OK, |o| {
                    put_map(o, props.iter().copied())
                });
            }
            (Step::Start, Command::SaslHandshake { corr }) => {
                let mechanisms: &[&str] =
                    if self.certificate().is_some() { &["PLAIN", "EXTERNAL"] } else { &["PLAIN"] };
                put_response(&mut self.out, key::SASL_HANDSHAKE, corr, code::OK, |o| {
                    o.put_u32(mechanisms.len() as u32);
                    mechanisms.iter().for_each(|m| put_string(o, m));
                });
            }
            (Step::Start, Command::SaslAuthenticate { corr, mechanism, data }) => {
                self.authenticate(corr, &mechanism, &data)
            }
            (Step::Authenticated, Command::Tune { frame_max, heartbeat }) => {
                if frame_max != 0 {
                    self.frame_max = (frame_max as usize).max(1024);
                }
                self.heartbeat = heartbeat;
                self.step = Step::Tuned;
            }
            (Step::Tuned, Command::Open { corr, vhost }) => self.open(corr, &vhost),
            (_, Command::Close { corr, .. }) => {
                self.respond(key::CLOSE, corr, code::OK);
                self.closing = Some("closed by the client".into());
            }
            (_, other) => {
                self.closing = Some(format!("{} before the connection was open", other.name()));
            }
        }
    }

    fn certificate(&self) -> Option<String> {
        self.link.tls.as_ref().and_then(|t| t.certificate_name.clone())
    }

    fn authenticate(&mut self, corr: u32, mechanism: &str, data: &Bytes) {
        let broker = self.shared.broker.clone();
        let peer = self.link.peer;
        let loopback = peer.ip().is_loopback();
        let result = match mechanism {
            "PLAIN" => match crate::auth::sasl::parse("PLAIN", data) {
                Ok(c) if broker.authenticate(&c.user, &c.password, loopback, "PLAIN").is_ok() => Ok(c.user),
                Ok(c) if !loopback && broker.authenticate(&c.user, &c.password, true, "PLAIN").is_ok() => Err((
                    code::SASL_AUTHENTICATION_FAILURE_LOOPBACK,
                    format!("user '{}' can only connect via localhost", c.user),
                )),
                Ok(c) => Err((code::AUTHENTICATION_FAILURE, format!("authentication failed for user '{}'", c.user))),
                Err(e) => Err((code::SASL_ERROR, e.to_string())),
            },
            "EXTERNAL" => match self.certificate() {
                Some(cert) if broker.authenticate_external(&cert).is_ok() => Ok(cert),
                Some(cert) => {
                    Err((code::AUTHENTICATION_FAILURE, format!("no user '{cert}' for the client certificate")))
                }
                None => Err((code::SASL_MECHANISM_NOT_SUPPORTED, "EXTERNAL needs a client certificate".into())),
            },
            other => Err((code::SASL_MECHANISM_NOT_SUPPORTED, format!("unsupported mechanism {other}"))),
        };
        match result {
            Ok(user) => {
                broker.login_succeeded(peer.ip());
                self.user = user;
                self.mechanism = if mechanism == "EXTERNAL" { "EXTERNAL" } else { "PLAIN" };
                self.step = Step::Authenticated;
                put_response(&mut self.out, key::SASL_AUTHENTICATE, corr, code::OK, |_| {});
                put_frame(&mut self.out, key::TUNE, |o| {
                    o.put_u32(FRAME_MAX);
                    o.put_u32(HEARTBEAT);
                });
            }
            Err((c, why)) => {
                tracing::warn!(%peer, "stream login refused: {why}");
                broker.login_failed(peer.ip());
                put_response(&mut self.out, key::SASL_AUTHENTICATE, corr, c, |_| {});
                self.closing = Some(why);
            }
        }
    }

    fn open(&mut self, corr: u32, vhost_name: &str) {
        let broker = self.shared.broker.clone();
        let refused = |conn: &mut Conn, why: String| {
            tracing::warn!(peer = %conn.link.peer, "stream connection refused: {why}");
            put_response(&mut conn.out, key::OPEN, corr, code::VHOST_ACCESS_FAILURE, |o| o.put_u32(0));
            conn.closing = Some(why);
        };
        let Some(vhost) = broker.vhost(vhost_name) else {
            return refused(self, format!("virtual host '{vhost_name}' does not exist"));
        };
        if let Err(r) = broker.check_connection_limits(&self.user, &vhost.name) {
            return refused(self, r.text);
        }
        let grant = broker.grant(&self.user, &vhost.name);
        if !grant.has_vhost_access() {
            return refused(self, grant.vhost_refused().text);
        }
        let mut client_properties = FieldTable::new();
        for (k, v) in self.client_properties.iter().filter(|(k, _)| k.len() < 256) {
            client_properties.insert(k, FieldValue::string(v));
        }
        let entry = ConnectionEntry::new(
            self.id,
            self.link.peer,
            self.link.local,
            self.user.clone(),
            vhost.name.clone(),
            client_properties,
            (self.frame_max as u32, 0, self.heartbeat.min(u16::MAX as u32) as u16),
            ConnectionDetails {
                protocol: "stream",
                auth_mechanism: self.mechanism.to_string(),
                tls: self.link.tls.as_ref().map(|t| t.details.clone()),
                unwritten: self.writer.unwritten.clone(),
            },
        );
        broker.register_connection(entry.clone());
        tracing::info!(peer = %self.link.peer, user = %self.user, vhost = %vhost.name, "stream connection open");
        // Where clients reach this node: the address they connected to, the listener's port.
        let host = self.link.local.ip().to_string();
        let port = self.link.local.port().to_string();
        put_response(&mut self.out, key::OPEN, corr, code::OK, |o| {
            put_map(o, [("advertised_host", host.as_str()), ("advertised_port", port.as_str())].into_iter())
        });
        self.vhost = Some(vhost);
        self.grant = Some(grant);
        self.entry = Some(entry);
        self.step = Step::Opened;
    }
}
