//! One stream protocol client's task, in RabbitMQ's order: peer properties, SASL handshake
//! and authenticate, tune, open (the vhost), then commands until close. Publishes are
//! appended to their stream and confirmed once their group commit is durable (a named
//! publisher's re-sent ids are confirmed without being stored again); each subscription is
//! served by a task of its own (`deliver`), a chunk per credit. The handshake is in
//! `handshake`, publishers and confirms in `publish`, super streams in `super_stream`.

use super::codec::{self, code, key, put_frame, put_map, put_response, put_string, Command, OffsetSpec};
use super::deliver::{self, Subscription};
use super::Shared;
use crate::auth::grant::{Grant, Kind, Perm};
use crate::broker::audit::Actor;
use crate::broker::connections::{bump, ConnectionEntry};
use crate::broker::consumer::ConnectionSink;
use crate::broker::queue::Queue;
use crate::broker::vhost::{QueueDeclaration, VHost};
use crate::net::pending::PendingGuard;
use crate::net::read_buf::{ReadSize, READ_MIN};
use crate::net::writer::{Encoded, WriterHandle};
use crate::types::{FieldTable, FieldValue};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

mod handshake;
mod publish;
mod single_active;
mod super_stream;

pub use single_active::Coordinator;

/// The frame size the broker proposes in its tune (RabbitMQ's default, 1 MiB).
const FRAME_MAX: u32 = 1_048_576;
/// The heartbeat the broker proposes, in seconds (RabbitMQ's default).
const HEARTBEAT: u32 = 60;
/// How long a client has from connecting to opening its vhost.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame taken before the login: the handshake's frames are small.
const MAX_UNAUTHENTICATED: usize = 65_536;
/// Publishes appended and not yet confirmed, past which the connection stops reading until
/// the disk catches up: a publisher faster than the disk costs bounded memory.
const MAX_UNCONFIRMED: usize = 100_000;
/// Publishers and subscriptions one connection may hold: the protocol's ids are one byte.
const MAX_IDS: usize = 256;
/// The longest publisher or consumer reference (RabbitMQ's limit).
const MAX_REFERENCE: usize = 256;

/// Where a connection comes from and what carries it.
pub struct Link {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<crate::tls::PeerInfo>,
}

/// A declared publisher.
struct Publisher {
    stream: String,
    /// Its reference, for deduplication; None for an anonymous publisher.
    reference: Option<String>,
    queue: Arc<Queue>,
}

/// How far the handshake got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Start,
    Authenticated,
    Tuned,
    Opened,
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    link: Link,
    step: Step,
    client_properties: Vec<(String, String)>,
    user: String,
    mechanism: &'static str,
    vhost: Option<Arc<VHost>>,
    grant: Option<Grant>,
    entry: Option<Arc<ConnectionEntry>>,
    writer: WriterHandle,
    /// The largest frame either side sends (0 in a tune: no limit but the broker's own).
    frame_max: usize,
    heartbeat: u32,
    /// Deliver frames carry the committed chunk id (version 2) once the client said, in its
    /// exchange of command versions, that it reads them (as RabbitMQ decides it).
    deliver_v2: bool,
    publishers: HashMap<u8, Publisher>,
    subscriptions: HashMap<u8, Subscription>,
    /// Publishes appended and not yet confirmed, in order: (ticket, publisher, publishing id).
    unconfirmed: VecDeque<(u64, u8, u64)>,
    durable: u64,
    /// Subscriptions' tasks tell the connection of a stream deleted under them.
    gone_tx: mpsc::UnboundedSender<String>,
    /// Subscriptions that are single active consumers, with their groups (`single_active`).
    members: HashMap<u8, single_active::Member>,
    /// Consumer updates sent and not answered yet, by correlation id, and the next id.
    updates: HashMap<u32, crate::stream::sac::Notify>,
    next_corr: u32,
    out: BytesMut,
    /// The connection ends once `out` is written, with this reason in the log.
    closing: Option<String>,
}

