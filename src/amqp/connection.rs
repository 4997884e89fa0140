//! One AMQP connection: the handshake, the frame loop, heartbeats, channel bookkeeping,
//! connection-level errors and shutdown. The handshake's methods are in `handshake`, channel
//! methods in [`super::channel`].

use super::channel::Channel;
use super::context::ConnCtx;
use super::output::Output;
use crate::amqp::frame::{Frame, PROTOCOL_HEADER};
use crate::amqp::method::*;
use crate::amqp::reader::FrameReader;
use crate::broker::audit::{Actor, AuditEvent};
use crate::broker::consumer::{ConnEvent, ConnectionSink};
use crate::broker::stats::Churn;
use crate::broker::FastMap;
use crate::broker::{AmqpError, Broker, Scope};
use crate::config::Config;
use crate::net::read_buf::{ReadSize, READ_MIN};
use crate::net::writer::WriterHandle;
use crate::types::codec::CodecError;
use crate::types::constants::CONNECTION_FORCED;
use crate::types::{FieldTable, FieldValue, LongStr, ShortStr};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

mod handshake;

/// How long a peer has to send the protocol header and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a publisher paused by a queue's flow control waits before looking again.
const FLOW_RECHECK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok; `framing_broken` means the input
    /// can no longer be parsed and is discarded.
    Closing {
        framing_broken: bool,
    },
    /// We answered the client's connection.close with close-ok. As RabbitMQ, the socket stays
    /// open until the client drops it (or CLOSE_TIMEOUT passes), so the close-ok is read before
    /// the socket ends, and another connection.close sent meanwhile (several threads of one
    /// client closing at once) gets a close-ok of its own.
    Draining,
    Closed,
}

pub struct Connection {
    state: State,
    peer: SocketAddr,
    local: SocketAddr,
    /// Set on a TLS connection: the protocol and the client certificate's name.
    tls: Option<crate::tls::PeerInfo>,
    /// A login failed from a source that keeps failing: its refusal waits this long.
    login_delay: Option<Duration>,
    /// What the client said of itself in start-ok (product, version, platform...).
    client_properties: FieldTable,
    /// The SASL mechanism of its start-ok.
    mechanism: String,
    /// The writer's count of bytes not yet written, for the connection's card.
    unwritten: Arc<std::sync::atomic::AtomicUsize>,
    /// This connection's card in the broker's list, once open.
    entry: Option<Arc<crate::broker::connections::ConnectionEntry>>,
    frame_max: usize,
    /// Cuts frames out of the read buffer; passes large body frames on in pieces.
    reader: FrameReader,
    channel_max: u16,
    heartbeat: u16,
    channels: FastMap<u16, Channel>,
    /// Held until the login succeeds (see [`crate::net::pending`]).
    pending: Option<crate::net::pending::PendingGuard>,
    ctx: ConnCtx,
}

/// What a connection shares with the others of its listener.
pub struct Shared {
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub shutdown: watch::Receiver<bool>,
    pub durable: Option<watch::Receiver<u64>>,
    pub alarm: watch::Receiver<Option<String>>,
    /// Counts this connection against its source's limit of connections not yet logged in,
    /// until its login succeeds.
    pub pending: Option<crate::net::pending::PendingGuard>,
}

/// Serves one accepted plain TCP socket until it closes or the broker shuts down.
pub async fn serve(stream: TcpStream, shared: Shared) {
    let Ok(peer) = stream.peer_addr() else { return };
    let Ok(local) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    serve_io(rd, wr, peer, local, None, shared).await
}

/// Serves a TLS connection, its handshake done.
pub async fn serve_tls(stream: tokio_rustls::server::TlsStream<TcpStream>, info: crate::tls::PeerInfo, shared: Shared) {
    let Ok(peer) = stream.get_ref().0.peer_addr() else { return };
    let Ok(local) = stream.get_ref().0.local_addr() else { return };
    let (rd, wr) = tokio::io::split(stream);
    serve_io(rd, wr, peer, local, Some(info), shared).await
}

