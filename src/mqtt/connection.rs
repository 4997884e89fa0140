//! One MQTT client's task: CONNECT and its login, then the packet loop (publishes into the
//! core, deliveries out of its subscription queues, acknowledgements, keep-alive), and at the
//! end the will and the session's cleanup. Subscriptions and the session's queues are in
//! `subscribe`, the two directions of a message in `message`.

use super::codec::{self, reason, Connect, DecodeError, Disconnect, Packet, Properties, V5};
use super::session::Session;
use super::Shared;
use crate::auth::grant::Grant;
use crate::broker::audit::{Actor, AuditEvent};
use crate::broker::connections::{bump, ChannelCard, ConnectionEntry};
use crate::broker::consumer::{ChannelFlow, ConnEvent, ConnectionSink, Consumer, Origin};
use crate::broker::message::QueuedMessage;
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::net::pending::PendingGuard;
use crate::net::read_buf::{ReadSize, READ_MIN};
use crate::net::writer::{Encoded, Outgoing, WriterHandle};
use crate::types::{FieldTable, FieldValue};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

mod message;
mod subscribe;

/// The exchange MQTT publishes to and subscribes through, as RabbitMQ's plugin by default.
const EXCHANGE: &str = "amq.topic";
/// The consumer tags of the QoS 0 and QoS 1 subscription queues.
const TAGS: [&str; 2] = ["mqtt-qos0", "mqtt-qos1"];

/// How long a client has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest packet taken before the login (RabbitMQ's `max_packet_size_unauthenticated`).
const MAX_UNAUTHENTICATED: usize = 65_536;
/// QoS 1 deliveries one client may hold unacknowledged. RabbitMQ's plugin takes 10; more
/// keeps a client on a distant link busy, and a client's own receive maximum lowers it.
const PREFETCH: u16 = 256;
/// The client's QoS 1 and 2 publishes the broker takes before their acknowledgements
/// (announced as MQTT 5's receive maximum; 3.1.1 clients are bounded by reading).
const RECEIVE_MAXIMUM: u16 = 1024;
/// Topic aliases an MQTT 5 client may set.
const TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// How long a publisher waits for a queue over its flow mark before looking again.
const FLOW_RECHECK: Duration = Duration::from_millis(100);

/// A delivery in flight to the client: the queue and consumer it came from (none for a
/// retained message), until its PUBACK.
pub(super) struct InFlight {
    origin: Option<(Arc<dyn Origin>, Arc<Consumer>)>,
    item: Option<QueuedMessage>,
}

/// A client's subscription queue (QoS 0 or 1) and its consumer on it.
pub(super) struct SubQueue {
    queue: Arc<Queue>,
    consumer: Arc<Consumer>,
    /// On a cluster node: its placement was proposed (see `subscribe::bind`).
    placed: bool,
}

pub(super) struct Conn {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    level: u8,
    client_id: String,
    user: String,
    vhost: Arc<VHost>,
    grant: Grant,
    actor: Actor,
    sink: Arc<ConnectionSink>,
    flow: Arc<ChannelFlow>,
    entry: Arc<ConnectionEntry>,
    card: Arc<ChannelCard>,
    session: Session<InFlight>,
    /// Encoded and not yet handed to the writer (large payloads as their own slices), and
    /// the delivery bytes it holds.
    out: Outgoing,
    charge: usize,
    /// Subscription queues by QoS, once declared.
    queues: [Option<SubQueue>; 2],
    /// Topic filters and the QoS granted to each.
    subscriptions: HashMap<String, u8>,
    /// On a cluster node: the last proposal of the SUBSCRIBE or UNSUBSCRIBE being handled,
    /// which its answer waits for.
    cluster_ticket: u64,
    /// The session ends with the connection (clean session, or MQTT 5 expiry 0).
    ends_with_connection: bool,
    session_expiry: u32,
    will: Option<codec::Will>,
    /// The largest packet the client takes (MQTT 5's maximum packet size).
    max_out: usize,
    /// The client's own receive maximum: QoS 1 deliveries it takes unacknowledged.
    prefetch: u16,
    durable: u64,
    resolved: u64,
    /// A queue this client published to is over its flow mark: read nothing for a while.
    queue_flow: Arc<tokio::sync::Notify>,
    flow_paused: bool,
    published: bool,
    /// DISCONNECT came (without MQTT 5's "with will"): no will is sent.
    graceful: bool,
    /// Why the broker ends the connection, when it does: an MQTT 5 DISCONNECT says it.
    closing: Option<(u8, String)>,
}