/// Serves one stream protocol connection to its end.
pub async fn serve<R, W>(
    mut rd: R,
    wr: W,
    link: Link,
    pending: PendingGuard,
    mut shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
) where
    R: AsyncRead + Unpin,
    W: crate::net::writer::Socket,
{
    let id = shared.broker.next_id();
    let sink = ConnectionSink::new(id);
    let (writer, writer_task) = WriterHandle::spawn(wr, sink);
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
    let (sac_tx, mut sac_rx) = mpsc::unbounded_channel();
    let max_frame = max_frame(&shared);
    let mut conn = Conn {
        durable: shared.durable.as_ref().map_or(u64::MAX, |rx| *rx.borrow()),
        shared,
        id,
        link,
        step: Step::Start,
        client_properties: Vec::new(),
        user: String::new(),
        mechanism: "PLAIN",
        vhost: None,
        grant: None,
        entry: None,
        writer: writer.clone(),
        frame_max: max_frame,
        heartbeat: 0,
        deliver_v2: false,
        publishers: HashMap::new(),
        subscriptions: HashMap::new(),
        unconfirmed: VecDeque::new(),
        gone_tx,
        members: HashMap::new(),
        updates: HashMap::new(),
        next_corr: 1,
        out: BytesMut::new(),
        closing: None,
    };
    conn.join_coordinator(sac_tx);
    let mut pending = Some(pending);
    let mut rbuf = BytesMut::with_capacity(READ_MIN);
    let mut read_size = ReadSize::default();
    let mut durable = conn.shared.durable.clone();
    let mut alarm = conn.shared.alarm.clone();
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut last_recv = Instant::now();
    let mut last_beat = Instant::now();
    loop {
        let limit = if conn.step == Step::Opened { conn.frame_max.min(max_frame) } else { MAX_UNAUTHENTICATED };
        while conn.closing.is_none() {
            match next_frame(&mut rbuf, limit) {
                Ok(None) => break,
                Ok(Some(frame)) => conn.frame(frame),
                Err(size) => {
                    conn.close(code::FRAME_TOO_LARGE, &format!("frame of {size} bytes, over the maximum of {limit}"));
                }
            }
        }
        if conn.step == Step::Opened {
            if let Some(p) = pending.take() {
                drop(p);
            }
        }
        conn.confirm();
        conn.flush();
        if conn.closing.is_some() {
            break;
        }
        let need = missing(&rbuf);
        if read_size.short(&rbuf, need) {
            read_size.make_room(&mut rbuf, need);
        }
        let backlogged = writer.backlogged();
        let blocked = !conn.publishers.is_empty() && alarm.borrow().is_some();
        let full = conn.unconfirmed.len() >= MAX_UNCONFIRMED;
        let waits = !conn.unconfirmed.is_empty();
        let heartbeat = (conn.heartbeat > 0).then(|| Duration::from_secs(conn.heartbeat as u64));
        let entry = conn.entry.clone();
        tokio::select! {
            biased;
            _ = shutdown.changed() => conn.close(code::OK, "broker shutting down"),
            _ = async { match &entry { Some(e) => e.close_requested.notified().await, None => std::future::pending().await } } => {
                let why = entry.as_ref().and_then(|e| e.close_reason()).unwrap_or_default();
                conn.close(code::OK, &why);
            }
            _ = tokio::time::sleep_until(handshake_deadline), if conn.step < Step::Opened => {
                conn.closing = Some("handshake timeout".into());
            }
            r = async { match durable.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } }, if waits => {
                match r {
                    Ok(()) => if let Some(rx) = durable.as_mut() { conn.durable = *rx.borrow_and_update() },
                    Err(_) => conn.closing = Some("broker shutting down".into()),
                }
            }
            Some(stream) = gone_rx.recv() => conn.stream_gone(&stream),
            Some(n) = sac_rx.recv() => conn.notified(n),
            _ = writer.drained.notified(), if backlogged => {}
            r = alarm.changed() => {
                if r.is_err() {
                    conn.closing = Some("broker shutting down".into());
                }
            }
            r = rd.read_buf(&mut rbuf), if !backlogged && !blocked && !full => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        read_size.read(n);
                        last_recv = Instant::now();
                        if let Some(e) = &conn.entry {
                            bump(&e.recv_oct, n as u64);
                            bump(&e.recv_cnt, 1);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(last_beat + heartbeat.unwrap_or(Duration::from_secs(3600))), if heartbeat.is_some() => {
                let hb = heartbeat.unwrap_or_default();
                if last_recv.elapsed() > hb * 2 {
                    conn.closing = Some("missed heartbeats from the client".into());
                } else {
                    put_frame(&mut conn.out, key::HEARTBEAT, |_| {});
                    last_beat = Instant::now();
                }
            }
        }
    }
    conn.leave_all_groups(&mut sac_rx);
    conn.flush();
    if let Some(why) = &conn.closing {
        tracing::info!(peer = %conn.link.peer, "stream connection closed: {why}");
    }
    conn.end();
    writer.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
}

