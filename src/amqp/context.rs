//! A connection's context: what its channels need from it while they run a method (the
//! broker, the vhost it opened, its sink and output, who it acts as and with what grant, the
//! alarm and flow state that decides whether it reads on). The connection owns it and lends
//! it to a channel for each method, so channels never depend on the connection itself.

use super::output::Output;
use crate::broker::audit::Actor;
use crate::broker::consumer::ConnectionSink;
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::broker::{AmqpError, Broker};
use crate::config::Config;
use std::sync::Arc;

/// What channels need from their connection while they run a method.
pub struct ConnCtx {
    pub id: u64,
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub vhost: Option<Arc<VHost>>,
    pub sink: Arc<ConnectionSink>,
    pub out: Output,
    pub exclusive_queues: Vec<Arc<Queue>>,
    pub cancel_notify: bool,
    pub user: String,
    /// Who this connection acts as, for the audit log and exclusive-queue ownership.
    pub actor: Actor,
    /// The user's permissions in the vhost, compiled; recompiled when the broker's access
    /// state changes (see [`ConnCtx::grant`]).
    pub(super) grant: crate::auth::grant::Grant,
    /// The group-commit watermark as last seen (u64::MAX without storage).
    pub durable: u64,
    /// On a cluster node: every proposal ticket at or below this is committed and applied.
    pub cluster_resolved: u64,
    /// The client asked to hear connection.blocked and connection.unblocked.
    pub blocked_notify: bool,
    /// Why publishers are blocked now, if they are.
    pub blocked: Option<String>,
    /// This connection has published: it is the kind an alarm blocks.
    pub is_publisher: bool,
    /// connection.blocked was sent and unblocked is owed.
    pub(super) blocked_sent: bool,
    /// Notified by a queue this connection published to once it drains below its flow mark.
    pub flow: Arc<tokio::sync::Notify>,
    /// A queue was over its flow mark: stop reading until it drains.
    pub flow_paused: bool,
}

impl ConnCtx {
    /// Every ticket at or below this is on disk.
    pub fn durable_upto(&self) -> u64 {
        self.durable
    }

    /// Whether the cluster ticket is resolved (at or below the watermark, or past it alone).
    pub fn cluster_done(&self, ticket: u64) -> bool {
        ticket <= self.cluster_resolved || self.broker.quorum_host().is_some_and(|h| h.is_resolved(ticket))
    }

    pub fn vhost(&self) -> Result<&Arc<VHost>, AmqpError> {
        self.vhost.as_ref().ok_or_else(|| AmqpError::command_invalid("connection is not open"))
    }

    /// The user's permissions in the vhost as they are now: a permission changed while the
    /// connection is open applies from its next operation (one atomic load when unchanged).
    pub fn grant(&mut self) -> &crate::auth::grant::Grant {
        let vhost = self.vhost.as_ref().map_or("", |v| v.name.as_str());
        self.broker.refresh_grant(&mut self.grant, &self.user, vhost);
        &self.grant
    }
}
