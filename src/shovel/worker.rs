//! One running shovel: an AMQP 0-9-1 client (amqprs) consuming from its source and publishing
//! to its destination, as RabbitMQ's `rabbit_amqp091_shovel` does. With `on-confirm` a message
//! is acknowledged at the source only once the destination confirmed it, so a dropped link or
//! a crash of either side loses nothing (what was in flight is delivered again: duplicates are
//! possible, and counted as redeliveries). On any failure the session ends, its state reads
//! `terminated` with the reason, and after the reconnect delay it starts again.

use super::definition::{AckMode, DeleteAfter, ShovelDef};
use super::uri::{self, AmqpUri};
use crate::broker::parameters::RunState;
use crate::broker::Broker;
use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments, BasicPublishArguments,
    BasicQosArguments, Channel, ConfirmSelectArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a worker needs: its shovel, who set it up (its local ends log in as them), and this
/// broker's own AMQP address (for `amqp://` ends).
pub struct Worker {
    pub vhost: String,
    pub name: String,
    pub def: ShovelDef,
    pub owner: String,
    /// The parameter's value as it was when this worker started.
    pub value: Value,
    pub local: SocketAddr,
    pub broker: Arc<Broker>,
}

/// How a session ended without an error.
enum Ended {
    /// Told to stop (the shovel was deleted or changed).
    Stopped,
    /// Its `src-delete-after` count was reached: the shovel deletes itself.
    Finished,
}

type Failure = String;

fn fail<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Failure {
    move |e| format!("{what}: {e}")
}

