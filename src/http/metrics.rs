//! Prometheus metrics, in the text format and with the names RabbitMQ's `rabbitmq_prometheus`
//! plugin uses, so dashboards and alerts written for it read Hare.
//!
//! `GET /metrics` aggregates (queue metrics summed over all queues, as RabbitMQ's default
//! endpoint does); `GET /metrics/per-object` gives each queue its own series, labelled with
//! `vhost` and `queue`. Hare's own series start with `hare_`: each queue's time in queue and
//! time to ack over the last minute or two, as quantiles (`/metrics` shows the worst queue's).
//! A scrape reads a snapshot of the broker first and encodes after, so no lock is held while
//! the text is written; the exposition format is the `prometheus-client` crate's.

use super::{json::API_VERSION, Api};
use crate::broker::stats::Percentiles;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// One metric family: its name (counters without `_total`, which the encoder adds), help,
/// kind and samples.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Labels, f64)>,
}

/// What one scrape reports, gathered before encoding.
#[derive(Debug, Default)]
struct Snapshot {
    families: Vec<Family>,
}

impl Snapshot {
    fn gauge(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        self.families.push(Family { name, help, counter: false, samples });
    }
    fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.families.push(Family { name, help, counter: true, samples: vec![(vec![], value as f64)] });
    }
    fn one(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.gauge(name, help, vec![(vec![], value)]);
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = if f.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut family = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                let sample = if labels.is_empty() { None } else { Some(labels) };
                match (f.counter, sample) {
                    (true, None) => {
                        ConstCounter::new(*v).encode(family.encode_family(&Vec::<(String, String)>::new())?)?
                    }
                    (true, Some(l)) => ConstCounter::new(*v).encode(family.encode_family(l)?)?,
                    (false, None) => {
                        ConstGauge::new(*v).encode(family.encode_family(&Vec::<(String, String)>::new())?)?
                    }
                    (false, Some(l)) => ConstGauge::new(*v).encode(family.encode_family(l)?)?,
                }
            }
        }
        Ok(())
    }
}

/// A distribution as gauges by quantile (0.5, 0.9, 0.99, and 1 for the maximum), in seconds.
fn quantiles(p: &Percentiles, labels: Labels) -> Vec<(Labels, f64)> {
    [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99), ("1", p.max)]
        .into_iter()
        .map(|(q, us)| {
            let mut l = labels.clone();
            l.push(("quantile".into(), q.into()));
            (l, us as f64 / 1e6)
        })
        .collect()
}

