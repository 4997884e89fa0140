//! Deterministic simulation of a three-node cluster, on tokio's `turmoil`.
//!
//! The nodes run the real [`Cluster`] (openraft, the log store, the state machine, the
//! transport with its handshake) on a simulated [`Host`](crate::cluster::host::Host):
//! turmoil's network, with a latency and a schedule of its own, and its clock, which moves
//! only as the simulation steps. Each node runs a confirming publisher, an acking (and
//! sometimes requeueing) consumer of one quorum queue, and an operator declaring, deleting and
//! binding exchanges. While they run, the driver crashes and restarts nodes (one at a time: a
//! minority) and cuts links between them; then it heals everything, stops the publishers, lets
//! the consumers drain the queue, and checks what the [`Model`] recorded:
//!
//! - every confirmed message was delivered (at least once): none lost;
//! - every delivered message was published: none invented, and a message keeps its queue id;
//! - a publisher's messages have queue ids in the order it sent them (the queue's order);
//! - every node applied the same log, holds the same replicated state, and its broker has the
//!   same exchanges and bindings.
//!
//! One seed decides everything that varies (turmoil's latencies and delivery order,
//! openraft's election timeouts through [`crate::cluster::runtime`], the clients' timing, the
//! faults), so a seed that fails replays the same run on its own:
//! `HARE_SIM_SEED=<seed> cargo test --release --lib cluster::sim -- --nocapture`.
//! `HARE_SIM_SEEDS=<n>` runs seeds 0..n (default [`DEFAULT_SEEDS`]).

mod workload;

use crate::broker::Broker;
use crate::cluster::node::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use workload::{Disk, Shared};

/// Seeds a plain `cargo test` runs.
const DEFAULT_SEEDS: u64 = 200;
/// The simulation's step: every host runs this much simulated time per step.
const TICK: Duration = Duration::from_millis(2);
/// Faults happen during this much simulated time.
const FAULT_PHASE: Duration = Duration::from_secs(12);
/// After healing, the cluster must settle (queue drained, every node at the same entry)
/// within this much simulated time.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Settled means unchanged for this long.
const QUIET: Duration = Duration::from_secs(2);

/// What the clients saw, checked at the end.
#[derive(Default)]
pub struct Model {
    pub published: BTreeSet<String>,
    pub confirmed: BTreeSet<String>,
    /// Each delivered message's queue id.
    pub ids: BTreeMap<String, u64>,
    pub deliveries: u64,
    pub redeliveries: u64,
    /// Violations seen as they happened.
    pub problems: Vec<String>,
    /// A hash of every delivery with its node and simulated time: equal for equal runs.
    pub trace: u64,
}

impl Model {
    fn delivered(&mut self, node: &str, body: String, id: u64, redelivered: bool, _now: tokio::time::Instant) {
        match self.ids.get(&body) {
            Some(&old) if old != id => self.problems.push(format!("{body} delivered as id {id}, earlier as {old}")),
            _ => {
                self.ids.insert(body.clone(), id);
            }
        }
        self.deliveries += 1;
        self.redeliveries += u64::from(redelivered);
        let t = turmoil::sim_elapsed().unwrap_or_default().as_micros();
        self.trace = fnv(self.trace, format!("{t} {node} {body} {id} {redelivered}").as_bytes());
    }
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    if h == 0 {
        h = 0xcbf2_9ce4_8422_2325;
    }
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// What one seed's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub published: usize,
    pub confirmed: usize,
    pub deliveries: u64,
    pub redeliveries: u64,
    pub crashes: u32,
    pub partitions: u32,
    pub stalls: u32,
    pub last_index: u64,
    pub trace: u64,
}

/// A cluster node's state as the checks compare it.
fn fingerprint(c: &Cluster) -> (u64, Vec<u8>) {
    let st = c.state.read();
    let applied = st.last_applied.map_or(0, |l| l.index);
    let bytes = bincode::serialize(&(&st.queues, &st.processes, &st.names)).unwrap_or_default();
    (applied, bytes)
}

/// A broker's exchanges and bindings among those the operator touches.
fn definitions(b: &Broker) -> String {
    let Some(v) = b.vhost("/") else { return "no vhost".into() };
    let mut out = String::new();
    for e in v.exchanges().iter().filter(|e| e.name.as_str().starts_with('x')) {
        out += &format!("{}:{:?} ", e.name.as_str(), e.kind);
    }
    for (s, b) in v.bindings().iter().filter(|(s, _)| s.as_str().starts_with('x')) {
        out += &format!("{}->{}/{} ", s.as_str(), b.destination.name().as_str(), b.routing_key.as_str());
    }
    out
}