impl Worker {
    /// Reports the state (entered at `since_ms`, now if 0).
    fn report(&self, state: &'static str, reason: Option<String>, info: Vec<(&'static str, Value)>, since_ms: u64) {
        let since_ms = if since_ms == 0 { crate::broker::clock::now_ms() } else { since_ms };
        let run = RunState { state, reason, since_ms, info };
        self.broker.set_run_state("shovel", &self.vhost, &self.name, Some(run));
    }

    /// What the status of a running shovel shows, as RabbitMQ's does.
    fn details(&self, counts: (u64, u64)) -> Vec<(&'static str, Value)> {
        let d = &self.def;
        let mut info = vec![
            ("src_uri", json!(AmqpUri::redacted(&d.src_uri))),
            ("src_protocol", json!("amqp091")),
            ("dest_protocol", json!("amqp091")),
            ("dest_uri", json!(AmqpUri::redacted(&d.dest_uri))),
        ];
        match (&d.src_queue, &d.src_exchange) {
            (Some(q), _) => info.push(("src_queue", json!(q))),
            (None, Some(x)) => {
                info.push(("src_exchange", json!(x)));
                info.push(("src_exchange_key", json!(d.src_exchange_key)));
            }
            _ => {}
        }
        if let Some(q) = &d.dest_queue {
            info.push(("dest_queue", json!(q)));
        }
        if let Some(x) = &d.dest_exchange {
            info.push(("dest_exchange", json!(x)));
        }
        if let Some(k) = &d.dest_exchange_key {
            info.push(("dest_exchange_key", json!(k)));
        }
        info.push(("messages_shovelled", json!(counts.0)));
        info.push(("messages_redelivered", json!(counts.1)));
        info
    }

    /// Runs sessions until told to stop or finished; reports each state change.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut counts = (0u64, 0u64);
        loop {
            self.report("starting", None, Vec::new(), 0);
            match self.session(&mut stop, &mut counts).await {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Finished) => {
                    tracing::info!("shovel '{}' in vhost '{}': done, deleting it", self.name, self.vhost);
                    self.broker.clear_finished_parameter("shovel", &self.vhost, &self.name);
                    break;
                }
                Err(reason) => {
                    tracing::warn!("shovel '{}' in vhost '{}': {reason}", self.name, self.vhost);
                    self.report("terminated", Some(reason), Vec::new(), 0);
                    let delay = Duration::from_secs_f64(self.def.reconnect_delay_s.max(0.1));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => break,
                    }
                    if *stop.borrow() {
                        break;
                    }
                }
            }
        }
        // Its report goes with it, unless a worker for the changed shovel took its place.
        if self.broker.parameter("shovel", &self.vhost, &self.name).is_none_or(|p| p.value != self.value) {
            self.broker.set_run_state("shovel", &self.vhost, &self.name, None);
        }
    }

    async fn connect(&self, raw: &str, role: &'static str) -> Result<Connection, Failure> {
        let u = uri::parse(raw).map_err(|e| format!("{role} URI: {e}"))?;
        let (host, port, user, password) = match &u.host {
            Some(h) => (h.clone(), u.port, u.user.clone(), u.password.clone()),
            None => {
                let ip = if self.local.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    self.local.ip()
                };
                (ip.to_string(), self.local.port(), self.owner.clone(), self.broker.internal_secret().to_string())
            }
        };
        let mut args = OpenConnectionArguments::new(&host, port, &user, &password);
        args.virtual_host(&u.vhost).connection_name(&format!("Shovel {}", self.name));
        if let Some(h) = u.heartbeat {
            args.heartbeat(h);
        }
        if u.tls && u.host.is_some() {
            args.tls_adaptor(super::tls::adaptor(&u, &host).map_err(|e| format!("{role} TLS: {e}"))?);
        }
        let args = args.finish();
        let conn = tokio::time::timeout(u.connect_timeout, Connection::open(&args))
            .await
            .map_err(|_| format!("{role}: no connection within {} s", u.connect_timeout.as_secs()))?
            .map_err(fail(role))?;
        conn.register_callback(DefaultConnectionCallback).await.map_err(fail("callback"))?;
        Ok(conn)
    }

    /// RabbitMQ's `ensure_queue`: a passive declare; if the queue is missing, a durable one
    /// with the given arguments. Returns its message count.
    async fn ensure_queue(conn: &Connection, queue: &str, args: &Map<String, Value>) -> Result<u32, Failure> {
        let ch = conn.open_channel(None).await.map_err(fail("channel"))?;
        let mut passive = QueueDeclareArguments::new(queue);
        passive.passive(true);
        if let Ok(Some((_, count, _))) = ch.queue_declare(passive.finish()).await {
            let _ = ch.close().await;
            return Ok(count);
        }
        let ch = conn.open_channel(None).await.map_err(fail("channel"))?;
        let mut declare = QueueDeclareArguments::durable_client_named(queue);
        declare.arguments(table(args));
        let r = ch.queue_declare(declare.finish()).await.map_err(fail("queue.declare"))?;
        let _ = ch.close().await;
        Ok(r.map_or(0, |(_, count, _)| count))
    }

    async fn session(&self, stop: &mut watch::Receiver<bool>, counts: &mut (u64, u64)) -> Result<Ended, Failure> {
        let d = &self.def;
        let src = self.connect(&d.src_uri, "source").await?;
        let dest = self.connect(&d.dest_uri, "destination").await?;
        let result = self.shovel(&src, &dest, stop, counts).await;
        let _ = src.close().await;
        let _ = dest.close().await;
        result
    }

    async fn shovel(
        &self,
        src: &Connection,
        dest: &Connection,
        stop: &mut watch::Receiver<bool>,
        counts: &mut (u64, u64),
    ) -> Result<Ended, Failure> {
        let d = &self.def;
        // The source: its queue, or an exclusive queue bound to its exchange.
        let (queue, at_start) = match (&d.src_queue, &d.src_exchange) {
            (Some(q), _) => (q.clone(), Self::ensure_queue(src, q, &d.src_queue_args).await?),
            (None, Some(x)) => {
                let ch = src.open_channel(None).await.map_err(fail("channel"))?;
                let (q, _, _) = ch
                    .queue_declare(QueueDeclareArguments::exclusive_server_named())
                    .await
                    .map_err(fail("queue.declare"))?
                    .ok_or("queue.declare: no answer")?;
                ch.queue_bind(QueueBindArguments::new(&q, x, &d.src_exchange_key)).await.map_err(fail("queue.bind"))?;
                (q, 0)
            }
            (None, None) => return Err("no source".into()),
        };
        if let Some(q) = &d.dest_queue {
            Self::ensure_queue(dest, q, &d.dest_queue_args).await?;
        }
        let mut remaining = match d.delete_after {
            DeleteAfter::Never => None,
            DeleteAfter::QueueLength => Some(u64::from(at_start)),
            DeleteAfter::Count(n) => Some(n),
        };
        if remaining == Some(0) {
            return Ok(Ended::Finished);
        }
        let out = dest.open_channel(None).await.map_err(fail("channel"))?;
        let (confirm_tx, mut confirms) = mpsc::unbounded_channel();
        out.register_callback(Confirms { tx: confirm_tx }).await.map_err(fail("callback"))?;
        if d.ack_mode == AckMode::OnConfirm {
            out.confirm_select(ConfirmSelectArguments::default()).await.map_err(fail("confirm.select"))?;
        }
        let input = src.open_channel(None).await.map_err(fail("channel"))?;
        let no_ack = d.ack_mode == AckMode::NoAck;
        if !no_ack {
            input.basic_qos(BasicQosArguments::new(0, d.src_prefetch_count, false)).await.map_err(fail("basic.qos"))?;
        }
        let mut consume = BasicConsumeArguments::new(&queue, "");
        consume.manual_ack(!no_ack);
        let (tag, mut deliveries) = input.basic_consume_rx(consume.finish()).await.map_err(fail("basic.consume"))?;
        let since = crate::broker::clock::now_ms();
        self.report("running", None, self.details(*counts), since);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Destination sequence number -> source delivery tag, for what awaits a confirm.
        let mut pending: BTreeMap<u64, u64> = BTreeMap::new();
        let mut seq = 0u64;
        let mut consuming = true;
        loop {
            if !consuming && pending.is_empty() {
                return Ok(Ended::Finished);
            }
            tokio::select! {
                m = deliveries.recv(), if consuming => {
                    let Some(m) = m else { return Err("the source closed the consumer".into()) };
                    let (Some(deliver), Some(props), Some(body)) = (m.deliver, m.basic_properties, m.content) else {
                        continue;
                    };
                    let (exchange, key) = match (&d.dest_queue, &d.dest_exchange) {
                        (Some(q), _) => (String::new(), q.clone()),
                        (None, Some(x)) => (x.clone(), d.dest_exchange_key.clone().unwrap_or_else(|| deliver.routing_key().clone())),
                        (None, None) => (deliver.exchange().clone(), d.dest_exchange_key.clone().unwrap_or_else(|| deliver.routing_key().clone())),
                    };
                    let props = self.decorate(props);
                    out.basic_publish(props, body, BasicPublishArguments::new(&exchange, &key))
                        .await
                        .map_err(fail("publish"))?;
                    seq += 1;
                    counts.0 += 1;
                    counts.1 += u64::from(deliver.redelivered());
                    match d.ack_mode {
                        AckMode::OnConfirm => {
                            pending.insert(seq, deliver.delivery_tag());
                        }
                        AckMode::OnPublish => {
                            input.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false)).await.map_err(fail("ack"))?;
                        }
                        AckMode::NoAck => {}
                    }
                    if let Some(r) = remaining.as_mut() {
                        *r -= 1;
                        if *r == 0 {
                            // Enough: take no more (what is still in flight goes back).
                            let _ = input.basic_cancel(BasicCancelArguments::new(&tag)).await;
                            consuming = false;
                        }
                    }
                }
                c = confirms.recv() => {
                    let Some(c) = c else { return Err("the destination channel closed".into()) };
                    let (upto, multiple, ack) = c;
                    let done: Vec<u64> = if multiple {
                        let rest = pending.split_off(&(upto + 1));
                        std::mem::replace(&mut pending, rest).into_values().collect()
                    } else {
                        pending.remove(&upto).into_iter().collect()
                    };
                    for t in done {
                        if ack {
                            input.basic_ack(BasicAckArguments::new(t, false)).await.map_err(fail("ack"))?;
                        } else {
                            // Refused at the destination: back to the source's queue.
                            input.basic_nack(BasicNackArguments::new(t, false, true)).await.map_err(fail("nack"))?;
                        }
                    }
                }
                _ = stop.changed() => return Ok(Ended::Stopped),
                _ = tick.tick() => self.report("running", None, self.details(*counts), since),
                // Either answer means the connection is gone (false: closed, not failed).
                _ = src.listen_network_io_failure() => return Err("the source connection closed".into()),
                _ = dest.listen_network_io_failure() => return Err("the destination connection closed".into()),
            }
        }
    }

    /// The forwarding headers RabbitMQ's shovel adds when asked to (`x-shovelled`,
    /// `x-shovelled-timestamp`).
    fn decorate(&self, mut props: BasicProperties) -> BasicProperties {
        let d = &self.def;
        if !d.add_forward_headers && !d.add_timestamp_header {
            return props;
        }
        let mut headers = props.headers().cloned().unwrap_or_default();
        if d.add_forward_headers {
            let mut info = Map::new();
            info.insert("shovelled-by".into(), json!("hare@localhost"));
            info.insert("shovel-type".into(), json!("dynamic"));
            info.insert("shovel-name".into(), json!(self.name));
            info.insert("shovel-vhost".into(), json!(self.vhost));
            info.insert("src-uri".into(), json!(AmqpUri::redacted(&d.src_uri)));
            info.insert("dest-uri".into(), json!(AmqpUri::redacted(&d.dest_uri)));
            if let Some(q) = &d.src_queue {
                info.insert("src-queue".into(), json!(q));
            }
            if let Some(q) = &d.dest_queue {
                info.insert("dest-queue".into(), json!(q));
            }
            let entry = FieldValue::F(table(&info));
            let mut list: Vec<FieldValue> = match headers.get(&"x-shovelled".try_into().expect("a short name")) {
                Some(FieldValue::A(a)) => a.clone().into(),
                _ => Vec::new(),
            };
            list.insert(0, entry);
            if let Ok(array) = list.try_into() {
                headers.insert("x-shovelled".try_into().expect("a short name"), FieldValue::A(array));
            }
        }
        if d.add_timestamp_header {
            let now = crate::broker::clock::now_ms() / 1000;
            headers.insert("x-shovelled-timestamp".try_into().expect("a short name"), FieldValue::l(now as i64));
        }
        props.with_headers(headers);
        props
    }
}