fn snapshot(api: &Api, per_object: bool) -> Snapshot {
    let b = &api.broker;
    let mut s = Snapshot::default();
    let conns = b.connection_list();
    let vhosts = b.vhosts();
    let mut ready = Vec::new();
    let mut unacked = Vec::new();
    let mut total = Vec::new();
    let mut consumers = Vec::new();
    let mut bytes = Vec::new();
    let mut published = Vec::new();
    let mut in_queue = Vec::new();
    let mut to_ack = Vec::new();
    let (mut sums, mut queue_count, mut consumer_count) = ([0f64; 6], 0u64, 0u64);
    let (mut worst_in, mut worst_ack) = (Percentiles::default(), Percentiles::default());
    // Streams: segments, bytes, offsets and the furthest-behind subscription's lag.
    let lags = super::stream::max_lags(api);
    let mut streams: [Vec<(Labels, f64)>; 5] = Default::default();
    let (mut segments, mut stream_bytes, mut worst_lag) = (0u64, 0u64, 0u64);
    for v in &vhosts {
        for q in v.queues() {
            if let Some(f) = super::stream::figures(&q) {
                let lag = lags.get(&(v.name.clone(), q.name.to_string())).copied().unwrap_or(0);
                segments += f.segments as u64;
                stream_bytes += f.bytes;
                worst_lag = worst_lag.max(lag);
                if per_object {
                    let l: Labels = vec![("vhost".into(), v.name.clone()), ("queue".into(), q.name.to_string())];
                    let values = [
                        f.segments as f64,
                        f.bytes as f64,
                        f.first as f64,
                        f.committed.map_or(-1.0, |c| c as f64),
                        lag as f64,
                    ];
                    for (list, value) in streams.iter_mut().zip(values) {
                        list.push((l.clone(), value));
                    }
                }
            }
            let st = q.stats();
            queue_count += 1;
            consumer_count += st.consumers as u64;
            let values =
                [st.ready, st.unacked, st.ready + st.unacked, st.consumers as u64, st.ready_bytes, st.counts.publish];
            if per_object {
                let l: Labels = vec![("vhost".into(), v.name.clone()), ("queue".into(), q.name.to_string())];
                for (list, value) in [&mut ready, &mut unacked, &mut total, &mut consumers, &mut bytes, &mut published]
                    .into_iter()
                    .zip(values)
                {
                    list.push((l.clone(), value as f64));
                }
                in_queue.extend(quantiles(&st.time_in_queue, l.clone()));
                to_ack.extend(quantiles(&st.time_to_ack, l));
            }
            for (sum, value) in sums.iter_mut().zip(values) {
                *sum += value as f64;
            }
            if st.time_in_queue.p99 > worst_in.p99 {
                worst_in = st.time_in_queue;
            }
            if st.time_to_ack.p99 > worst_ack.p99 {
                worst_ack = st.time_to_ack;
            }
        }
    }
    if !per_object {
        for (list, sum) in [&mut ready, &mut unacked, &mut total, &mut consumers, &mut bytes].into_iter().zip(sums) {
            list.push((vec![], sum));
        }
        in_queue = quantiles(&worst_in, vec![]);
        to_ack = quantiles(&worst_ack, vec![]);
    }
    let node = &api.node;
    let identity: Labels =
        vec![("rabbitmq_node".into(), node.node.clone()), ("rabbitmq_cluster".into(), node.node.clone())];
    s.gauge("rabbitmq_identity_info", "RabbitMQ node and cluster identity info", vec![(identity, 1.0)]);
    let build: Labels = vec![
        ("rabbitmq_version".into(), API_VERSION.into()),
        ("product_name".into(), "Hare".into()),
        ("product_version".into(), env!("CARGO_PKG_VERSION").into()),
    ];
    s.gauge("rabbitmq_build_info", "RabbitMQ & Erlang/OTP version info", vec![(build, 1.0)]);
    let channels: u64 = conns.iter().map(|c| c.channel_count() as u64).sum();
    s.one("rabbitmq_connections", "Connections currently open", b.open_connections() as f64);
    s.one("rabbitmq_channels", "Channels currently open", channels as f64);
    s.one("rabbitmq_consumers", "Consumers currently connected", consumer_count as f64);
    s.one("rabbitmq_queues", "Queues available", queue_count as f64);
    s.counter(
        "rabbitmq_connections_opened",
        "Total number of connections opened",
        b.churn.connection_created.load(RELAXED),
    );
    s.counter(
        "rabbitmq_connections_closed",
        "Total number of connections closed or terminated",
        b.churn.connection_closed.load(RELAXED),
    );
    s.gauge("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", ready);
    s.gauge("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but not yet acknowledged", unacked);
    s.gauge("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages - total queue depth", total);
    s.gauge("rabbitmq_queue_messages_ready_bytes", "Size in bytes of ready messages", bytes);
    s.gauge("rabbitmq_queue_consumers", "Consumers on a queue", consumers);
    let [seg, bytes, first, committed, lag] = streams;
    if per_object {
        s.families.push(Family {
            name: "rabbitmq_stream_segments",
            help: "Total number of stream segment files",
            counter: true,
            samples: seg,
        });
        s.gauge("hare_stream_size_bytes", "Bytes of a stream's segments on disk", bytes);
        s.gauge("hare_stream_first_offset", "The oldest offset a stream keeps", first);
        s.gauge("hare_stream_committed_offset", "The newest durable offset of a stream (-1 while empty)", committed);
        s.gauge(
            "rabbitmq_stream_consumer_max_offset_lag",
            "Highest offset lag among a stream's stream protocol subscriptions",
            lag,
        );
    } else {
        s.counter("rabbitmq_stream_segments", "Total number of stream segment files", segments);
        s.one("hare_stream_size_bytes", "Bytes of streams' segments on disk", stream_bytes as f64);
        s.one(
            "rabbitmq_stream_consumer_max_offset_lag",
            "Highest offset lag among stream protocol subscriptions",
            worst_lag as f64,
        );
    }
    if per_object {
        s.families.push(Family {
            name: "rabbitmq_queue_messages_published",
            help: "Total number of messages published to queues",
            counter: true,
            samples: published,
        });
    } else {
        s.counter("rabbitmq_queue_messages_published", "Total number of messages published to queues", sums[5] as u64);
    }
    let m = b.message_counts();
    s.counter(
        "rabbitmq_channel_messages_published",
        "Total number of messages published into an exchange on a channel",
        m.publish,
    );
    s.counter(
        "rabbitmq_channel_messages_confirmed",
        "Total number of messages published into an exchange and confirmed on the channel",
        m.confirm,
    );
    s.counter(
        "rabbitmq_channel_messages_unroutable_returned",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        m.return_unroutable,
    );
    s.counter(
        "rabbitmq_channel_messages_unroutable_dropped",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        m.drop_unroutable,
    );
    s.counter(
        "rabbitmq_channel_messages_delivered_ack",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        m.deliver,
    );
    s.counter(
        "rabbitmq_channel_messages_delivered",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        m.deliver_no_ack,
    );
    s.counter(
        "rabbitmq_channel_messages_redelivered",
        "Total number of messages redelivered to consumers",
        m.redeliver,
    );
    s.counter("rabbitmq_channel_messages_acked", "Total number of messages acknowledged by consumers", m.ack);
    s.counter(
        "rabbitmq_channel_get_ack",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        m.get,
    );
    s.counter(
        "rabbitmq_channel_get",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        m.get_no_ack,
    );
    s.counter(
        "rabbitmq_channel_get_empty",
        "Total number of times basic.get operations fetched no message",
        m.get_empty,
    );
    s.counter("rabbitmq_global_messages_received", "Total number of messages received from publishers", m.publish);
    s.counter("rabbitmq_global_messages_confirmed", "Total number of messages confirmed to publishers", m.confirm);
    s.counter("rabbitmq_global_messages_delivered", "Total number of messages delivered to consumers", m.deliver_get());
    s.counter("rabbitmq_global_messages_acknowledged", "Total number of messages acknowledged by consumers", m.ack);
    s.counter(
        "rabbitmq_global_messages_unroutable_returned",
        "Total number of messages returned to publishers as unroutable",
        m.return_unroutable,
    );
    s.counter(
        "rabbitmq_global_messages_unroutable_dropped",
        "Total number of messages dropped as unroutable",
        m.drop_unroutable,
    );
    use crate::net::alarms;
    let (fd_used, fd_total) = alarms::file_descriptors();
    s.one("rabbitmq_process_open_fds", "Open file descriptors", fd_used as f64);
    s.one("rabbitmq_process_max_fds", "Open file descriptors limit", fd_total as f64);
    s.one(
        "rabbitmq_process_resident_memory_bytes",
        "Memory used in bytes",
        alarms::resident_bytes().unwrap_or(0) as f64,
    );
    s.one("rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes", node.memory_limit as f64);
    s.one(
        "rabbitmq_disk_space_available_bytes",
        "Disk space available in bytes",
        alarms::free_disk_bytes(&node.data_dir).unwrap_or(0) as f64,
    );
    s.one(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        node.disk_free_limit as f64,
    );
    let alarm = b.alarm().unwrap_or_default();
    s.one(
        "rabbitmq_alarms_memory_used_watermark",
        "is 1 if VM memory watermark alarm is in effect",
        f64::from(u8::from(alarm.contains("memory"))),
    );
    s.one(
        "rabbitmq_alarms_free_disk_space_watermark",
        "is 1 if free disk space watermark alarm is in effect",
        f64::from(u8::from(alarm.contains("disk"))),
    );
    let sync = b.sync_stats();
    s.counter("hare_sync_rounds", "Group-commit rounds that wrote and fdatasynced the logs", sync.rounds);
    s.counter("hare_disk_written_bytes", "Bytes the group commit wrote to the logs", sync.bytes_written);
    let hist = |h: &crate::broker::stats::LogHistogram, scale: f64| -> Vec<(Labels, f64)> {
        [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99), ("1", 1.0)]
            .into_iter()
            .map(|(label, q)| (vec![("quantile".to_string(), label.to_string())], h.quantile(q) as f64 * scale))
            .collect()
    };
    s.gauge(
        "hare_fsync_seconds",
        "Time of one group-commit round's fdatasyncs, since start",
        hist(&sync.fsync_us, 1e-6),
    );
    s.gauge(
        "hare_group_commit_batch",
        "Appends made durable by one group-commit round, since start",
        hist(&sync.batch, 1.0),
    );
    // Shovels: how many are in each state, and what each moved (gauges: a shovel's count
    // starts over when it is recreated).
    let shovels = b.run_states(crate::shovel::COMPONENT);
    let by_state = ["starting", "running", "terminated"]
        .into_iter()
        .map(|st| {
            let n = shovels.iter().filter(|(_, _, r)| r.state == st).count();
            (vec![("state".to_string(), st.to_string())], n as f64)
        })
        .collect();
    s.gauge("hare_shovels", "Dynamic shovels by state", by_state);
    let moved = shovels
        .iter()
        .map(|(v, n, r)| {
            let m = r.info.iter().find(|(k, _)| *k == "messages_shovelled").and_then(|(_, v)| v.as_u64()).unwrap_or(0);
            (vec![("vhost".to_string(), v.clone()), ("shovel".to_string(), n.clone())], m as f64)
        })
        .collect();
    s.gauge("hare_shovel_messages", "Messages a shovel moved since it last started", moved);
    s.gauge("hare_queue_time_in_queue_seconds", "Time from publish to delivery over the last one to two minutes (sampled messages); without labels, the queue with the highest p99", in_queue);
    s.gauge("hare_queue_time_to_ack_seconds", "Time from delivery to acknowledgement over the last one to two minutes (sampled messages); without labels, the queue with the highest p99", to_ack);
    s
}

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

fn render(api: &Api, per_object: bool) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(api, per_object)));
    let mut text = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).is_err() {
        return super::error(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "metrics encoding failed",
        );
    }
    ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
}

pub async fn aggregated(State(api): State<Api>) -> Response {
    render(&api, false)
}

pub async fn per_object(State(api): State<Api>) -> Response {
    render(&api, true)
}
