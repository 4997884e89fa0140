//! `hare perf` over RabbitMQ's stream protocol (a `rabbitmq-stream://` URI), which Hare and
//! RabbitMQ's `rabbitmq_stream` plugin both speak, on the broker's own frame codec.
//!
//! - Publisher p publishes to the stream `<queue p mod queues>` (created if missing), in
//!   frames of up to 64 messages, keeping at most --confirm (256 if 0) unconfirmed, and times
//!   each confirm.
//! - Consumer c subscribes to the stream `<queue c mod queues>` from --offset (`first`,
//!   `last`, `next` or a number) with a credit of 10 chunks, and gives one back per chunk.
//! - Messages are the --size bytes as they are (the send time in the first 8): both brokers
//!   store a stream protocol message as the client wrote it.

use super::client::Target;
use super::{
    clock, new_histogram, next_batch, read_more, report, stop, summarize, Confirms, PerfArgs, Stats, Summary, Window,
    BATCH,
};
use crate::stream::codec::{code, key, put_frame, put_map, put_string};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Publishes awaiting their confirm, when --confirm does not say.
const DEFAULT_WINDOW: u64 = 256;
/// The chunks a subscription may be sent ahead of the consumer.
const CREDIT: u16 = 10;
/// How often a waiting task looks whether the run is over.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What a client reads: the socket and what was read and not yet decoded.
struct Incoming {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

impl Incoming {
    /// The next whole frame already read (key, content after key and version).
    fn decoded(&mut self) -> Option<(u16, Bytes)> {
        let size = u32::from_be_bytes(self.buf.get(..4)?.try_into().ok()?) as usize;
        if self.buf.len() < 4 + size {
            self.buf.reserve(4 + size - self.buf.len());
            return None;
        }
        self.buf.advance(4);
        let mut frame = self.buf.split_to(size).freeze();
        if frame.remaining() < 4 {
            return Some((0, Bytes::new()));
        }
        let k = frame.get_u16();
        frame.advance(2);
        Some((k, frame))
    }

    async fn read(&mut self) -> Result<(), String> {
        read_more(&mut self.rd, &mut self.buf, 1024 * 1024).await
    }

    async fn frame(&mut self) -> Result<(u16, Bytes), String> {
        loop {
            if let Some(f) = self.decoded() {
                return Ok(f);
            }
            self.read().await?;
        }
    }

    /// The response to `k` (its code, and what follows it), skipping other frames.
    async fn response(&mut self, k: u16) -> Result<(u16, Bytes), String> {
        loop {
            let (got, mut body) = self.frame().await?;
            if got == k | key::RESPONSE && body.remaining() >= 6 {
                body.advance(4);
                let c = body.get_u16();
                return Ok((c, body));
            }
        }
    }
}

struct Conn {
    incoming: Incoming,
    wr: OwnedWriteHalf,
}

impl Conn {
    /// Connects, logs in with PLAIN, takes the broker's tune and opens the vhost.
    async fn open(target: &Target) -> Result<Conn, String> {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", target.host, target.port))?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut c = Conn { incoming: Incoming { rd, buf: BytesMut::with_capacity(64 * 1024) }, wr };
        c.request(key::PEER_PROPERTIES, |o| put_map(o, [("product", "hare perf")].into_iter())).await?;
        c.request(key::SASL_HANDSHAKE, |_| {}).await?;
        let plain = format!("\0{}\0{}", target.user, target.password);
        let auth = c
            .request(key::SASL_AUTHENTICATE, |o| {
                put_string(o, "PLAIN");
                o.put_u32(plain.len() as u32);
                o.put_slice(plain.as_bytes());
            })
            .await?;
        if auth != code::OK {
            return Err(format!("login refused (code {auth})"));
        }
        let (frame_max, _) = loop {
            let (k, mut body) = c.incoming.frame().await?;
            if k == key::TUNE && body.remaining() >= 8 {
                break (body.get_u32(), body.get_u32());
            }
        };
        c.send(key::TUNE, |o| {
            o.put_u32(frame_max);
            o.put_u32(0);
        })
        .await?;
        let vhost = target.vhost.clone();
        match c.request(key::OPEN, |o| put_string(o, &vhost)).await? {
            code::OK => Ok(c),
            other => Err(format!("vhost '{vhost}' refused (code {other})")),
        }
    }

