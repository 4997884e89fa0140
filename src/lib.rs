//! Hare: an AMQP 0-9-1 message broker.
//!
//! Layers, from the wire inwards: [`protocol`] (codec), [`server`] (connections and channels),
//! [`broker`] (vhosts, exchanges, queues, routing; no I/O), [`storage`] (the data directory);
//! beside them [`auth`] (users, vhosts, permissions; no I/O), [`tls`] (AMQPS and HTTPS),
//! [`http`] (the management API and metrics), [`audit`] (the audit log's writer) and the
//! commands [`perf`] and [`ctl`].

pub mod audit;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod http;
pub mod perf;
pub mod protocol;
pub mod server;
pub mod shovel;
pub mod storage;
pub mod tls;
