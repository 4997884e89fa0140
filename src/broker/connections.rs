//! What the broker knows of its client connections, for the management API: who is connected
//! from where to which vhost, with how many channels, and a way to ask one to close. The
//! connection task owns the connection; this is only its card.

use crate::protocol::FieldTable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct ConnectionEntry {
    pub id: u64,
    /// As RabbitMQ names connections: `peer -> local`.
    pub name: String,
    pub peer: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub user: String,
    pub vhost: String,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
    pub client_properties: FieldTable,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub channels: AtomicU32,
    /// A close asked for (by the management API), with its reason.
    close: Mutex<Option<String>>,
    pub close_requested: Notify,
}

impl ConnectionEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
        user: String,
        vhost: String,
        client_properties: FieldTable,
        (frame_max, channel_max, heartbeat): (u32, u16, u16),
    ) -> Arc<Self> {
        let connected_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Arc::new(ConnectionEntry {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            connected_at,
            client_properties,
            frame_max,
            channel_max,
            heartbeat,
            channels: AtomicU32::new(0),
            close: Mutex::new(None),
            close_requested: Notify::new(),
        })
    }

    pub fn channel_count(&self) -> u32 {
        self.channels.load(Ordering::Relaxed)
    }

    /// Asks the connection to close with `reason` (320 CONNECTION_FORCED).
    pub fn request_close(&self, reason: &str) {
        *self.close.lock() = Some(reason.to_string());
        self.close_requested.notify_one();
    }

    /// The close asked for, if any.
    pub fn close_reason(&self) -> Option<String> {
        self.close.lock().clone()
    }
}
