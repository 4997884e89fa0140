//! Hare: an AMQP 0-9-1 message broker.
//!
//! Layers, from the wire inwards: the wire protocols, each in its own folder ([`amqp`]: its
//! codec, connections and channels; [`mqtt`]; [`stream`], RabbitMQ's stream protocol) over [`net`] (what every listener shares: accept loop,
//! limits, TLS, alarms, writer); [`broker`] (vhosts, exchanges, queues, routing; no I/O) with
//! the value types every layer shares in [`types`]; [`storage`] (the data directory) and
//! [`cluster`] (Raft); beside them [`auth`] (users, vhosts, permissions; no I/O), [`tls`]
//! (certificates and handshakes), [`http`] (the management API and metrics), [`shovel`],
//! [`audit`] (the audit log's writer) and the commands [`perf`] and [`ctl`].

pub mod amqp;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod http;
pub mod mqtt;
pub mod net;
pub mod perf;
pub mod shovel;
pub mod storage;
pub mod stream;
pub mod tls;
pub mod types;
