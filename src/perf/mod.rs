//! `hare perf`: a load generator for any AMQP 0-9-1 broker (see [`amqp`]), in the spirit of
//! rabbitmq-perf-test, for MQTT brokers with an mqtt:// URI (see [`mqtt`]) and for streams
//! over RabbitMQ's stream protocol with a rabbitmq-stream:// URI (see [`stream`]). Each message
//! carries its send time, so consumers measure end-to-end latency; publisher confirms (and
//! MQTT's PUBACKs) are timed too.

mod amqp;
pub mod client;
mod mqtt;
pub mod plot;
mod stream;

use crate::amqp::method::*;
use crate::amqp::{Frame, Method};
use crate::types::{BasicProperties, FieldTable, ShortStr};
use client::{Client, ClientError, Target};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    Auto,
    Manual,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct PerfArgs {
    /// Broker to load, as an AMQP URI, mqtt://user:pass@host:port for an MQTT broker, or
    /// rabbitmq-stream://user:pass@host:port/vhost for streams over the stream protocol.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// MQTT only: the QoS of publishes and subscriptions (0 or 1). QoS 1 publishers keep at
    /// most --confirm publishes (256 if 0) waiting for their PUBACK.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// With an amqps:// URI: PEM CA certificates to verify the broker's certificate with.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consuming connections.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (at least 8 to carry the send time).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Messages per second per producer; 0 for as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publish with delivery_mode=2 to durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Declare the queues as quorum queues (durable, `x-queue-type: quorum`).
    #[arg(long)]
    pub quorum: bool,
    /// Declare the queues as streams (`x-queue-type: stream`); consumers need `--ack manual`
    /// and a `--prefetch`, and start at `--offset`.
    #[arg(long)]
    pub stream: bool,
    /// Where stream consumers start (`x-stream-offset`): first, last, next or an offset.
    #[arg(long, default_value = "next")]
    pub offset: String,
    /// Stream protocol consumers only: read each chunk's header and its first message's send
    /// time, and let the kernel drop the rest of the chunk unread (`MSG_TRUNC`), so that the
    /// generator costs next to nothing per byte where reading every message would make it
    /// the bottleneck. Messages are counted from the chunks' headers.
    #[arg(long)]
    pub skim: bool,
    /// Use publisher confirms with this many unconfirmed messages at most; 0 for none.
    #[arg(long, default_value_t = 0)]
    pub confirm: usize,
    /// Consumer acknowledgements.
    #[arg(long, value_enum, default_value = "auto")]
    pub ack: AckMode,
    /// basic.qos prefetch count for manual-ack consumers (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub prefetch: u16,
    /// Queues; producer and consumer i use queue i modulo this.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// direct: the default exchange straight to each queue; fanout: one exchange bound to
    /// every queue; topic: one exchange, queue i bound with `perf.i.#`.
    #[arg(long, value_enum, default_value = "direct")]
    pub exchange: ExchangeType,
    /// Seconds to run (with --count: the most to wait).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per producer, then stop (0: run for --duration). With no producers: the
    /// messages to consume before stopping.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Name prefix for the queues and exchanges it declares.
    #[arg(long, default_value = "perf")]
    pub prefix: String,
    /// Keep the queues at the end (default: delete them, unless there are no consumers).
    #[arg(long)]
    pub keep: bool,
    /// Only open this many idle connections (one channel each) and hold them for --duration.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// With --idle-connections: each also declares an exclusive queue and consumes from it.
    #[arg(long)]
    pub idle_consumers: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart of rates and latency over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No per-second lines.
    #[arg(long)]
    pub quiet: bool,
}

impl PerfArgs {
    fn check(&self) -> Result<(), String> {
        if self.size < 8 {
            return Err("--size must be at least 8 (the body carries its send time)".into());
        }
        if self.stream && self.consumers > 0 && (self.ack != AckMode::Manual || self.prefetch == 0) {
            return Err("stream consumers need --ack manual and a --prefetch".into());
        }
        if self.skim && !self.uri.starts_with("rabbitmq-stream://") {
            return Err("--skim is for stream protocol consumers (a rabbitmq-stream:// URI)".into());
        }
        if self.queues == 0 {
            return Err("--queues must be at least 1".into());
        }
        if self.producers == 0 && self.consumers == 0 && self.idle_connections == 0 {
            return Err("nothing to do: no producers, consumers or idle connections".into());
        }
        if self.duration <= 0.0 {
            return Err("--duration must be positive".into());
        }
        Ok(())
    }

