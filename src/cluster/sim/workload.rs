//! What runs on each simulated node: the real [`Cluster`] on a simulated [`Host`], and the
//! clients a broker's channels would be: a publisher waiting for confirms, a consumer that
//! acks (and sometimes requeues), and an operator changing exchanges and bindings. Each
//! records what it saw in the shared [`Model`].

use super::Model;
use crate::broker::replicated::{DefinitionChange, Refusal, ReplicatedDefinitions};
use crate::broker::Broker;
use crate::cluster::host::{BoxConn, BoxFuture, Host, Listener};
use crate::cluster::machine::Effects;
use crate::cluster::node::{Cluster, ClusterSettings};
use crate::cluster::quorum::{Msg, Outcome, Reason, Settings};
use crate::cluster::types::{Command, QueueName};
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

pub const PORT: u16 = 25672;
/// Confirms a publisher waits for at once (its window).
const WINDOW: usize = 16;
/// Messages each publisher sends at most, per start of its node.
const PER_PUBLISHER: u64 = 1500;
/// How many of every hundred deliveries the consumer requeues rather than acks.
const REQUEUE_PERCENT: u32 = 10;
/// And how many it releases (as a node does with what it held for a client beyond its
/// prefetch and never sent): back to the front, not counted as a delivery.
const RELEASE_PERCENT: u32 = 5;

pub fn queue() -> QueueName {
    QueueName { vhost: "/".into(), name: "q".into() }
}

/// The simulated machine: turmoil's network and clock.
pub struct SimHost;

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, std::io::Result<(BoxConn, String)>> {
        Box::pin(async move {
            let (s, addr) = self.0.accept().await?;
            Ok((Box::new(s) as BoxConn, addr.to_string()))
        })
    }
}

impl Host for SimHost {
    fn listen(&self, addr: String) -> BoxFuture<'static, std::io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SimListener(l)) as Box<dyn Listener>)
        })
    }
    fn dial(&self, addr: String) -> BoxFuture<'static, std::io::Result<BoxConn>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as BoxConn)
        })
    }
    fn now_ms(&self) -> u64 {
        turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64)
    }
    fn synced_log(&self) -> bool {
        false
    }
}

/// What outlives a node's crash: its data directory, and its broker (whose definitions a
/// real node keeps in its journal).
pub struct Disk {
    pub name: String,
    pub dir: PathBuf,
    pub broker: Arc<Broker>,
    pub starts: AtomicU64,
}

/// One start of a node's software.
pub struct Shared {
    pub model: Mutex<Model>,
    /// The running nodes, for the driver to inspect.
    pub live: Mutex<HashMap<String, Arc<Cluster>>>,
    /// Publishers and the operator stop once this is set (the run heals and settles).
    pub stop: AtomicBool,
    pub seed: u64,
    pub names: Vec<String>,
}

/// A delivery as the consumer gets it.
struct Delivery {
    id: u64,
    body: Bytes,
    redelivered: bool,
}

/// The broker side of one start of a node: deliveries go to the consumer task; definitions to
/// the node's broker.
struct SimEffects {
    broker: Arc<Broker>,
    consumer: mpsc::UnboundedSender<Delivery>,
    lost: mpsc::UnboundedSender<()>,
}

impl Effects for SimEffects {
    fn declared(&self, _queue: &QueueName, _arguments: &Bytes) {}
    fn deleted(&self, _queue: &QueueName) {}
    fn deliver(&self, _q: &QueueName, _consumer: u64, id: u64, msg: Arc<Msg>, redelivered: bool, _count: u32) {
        let _ = self.consumer.send(Delivery { id, body: msg.body.clone(), redelivered });
    }
    fn dead_letter(&self, _queue: &QueueName, _msg: Arc<Msg>, _reason: Reason, _delivery_count: u32) {}
    fn consumers_lost(&self, _queue: &QueueName, _consumers: Vec<u64>) {
        let _ = self.lost.send(());
    }
    fn definition(&self, change: &DefinitionChange) -> Result<(), Refusal> {
        self.broker.apply_definition(change)
    }
    fn definitions(&self) -> ReplicatedDefinitions {
        self.broker.replicated_definitions()
    }
    fn install_definitions(&self, definitions: &ReplicatedDefinitions) {
        self.broker.install_replicated_definitions(definitions)
    }
}