/// Runs one seed; the error names what went wrong.
pub fn run(seed: u64) -> Result<Report, String> {
    if let Ok(filter) = std::env::var("HARE_SIM_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    crate::cluster::runtime::seed_thread_rng(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    // Unique in the process: two runs of one seed may run at once (the replay test).
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("hare-sim-{}-{seed}-{run}", std::process::id()));
    let names: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    let shared = Arc::new(Shared {
        model: Default::default(),
        live: Default::default(),
        stop: AtomicBool::new(false),
        seed,
        names: names.clone(),
    });
    let disks: Vec<Arc<Disk>> = names
        .iter()
        .map(|n| {
            Arc::new(Disk {
                name: n.clone(),
                dir: tmp.join(n),
                broker: Arc::new(Broker::new()),
                starts: AtomicU64::new(0),
            })
        })
        .collect();
    let result = drive(seed, &mut rng, &shared, &disks);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn drive(seed: u64, rng: &mut StdRng, shared: &Arc<Shared>, disks: &[Arc<Disk>]) -> Result<Report, String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(3600))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(rng.gen_range(2..40)))
        .build();
    for d in disks {
        let (s, disk) = (shared.clone(), d.clone());
        sim.host(d.name.as_str(), move || workload::node(s.clone(), disk.clone()));
    }
    let step =
        |sim: &mut turmoil::Sim, what: &str| sim.step().map(|_| ()).map_err(|e| format!("seed {seed}: {what}: {e}"));
    let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
    let (mut crashes, mut partitions) = (0u32, 0u32);
    let mut down: Option<String> = None;
    let mut cut: Option<(String, String)> = None;
    let mut held: Option<(String, String)> = None;
    let mut stalls = 0u32;
    let mut t = Duration::ZERO;
    let mut next_fault = Duration::from_millis(rng.gen_range(1500..3000));
    while t < FAULT_PHASE {
        step(&mut sim, "faults")?;
        t += TICK;
        if std::env::var("HARE_SIM_DEBUG").is_ok() && t.as_millis() % 500 == 0 {
            let live: Vec<String> =
                shared.live.lock().values().map(|c| format!("{}@{}", c.name, fingerprint(c).0)).collect();
            let m = shared.model.lock();
            eprintln!(
                "t={:?} live={live:?} published={} confirmed={} delivered={}",
                t,
                m.published.len(),
                m.confirmed.len(),
                m.deliveries
            );
        }
        if t < next_fault {
            continue;
        }
        next_fault = t + Duration::from_millis(rng.gen_range(300..2500));
        match rng.gen_range(0..7) {
            0 | 1 if down.is_none() => {
                let n = names[rng.gen_range(0..names.len())].clone();
                shared.live.lock().remove(&n);
                sim.crash(n.as_str());
                down = Some(n);
                crashes += 1;
            }
            2 if down.is_some() => {
                let n = down.take().expect("checked");
                sim.bounce(n.as_str());
            }
            3 if cut.is_none() => {
                let (a, b) = two_of(rng, &names);
                sim.partition(a.as_str(), b.as_str());
                cut = Some((a, b));
                partitions += 1;
            }
            4 if cut.is_some() => {
                let (a, b) = cut.take().expect("checked");
                sim.repair(a.as_str(), b.as_str());
            }
            // A stall: a link holds what it carries for a while (a paused process, a
            // congested switch), then delivers it all.
            5 if held.is_none() => {
                let (a, b) = two_of(rng, &names);
                sim.hold(a.as_str(), b.as_str());
                held = Some((a, b));
                stalls += 1;
            }
            6 if held.is_some() => {
                let (a, b) = held.take().expect("checked");
                sim.release(a.as_str(), b.as_str());
            }
            _ => {}
        }
    }
    // Heal: the links, the node that is down; publishers and the operator stop.
    shared.stop.store(true, Ordering::Relaxed);
    if let Some((a, b)) = cut.take() {
        sim.repair(a.as_str(), b.as_str());
    }
    if let Some((a, b)) = held.take() {
        sim.release(a.as_str(), b.as_str());
    }
    if let Some(n) = down.take() {
        sim.bounce(n.as_str());
    }
    let mut settled_since: Option<(Duration, u64)> = None;
    let deadline = t + SETTLE_LIMIT;
    let last_index = loop {
        step(&mut sim, "settling")?;
        t += TICK;
        let live: Vec<Arc<Cluster>> = shared.live.lock().values().cloned().collect();
        let quiet = live.len() == names.len() && {
            let prints: Vec<(u64, Vec<u8>)> = live.iter().map(|c| fingerprint(c)).collect();
            let drained = live.iter().all(|c| {
                c.state
                    .read()
                    .queues
                    .get(&workload::queue())
                    .is_some_and(|q| q.queue.ready_count() == 0 && q.queue.unacked_count() == 0)
            });
            let same = prints.windows(2).all(|w| w[0] == w[1]);
            let idle = live.iter().all(|c| c.idle());
            (drained && same && idle).then_some(prints[0].0)
        }
        .is_some();
        let applied = live.first().map_or(0, |c| fingerprint(c).0);
        match settled_since {
            Some((since, index)) if quiet && index == applied => {
                if t - since >= QUIET {
                    break applied;
                }
            }
            _ => settled_since = quiet.then_some((t, applied)),
        }
        if t > deadline {
            let status: Vec<String> = live
                .iter()
                .map(|c| {
                    let st = c.state.read();
                    let q = st.queues.get(&workload::queue());
                    format!(
                        "{}: applied {}, ready {:?}, unacked {:?}, tickets (resolved, last, waiting) {:?}, leader {:?}",
                        c.name,
                        st.last_applied.map_or(0, |l| l.index),
                        q.map(|q| q.queue.ready_count()),
                        q.map(|q| q.queue.unacked_count()),
                        c.tickets(),
                        c.members().1.map(|l| st.names.get(&l).cloned()),
                    )
                })
                .collect();
            return Err(format!(
                "seed {seed}: not settled {} s after healing ({} of {} nodes up): {}",
                SETTLE_LIMIT.as_secs(),
                live.len(),
                names.len(),
                status.join("; ")
            ));
        }
    };
    let model = shared.model.lock();
    let mut problems = model.problems.clone();
    let lost: Vec<&String> = model.confirmed.iter().filter(|b| !model.ids.contains_key(*b)).collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} confirmed messages never delivered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    let invented: Vec<&String> = model.ids.keys().filter(|b| !model.published.contains(*b)).collect();
    if !invented.is_empty() {
        problems.push(format!(
            "{} delivered messages never published, e.g. {:?}",
            invented.len(),
            &invented[..invented.len().min(5)]
        ));
    }
    // A publisher's messages in its order: their queue ids must rise.
    let mut last: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (body, id) in &model.ids {
        let (publisher, _) = body.rsplit_once(':').unwrap_or((body, ""));
        if let Some((prev, prev_id)) = last.get(publisher) {
            if *prev_id >= *id {
                problems.push(format!("{prev} has id {prev_id} but the later {body} has id {id}"));
            }
        }
        last.insert(publisher, (body, *id));
    }
    let defs: Vec<String> = disks.iter().map(|d| definitions(&d.broker)).collect();
    if defs.windows(2).any(|w| w[0] != w[1]) {
        problems.push(format!("nodes' definitions differ: {defs:?}"));
    }
    if !problems.is_empty() {
        return Err(format!("seed {seed}: {}", problems.join("; ")));
    }
    Ok(Report {
        seed,
        published: model.published.len(),
        confirmed: model.confirmed.len(),
        deliveries: model.deliveries,
        redeliveries: model.redeliveries,
        crashes,
        partitions,
        stalls,
        last_index,
        trace: model.trace,
    })
}