    async fn send(&mut self, k: u16, body: impl FnOnce(&mut BytesMut)) -> Result<(), String> {
        let mut out = BytesMut::new();
        put_frame(&mut out, k, body);
        self.wr.write_all(&out).await.map_err(|e| format!("write: {e}"))
    }

    /// Sends a request (correlation id 1) and returns its response's code.
    async fn request(&mut self, k: u16, body: impl FnOnce(&mut BytesMut)) -> Result<u16, String> {
        self.send(k, |o| {
            o.put_u32(1);
            body(o)
        })
        .await?;
        Ok(self.incoming.response(k).await?.0)
    }
}

fn stream_name(args: &PerfArgs, i: usize) -> String {
    args.queue(i % args.queues)
}

/// Runs the stream protocol load `args` describes.
pub(super) async fn run(args: &PerfArgs, target: &Target) -> Result<Summary, String> {
    let mut setup = Conn::open(target).await.map_err(|e| format!("setting up: {e}"))?;
    for i in 0..args.queues {
        let name = stream_name(args, i);
        match setup
            .request(key::CREATE, |o| {
                put_string(o, &name);
                o.put_u32(0);
            })
            .await?
        {
            code::OK | code::STREAM_ALREADY_EXISTS => {}
            other => return Err(format!("creating stream '{name}': code {other}")),
        }
    }
    let stats = Stats::new(args.expected());
    let mut tasks = Vec::new();
    for c in 0..args.consumers {
        let conn = Conn::open(target).await.map_err(|e| format!("consumer {c}: {e}"))?;
        tasks.push(tokio::spawn(consume(args.clone(), stream_name(args, c), conn, stats.clone())));
    }
    let window = Window::open();
    for p in 0..args.producers {
        let conn = Conn::open(target).await.map_err(|e| format!("producer {p}: {e}"))?;
        tasks.push(tokio::spawn(produce(args.clone(), stream_name(args, p), conn, stats.clone())));
    }
    let samples = report(args, &args.expected(), &stats, window.start).await;
    let measured = stop(&stats, window, tasks).await;
    if !args.keep {
        for i in 0..args.queues {
            let name = stream_name(args, i);
            let _ = setup.request(key::DELETE, |o| put_string(o, &name)).await;
        }
    }
    summarize(args, &stats, measured, samples)
}

async fn produce(args: PerfArgs, stream: String, mut conn: Conn, stats: Arc<Stats>) -> Result<(), String> {
    let c = conn
        .request(key::DECLARE_PUBLISHER, |o| {
            o.put_u8(0);
            put_string(o, "");
            put_string(o, &stream);
        })
        .await?;
    if c != code::OK {
        return Err(format!("declaring a publisher on '{stream}': code {c}"));
    }
    let window = match args.confirm as u64 {
        0 => DEFAULT_WINDOW,
        w => w,
    };
    let Conn { incoming, mut wr } = conn;
    let acked = Arc::new(AtomicU64::new(0));
    let freed = Arc::new(Notify::new());
    // Send times by publishing id, for the confirm latency: a ring as large as the window.
    let ring: Arc<Vec<AtomicU64>> = Arc::new((0..window).map(|_| AtomicU64::new(0)).collect());
    let confirms = tokio::spawn(count_confirms(incoming, ring.clone(), acked.clone(), freed.clone(), stats.clone()));
    let mut body = vec![0u8; args.size.max(8)];
    let mut out = BytesMut::with_capacity((8 + 4 + body.len()) * BATCH as usize + 64);
    let started = Instant::now();
    let mut seq = 0u64;
    let result = async {
        while !stats.stopping() && (args.count == 0 || seq < args.count) {
            let c = Confirms { window, acked: &acked, freed: &freed, min_free: (window / 16).max(1) };
            let Some(room) = next_batch(&args, &stats, Some(c), started, seq).await else { return Ok(()) };
            put_frame(&mut out, key::PUBLISH, |o| {
                o.put_u8(0);
                o.put_u32(room as u32);
                for _ in 0..room {
                    seq += 1;
                    let now = clock();
                    ring[(seq % window) as usize].store(now, Ordering::Release);
                    body[..8].copy_from_slice(&now.to_be_bytes());
                    o.put_u64(seq);
                    o.put_u32(body.len() as u32);
                    o.put_slice(&body);
                }
            });
            wr.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
            out.clear();
            stats.published.fetch_add(room, Ordering::AcqRel);
        }
        // Wait (bounded by the run) for the last confirms.
        while acked.load(Ordering::Acquire) < seq && !stats.stopping() {
            let _ = tokio::time::timeout(STOP_CHECK, freed.notified()).await;
        }
        Ok(())
    }
    .await;
    stats.producers_done.fetch_add(1, Ordering::AcqRel);
    confirms.abort();
    result
}

/// Counts a publisher's confirmed ids (`acked`: the highest confirmed so far; the broker
/// confirms in order) and times each against its publish's send time.
async fn count_confirms(
    mut incoming: Incoming,
    ring: Arc<Vec<AtomicU64>>,
    acked: Arc<AtomicU64>,
    freed: Arc<Notify>,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let mut local = new_histogram();
    let mut last_merge = Instant::now();
    loop {
        incoming.read().await?;
        let now = clock();
        let (mut n, mut top) = (0u64, acked.load(Ordering::Acquire));
        while let Some((k, mut body)) = incoming.decoded() {
            match k {
                key::PUBLISH_CONFIRM if body.remaining() >= 5 => {
                    body.advance(1);
                    let count = body.get_u32() as usize;
                    for _ in 0..count.min(body.remaining() / 8) {
                        let id = body.get_u64();
                        let sent = ring[(id % ring.len() as u64) as usize].load(Ordering::Acquire);
                        let _ = local.record(now.saturating_sub(sent).max(1_000));
                        top = top.max(id);
                        n += 1;
                    }
                }
                key::PUBLISH_ERROR => return Err("the broker refused publishes".into()),
                _ => {}
            }
        }
        stats.confirmed.fetch_add(n, Ordering::AcqRel);
        if last_merge.elapsed() > Duration::from_millis(50) {
            Stats::record(&stats.confirm, &mut local);
            last_merge = Instant::now();
        }
        acked.store(top, Ordering::Release);
        freed.notify_one();
    }
}

/// What a consumer keeps while it reads: its latencies (merged into the run's every 50 ms)
/// and the frame it gives credit back with.
struct Reading {
    local: hdrhistogram::Histogram<u64>,
    last_merge: Instant,
    credit: BytesMut,
}

impl Reading {
    fn new() -> Reading {
        Reading { local: new_histogram(), last_merge: Instant::now(), credit: BytesMut::new() }
    }