/// Reads bytes until `buf` holds a whole packet; None on end of stream or timeout.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
    level: u8,
) -> Option<Result<Packet, DecodeError>> {
    loop {
        if let Some(r) = next_packet(buf, max, level) {
            return Some(r);
        }
        buf.reserve(missing(buf).max(READ_MIN / 4));
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The bytes still to come of the packet `buf` begins with (0 if its header is not whole).
fn missing(buf: &[u8]) -> usize {
    match codec::fixed_header(buf) {
        Ok(Some((_, len, header))) => (header + len).saturating_sub(buf.len()),
        _ => 0,
    }
}

/// Cuts the next whole packet out of `buf`, if there is one.
fn next_packet(buf: &mut BytesMut, max: usize, level: u8) -> Option<Result<Packet, DecodeError>> {
    // Before the login only a CONNECT is valid: anything else is refused on its first byte,
    // without waiting for the rest of it.
    if level == 0 && buf.first().is_some_and(|&b| b != 0x10) {
        return Some(Err(DecodeError::protocol("the first packet is not a CONNECT")));
    }
    let (first, len, header) = match codec::fixed_header(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    if header + len > max {
        return Some(Err(DecodeError {
            reason: reason::PACKET_TOO_LARGE,
            text: format!("packet of {} bytes", header + len),
        }));
    }
    if buf.len() < header + len {
        return None;
    }
    let packet = buf.split_to(header + len).freeze();
    Some(codec::decode(first, packet.slice(header..), level))
}

/// Where a connection comes from and what carries it.
pub struct Link {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The TLS session's details, over TLS.
    pub tls: Option<crate::tls::PeerInfo>,
    /// MQTT over WebSocket (RabbitMQ's Web MQTT), rather than over TCP.
    pub web: bool,
}

/// Serves one MQTT connection to its end: its opening (the CONNECT and the login), then its
/// life. Each is a future of its own on the heap, and the opening's is freed once it is done:
/// a task is as large as its largest state, and an idle client should not carry the login's
/// for as long as it stays connected.
pub async fn serve<R, W>(
    rd: R,
    wr: W,
    link: Link,
    pending: PendingGuard,
    shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
) where
    R: AsyncRead + Unpin,
    W: crate::net::writer::Socket,
{
    let opened = Box::pin(open(rd, wr, link, pending, shutdown, shared)).await;
    if let Some((conn, io, shared, id)) = opened {
        Box::pin(run(conn, io, shared, id)).await
    }
}

/// Reads the CONNECT and logs the client in (answering CONNACK either way); what the
/// connection's life needs, if it goes on.
async fn open<R, W>(
    mut rd: R,
    wr: W,
    link: Link,
    pending: PendingGuard,
    shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Option<(Box<Conn>, Io<R>, Arc<Shared>, u64)>
where
    R: AsyncRead + Unpin,
    W: crate::net::writer::Socket,
{
    let peer = link.peer;
    // Small to start (idle clients are the common case), grown while a client sends a lot.
    let mut rbuf = BytesMut::with_capacity(READ_MIN);
    let read_size = ReadSize::default();
    let connect =
        match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut rbuf, MAX_UNAUTHENTICATED, 0)).await {
            Ok(Some(Ok(Packet::Connect(c)))) => c,
            Ok(Some(Err(e))) if e.reason == reason::UNSUPPORTED_PROTOCOL_VERSION => {
                // Answered in 3.1.1's form, which every version reads.
                let mut out = BytesMut::new();
                codec::encode(
                    &mut out,
                    &Packet::ConnAck(codec::ConnAck {
                        session_present: false,
                        code: e.reason,
                        properties: Properties::default(),
                    }),
                    codec::V311,
                );
                let mut wr = wr;
                let _ = tokio::io::AsyncWriteExt::write_all(&mut wr, &out).await;
                tracing::info!(%peer, "MQTT connection refused: {e}");
                return None;
            }
            Ok(Some(Ok(p))) => {
                tracing::info!(%peer, "MQTT connection closed: {} before CONNECT", p.name());
                return None;
            }
            Ok(Some(Err(e))) => {
                tracing::info!(%peer, "MQTT connection closed: malformed CONNECT: {e}");
                return None;
            }
            _ => return None,
        };
    let id = shared.broker.next_id();
    let sink = ConnectionSink::new(id);
    let (writer, writer_task) = WriterHandle::spawn(wr, sink.clone());
    let level = connect.level;
    // Boxed: the login's state is needed once, and would otherwise make every connection's task larger.
    let conn = match Box::pin(Conn::login(&shared, *connect, id, link, sink.clone(), &writer)).await {
        Ok(c) => c,
        Err((code, why)) => {
            tracing::warn!(%peer, "MQTT login refused: {why}");
            let mut out = BytesMut::new();
            codec::encode(
                &mut out,
                &Packet::ConnAck(codec::ConnAck {
                    session_present: false,
                    code,
                    properties: reason_string(level, &why),
                }),
                level,
            );
            if let Some(d) = shared.broker.login_failed(peer.ip()) {
                tokio::time::sleep(d).await;
            }
            writer.send(Encoded::One(out.freeze()), 0);
            writer.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
            return None;
        }
    };
    drop(pending);
    Some((conn, Io { rd, rbuf, read_size, writer, writer_task, sink, shutdown }, shared, id))
}

/// What a logged-in connection reads from and writes to.
struct Io<R> {
    rd: R,
    rbuf: BytesMut,
    read_size: ReadSize,
    writer: WriterHandle,
    writer_task: tokio::task::JoinHandle<()>,
    sink: Arc<ConnectionSink>,
    shutdown: watch::Receiver<bool>,
}

/// Serves a logged-in connection to its end.
async fn run<R: AsyncRead + Unpin>(mut conn: Box<Conn>, io: Io<R>, shared: Arc<Shared>, id: u64) {
    let Io { mut rd, mut rbuf, mut read_size, writer, writer_task, sink, mut shutdown } = io;
    let ended = shared.clients.take_over(&conn.vhost.name, &conn.client_id, id, conn.entry.clone()).await;
    conn.resume_session();

    let mut durable = shared.durable.clone();
    let mut cluster = shared.broker.quorum_host().map(|h| h.resolved());
    let mut alarm = shared.alarm.clone();
    let keep_alive = conn.keep_alive_window();
    let mut last_recv = Instant::now();
    let max_in = max_packet(&shared);
    loop {
        // The packets read: also those that came with the CONNECT, and those left when a
        // queue's flow paused the connection.
        while conn.closing.is_none() && !conn.flow_paused {
            match next_packet(&mut rbuf, max_in, conn.level) {
                None => break,
                Some(Ok(p)) => conn.packet(p),
                Some(Err(e)) => conn.closing = Some((e.reason, e.text)),
            }
        }
        conn.send_ready_acks();
        conn.flush(&writer);
        if conn.graceful || conn.closing.is_some() {
            break;
        }
        // Room for half a read at least, and for the rest of a packet begun (its size was
        // checked against the maximum when its header came in).
        let need = missing(&rbuf);
        if read_size.short(&rbuf, need) {
            read_size.make_room(&mut rbuf, need);
        }
        let backlogged = writer.backlogged();
        let waits = conn.session.waits_for_acks();
        let blocked = conn.published && alarm.borrow().is_some();
        let flow_paused = conn.flow_paused;
        let queue_flow = conn.queue_flow.clone();
        let entry = conn.entry.clone();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                conn.closing = Some((reason::SERVER_SHUTTING_DOWN, "broker shutting down".into()));
            }
            _ = entry.close_requested.notified() => {
                let why = entry.close_reason().unwrap_or_default();
                let code = if why.starts_with("session taken over") { reason::SESSION_TAKEN_OVER } else { reason::ADMINISTRATIVE_ACTION };
                conn.closing = Some((code, why));
            }
            _ = writer.drained.notified(), if backlogged => {}
            r = async { match durable.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } }, if waits => {
                if r.is_ok() {
                    if let Some(rx) = durable.as_mut() {
                        conn.durable = *rx.borrow_and_update();
                    }
                }
            }
            r = async { match cluster.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } }, if waits => {
                if r.is_ok() {
                    if let Some(rx) = cluster.as_mut() {
                        conn.resolved = *rx.borrow_and_update();
                    }
                }
            }
            _ = tokio::time::timeout(FLOW_RECHECK, queue_flow.notified()), if flow_paused => {
                conn.flow_paused = false;
            }
            r = alarm.changed() => {
                if r.is_err() {
                    // The alarm monitor is gone: the broker is stopping.
                    conn.closing = Some((reason::SERVER_SHUTTING_DOWN, "broker shutting down".into()));
                }
            }
            _ = sink.notified(), if !backlogged => {
                for ev in sink.take_events() {
                    conn.event(ev);
                }
            }
            r = rd.read_buf(&mut rbuf), if !backlogged && !blocked && !flow_paused => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        read_size.read(n);
                        last_recv = Instant::now();
                        bump(&conn.entry.recv_oct, n as u64);
                        bump(&conn.entry.recv_cnt, 1);
                    }
                }
            }
            _ = sleep_until(last_recv + keep_alive.unwrap_or(Duration::from_secs(3600))), if keep_alive.is_some() => {
                conn.closing = Some((reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout".into()));
            }
        }
    }
    if let Some((code, why)) = conn.closing.take() {
        tracing::info!(peer = %conn.peer, client_id = %conn.client_id, "MQTT connection closed: {why}");
        if conn.level == V5 {
            conn.send(&Packet::Disconnect(Disconnect { code, properties: reason_string(V5, &why) }));
        }
    }
    conn.end();
    shared.clients.release(&conn.vhost.name, &conn.client_id, id);
    drop(ended);
    // Deliveries that raced with the cleanup go back to their queues.
    for ev in sink.take_events() {
        if let ConnEvent::Deliver(d) = ev {
            sink.return_undelivered(d);
        }
    }
    conn.flush(&writer);
    writer.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
}