/// A node's software, from its start to its crash (it never returns on its own).
pub async fn node(shared: Arc<Shared>, disk: Arc<Disk>) -> turmoil::Result {
    let start = disk.starts.fetch_add(1, Ordering::Relaxed);
    let name = disk.name.clone();
    let mut rng = StdRng::seed_from_u64(shared.seed ^ crate::cluster::types::node_id(&name) ^ (start << 48));
    let (tx, deliveries) = mpsc::unbounded_channel();
    let (lost_tx, lost) = mpsc::unbounded_channel();
    let effects = Arc::new(SimEffects { broker: disk.broker.clone(), consumer: tx, lost: lost_tx });
    let settings = ClusterSettings {
        node_name: name.clone(),
        listen: format!("0.0.0.0:{PORT}"),
        advertise: format!("{name}:{PORT}"),
        seeds: shared.names.iter().map(|n| format!("{n}:{PORT}")).collect(),
        secret: b"simulated".to_vec(),
        dir: disk.dir.clone(),
        heartbeat_ms: 100,
        election_min_ms: 500,
        election_max_ms: 1000,
        // Small, so that snapshots, purges and catching up from a snapshot happen in a run.
        snapshot_every: 300,
        keys: None,
    };
    let cluster = Cluster::start(settings, effects, Arc::new(SimHost)).await?;
    shared.live.lock().insert(name.clone(), cluster.clone());
    cluster.propose(Command::Declare { queue: queue(), arguments: Bytes::new(), settings: Settings::default() }, None);
    let publisher = format!("{name}.{start}");
    tokio::spawn(publish(shared.clone(), cluster.clone(), publisher, StdRng::seed_from_u64(rng.gen())));
    tokio::spawn(consume(shared.clone(), cluster.clone(), deliveries, lost, StdRng::seed_from_u64(rng.gen())));
    tokio::spawn(operate(shared.clone(), cluster.clone(), StdRng::seed_from_u64(rng.gen())));
    std::future::pending::<()>().await;
    Ok(())
}

/// Waits until this node has the queue (its declare, or another node's, is applied here).
async fn queue_exists(c: &Cluster) {
    while !c.state.read().queues.contains_key(&queue()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes numbered messages, up to [`WINDOW`] unconfirmed; records each sent and each
/// confirmed.
async fn publish(shared: Arc<Shared>, c: Arc<Cluster>, publisher: String, mut rng: StdRng) {
    queue_exists(&c).await;
    let window = Arc::new(Semaphore::new(WINDOW));
    for k in 0..PER_PUBLISHER {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2..30))).await;
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(permit) = window.clone().acquire_owned().await else { return };
        let body = format!("{publisher}:{k:06}");
        shared.model.lock().published.insert(body.clone());
        let msg = Msg {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::new(),
            body: Bytes::from(body.clone()),
            ttl: None,
        };
        let (tx, rx) = oneshot::channel();
        c.propose(Command::Enqueue { queue: queue(), msg }, Some(tx));
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Ok(Outcome::Ok) = rx.await {
                shared.model.lock().confirmed.insert(body);
            }
            drop(permit);
        });
    }
}

/// Consumes with a prefetch, acking most deliveries, requeueing and releasing some;
/// registers again when the cluster says it dropped the consumer.
async fn consume(
    shared: Arc<Shared>,
    c: Arc<Cluster>,
    mut deliveries: mpsc::UnboundedReceiver<Delivery>,
    mut lost: mpsc::UnboundedReceiver<()>,
    mut rng: StdRng,
) {
    queue_exists(&c).await;
    let me = (c.process, 1);
    let checkout = Command::Checkout { queue: queue(), consumer: me, prefetch: 8, no_ack: false };
    c.propose(checkout.clone(), None);
    loop {
        tokio::select! {
            biased;
            d = deliveries.recv() => {
                let Some(d) = d else { return };
                let body = String::from_utf8_lossy(&d.body).into_owned();
                let now = tokio::time::Instant::now();
                shared.model.lock().delivered(&c.name, body, d.id, d.redelivered, now);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
                let ids = vec![d.id];
                let roll = rng.gen_range(0..100);
                if roll < REQUEUE_PERCENT {
                    c.propose(Command::Return { queue: queue(), consumer: me, ids }, None);
                } else if roll < REQUEUE_PERCENT + RELEASE_PERCENT {
                    c.propose(Command::Release { queue: queue(), consumer: me, ids }, None);
                } else {
                    c.propose(Command::Settle { queue: queue(), consumer: me, ids }, None);
                }
            }
            l = lost.recv() => {
                if l.is_none() { return }
                c.propose(checkout.clone(), None);
            }
        }
    }
}

/// Declares and deletes exchanges and binds them to each other, as an operator would, from
/// every node at once: conflicting changes must end the same on every node.
async fn operate(shared: Arc<Shared>, c: Arc<Cluster>, mut rng: StdRng) {
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let x = |rng: &mut StdRng| format!("x{}", rng.gen_range(0..4));
        let change = match rng.gen_range(0..4) {
            0 => DefinitionChange::DeclareExchange {
                vhost: "/".into(),
                name: x(&mut rng),
                kind: if rng.gen_bool(0.5) { "direct" } else { "fanout" }.into(),
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: String::new(),
                user: "guest".into(),
            },
            1 => DefinitionChange::DeleteExchange {
                vhost: "/".into(),
                name: x(&mut rng),
                if_unused: false,
                user: "guest".into(),
            },
            n => DefinitionChange::Binding {
                bind: n == 2,
                vhost: "/".into(),
                source: x(&mut rng),
                destination: x(&mut rng),
                to_exchange: true,
                routing_key: format!("k{}", rng.gen_range(0..2)),
                arguments: String::new(),
                user: "guest".into(),
            },
        };
        let (tx, rx) = oneshot::channel();
        c.propose(Command::Definition(change), Some(tx));
        let _ = rx.await;
    }
}