/// The connection's life, over any byte stream (plain TCP halves, or TLS).
async fn serve_io<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<crate::tls::PeerInfo>,
    shared: Shared,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: crate::net::writer::Socket,
{
    let Shared { broker, config, mut shutdown, mut durable, mut alarm, pending } = shared;
    let mut header = [0u8; 8];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, rd.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if &header != PROTOCOL_HEADER {
        tracing::info!(%peer, "wrong protocol header, answering with AMQP 0-9-1's");
        let _ = wr.write_all(PROTOCOL_HEADER).await;
        let _ = wr.shutdown().await;
        return;
    }
    let id = broker.next_id();
    // On a cluster node: the watermark of proposals committed and applied.
    let mut cluster = broker.quorum_host().map(|h| h.resolved());
    let sink = ConnectionSink::new(id);
    let (writer, writer_task) = WriterHandle::spawn(wr, sink.clone());
    let mut conn = Connection {
        state: State::AwaitStartOk,
        peer,
        local,
        tls,
        login_delay: None,
        client_properties: FieldTable::new(),
        mechanism: String::new(),
        unwritten: writer.unwritten.clone(),
        entry: None,
        frame_max: config.frame_max as usize,
        reader: FrameReader::default(),
        channel_max: config.channel_max,
        heartbeat: 0,
        channels: FastMap::default(),
        pending,
        ctx: ConnCtx {
            id,
            broker,
            config: config.clone(),
            vhost: None,
            sink: sink.clone(),
            out: Output::new(config.frame_max as usize),
            exclusive_queues: Vec::new(),
            cancel_notify: false,
            user: String::new(),
            actor: Actor { user: "".into(), source: Some(peer.to_string().into()), via: "amqp", connection: id },
            grant: crate::auth::grant::Grant::compile(&Default::default(), "", "", 0),
            durable: durable.as_mut().map_or(u64::MAX, |rx| *rx.borrow_and_update()),
            cluster_resolved: cluster.as_mut().map_or(0, |rx| *rx.borrow_and_update()),
            blocked_notify: false,
            blocked: alarm.borrow_and_update().clone(),
            is_publisher: false,
            blocked_sent: false,
            flow: Arc::new(tokio::sync::Notify::new()),
            flow_paused: false,
        },
    };
    tracing::debug!(%peer, id, "connection accepted");
    conn.send_start();
    conn.flush(&writer);

    // Small to start (idle connections are the common case), grown while a peer sends a lot.
    let mut rbuf = BytesMut::with_capacity(READ_MIN);
    let mut read_size = ReadSize::default();
    let mut last_recv = Instant::now();
    let mut deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut heartbeat_at = Instant::now() + Duration::from_secs(3600);
    // Frames left in `rbuf` because a resource alarm paused the connection mid-buffer.
    let mut held_back = false;
    loop {
        let backlogged = writer.backlogged();
        // The audit log is far behind (its disk stalled): events wait in sockets, not memory.
        let audit_behind = conn.ctx.broker.audit().backlogged();
        let waits_for_disk = conn.channels.values().any(Channel::waits_for_disk);
        let waits_for_cluster = cluster.is_some() && conn.channels.values().any(Channel::waits_for_cluster);
        // A blocked publisher is not read from: its publishes wait in its socket.
        let paused = conn.alarm_paused();
        let flow_paused = conn.ctx.flow_paused && conn.state == State::Open;
        let flow = conn.ctx.flow.clone();
        let close_entry = conn.entry.clone();
        // Room for half a read at least, and for the rest of a frame begun (its size was
        // checked against frame_max when its header came in).
        if read_size.short(&rbuf, conn.reader.missing(&rbuf)) {
            // A large body frame begun goes on as it is rather than into the next buffer.
            conn.split_partial_body(&mut rbuf);
            let need = conn.reader.missing(&rbuf);
            read_size.make_room(&mut rbuf, need);
        }
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !matches!(conn.state, State::Closing { .. } | State::Draining | State::Closed) => {
                conn.raise(0, AmqpError::new(CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'"));
            }
            _ = writer.drained.notified(), if backlogged => {}
            _ = conn.ctx.broker.audit().caught_up(), if audit_behind => {}
            r = async { match durable.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } }, if waits_for_disk => {
                if r.is_ok() {
                    if let Some(rx) = durable.as_mut() {
                        conn.ctx.durable = *rx.borrow_and_update();
                    }
                    conn.release_waiting();
                }
            }
            r = async { match cluster.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } }, if waits_for_cluster => {
                if r.is_ok() {
                    if let Some(rx) = cluster.as_mut() {
                        conn.ctx.cluster_resolved = *rx.borrow_and_update();
                    }
                    conn.release_waiting();
                }
            }
            // Re-checked after 100 ms at most, whatever happened to the queue meanwhile.
            _ = tokio::time::timeout(FLOW_RECHECK, flow.notified()), if flow_paused => {
                conn.ctx.flow_paused = false;
            }
            _ = async { match &close_entry { Some(e) => e.close_requested.notified().await, None => std::future::pending().await } } => {
                if let Some(reason) = close_entry.as_ref().and_then(|e| e.close_reason()) {
                    conn.raise(0, AmqpError::new(CONNECTION_FORCED, reason));
                }
            }
            r = alarm.changed() => {
                if r.is_ok() {
                    let now = alarm.borrow_and_update().clone();
                    conn.alarm_changed(now);
                }
            }
            _ = sink.notified(), if !backlogged => {
                for ev in sink.take_events() {
                    conn.handle_event(ev);
                }
            }
            r = rd.read_buf(&mut rbuf), if !backlogged && !paused && !flow_paused && !audit_behind => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        read_size.read(n);
                        last_recv = Instant::now();
                        if let Some(e) = &conn.entry {
                            crate::broker::connections::bump(&e.recv_oct, n as u64);
                            crate::broker::connections::bump(&e.recv_cnt, 1);
                        }
                        held_back = conn.process(&mut rbuf);
                        if let Some(d) = conn.login_delay.take() {
                            // Only this connection waits: password guessing slows down.
                            tokio::time::sleep(d).await;
                        }
                    }
                }
            }
            _ = sleep_until(heartbeat_at), if conn.heartbeat > 0 && conn.state == State::Open => {
                let interval = Duration::from_secs(conn.heartbeat as u64);
                if paused {
                    // As in RabbitMQ, a blocked connection is not expected to be heard from.
                    last_recv = Instant::now();
                }
                if last_recv.elapsed() > interval * 2 {
                    tracing::warn!(peer = %conn.peer, "missed heartbeats from client, timeout: {}s", conn.heartbeat);
                    break;
                }
                if !writer.wrote.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    conn.ctx.out.heartbeat();
                    conn.flush(&writer);
                    // Our own heartbeat does not count as traffic for the next tick.
                    writer.wrote.store(false, std::sync::atomic::Ordering::Release);
                }
                heartbeat_at = Instant::now() + interval / 2;
            }
            _ = sleep_until(deadline), if conn.state != State::Open => {
                tracing::info!(peer = %conn.peer, "closing connection: handshake or close timed out");
                break;
            }
        }
        if held_back && !conn.alarm_paused() {
            // The alarm cleared: the frames read before it was noticed run now, without
            // waiting for the peer to send more.
            held_back = conn.process(&mut rbuf);
        }
        conn.flush(&writer);
        match conn.state {
            State::Closed => break,
            State::Closing { .. } | State::Draining if deadline > Instant::now() + CLOSE_TIMEOUT => {
                deadline = Instant::now() + CLOSE_TIMEOUT
            }
            State::Open
                if conn.heartbeat > 0 && heartbeat_at > Instant::now() + Duration::from_secs(conn.heartbeat as u64) =>
            {
                heartbeat_at = Instant::now() + Duration::from_secs(conn.heartbeat as u64) / 2;
            }
            State::Open => deadline = Instant::now() + Duration::from_secs(3600),
            _ => {}
        }
    }
    conn.cleanup();
    conn.unregister();
    // Deliveries that raced with the cleanup go back to their queues.
    for ev in sink.take_events() {
        if let ConnEvent::Deliver(d) = ev {
            Channel::return_undelivered(&conn.ctx, d);
        }
    }
    conn.flush(&writer);
    writer.close();
    if tokio::time::timeout(Duration::from_secs(5), writer_task).await.is_err() {
        tracing::debug!(peer = %conn.peer, "writer did not finish in time");
    }
    tracing::debug!(peer = %conn.peer, id, "connection closed");
}