    /// Gives back a credit for each of the `chunks` just read, and merges the latencies
    /// when it is time.
    async fn chunks_done(&mut self, conn: &mut Conn, stats: &Stats, chunks: u16) -> Result<(), String> {
        if chunks > 0 {
            put_frame(&mut self.credit, key::CREDIT, |o| {
                o.put_u8(0);
                o.put_u16(chunks);
            });
            conn.wr.write_all(&self.credit).await.map_err(|e| format!("write: {e}"))?;
            self.credit.clear();
        }
        if self.last_merge.elapsed() > Duration::from_millis(50) {
            Stats::record(&stats.e2e, &mut self.local);
            self.last_merge = Instant::now();
        }
        Ok(())
    }
}

async fn consume(args: PerfArgs, stream: String, mut conn: Conn, stats: Arc<Stats>) -> Result<(), String> {
    let (offset_type, offset) = match args.offset.as_str() {
        "first" => (1u16, None),
        "last" => (2, None),
        "next" => (3, None),
        n => (4, Some(n.parse::<u64>().map_err(|_| format!("--offset {n}: first, last, next or a number"))?)),
    };
    let c = conn
        .request(key::SUBSCRIBE, |o| {
            o.put_u8(0);
            put_string(o, &stream);
            o.put_u16(offset_type);
            if let Some(n) = offset {
                o.put_u64(n);
            }
            o.put_u16(CREDIT);
            o.put_u32(0);
        })
        .await?;
    if c != code::OK {
        return Err(format!("subscribing to '{stream}': code {c}"));
    }
    if args.skim {
        return skim(conn, stats).await;
    }
    let mut reading = Reading::new();
    while !stats.stopping() {
        if let Ok(r) = tokio::time::timeout(STOP_CHECK, conn.incoming.read()).await {
            r?;
        }
        let now = clock();
        let mut chunks = 0u16;
        while let Some((k, mut body)) = conn.incoming.decoded() {
            // subscription id, magic, type, entries, records, timestamp, epoch, first
            // offset, CRC, data length, trailer, reserved: 49 bytes before the entries.
            if k != key::DELIVER || body.remaining() < 49 {
                continue;
            }
            chunks += 1;
            let entries = u16::from_be_bytes([body[3], body[4]]);
            body.advance(49);
            for i in 0..entries {
                if body.remaining() < 4 {
                    break;
                }
                let size = body.get_u32() as usize & 0x7fff_ffff;
                // The latency of a chunk's first message stands for the chunk's: its messages
                // were sent together, and a histogram entry per message would cost the
                // generator more than reading them (at tens of millions a second).
                if i == 0 {
                    if let Some(sent) = body.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) {
                        let _ = reading.local.record(now.saturating_sub(sent).max(1_000));
                    }
                }
                body.advance(size.min(body.remaining()));
            }
            stats.count_consumed(entries as u64);
        }
        reading.chunks_done(&mut conn, &stats, chunks).await?;
    }
    Stats::record(&stats.e2e, &mut reading.local);
    Ok(())
}

