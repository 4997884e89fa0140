//! The node's background work, started once whatever protocols listen: the resource alarm
//! monitor (whose verdict every listener's publishers obey), the queues' timers and the
//! statistics sampler.

use super::alarms;
use crate::broker::Broker;
use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often queue timers (message TTL, queue expiry) run.
const TIMER_TICK: Duration = Duration::from_millis(20);

/// The running background tasks; stopped when dropped.
pub struct Background {
    /// Why publishers are blocked now (a memory or disk alarm), if they are.
    pub alarm: watch::Receiver<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Starts the alarm monitor, the queue timers and the sampler.
pub fn spawn(broker: &Arc<Broker>, config: &Config) -> Background {
    let disk = broker
        .has_storage()
        .then(|| alarms::DiskLimit { path: config.data_dir.clone(), free_limit: config.disk_free_limit });
    let alarm = alarms::spawn_monitor(broker.clone(), config.memory_limit, disk);
    let tasks = vec![
        tokio::spawn(run_timers(broker.clone())),
        tokio::spawn(run_sampler(broker.clone(), config.stats_interval_ms, config.data_dir.clone())),
    ];
    Background { alarm, tasks }
}

/// Samples message statistics for their rates every `interval_ms` (5 s by default, as
/// RabbitMQ), and the node's gauges (memory, free disk in `data_dir`, descriptors, sockets).
/// The sampling visits every queue, so it runs on a blocking thread, away from the
/// connections' workers.
async fn run_sampler(broker: Arc<Broker>, interval_ms: u64, data_dir: std::path::PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (b, dir) = (broker.clone(), data_dir.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let now = crate::broker::clock::now_ms();
            b.sample_stats(now);
            let gauges = [
                alarms::resident_bytes().unwrap_or(0),
                alarms::free_disk_bytes(&dir).unwrap_or(0),
                alarms::file_descriptors().0,
                b.open_connections(),
                alarms::context_switches(),
            ];
            b.sample_gauges(now, gauges);
        })
        .await;
    }
}

async fn run_timers(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        broker.tick();
    }
}