/// A JSON object as an AMQP table (strings, booleans, integers, floats, nested objects and
/// lists), as RabbitMQ converts a shovel's queue arguments.
pub(super) fn table(map: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in map {
        if let (Ok(name), Some(value)) = (k.clone().try_into(), field(v)) {
            t.insert(name, value);
        }
    }
    t
}

fn field(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Bool(b) => FieldValue::t(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::l(i),
            None => FieldValue::d(n.as_f64()?),
        },
        Value::String(s) => FieldValue::S(s.clone().try_into().ok()?),
        Value::Object(m) => FieldValue::F(table(m)),
        Value::Array(items) => FieldValue::A(items.iter().filter_map(field).collect::<Vec<_>>().try_into().ok()?),
        Value::Null => FieldValue::V,
    })
}

/// Forwards the destination's confirms to the session: (sequence number, multiple, ack).
struct Confirms {
    tx: mpsc::UnboundedSender<(u64, bool, bool)>,
}

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        tracing::warn!("shovel: the destination closed its channel: {close}");
        Ok(())
    }
    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        let _ = self.tx.send((ack.delivery_tag(), ack.mutiple(), true));
    }
    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        let _ = self.tx.send((nack.delivery_tag(), nack.multiple(), false));
    }
    async fn publish_return(&mut self, _channel: &Channel, _ret: Return, _props: BasicProperties, _content: Vec<u8>) {}
}
