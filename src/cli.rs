//! The `hare` command line: with no command it runs the broker with its settings
//! ([`crate::config::Args`]); `hare perf` and `hare ctl` are tools beside it. Kept apart from
//! the settings, so that the broker's layers, which read the settings, never depend on the
//! tools (which use them: `perf` speaks AMQP through `amqp/`).

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "hare", version, about = "Hare: an AMQP 0-9-1 message broker")]
pub struct Cli {
    /// With no command, run the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: crate::config::Args,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Load any AMQP 0-9-1 or MQTT broker and measure throughput and latency.
    Perf(crate::perf::PerfArgs),
    /// Manage a running broker through its management HTTP API (list, declare, publish, ...).
    Ctl(crate::ctl::CtlArgs),
}
