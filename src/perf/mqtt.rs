//! `hare perf` against an MQTT broker (an mqtt:// URI), over MQTT 3.1.1, which Hare,
//! RabbitMQ's plugin and mosquitto all speak, on the broker's own packet codec.
//!
//! - Publisher p publishes to `<prefix>/<p mod queues>` and subscriber c subscribes to
//!   `<prefix>/<c mod queues>`: `--producers 1000 --consumers 1` is a fan-in of a thousand
//!   clients to one subscriber.
//! - `--qos 1`: a publisher keeps up to --confirm publishes (256 if 0) waiting for their
//!   PUBACK and times each (the confirm latency); a subscriber acknowledges every message
//!   (MQTT has no multiple acknowledgement), the acknowledgements of one read in one write.
//! - `--idle-connections N`: N clients connect and hold; with --idle-consumers each also
//!   subscribes to a topic of its own.
//!
//! Publishes go out 64 to a write, their header encoded once (only the packet identifier
//! changes between them), so the load generator costs little beside the broker.

use super::client::Target;
use super::{
    clock, futures_join, new_histogram, next_batch, read_more, report, stop, summarize, Confirms, PerfArgs, Stats,
    Summary, Window, BATCH,
};
use crate::mqtt::codec::{self, Connect, Packet, Properties, Publish, Subscribe, Subscription};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const LEVEL: u8 = codec::V311;
/// QoS 1 publishes awaiting their PUBACK, when --confirm does not say.
const DEFAULT_WINDOW: u64 = 256;
/// Clients connecting at once (idle mode and many publishers).
const CONNECT_AT_ONCE: usize = 64;
/// How often a waiting task looks whether the run is over.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What a client reads: the socket and what was read and not yet decoded.
struct Incoming {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

impl Incoming {
    /// The next packet, reading as needed.
    async fn packet(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(p) = self.decoded()? {
                return Ok(p);
            }
            self.read().await?;
        }
    }

    /// Reads what the socket has; Err once it is closed.
    async fn read(&mut self) -> Result<(), String> {
        read_more(&mut self.rd, &mut self.buf, 256 * 1024).await
    }

    /// The next whole packet already read, if there is one.
    fn decoded(&mut self) -> Result<Option<Packet>, String> {
        let Some((first, len, header)) = codec::fixed_header(&self.buf).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if self.buf.len() < header + len {
            self.buf.reserve(header + len - self.buf.len());
            return Ok(None);
        }
        let packet = self.buf.split_to(header + len).freeze();
        codec::decode(first, packet.slice(header..), LEVEL).map(Some).map_err(|e| e.to_string())
    }
}

/// One client's connection.
struct Conn {
    incoming: Incoming,
    wr: OwnedWriteHalf,
}

impl Conn {
    /// Connects with a clean session and no keep-alive, and waits for the CONNACK.
    async fn open(target: &Target, client_id: String) -> Result<Conn, String> {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", target.host, target.port))?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut c = Conn { incoming: Incoming { rd, buf: BytesMut::with_capacity(4096) }, wr };
        let connect = Connect {
            level: LEVEL,
            clean_start: true,
            keep_alive: 0,
            client_id,
            will: None,
            username: Some(target.user.clone()),
            password: Some(Bytes::from(target.password.clone())),
            properties: Properties::default(),
        };
        c.send(&Packet::Connect(Box::new(connect))).await?;
        match c.incoming.packet().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            Packet::ConnAck(a) => Err(format!("the broker refused the connection (CONNACK code {})", a.code)),
            other => Err(format!("expected CONNACK, got {}", other.name())),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        codec::encode(&mut out, packet, LEVEL);
        self.wr.write_all(&out).await.map_err(|e| format!("write: {e}"))
    }