/// A deliver frame's bytes before its chunk's entries: size, key and version (8), then the
/// subscription id and the chunk header (49).
const DELIVER_HEAD: usize = 8 + 49;
/// What `--skim` reads of a chunk: its header, the first entry's size and that message's
/// send time; and at most this much of the socket at once.
const SKIM_HEAD: usize = DELIVER_HEAD + 4 + 8;
const SKIM_READ: usize = 4096;

/// The consumer of `--skim`: reads each deliver frame's head (the chunk's message count and
/// its first message's send time) and has the kernel drop the rest of the frame unread.
async fn skim(mut conn: Conn, stats: Arc<Stats>) -> Result<(), String> {
    let mut reading = Reading::new();
    // What is left of the current deliver frame in the socket, to drop.
    let mut skip = 0usize;
    while !stats.stopping() {
        let step = async {
            if skip > 0 {
                drop_received(&conn.incoming.rd, &mut skip).await
            } else {
                let i = &mut conn.incoming;
                match i.rd.read_buf(&mut (&mut i.buf).limit(SKIM_READ)).await {
                    Ok(0) => Err("connection closed by the broker".to_string()),
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("read: {e}")),
                }
            }
        };
        if let Ok(r) = tokio::time::timeout(STOP_CHECK, step).await {
            r?;
        }
        if skip > 0 {
            continue;
        }
        let now = clock();
        let mut chunks = 0u16;
        loop {
            let buf = &mut conn.incoming.buf;
            let Some(size) = buf.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
                break;
            };
            let Some(k) = buf.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]])) else { break };
            if k != key::DELIVER || size + 4 < SKIM_HEAD {
                // Anything else is small and read whole (credit errors, heartbeats).
                if conn.incoming.decoded().is_none() {
                    break;
                }
                continue;
            }
            if buf.len() < SKIM_HEAD {
                break;
            }
            chunks += 1;
            // subscription id (8), magic (9), type (10), entries (11..13)
            let entries = u16::from_be_bytes([buf[11], buf[12]]);
            let sent = u64::from_be_bytes(buf[DELIVER_HEAD + 4..SKIM_HEAD].try_into().unwrap_or([0; 8]));
            let _ = reading.local.record(now.saturating_sub(sent).max(1_000));
            stats.count_consumed(entries as u64);
            let have = buf.len().min(size + 4);
            buf.advance(have);
            skip = size + 4 - have;
            if skip > 0 {
                break;
            }
        }
        reading.chunks_done(&mut conn, &stats, chunks).await?;
    }
    Stats::record(&stats.e2e, &mut reading.local);
    Ok(())
}

/// Drops up to `left` bytes the socket has received, without copying them: `recv` with
/// `MSG_TRUNC` on a TCP socket discards the data. Waits until some are there.
async fn drop_received(rd: &OwnedReadHalf, left: &mut usize) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let socket: &TcpStream = rd.as_ref();
    loop {
        socket.readable().await.map_err(|e| format!("read: {e}"))?;
        let dropped = socket.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: with MSG_TRUNC, TCP's recv writes nothing to the buffer (it discards
            // the bytes); a null pointer makes any kernel that would write fail with EFAULT
            // rather than write anywhere.
            let n = unsafe {
                libc::recv(socket.as_raw_fd(), std::ptr::null_mut(), *left, libc::MSG_TRUNC | libc::MSG_DONTWAIT)
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match dropped {
            Ok(0) => return Err("connection closed by the broker".into()),
            Ok(n) => {
                *left -= n.min(*left);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