    fn queue(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, i % self.queues)
    }

    fn exchange_name(&self) -> String {
        match self.exchange {
            ExchangeType::Direct => String::new(),
            ExchangeType::Fanout => format!("{}-fanout", self.prefix),
            ExchangeType::Topic => format!("{}-topic", self.prefix),
        }
    }

    fn routing_key(&self, producer: usize) -> String {
        match self.exchange {
            ExchangeType::Direct => self.queue(producer),
            ExchangeType::Fanout => String::new(),
            ExchangeType::Topic => format!("perf.{}.x", producer % self.queues),
        }
    }

    /// Messages the consumers should see in --count mode.
    fn expected(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        if self.producers == 0 {
            return Some(self.count);
        }
        let fan = if self.exchange == ExchangeType::Fanout { self.queues as u64 } else { 1 };
        (self.consumers > 0).then_some(self.count * self.producers as u64 * fan)
    }
}

/// Reads what a socket has into `buf` (the MQTT and stream protocol clients' reader), with
/// `room` bytes of space made once less than a sixteenth of it is free; Err once the
/// broker closed the connection.
async fn read_more(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut bytes::BytesMut,
    room: usize,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < room / 16 {
        buf.reserve(room);
    }
    match rd.read_buf(buf).await {
        Ok(0) => Err("connection closed by the broker".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn clock() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits; the bounds cannot be wrong.
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Counters and histograms shared by all tasks; `interval` ones are reset every second.
struct Stats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    e2e: Mutex<(Histogram<u64>, Histogram<u64>)>,
    confirm: Mutex<(Histogram<u64>, Histogram<u64>)>,
    stop: AtomicBool,
    stopped: Notify,
    producers_done: AtomicU64,
    /// With --count, the messages the consumers are to see, and when the last of them came:
    /// the run's rate is taken to that moment, not to the report's next 100 ms tick.
    expected: AtomicU64,
    finished: std::sync::OnceLock<Instant>,
}

impl Stats {
    fn new(expected: Option<u64>) -> Arc<Stats> {
        Arc::new(Stats {
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            e2e: Mutex::new((new_histogram(), new_histogram())),
            confirm: Mutex::new((new_histogram(), new_histogram())),
            stop: AtomicBool::new(false),
            stopped: Notify::new(),
            producers_done: AtomicU64::new(0),
            expected: AtomicU64::new(expected.unwrap_or(0)),
            finished: std::sync::OnceLock::new(),
        })
    }

    /// Counts messages consumed; the count that completes a --count run notes the time.
    fn count_consumed(&self, n: u64) {
        let total = self.consumed.fetch_add(n, Ordering::AcqRel) + n;
        let expected = self.expected.load(Ordering::Acquire);
        if expected > 0 && total >= expected {
            let _ = self.finished.set(Instant::now());
        }
    }

    fn record(h: &Mutex<(Histogram<u64>, Histogram<u64>)>, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        let mut g = h.lock();
        let _ = g.0.add(&*local);
        let _ = g.1.add(&*local);
        local.reset();
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub second: f64,
    pub published_per_sec: f64,
    pub consumed_per_sec: f64,
    pub confirm_p50_ms: Option<f64>,
    pub confirm_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1e6,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub args: PerfArgs,
    pub seconds: f64,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
    pub published_per_sec: f64,
    pub consumed_per_sec: f64,
    pub confirm_latency: Option<Latency>,
    pub e2e_latency: Option<Latency>,
    pub idle_connections: usize,
    /// The CPU time `hare perf` itself used over the run, in percent of one core.
    pub cpu_percent: f64,
    pub samples: Vec<Sample>,
}

impl Summary {
    /// A run of `seconds` that moved no message.
    fn empty(args: &PerfArgs, seconds: f64) -> Summary {
        Summary {
            args: args.clone(),
            seconds,
            published: 0,
            confirmed: 0,
            nacked: 0,
            consumed: 0,
            published_per_sec: 0.0,
            consumed_per_sec: 0.0,
            confirm_latency: None,
            e2e_latency: None,
            idle_connections: 0,
            cpu_percent: 0.0,
            samples: Vec::new(),
        }
    }
}

/// Runs the load described by `args` and returns its figures.
pub async fn run(args: PerfArgs) -> Result<Summary, String> {
    args.check()?;
    let mut target = Target::parse(&args.uri).map_err(|e| e.to_string())?;
    if let Some(ca) = &args.tls_ca {
        target = target.with_tls(crate::tls::client_config(ca).map_err(|e| e.to_string())?);
    }
    if target.mqtt {
        return mqtt::run(&args, &target).await;
    }
    if target.stream {
        return stream::run(&args, &target).await;
    }
    amqp::run(&args, &target).await
}

/// The measured part of a run, from the first publish to the stop, and the CPU time the
/// load generator used in it: shown beside the broker's, it tells whether the generator is
/// the bottleneck.
struct Window {
    start: Instant,
    cpu: f64,
}

impl Window {
    fn open() -> Window {
        clock();
        Window { start: Instant::now(), cpu: cpu_seconds() }
    }
}

/// What the measured window came to.
struct Measured {
    seconds: f64,
    /// The generator's CPU time over the window, in percent of one core.
    cpu_percent: f64,
    /// The errors the tasks ended with.
    errors: Vec<String>,
}

/// The CPU time (user and system) this process has used, in seconds; 0 where /proc does
/// not tell it.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields, in clock ticks (100 a second on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// How long one task may take to end once told to stop; then it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Tells every task to stop and waits (within [`STOP_GRACE`] for all of them) for them to
/// end, aborting those that do not.
async fn stop<E: std::fmt::Display>(
    stats: &Stats,
    window: Window,
    tasks: Vec<tokio::task::JoinHandle<Result<(), E>>>,
) -> Measured {
    stats.stop.store(true, Ordering::Release);
    stats.stopped.notify_waiters();
    let elapsed = window.start.elapsed().as_secs_f64();
    let cpu_percent = 100.0 * (cpu_seconds() - window.cpu) / elapsed.max(1e-9);
    // The rates are taken to when the last message expected came, if it did.
    let seconds = stats.finished.get().map_or(elapsed, |f| f.duration_since(window.start).as_secs_f64());
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Ok(Err(e))) => errors.push(e.to_string()),
            Ok(_) => {}
            Err(_) => t.abort(),
        }
    }
    Measured { seconds, cpu_percent, errors }
}