/// MQTT 5's reason string property, for a refusal's text.
fn reason_string(level: u8, why: &str) -> Properties {
    if level == V5 && !why.is_empty() {
        Properties { reason_string: Some(why.to_string()), ..Default::default() }
    } else {
        Properties::default()
    }
}

/// `vhost:user` picks the vhost, as RabbitMQ's plugin reads a user name (split at the last
/// colon); without one, the default vhost.
fn vhost_and_user(name: &str) -> (String, String) {
    match name.rsplit_once(':') {
        Some((vhost, user)) => (vhost.to_string(), user.to_string()),
        None => ("/".to_string(), name.to_string()),
    }
}

impl Conn {
    /// Checks a CONNECT: protocol rules, credentials, vhost, limits and access, and the
    /// client identifier. Err is the reason code CONNACK refuses with, and why.
    async fn login(
        shared: &Arc<Shared>,
        c: Connect,
        id: u64,
        link: Link,
        sink: Arc<ConnectionSink>,
        writer: &WriterHandle,
    ) -> Result<Box<Conn>, (u8, String)> {
        let broker = &shared.broker;
        let Link { peer, local, tls, web } = link;
        let v5 = c.level == V5;
        let mut assigned = None;
        let client_id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                return Err((
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    "an empty client identifier needs a clean session".into(),
                ));
            }
            let generated = format!("hare-{:016x}", rand::random::<u64>());
            assigned = Some(generated.clone());
            generated
        } else {
            c.client_id.clone()
        };
        let loopback = peer.ip().is_loopback();
        let (vhost_name, user, mechanism) =
            match (&c.username, &c.password, tls.as_ref().and_then(|t| t.certificate_name.clone())) {
                (Some(name), Some(password), _) => {
                    let (vhost, user) = vhost_and_user(name);
                    let password = String::from_utf8_lossy(password).into_owned();
                    if broker.authenticate(&user, &password, loopback, "PLAIN").is_err() {
                        return Err((
                            reason::BAD_USER_NAME_OR_PASSWORD,
                            format!("authentication failed for user '{user}'"),
                        ));
                    }
                    (vhost, user, "PLAIN")
                }
                (None, None, Some(cert)) => {
                    if broker.authenticate_external(&cert).is_err() {
                        return Err((
                            reason::BAD_USER_NAME_OR_PASSWORD,
                            format!("no user '{cert}' for the client certificate"),
                        ));
                    }
                    ("/".to_string(), cert, "EXTERNAL")
                }
                (Some(_), None, _) => return Err((reason::BAD_USER_NAME_OR_PASSWORD, "no password provided".into())),
                _ => return Err((reason::BAD_USER_NAME_OR_PASSWORD, "no credentials provided".into())),
            };
        broker.login_succeeded(peer.ip());
        let Some(vhost) = broker.vhost(&vhost_name) else {
            return Err((reason::BAD_USER_NAME_OR_PASSWORD, format!("virtual host '{vhost_name}' does not exist")));
        };
        if let Err(r) = broker.check_connection_limits(&user, &vhost.name) {
            return Err((reason::QUOTA_EXCEEDED, r.text));
        }
        let grant = broker.grant(&user, &vhost.name);
        if !grant.has_vhost_access() {
            return Err((reason::NOT_AUTHORIZED, grant.vhost_refused().text));
        }
        let actor =
            Actor { user: user.as_str().into(), source: Some(peer.to_string().into()), via: "mqtt", connection: id };
        let version = match (web, c.level) {
            (false, codec::V31) => "MQTT 3.1",
            (false, codec::V311) => "MQTT 3.1.1",
            (false, _) => "MQTT 5.0",
            (true, codec::V31) => "Web MQTT 3.1",
            (true, codec::V311) => "Web MQTT 3.1.1",
            (true, _) => "Web MQTT 5.0",
        };
        let mut client_properties = FieldTable::new();
        client_properties.insert("product", FieldValue::string("MQTT client"));
        client_properties.insert("client_id", FieldValue::string(&client_id));
        let entry = ConnectionEntry::new(
            id,
            peer,
            local,
            user.clone(),
            vhost.name.clone(),
            client_properties,
            (0, 1, c.keep_alive),
            crate::broker::connections::ConnectionDetails {
                protocol: version,
                auth_mechanism: mechanism.to_string(),
                tls: tls.as_ref().map(|t| t.details.clone()),
                unwritten: writer.unwritten.clone(),
            },
        );
        let card = ChannelCard::new(1);
        entry.set_channels(vec![card.clone()]);
        broker.register_connection(entry.clone());
        let audit = broker.audit();
        if audit.is_on() {
            audit.emit(
                AuditEvent::new("connection.created", &actor, Some(&vhost.name))
                    .with("name", entry.name.as_str())
                    .with("protocol", version)
                    .with("client_id", client_id.as_str())
                    .with("ssl", tls.is_some()),
            );
        }
        tracing::info!(%peer, user, vhost = %vhost.name, client_id, "{version} connection open");
        let session_expiry = if v5 {
            c.properties.session_expiry.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let mut conn = Box::new(Conn {
            shared: shared.clone(),
            id,
            peer,
            level: c.level,
            client_id,
            user,
            vhost,
            grant,
            actor,
            sink,
            flow: Arc::new(ChannelFlow::default()),
            entry,
            card,
            session: Session::new(if v5 { TOPIC_ALIAS_MAXIMUM } else { 0 }),
            out: Outgoing::default(),
            charge: 0,
            queues: [None, None],
            subscriptions: HashMap::new(),
            cluster_ticket: 0,
            ends_with_connection: session_expiry == 0,
            session_expiry,
            will: c.will,
            max_out: c.properties.maximum_packet_size.map_or(codec::MAX_REMAINING, |m| m as usize),
            prefetch: c.properties.receive_maximum.map_or(PREFETCH, |m| m.min(PREFETCH)),
            durable: shared.durable.as_ref().map_or(u64::MAX, |rx| *rx.borrow()),
            resolved: broker.quorum_host().map_or(0, |h| *h.resolved().borrow()),
            queue_flow: Arc::new(tokio::sync::Notify::new()),
            flow_paused: false,
            published: false,
            graceful: false,
            closing: None,
        });
        let session_present = conn.open_session(c.clean_start);
        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_id = assigned;
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
            properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
            properties.maximum_packet_size = Some(max_packet(shared) as u32);
            properties.subscription_identifier_available = Some(0);
            properties.shared_subscription_available = Some(0);
            properties.maximum_qos = None;
        }
        conn.send(&Packet::ConnAck(codec::ConnAck { session_present, code: reason::SUCCESS, properties }));
        Ok(conn)
    }

    /// How long the client may stay silent: one and a half times its keep-alive.
    fn keep_alive_window(&self) -> Option<Duration> {
        let k = self.entry.heartbeat;
        (k > 0).then(|| Duration::from_millis(k as u64 * 1500))
    }

    fn send(&mut self, p: &Packet) {
        codec::encode(&mut self.out.buf, p, self.level);
    }

    fn flush(&mut self, writer: &WriterHandle) {
        if self.out.is_empty() {
            return;
        }
        let encoded = self.out.take();
        bump(&self.entry.send_oct, encoded.len() as u64);
        bump(&self.entry.send_cnt, 1);
        writer.send(encoded, std::mem::take(&mut self.charge));
    }

    /// Sends the acknowledgements whose publishes (or subscriptions) are now safe.
    fn send_ready_acks(&mut self) {
        for a in self.session.ready_acks(self.durable, self.resolved) {
            self.out.buf.extend_from_slice(&a.reply);
        }
    }

    fn packet(&mut self, p: Packet) {
        match p {
            Packet::Publish(p) => self.publish(p),
            Packet::PubAck(a) => self.acked(a.packet_id),
            Packet::PubRel(a) => {
                let code = if self.session.released(a.packet_id) {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                let code = if self.level == V5 { code } else { reason::SUCCESS };
                self.send(&Packet::PubComp(codec::Ack {
                    packet_id: a.packet_id,
                    code,
                    properties: Properties::default(),
                }));
            }
            // The broker delivers at most QoS 1, so PUBREC and PUBCOMP answer nothing of its.
            Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(s) => self.subscribe(s),
            Packet::Unsubscribe(u) => self.unsubscribe(u),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                self.graceful = true;
                if d.code == reason::DISCONNECT_WITH_WILL {
                    self.graceful = false;
                    self.closing = Some((reason::SUCCESS, "the client disconnected with its will".into()));
                }
            }
            Packet::Connect(_) => self.closing = Some((reason::PROTOCOL_ERROR, "a second CONNECT".into())),
            Packet::Auth(_) => {
                self.closing =
                    Some((reason::BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported".into()))
            }
            other => self.closing = Some((reason::PROTOCOL_ERROR, format!("{} from a client", other.name()))),
        }
    }

    /// The client's PUBACK: the delivery is settled with its queue.
    fn acked(&mut self, packet_id: u16) {
        let Some(f) = self.session.acked(packet_id) else { return };
        if let (Some((origin, consumer)), Some(item)) = (f.origin, f.item) {
            consumer.settle(item.message.size());
            origin.acked(std::slice::from_ref(&item));
            bump(&self.card.ack, 1);
        }
    }

    /// What a queue sent this connection.
    fn event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Deliver(d) => self.deliver(d),
            ConnEvent::ConsumerCancelled { consumer_tag, .. } => {
                // The queue was deleted (by an operator, say): the subscriptions on it are gone.
                let qos = usize::from(consumer_tag.as_str() == TAGS[1]);
                self.queues[qos] = None;
                self.subscriptions.retain(|_, q| usize::from(*q) != qos);
            }
        }
    }

    /// The connection ends: the will, unless it disconnected cleanly; consumers cancelled,
    /// what was in flight back to its queues (a session that ends with the connection goes
    /// with its auto-delete queues); off the broker's list.
    fn end(&mut self) {
        if !self.graceful {
            if let Some(will) = self.will.take() {
                self.send_will(will);
            }
        }
        for f in self.session.take_in_flight() {
            if let (Some((origin, consumer)), Some(item)) = (f.origin, f.item) {
                consumer.settle(item.message.size());
                origin.requeued(vec![item]);
            }
        }
        for (qos, sq) in self.queues.iter_mut().enumerate() {
            if let Some(sq) = sq.take() {
                // The auto-delete queues go once their consumer does; a durable one too when the
                // session ends with the connection.
                let last = sq.queue.remove_consumer(self.id, 1, &sq.consumer.tag);
                if last || (qos == 1 && self.ends_with_connection) {
                    self.vhost.force_delete_queue(&sq.queue, &self.actor);
                }
            }
        }
        self.entry.mark_closed();
        self.shared.broker.unregister_connection(self.id);
        let audit = self.shared.broker.audit();
        if audit.is_on() {
            audit.emit(
                AuditEvent::new("connection.closed", &self.actor, Some(&self.vhost.name))
                    .with("name", self.entry.name.as_str())
                    .with("client_id", self.client_id.as_str()),
            );
        }
    }
}

/// The largest packet a client may send once logged in: a message of the largest size
/// allowed, with room for its topic and properties.
pub(super) fn max_packet(shared: &Shared) -> usize {
    (shared.config.max_message_size as usize).saturating_add(65_536).min(codec::MAX_REMAINING)
}