    /// Subscribes to `filter` and waits for the SUBACK.
    async fn subscribe(&mut self, filter: String, qos: u8) -> Result<(), String> {
        let filters = vec![Subscription {
            filter: filter.clone(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }];
        self.send(&Packet::Subscribe(Subscribe { packet_id: 1, properties: Properties::default(), filters })).await?;
        loop {
            if let Packet::SubAck(a) = self.incoming.packet().await? {
                return match a.codes.first() {
                    Some(&c) if c < 0x80 => Ok(()),
                    _ => Err(format!("the subscription to {filter} was refused")),
                };
            }
        }
    }
}

fn topic(args: &PerfArgs, i: usize) -> String {
    format!("{}/{}", args.prefix, i % args.queues)
}

/// Messages the subscribers should see in --count mode: each publish reaches every
/// subscriber of its topic.
fn expected(args: &PerfArgs) -> Option<u64> {
    if args.count == 0 || args.consumers == 0 {
        return None;
    }
    if args.producers == 0 {
        return Some(args.count);
    }
    let subscribers = |p: usize| (0..args.consumers).filter(|c| c % args.queues == p % args.queues).count() as u64;
    Some((0..args.producers).map(|p| args.count * subscribers(p)).sum())
}

/// Opens `n` connections, [`CONNECT_AT_ONCE`] at a time; subscribed to `filter(i)` when it
/// names one.
async fn open_many(
    target: &Target,
    n: usize,
    name: impl Fn(usize) -> String,
    filter: impl Fn(usize) -> Option<String>,
    qos: u8,
) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(n);
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(CONNECT_AT_ONCE) {
        let opened = futures_join(chunk.iter().map(|&i| {
            let (target, client_id, filter) = (target.clone(), name(i), filter(i));
            async move {
                let mut c = Conn::open(&target, client_id).await?;
                if let Some(f) = filter {
                    c.subscribe(f, qos).await?;
                }
                Ok::<Conn, String>(c)
            }
        }))
        .await;
        for c in opened {
            conns.push(c.map_err(|e| format!("after {} connections: {e}", conns.len()))?);
        }
    }
    Ok(conns)
}

/// Runs the MQTT load `args` describes.
pub(super) async fn run(args: &PerfArgs, target: &Target) -> Result<Summary, String> {
    let qos = args.qos;
    if args.idle_connections > 0 {
        return idle(args, target).await;
    }
    let stats = Stats::new(expected(args));
    // Subscribers run on a thread of their own: tasks are scheduled in turn, so on the
    // publishers' threads a subscriber would get one turn in a thousand in a fan-in, and the
    // generator, not the broker, would set the rate it receives at.
    let subscribers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("perf-subscribers")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the subscribers' thread: {e}"))?;
    let consumers = {
        let (args, target) = (args.clone(), target.clone());
        subscribers.spawn(async move {
            let name = |c| format!("{}-sub-{c}", args.prefix);
            open_many(&target, args.consumers, name, |c| Some(topic(&args, c)), args.qos).await
        })
    };
    let consumers =
        consumers.await.map_err(|e| format!("subscribers: {e}"))?.map_err(|e| format!("subscribers: {e}"))?;
    let producers = open_many(target, args.producers, |p| format!("{}-pub-{p}", args.prefix), |_| None, qos)
        .await
        .map_err(|e| format!("publishers: {e}"))?;
    let mut tasks = Vec::new();
    for c in consumers {
        tasks.push(subscribers.spawn(consume(c, stats.clone())));
    }
    let window = Window::open();
    for (p, c) in producers.into_iter().enumerate() {
        tasks.push(tokio::spawn(produce(args.clone(), topic(args, p), c, stats.clone())));
    }
    let samples = report(args, &expected(args), &stats, window.start).await;
    let measured = stop(&stats, window, tasks).await;
    // Not dropped here: a runtime must not be dropped from within another one.
    subscribers.shutdown_background();
    summarize(args, &stats, measured, samples)
}