/// The run's figures (and its chart, with --plot); Err if a connection failed.
fn summarize(args: &PerfArgs, stats: &Stats, measured: Measured, samples: Vec<Sample>) -> Result<Summary, String> {
    let Measured { seconds, cpu_percent, errors } = measured;
    if let Some(e) = errors.first() {
        return Err(format!("a connection failed: {e}"));
    }
    let published = stats.published.load(Ordering::Acquire);
    let consumed = stats.consumed.load(Ordering::Acquire);
    let summary = Summary {
        args: args.clone(),
        seconds,
        published,
        confirmed: stats.confirmed.load(Ordering::Acquire),
        nacked: stats.nacked.load(Ordering::Acquire),
        consumed,
        published_per_sec: published as f64 / seconds,
        consumed_per_sec: consumed as f64 / seconds,
        confirm_latency: Latency::of(&stats.confirm.lock().1),
        e2e_latency: Latency::of(&stats.e2e.lock().1),
        idle_connections: 0,
        cpu_percent,
        samples,
    };
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&summary)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(summary)
}

/// Prints a line a second until the duration passes or, with --count, all is done
/// (`expected`: the messages the consumers should see, when that is known).
async fn report(args: &PerfArgs, expected: &Option<u64>, stats: &Stats, start: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut last = (0u64, 0u64, start);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_line = start + Duration::from_secs(1);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let published = stats.published.load(Ordering::Acquire);
        let consumed = stats.consumed.load(Ordering::Acquire);
        let producers_done = stats.producers_done.load(Ordering::Acquire) as usize == args.producers;
        let done = now >= deadline
            || match *expected {
                // Consumers may have every message before its confirm arrives (delivery does
                // not wait for the disk): the producers finish once their confirms are in.
                Some(n) => consumed >= n && producers_done,
                None => args.count > 0 && producers_done && args.consumers == 0,
            };
        if now >= next_line || done {
            let secs = now.duration_since(last.2).as_secs_f64().max(1e-9);
            let take = |h: &Mutex<(Histogram<u64>, Histogram<u64>)>| {
                let mut g = h.lock();
                let r = (!g.0.is_empty())
                    .then(|| (g.0.value_at_quantile(0.5) as f64 / 1e6, g.0.value_at_quantile(0.99) as f64 / 1e6));
                g.0.reset();
                r
            };
            let confirm = take(&stats.confirm);
            let e2e = take(&stats.e2e);
            let s = Sample {
                second: now.duration_since(start).as_secs_f64(),
                published_per_sec: (published - last.0) as f64 / secs,
                consumed_per_sec: (consumed - last.1) as f64 / secs,
                confirm_p50_ms: confirm.map(|c| c.0),
                confirm_p99_ms: confirm.map(|c| c.1),
                e2e_p50_ms: e2e.map(|c| c.0),
                e2e_p99_ms: e2e.map(|c| c.1),
            };
            if !args.quiet && !args.json {
                let lat = |name: &str, v: Option<(f64, f64)>| match v {
                    Some((p50, p99)) => format!("  {name} p50 {p50:.2} ms p99 {p99:.2} ms"),
                    None => String::new(),
                };
                println!(
                    "[{:6.1}s] sent {:>10.0}/s  recv {:>10.0}/s{}{}",
                    s.second,
                    s.published_per_sec,
                    s.consumed_per_sec,
                    lat("confirm", confirm),
                    lat("e2e", e2e)
                );
            }
            samples.push(s);
            last = (published, consumed, now);
            next_line = now + Duration::from_secs(1);
        }
        if done {
            return samples;
        }
    }
}