/// The largest frame a client may send once logged in: a message of the largest size
/// allowed, with room for the frame around it, and at least the proposed frame size.
fn max_frame(shared: &Shared) -> usize {
    (shared.config.max_message_size as usize).saturating_add(65_536).max(FRAME_MAX as usize)
}

/// The bytes still to come of the frame `buf` begins with.
fn missing(buf: &[u8]) -> usize {
    match buf.get(..4) {
        Some(h) => (4 + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize).saturating_sub(buf.len()),
        None => 0,
    }
}

/// Cuts the next whole frame (without its size) out of `buf`; Err(size) for one over `max`.
fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, usize> {
    let Some(h) = buf.get(..4) else { return Ok(None) };
    let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if size > max {
        return Err(size);
    }
    if buf.len() < 4 + size {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

impl Conn {
    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let bytes = self.out.split().freeze();
        if let Some(e) = &self.entry {
            bump(&e.send_oct, bytes.len() as u64);
            bump(&e.send_cnt, 1);
        }
        self.writer.send(Encoded::One(bytes), 0);
    }

    /// Sends the broker's close and ends the connection once it is written.
    fn close(&mut self, code: u16, reason: &str) {
        put_frame(&mut self.out, key::CLOSE, |o| {
            o.put_u32(1);
            o.put_u16(code);
            put_string(o, reason);
        });
        self.closing = Some(reason.to_string());
    }

    fn respond(&mut self, k: u16, corr: u32, code: u16) {
        put_response(&mut self.out, k, corr, code, |_| {});
    }

    fn frame(&mut self, frame: Bytes) {
        let command = match codec::decode(frame) {
            Ok(c) => c,
            Err(e) => {
                self.close(code::UNKNOWN_FRAME, &format!("malformed frame: {}", e.0));
                return;
            }
        };
        if self.step < Step::Opened {
            self.handshake(command);
        } else {
            self.command(command);
        }
    }

    fn allowed(&self, stream: &str, perm: Perm) -> bool {
        self.grant.as_ref().is_some_and(|g| g.check(Kind::Queue, stream, perm).is_ok())
    }

    /// The stream named `name` in the connection's vhost (None: no such stream).
    fn stream(&self, name: &str) -> Option<Arc<Queue>> {
        let vhost = self.vhost.as_ref()?;
        vhost.queue(name, self.id).ok().filter(|q| q.stream.is_some() && !q.is_deleted())
    }

    fn actor(&self) -> Actor {
        Actor {
            user: self.user.as_str().into(),
            source: Some(self.link.peer.to_string().into()),
            via: "stream",
            connection: self.id,
        }
    }

    /// The commands of an open connection, as `rabbit_stream_reader` answers them.
    fn command(&mut self, command: Command) {
        match command {
            Command::Heartbeat | Command::CloseOk => {}
            Command::Close { corr, .. } => {
                self.respond(key::CLOSE, corr, code::OK);
                self.closing = Some("closed by the client".into());
            }
            Command::DeclarePublisher { corr, id, reference, stream } => {
                let c = self.declare_publisher(id, reference, stream);
                self.respond(key::DECLARE_PUBLISHER, corr, c);
            }
            Command::Publish { id, version, count, messages } => self.publish(id, version, count, messages),
            Command::QueryPublisherSequence { corr, reference, stream } => {
                let (c, seq) = if !self.allowed(&stream, Perm::Read) {
                    (code::ACCESS_REFUSED, 0)
                } else {
                    match self.stream(&stream) {
                        None => (code::STREAM_DOES_NOT_EXIST, 0),
                        Some(q) => {
                            (code::OK, q.stream.as_ref().and_then(|s| s.writer_sequence(&reference)).unwrap_or(0))
                        }
                    }
                };
                put_response(&mut self.out, key::QUERY_PUBLISHER_SEQUENCE, corr, c, |o| o.put_u64(seq));
            }
            Command::DeletePublisher { corr, id } => {
                let c = if self.publishers.remove(&id).is_some() { code::OK } else { code::PUBLISHER_DOES_NOT_EXIST };
                self.respond(key::DELETE_PUBLISHER, corr, c);
            }
            // Of the subscription properties, single active consumer's are read here, and
            // the filter's (`filter.N`, `match-unfiltered`) by the subscription's task.
            Command::Subscribe { corr, id, stream, offset, credit, properties } => {
                self.subscribe(corr, id, stream, offset, credit, &properties)
            }
            Command::ConsumerUpdateResponse { corr, code, offset } => self.consumer_update_answered(corr, code, offset),
            Command::Credit { id, credit } => match self.subscriptions.get(&id) {
                Some(s) if !s.is_finished() => s.add_credit(credit),
                _ => {
                    // RabbitMQ answers only a credit it cannot give, with correlation id 1's place
                    // taken by the code and the subscription.
                    put_frame(&mut self.out, key::CREDIT | key::RESPONSE, |o| {
                        o.put_u16(code::SUBSCRIPTION_ID_DOES_NOT_EXIST);
                        o.put_u8(id);
                    });
                }
            },
            Command::StoreOffset { reference, stream, offset } => {
                // Fire and forget, as in RabbitMQ: nothing is answered, even a refusal.
                if reference.is_empty() || reference.len() > MAX_REFERENCE || !self.allowed(&stream, Perm::Write) {
                    return;
                }
                if let Some(s) = self.stream(&stream).and_then(|q| q.stream.clone()) {
                    s.store_offset(&reference, offset);
                }
            }
            Command::QueryOffset { corr, reference, stream } => {
                let (c, offset) = if !self.allowed(&stream, Perm::Read) {
                    (code::ACCESS_REFUSED, 0)
                } else {
                    match self.stream(&stream).and_then(|q| q.stream.clone()) {
                        None => (code::STREAM_DOES_NOT_EXIST, 0),
                        Some(s) => match s.stored_offset(&reference) {
                            Some(o) => (code::OK, o),
                            None => (code::NO_OFFSET, 0),
                        },
                    }
                };
                put_response(&mut self.out, key::QUERY_OFFSET, corr, c, |o| o.put_u64(offset));
            }
            Command::Unsubscribe { corr, id } => {
                let c = if self.remove_subscription(id) { code::OK } else { code::SUBSCRIPTION_ID_DOES_NOT_EXIST };
                self.respond(key::UNSUBSCRIBE, corr, c);
            }
            Command::Create { corr, stream, arguments } => {
                let c = self.create(&stream, &arguments);
                self.respond(key::CREATE, corr, c);
            }
            Command::Delete { corr, stream } => {
                let c = self.delete(&stream);
                self.respond(key::DELETE, corr, c);
                if c == code::OK {
                    // This connection's publishers and subscriptions on it go now, with a
                    // metadata update after the response, as RabbitMQ's reader cleans up.
                    self.stream_gone(&stream);
                }
            }
            Command::Metadata { corr, streams } => self.metadata(corr, &streams),
            Command::Route { corr, routing_key, super_stream } => {
                let streams = self.route(&routing_key, &super_stream);
                self.streams_response(key::ROUTE, corr, streams);
            }
            Command::Partitions { corr, super_stream } => {
                let streams = self.partitions(&super_stream);
                self.streams_response(key::PARTITIONS, corr, streams);
            }
            Command::CreateSuperStream { corr, name, partitions, binding_keys, arguments } => {
                let c = self.create_super_stream(&name, &partitions, &binding_keys, &arguments);
                self.respond(key::CREATE_SUPER_STREAM, corr, c);
            }
            Command::DeleteSuperStream { corr, name } => {
                let c = self.delete_super_stream(&name);
                self.respond(key::DELETE_SUPER_STREAM, corr, c);
            }
            Command::ExchangeCommandVersions { corr, versions } => {
                // The client reads deliver version 2 if it says so (RabbitMQ does not list
                // deliver among its own versions, and decides on the client's word alone).
                if versions.iter().any(|&(k, _, max)| k == key::DELIVER && max >= 2) {
                    self.deliver_v2 = true;
                }
                // RabbitMQ 3.13's list, in its order (clients index it by key). Publish goes to
                // version 2 (a filter value with each message), which tells clients that
                // filtering is supported (see `deliver`: chunks without a subscription's
                // values are passed over; clients filter what they get all the same).
                let versions = [
                    key::DECLARE_PUBLISHER,
                    key::PUBLISH,
                    key::QUERY_PUBLISHER_SEQUENCE,
                    key::DELETE_PUBLISHER,
                    key::SUBSCRIBE,
                    key::CREDIT,
                    key::STORE_OFFSET,
                    key::QUERY_OFFSET,
                    key::UNSUBSCRIBE,
                    key::CREATE,
                    key::DELETE,
                    key::METADATA,
                    key::CLOSE,
                    key::HEARTBEAT,
                    key::ROUTE,
                    key::PARTITIONS,
                    key::STREAM_STATS,
                    key::CREATE_SUPER_STREAM,
                    key::DELETE_SUPER_STREAM,
                ];
                put_response(&mut self.out, key::EXCHANGE_COMMAND_VERSIONS, corr, code::OK, |o| {
                    o.put_u32(versions.len() as u32);
                    for k in versions {
                        o.put_u16(k);
                        o.put_u16(1);
                        o.put_u16(if k == key::PUBLISH { 2 } else { 1 });
                    }
                });
            }
            Command::StreamStats { corr, stream } => {
                let found = if self.allowed(&stream, Perm::Read) { self.stream(&stream) } else { None };
                let c = match (&found, self.allowed(&stream, Perm::Read)) {
                    (_, false) => code::ACCESS_REFUSED,
                    (None, _) => code::STREAM_DOES_NOT_EXIST,
                    _ => code::OK,
                };
                let stats: Vec<(&str, i64)> = match found.as_ref().and_then(|q| q.stream.clone()) {
                    Some(s) => {
                        let (first, end) = s.bounds();
                        let (first, last) = if end > first { (first as i64, s.last_chunk() as i64) } else { (-1, -1) };
                        vec![("first_chunk_id", first), ("committed_chunk_id", last)]
                    }
                    None => Vec::new(),
                };
                put_response(&mut self.out, key::STREAM_STATS, corr, c, |o| {
                    o.put_u32(stats.len() as u32);
                    for (k, v) in stats {
                        put_string(o, k);
                        o.put_i64(v);
                    }
                });
            }
            Command::Unknown { key: k, .. } => {
                tracing::warn!(peer = %self.link.peer, "stream connection: unknown command {k:#06x}");
                self.close(code::UNKNOWN_FRAME, "unknown frame");
            }
            other => {
                tracing::warn!(peer = %self.link.peer, "stream connection: {} after open", other.name());
                self.close(code::UNKNOWN_FRAME, "unknown frame");
            }
        }
    }

    /// A route or partitions response: the streams, or "stream does not exist" for a super
    /// stream that is not there.
    fn streams_response(&mut self, k: u16, corr: u32, streams: Option<Vec<String>>) {
        let c = if streams.is_some() { code::OK } else { code::STREAM_DOES_NOT_EXIST };
        let streams = streams.unwrap_or_default();
        put_response(&mut self.out, k, corr, c, |o| {
            o.put_u32(streams.len() as u32);
            streams.iter().for_each(|s| put_string(o, s));
        });
    }

    fn subscribe(
        &mut self,
        corr: u32,
        id: u8,
        stream: String,
        offset: OffsetSpec,
        credit: u16,
        properties: &[(String, String)],
    ) {
        let sac = single_active::Properties::of(properties);
        let c = if !self.allowed(&stream, Perm::Read) {
            code::ACCESS_REFUSED
        } else if self.stream(&stream).is_none() {
            code::STREAM_DOES_NOT_EXIST
        } else if self.subscriptions.get(&id).is_some_and(|s| !s.is_finished()) {
            code::SUBSCRIPTION_ID_ALREADY_EXISTS
        } else if sac.single_active && sac.name.is_none() {
            // RabbitMQ: "a single active consumer must have a name".
            code::PRECONDITION_FAILED
        } else {
            code::OK
        };
        self.respond(key::SUBSCRIBE, corr, c);
        if c != code::OK {
            return;
        }
        let Some(queue) = self.stream(&stream) else { return };
        // A finished subscription of this id (its stream deleted) is replaced.
        self.remove_subscription(id);
        // The response goes first: deliveries (or the consumer update) follow it.
        self.flush();
        if let (true, Some(name)) = (sac.single_active, sac.name) {
            // Nothing is sent before it is active and its client has answered.
            let sub = deliver::parked(id, &queue, stream.clone(), credit, properties.to_vec());
            self.add_subscription(id, sub);
            self.join_group(id, &stream, name, sac.super_stream, offset);
            return;
        }
        let sub = deliver::start(self.deliver_start(id, stream, queue, offset, credit), properties.to_vec());
        self.add_subscription(id, sub);
    }

    /// A subscription starts: the management API lists it from now on.
    fn add_subscription(&mut self, id: u8, sub: Subscription) {
        if let Some(e) = &self.entry {
            e.set_stream_reader(id, Some(sub.card().clone()));
        }
        self.subscriptions.insert(id, sub);
    }

    /// Subscription `id` ends (unsubscribed, or its stream deleted).
    fn remove_subscription(&mut self, id: u8) -> bool {
        let Some(mut s) = self.subscriptions.remove(&id) else { return false };
        s.cancel();
        if let Some(e) = &self.entry {
            e.set_stream_reader(id, None);
        }
        self.leave_group(id);
        true
    }

    /// Creates a stream with the protocol's arguments, as RabbitMQ's stream manager maps
    /// them to queue arguments.
    fn create(&mut self, name: &str, arguments: &[(String, String)]) -> u16 {
        let name = name.replace(['\n', '\r'], "");
        if name.is_empty() || name.starts_with("amq.") || name.len() > 255 {
            return code::PRECONDITION_FAILED;
        }
        if !self.allowed(&name, Perm::Configure) {
            return code::ACCESS_REFUSED;
        }
        let mut args = FieldTable::new();
        args.insert("x-queue-type", FieldValue::string("stream"));
        for (k, v) in arguments {
            let number = || v.parse::<i64>().ok().map(FieldValue::I64);
            let value = match k.as_str() {
                "max-length-bytes" | "stream-max-segment-size-bytes" | "initial-cluster-size" => match number() {
                    Some(n) => n,
                    None => return code::PRECONDITION_FAILED,
                },
                "max-age" | "queue-leader-locator" => FieldValue::string(v),
                // RabbitMQ ignores the arguments it does not map.
                _ => continue,
            };
            args.insert(&format!("x-{k}"), value);
        }
        if args.get("x-initial-cluster-size").and_then(FieldValue::as_i64).is_some_and(|n| n <= 0) {
            return code::PRECONDITION_FAILED;
        }
        // Commands come after open, which set the vhost.
        let Some(vhost) = self.vhost.clone() else { return code::INTERNAL_ERROR };
        let existed = vhost.has_queue(&name);
        let d = QueueDeclaration {
            name: name.as_str().into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: args,
        };
        match vhost.declare_queue(&d, &self.actor()) {
            Ok(_) if existed => code::STREAM_ALREADY_EXISTS,
            Ok(_) => code::OK,
            Err(e) if e.code == crate::types::constants::PRECONDITION_FAILED => code::PRECONDITION_FAILED,
            Err(e) => {
                tracing::warn!("stream '{name}' not created: {}", e.text);
                code::INTERNAL_ERROR
            }
        }
    }

    fn delete(&mut self, name: &str) -> u16 {
        if !self.allowed(name, Perm::Configure) {
            return code::ACCESS_REFUSED;
        }
        let (Some(queue), Some(vhost)) = (self.stream(name), self.vhost.clone()) else {
            return code::STREAM_DOES_NOT_EXIST;
        };
        vhost.force_delete_queue(&queue, &self.actor());
        code::OK
    }

    /// A stream was deleted: its publishers and subscriptions on this connection go, and
    /// the client hears of it once (`metadata_update`, stream not available).
    fn stream_gone(&mut self, stream: &str) {
        let before = self.publishers.len() + self.subscriptions.len();
        self.publishers.retain(|_, p| p.stream != stream);
        let gone: Vec<u8> =
            self.subscriptions.iter().filter(|(_, s)| s.stream() == stream).map(|(id, _)| *id).collect();
        for id in gone {
            self.remove_subscription(id);
        }
        if self.publishers.len() + self.subscriptions.len() < before {
            deliver::metadata_update(&mut self.out, stream);
        }
    }

    fn metadata(&mut self, corr: u32, streams: &[String]) {
        let host = self.link.local.ip().to_string();
        let port = self.link.local.port() as u32;
        let found: Vec<bool> = streams.iter().map(|s| self.stream(s).is_some()).collect();
        let any = found.iter().any(|f| *f);
        put_frame(&mut self.out, key::METADATA | key::RESPONSE, |o| {
            o.put_u32(corr);
            // One broker: this node, where the client connected.
            o.put_u32(u32::from(any));
            if any {
                o.put_u16(0);
                put_string(o, &host);
                o.put_u32(port);
            }
            o.put_u32(streams.len() as u32);
            for (s, found) in streams.iter().zip(found) {
                put_string(o, s);
                if found {
                    o.put_u16(code::OK);
                    o.put_u16(0);
                } else {
                    o.put_u16(code::STREAM_DOES_NOT_EXIST);
                    o.put_u16(u16::MAX);
                }
                o.put_u32(0);
            }
        });
    }

    /// The connection ended: subscriptions stop, and it leaves the broker's list.
    fn end(&mut self) {
        for (_, mut s) in self.subscriptions.drain() {
            s.cancel();
        }
        if let Some(e) = &self.entry {
            e.mark_closed();
            self.shared.broker.unregister_connection(self.id);
        }
    }
}
