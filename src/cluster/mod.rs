//! The cluster layer: nodes that replicate quorum queues with Raft, on the openraft library.
//!
//! - [`quorum`]: a quorum queue as a deterministic state machine (enqueue, checkout, settle,
//!   return, discard, dequeue), after RabbitMQ's `rabbit_fifo`; pure, model-tested.
//! - [`runtime`]: tokio for openraft, with a random source the simulation seeds.
//! - [`types`]: what the Raft log carries (batches of commands) and openraft's type config.
//! - [`log_store`]: the Raft log on disk, group-committed.
//! - [`machine`]: the replicated state (every quorum queue) openraft applies entries to, its
//!   snapshots, and the effects of applying them on this node ([`machine::Effects`]).
//! - [`host`]: what a node needs from its machine (network, clock, disk sync): real or simulated.
//! - [`transport`]: node-to-node TCP with a shared-secret handshake ([`secret`]).
//! - [`node`]: a running node: Raft, the listener, bootstrap from the seeds, the proposer.
//! - [`reports`]: what members tell each other twice a second: resource alarms (which block
//!   every node's publishers) and the states of the shovels they run.
//! - [`classic`]: classic queues of a cluster: each on its home node, reachable from every
//!   node through its faces (placements replicated; publishes, consumers and acks forwarded).
//! - `sim` (tests only): the deterministic simulation of a cluster under faults (turmoil).
//! - [`bridge`]: the broker's side: a quorum queue's local face (routing, consumers,
//!   confirms) over the replicated state.

pub mod bridge;
pub mod classic;
pub mod host;
pub mod log_store;
pub mod machine;
pub mod node;
pub mod quorum;
pub mod reports;
pub mod runtime;
pub mod secret;
#[cfg(test)]
mod sim;
pub mod transport;
pub mod types;