/// Publishes written together at most.
const BATCH: u64 = 64;

/// A publisher's window of publishes awaiting their confirm (or PUBACK).
struct Confirms<'a> {
    window: u64,
    /// Confirmed so far, by sequence number; `freed` is notified as it grows.
    acked: &'a AtomicU64,
    freed: &'a Notify,
    /// The free room a batch waits for.
    min_free: u64,
}

/// How many publishes the next batch holds, after `seq` sent: at most [`BATCH`], within the
/// confirm window once `min_free` of it is free, within --count, paced by --rate. None once
/// the run stops.
async fn next_batch(
    args: &PerfArgs,
    stats: &Stats,
    confirms: Option<Confirms<'_>>,
    started: Instant,
    seq: u64,
) -> Option<u64> {
    let mut room = BATCH;
    if let Some(c) = confirms {
        loop {
            let free = c.window.saturating_sub(seq - c.acked.load(Ordering::Acquire));
            if free >= c.min_free {
                room = room.min(free);
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), c.freed.notified()).await;
            if stats.stopping() {
                return None;
            }
        }
    }
    if args.count > 0 {
        room = room.min(args.count - seq);
    }
    Some(pace(args.rate, started, seq, room).await)
}

/// With a --rate, waits until message `seq + 1` is due (message n goes out at start + n /
/// rate) and returns how many of `room` may go now; without one, `room`.
async fn pace(rate: u64, started: Instant, seq: u64, room: u64) -> u64 {
    if rate == 0 {
        return room;
    }
    let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
    tokio::time::sleep_until(due.into()).await;
    let allowed = (started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
    room.min(allowed.saturating_sub(seq).max(1))
}

/// Awaits futures concurrently (a small join_all, to avoid a dependency for one use).
async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// The human-readable summary.
pub fn print_summary(s: &Summary) {
    if s.idle_connections > 0 {
        println!("held {} idle connections for {:.1}s", s.idle_connections, s.seconds);
        return;
    }
    println!("--- {:.1}s", s.seconds);
    println!(
        "published {} ({:.0}/s), consumed {} ({:.0}/s), confirmed {}, nacked {}; hare perf used {:.0} % of a core",
        s.published, s.published_per_sec, s.consumed, s.consumed_per_sec, s.confirmed, s.nacked, s.cpu_percent
    );
    for (name, l) in [("confirm latency", &s.confirm_latency), ("end-to-end latency", &s.e2e_latency)] {
        if let Some(l) = l {
            println!(
                "{name}: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                l.p50_ms, l.p95_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
    }
}