impl Connection {
    /// Takes the connection off the broker's list (once), with its audit event.
    fn unregister(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.ctx.broker.unregister_connection(self.ctx.id);
            let audit = self.ctx.broker.audit();
            if audit.is_on() {
                audit.emit(
                    AuditEvent::new("connection.closed", &self.ctx.actor, Some(&entry.vhost))
                        .with("name", entry.name.as_str()),
                );
            }
        }
    }

    /// Answers the client's connection.close: everything is released, close-ok goes out, and
    /// the socket waits for the client to drop it (see [`State::Draining`]).
    fn closed_by_client(&mut self) {
        self.cleanup();
        self.unregister();
        self.ctx.out.method(0, ConnectionCloseOk {});
        self.state = State::Draining;
    }

    fn flush(&mut self, writer: &WriterHandle) {
        if !self.ctx.out.is_empty() {
            let bytes = self.ctx.out.take();
            if let Some(e) = &self.entry {
                crate::broker::connections::bump(&e.send_oct, bytes.len() as u64);
                crate::broker::connections::bump(&e.send_cnt, 1);
            }
            writer.send(bytes, std::mem::take(&mut self.ctx.out.charge));
        }
    }

    /// Handles every whole frame in `rbuf`, or stops early, leaving the rest in `rbuf`,
    /// once a resource alarm blocks this connection as a publisher; returns whether it did.
    /// As RabbitMQ's reader, a blocked publisher's frames already read wait with the ones
    /// still in its socket, so one read of many publishes does not slip past the alarm.
    fn process(&mut self, rbuf: &mut BytesMut) -> bool {
        let mut held_back = false;
        loop {
            match self.state {
                State::Closed => return false,
                State::Closing { framing_broken: true } => {
                    rbuf.clear();
                    return false;
                }
                _ => {}
            }
            match self.reader.next(rbuf, self.frame_max) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    if let Err((channel, e)) = self.handle_frame(frame) {
                        self.raise(channel, e);
                    }
                    if self.alarm_paused() && !rbuf.is_empty() {
                        held_back = true;
                        break;
                    }
                }
                Err(e) => {
                    self.raise(0, AmqpError::frame_error(e.to_string()));
                    self.state = State::Closing { framing_broken: true };
                    rbuf.clear();
                    return false;
                }
            }
        }
        self.release_waiting();
        self.notify_blocking();
        held_back
    }

    /// Passes the part read of a large body frame that `rbuf` has no room to complete on to
    /// its channel, instead of copying it into the next buffer (see `amqp::reader`).
    fn split_partial_body(&mut self, rbuf: &mut BytesMut) {
        if self.state != State::Open || self.alarm_paused() {
            return;
        }
        let channels = &self.channels;
        let accept = |c: u16, size: usize| channels.get(&c).is_some_and(|ch| !ch.closing && ch.accepts_body(size));
        if let Some(piece) = self.reader.split_partial_body(rbuf, self.frame_max, accept) {
            if let Err((channel, e)) = self.handle_frame(piece) {
                self.raise(channel, e);
            }
        }
    }

    /// A resource alarm is raised and this connection has published: it is not read from.
    fn alarm_paused(&self) -> bool {
        self.ctx.blocked.is_some() && self.ctx.is_publisher && self.state == State::Open
    }

    /// Sends confirms and held replies (commit-ok, durable declare-ok...) that are now
    /// durable, then runs the frames that waited behind them.
    fn release_waiting(&mut self) {
        let failing = self.ctx.broker.storage_failure().is_some();
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            let Some(ch) = self.channels.get_mut(&id) else { continue };
            ch.flush_confirms(&mut self.ctx, failing);
            match ch.release_held(&mut self.ctx) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.raise(id, e);
                    continue;
                }
            }
            let stash = std::mem::take(&mut ch.stash);
            for frame in stash {
                if let Err((channel, e)) = self.handle_frame(frame) {
                    self.raise(channel, e);
                }
            }
        }
    }

    /// Sends the error to the peer: channel.close for a channel error, else connection.close.
    fn raise(&mut self, channel: u16, e: AmqpError) {
        let text: ShortStr = e.reply_text().into();
        if e.scope == Scope::Channel && channel != 0 {
            tracing::debug!(peer = %self.peer, channel, "channel error: {text}");
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.close(&mut self.ctx);
            }
            self.ctx.out.method(
                channel,
                ChannelClose { reply_code: e.code, reply_text: text, class_id: e.class_id, method_id: e.method_id },
            );
            return;
        }
        if matches!(self.state, State::Closing { .. } | State::Draining | State::Closed) {
            return;
        }
        if e.code == CONNECTION_FORCED {
            tracing::info!(peer = %self.peer, "closing connection: {text}");
        } else {
            tracing::warn!(peer = %self.peer, "connection error: {text}");
        }
        self.ctx.out.method(
            0,
            ConnectionClose { reply_code: e.code, reply_text: text, class_id: e.class_id, method_id: e.method_id },
        );
        self.cleanup();
        if let Some(entry) = &self.entry {
            entry.mark_closed();
        }
        self.state = State::Closing { framing_broken: false };
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), (u16, AmqpError)> {
        // A channel waiting for a reply to be durable takes no frames meanwhile.
        if let Some(ch) = self.channels.get_mut(&frame.channel()) {
            if ch.is_holding() && !ch.closing {
                ch.stash.push_back(frame);
                return Ok(());
            }
        }
        if let State::Closing { .. } | State::Draining = self.state {
            // As RabbitMQ's reader once closing: only channel 0's close and close-ok count.
            if let Frame::Method(0, payload) = frame {
                match Method::decode(payload) {
                    Ok(Method::ConnectionCloseOk(_)) => self.state = State::Closed,
                    Ok(Method::ConnectionClose(_)) => {
                        self.ctx.out.method(0, ConnectionCloseOk {});
                        self.state = State::Draining;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(c) => Err((0, AmqpError::unexpected_frame(format!("heartbeat frame on channel {c}")))),
            Frame::Method(c, payload) => {
                let method = Method::decode(payload).map_err(|e| (0, decode_error(e)))?;
                if c == 0 {
                    let ids = method.ids();
                    self.connection_method(method).map_err(|e| (0, e.with_method(ids)))
                } else {
                    self.channel_method(c, method)
                }
            }
            Frame::Header(0, _) | Frame::Body(0, _) => {
                Err((0, AmqpError::unexpected_frame("content frame on channel 0")))
            }
            Frame::Header(c, header) => match open_channel(self.state, &mut self.channels, c)? {
                Some(ch) => ch.content_header(&mut self.ctx, header).map_err(|e| (c, e)),
                None => Ok(()),
            },
            Frame::Body(c, body) => match open_channel(self.state, &mut self.channels, c)? {
                Some(ch) => ch.content_body(&mut self.ctx, body).map_err(|e| (c, e)),
                None => Ok(()),
            },
        }
        .map_err(|(c, e)| (if e.scope == Scope::Connection { 0 } else { c }, e))
    }

    fn channel_method(&mut self, c: u16, method: Method) -> Result<(), (u16, AmqpError)> {
        let ids = method.ids();
        if self.state != State::Open {
            return Err((0, AmqpError::channel_error("channel method before the connection is open").with_method(ids)));
        }
        match (self.channels.get_mut(&c), method) {
            (None, Method::ChannelOpen(_)) => {
                if self.channels.len() >= self.channel_max as usize {
                    return Err((
                        0,
                        AmqpError::not_allowed(format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({})",
                            self.channels.len(),
                            self.channel_max
                        ))
                        .with_method(ids),
                    ));
                }
                if let Err(e) = self.ctx.broker.check_channel_limit(&self.ctx.user, self.ctx.id, self.channels.len()) {
                    return Err((0, AmqpError::from(e).with_method(ids)));
                }
                self.channels.insert(c, Channel::new(c, self.ctx.config.unacked_limits));
                Churn::bump(&self.ctx.broker.churn.channel_created);
                self.count_channels();
                self.ctx.out.method(c, ChannelOpenOk { reserved: LongStr::default() });
                Ok(())
            }
            (None, _) => {
                Err((0, AmqpError::channel_error(format!("expected 'channel.open' on channel {c}")).with_method(ids)))
            }
            (Some(ch), Method::ChannelCloseOk(_)) if ch.closing => {
                self.channels.remove(&c);
                Churn::bump(&self.ctx.broker.churn.channel_closed);
                self.count_channels();
                Ok(())
            }
            // The client's close crossed ours (we closed the channel for an error): as
            // RabbitMQ's channel, answer it and wait for the close-ok to our own close, which
            // frees the channel. The rest of the connection is untouched.
            (Some(ch), Method::ChannelClose(_)) if ch.closing => {
                self.ctx.out.method(c, ChannelCloseOk {});
                Ok(())
            }
            (Some(ch), Method::ChannelClose(_)) => {
                ch.close(&mut self.ctx);
                self.channels.remove(&c);
                Churn::bump(&self.ctx.broker.churn.channel_closed);
                self.count_channels();
                self.ctx.out.method(c, ChannelCloseOk {});
                Ok(())
            }
            (Some(ch), _) if ch.closing => Ok(()),
            (Some(_), Method::ChannelOpen(_)) => {
                Err((0, AmqpError::channel_error("second 'channel.open' seen").with_method(ids)))
            }
            (Some(ch), method) => ch.method(&mut self.ctx, method).map_err(|e| (c, e.with_method(ids))),
        }
    }

    fn connection_method(&mut self, method: Method) -> Result<(), AmqpError> {
        match (self.state, method) {
            (State::AwaitStartOk, Method::ConnectionStartOk(m)) => self.start_ok(m),
            (State::AwaitTuneOk, Method::ConnectionTuneOk(m)) => self.tune_ok(m),
            (State::AwaitOpen, Method::ConnectionOpen(m)) => self.open(m),
            (State::Open, Method::ConnectionClose(_)) => {
                self.closed_by_client();
                Ok(())
            }
            (State::Open, Method::ConnectionUpdateSecret(m)) => {
                // As RabbitMQ 3.10 with its internal user database: the method exists for
                // token-based backends to extend a session; passwords are not checked again,
                // and the connection goes on as the user it logged in as.
                tracing::info!(peer = %self.peer, user = %self.ctx.user, reason = %m.reason, "secret updated");
                self.ctx.out.method(0, ConnectionUpdateSecretOk {});
                Ok(())
            }
            (
                State::Open,
                Method::ConnectionCloseOk(_) | Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_),
            ) => Ok(()),
            (_, Method::ConnectionClose(_)) => {
                self.closed_by_client();
                Ok(())
            }
            (_, m) => Err(AmqpError::command_invalid(format!("unexpected method {} on channel 0", m.name()))),
        }
    }

    /// A resource alarm was raised or cleared: nack confirms the disk cannot honour, and
    /// tell the client.
    fn alarm_changed(&mut self, reason: Option<String>) {
        self.ctx.blocked = reason;
        self.release_waiting();
        self.notify_blocking();
    }

    /// As RabbitMQ does: connection.blocked once a connection publishes while an alarm is
    /// raised, connection.unblocked when it clears.
    fn notify_blocking(&mut self) {
        if self.state != State::Open || !self.ctx.blocked_notify {
            return;
        }
        match (&self.ctx.blocked, self.ctx.blocked_sent) {
            (Some(reason), false) if self.ctx.is_publisher => {
                let reason = ShortStr::from(truncate(reason, 255));
                self.ctx.out.method(0, ConnectionBlocked { reason });
                self.ctx.blocked_sent = true;
            }
            (None, true) => {
                self.ctx.out.method(0, ConnectionUnblocked {});
                self.ctx.blocked_sent = false;
            }
            _ => {}
        }
    }

    fn handle_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Deliver(d) => match self.channels.get_mut(&d.channel) {
                Some(ch) if !ch.closing && self.state == State::Open => ch.deliver(&mut self.ctx, d),
                _ => Channel::return_undelivered(&self.ctx, d),
            },
            ConnEvent::ConsumerCancelled { channel, consumer_tag } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.consumer_cancelled(&mut self.ctx, consumer_tag);
                }
            }
        }
    }

    /// Releases everything the connection holds: consumers, unacked messages, exclusive queues.
    fn cleanup(&mut self) {
        for (_, mut ch) in self.channels.drain() {
            ch.close(&mut self.ctx);
            Churn::bump(&self.ctx.broker.churn.channel_closed);
        }
        if let Some(vhost) = &self.ctx.vhost {
            for q in self.ctx.exclusive_queues.drain(..) {
                vhost.force_delete_queue(&q, &self.ctx.actor);
            }
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The open channel `c`; `None` while it is closing (its frames are dropped); 504 if unknown.
fn open_channel(
    state: State,
    channels: &mut FastMap<u16, Channel>,
    c: u16,
) -> Result<Option<&mut Channel>, (u16, AmqpError)> {
    if state != State::Open {
        return Err((0, AmqpError::unexpected_frame("content frame before the connection is open")));
    }
    match channels.get_mut(&c) {
        Some(ch) if ch.closing => Ok(None),
        Some(ch) => Ok(Some(ch)),
        None => Err((0, AmqpError::channel_error(format!("expected 'channel.open' on channel {c}")))),
    }
}

fn decode_error(e: CodecError) -> AmqpError {
    match e {
        CodecError::UnknownMethod(c, m) => {
            AmqpError::not_implemented(format!("unknown method {}", crate::amqp::method::method_name(c, m)))
        }
        other => AmqpError::syntax_error(format!("cannot decode method frame: {other}")),
    }
}