async fn produce(args: PerfArgs, topic: String, conn: Conn, stats: Arc<Stats>) -> Result<(), String> {
    let window = match (args.qos, args.confirm as u64) {
        (0, _) => 0,
        (_, 0) => DEFAULT_WINDOW,
        (_, w) => w.min(u16::MAX as u64),
    };
    let Conn { incoming, mut wr } = conn;
    let acked = Arc::new(AtomicU64::new(0));
    // The last sequence number published (set before each batch goes out).
    let sent = Arc::new(AtomicU64::new(0));
    let freed = Arc::new(Notify::new());
    // Send times by sequence number, for the PUBACK latency: a ring as large as the window.
    let ring: Arc<Vec<AtomicU64>> = Arc::new((0..window.max(1)).map(|_| AtomicU64::new(0)).collect());
    let acks = (window > 0).then(|| {
        tokio::spawn(count_pubacks(incoming, ring.clone(), [acked.clone(), sent.clone()], freed.clone(), stats.clone()))
    });
    // The header up to the payload, its packet identifier (QoS 1) in its last two bytes.
    let publish = Publish {
        dup: false,
        qos: args.qos,
        retain: false,
        topic,
        packet_id: (args.qos > 0).then_some(1),
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    let mut head = BytesMut::new();
    codec::publish_header(&mut head, &publish, args.size, LEVEL);
    let mut body = vec![0u8; args.size];
    let mut out = BytesMut::with_capacity((head.len() + args.size) * BATCH as usize);
    let started = Instant::now();
    let mut seq = 0u64;
    let result = async {
        while !stats.stopping() && (args.count == 0 || seq < args.count) {
            // Batches of a sixteenth of the window at least: a broker that acknowledges one
            // publish at a time would otherwise have the generator write one at a time, and
            // spend its CPU on system calls.
            let confirms = Confirms { window, acked: &acked, freed: &freed, min_free: (window / 16).max(1) };
            let Some(room) = next_batch(&args, &stats, (window > 0).then_some(confirms), started, seq).await else {
                return Ok(());
            };
            for _ in 0..room {
                seq += 1;
                let now = clock();
                body[..8].copy_from_slice(&now.to_be_bytes());
                out.extend_from_slice(&head);
                if window > 0 {
                    ring[(seq % window) as usize].store(now, Ordering::Release);
                    // Identifiers 1 to 65535, in turn; the window is smaller, so none in use
                    // is taken again.
                    let id = ((seq - 1) % u16::MAX as u64) as u16 + 1;
                    let at = out.len() - 2;
                    out[at..].copy_from_slice(&id.to_be_bytes());
                }
                out.extend_from_slice(&body);
            }
            sent.store(seq, Ordering::Release);
            wr.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
            out.clear();
            stats.published.fetch_add(room, Ordering::AcqRel);
        }
        // QoS 1: wait (bounded by the run) for the last PUBACKs.
        while window > 0 && acked.load(Ordering::Acquire) < seq && !stats.stopping() {
            let _ = tokio::time::timeout(STOP_CHECK, freed.notified()).await;
        }
        Ok(())
    }
    .await;
    stats.producers_done.fetch_add(1, Ordering::AcqRel);
    if let Some(t) = acks {
        t.abort();
    }
    result
}

/// Counts a publisher's PUBACKs (`acked`), in order as the specification has brokers send
/// them, and times each against its publish's send time; `sent` is the last publish sent.
async fn count_pubacks(
    mut incoming: Incoming,
    ring: Arc<Vec<AtomicU64>>,
    [acked, sent]: [Arc<AtomicU64>; 2],
    freed: Arc<Notify>,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let mut local = new_histogram();
    let mut last_merge = Instant::now();
    loop {
        let first = incoming.packet().await?;
        let now = clock();
        let mut n = 0;
        let mut next = acked.load(Ordering::Acquire);
        // The first packet and the others read with it.
        let mut packet = Some(first);
        while let Some(p) = packet {
            if let Packet::PubAck(_) = p {
                next += 1;
                n += 1;
                let sent = ring[(next % ring.len() as u64) as usize].load(Ordering::Acquire);
                let _ = local.record(now.saturating_sub(sent).max(1_000));
            }
            packet = incoming.decoded()?;
        }
        stats.confirmed.fetch_add(n, Ordering::AcqRel);
        // Merged every 50 ms, and whenever everything sent is acknowledged, before the
        // publisher can see it: the publisher ends this task once its last PUBACK is in.
        if last_merge.elapsed() > Duration::from_millis(50) || next >= sent.load(Ordering::Acquire) {
            Stats::record(&stats.confirm, &mut local);
            last_merge = Instant::now();
        }
        acked.store(next, Ordering::Release);
        freed.notify_one();
    }
}

async fn consume(mut conn: Conn, stats: Arc<Stats>) -> Result<(), String> {
    let mut acks = BytesMut::new();
    let mut local = new_histogram();
    let mut last_merge = Instant::now();
    while !stats.stopping() {
        if let Ok(r) = tokio::time::timeout(STOP_CHECK, conn.incoming.read()).await {
            r?;
        }
        let now = clock();
        while let Some(p) = conn.incoming.decoded()? {
            if let Packet::Publish(m) = p {
                if let Some(sent) = m.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) {
                    let _ = local.record(now.saturating_sub(sent).max(1_000));
                }
                stats.count_consumed(1);
                if let Some(id) = m.packet_id {
                    acks.extend_from_slice(&[0x40, 2]);
                    acks.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        if !acks.is_empty() {
            conn.wr.write_all(&acks).await.map_err(|e| format!("write: {e}"))?;
            acks.clear();
        }
        if last_merge.elapsed() > Duration::from_millis(50) {
            Stats::record(&stats.e2e, &mut local);
            last_merge = Instant::now();
        }
    }
    Stats::record(&stats.e2e, &mut local);
    Ok(())
}

/// Connects --idle-connections clients (each subscribed to a topic of its own with
/// --idle-consumers) and holds them for --duration.
async fn idle(args: &PerfArgs, target: &Target) -> Result<Summary, String> {
    let start = Instant::now();
    let held = open_many(
        target,
        args.idle_connections,
        |i| format!("{}-idle-{i}", args.prefix),
        |i| args.idle_consumers.then(|| format!("{}/idle/{i}", args.prefix)),
        args.qos,
    )
    .await?;
    if !args.json {
        println!("opened {} MQTT connections in {:.1}s; holding them", held.len(), start.elapsed().as_secs_f64());
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    Ok(Summary { idle_connections: held.len(), ..Summary::empty(args, start.elapsed().as_secs_f64()) })
}