/// Two different nodes, at random.
fn two_of(rng: &mut StdRng, names: &[String]) -> (String, String) {
    let a = rng.gen_range(0..names.len());
    let b = (a + rng.gen_range(1..names.len())) % names.len();
    (names[a].clone(), names[b].clone())
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("HARE_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("HARE_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS);
    (0..n).collect()
}

#[test]
fn no_confirmed_message_is_lost_under_crashes_and_partitions() {
    let seeds = seeds();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = parking_lot::Mutex::new(Vec::new());
    // Two seeds at a time: each simulation runs on one thread.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { return };
                let r = run(seed);
                results.lock().push(r);
            });
        }
    });
    let results = results.into_inner();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    let ok: Vec<Report> = ok.into_iter().flatten().collect();
    let sum = |f: fn(&Report) -> u64| ok.iter().map(f).sum::<u64>();
    println!(
        "simulation: {} seeds passed, {} failed; {} crashes, {} partitions, {} stalls; {} messages published, {} confirmed, {} deliveries ({} redelivered); lost: 0",
        ok.len(),
        failed.len(),
        sum(|r| r.crashes as u64),
        sum(|r| r.partitions as u64),
        sum(|r| r.stalls as u64),
        sum(|r| r.published as u64),
        sum(|r| r.confirmed as u64),
        sum(|r| r.deliveries),
        sum(|r| r.redeliveries),
    );
    let failed: Vec<String> = failed.into_iter().filter_map(|r| r.err()).collect();
    assert!(
        failed.is_empty(),
        "{} seeds failed (replay one: HARE_SIM_SEED=<seed> cargo test --release --lib cluster::sim -- --nocapture):\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(ok.iter().all(|r| r.confirmed > 0), "a run confirmed nothing: {ok:?}");
}

#[test]
fn a_seed_replays_the_same_run() {
    let a = run(7).expect("seed 7 passes");
    let b = run(7).expect("seed 7 passes again");
    assert_eq!(a, b, "the same seed ran differently");
}
