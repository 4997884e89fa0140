//! The audit log's writer: takes the events the broker emits ([`crate::broker::audit`]) off
//! their queue, appends them to the audit log as JSON lines, and publishes each to the
//! `amq.rabbitmq.event` topic exchange of vhost `/` so applications can subscribe.
//!
//! It runs on a thread of its own, so the disk under the log never blocks a connection's
//! task, and it batches: everything that comes within [`LINGER`] of a first event is written
//! with one `write` and one `fsync`,
//! after which the events count as written (which is what lets connections read again
//! when the log had fallen behind; see [`crate::broker::audit::BACKLOG`]). An event
//! reaches the exchange only after it is on disk, so a subscriber never sees an event the
//! log lost.
//!
//! One line an event:
//!
//! ```json
//! {"time":"2026-12-03T08:30:00.123Z","event":"queue.created","user":"guest","source":"127.0.0.1:50412",
//!  "via":"amqp","vhost":"/","object":{"name":"q","durable":true,...},"outcome":"ok"}
//! ```
//!
//! with `"outcome":"refused","reason":"..."` for refusals. When the log would pass
//! `max_bytes` it is rotated: `audit.log` becomes `audit.log.1`, `.1` becomes `.2`, and so
//! on up to `files`; the oldest is removed.

use crate::broker::audit::{AuditEvent, AuditReceiver, Outcome, Value};
use crate::broker::message::Message;
use crate::broker::vhost::{EVENT_EXCHANGE, EVENT_VHOST};
use crate::broker::Broker;
use crate::types::{BasicProperties, FieldTable, FieldValue};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the log goes and how it is rotated.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub path: PathBuf,
    /// Size past which the log is rotated.
    pub max_bytes: u64,
    /// Rotated files kept beside the live one.
    pub files: u32,
}

/// Events taken off the queue at once at most: one write and one fsync for all of them.
const BATCH: usize = 4096;
/// After the first event of a batch, how long the writer waits for more before its write
/// and fsync. A declare storm emits an event per declare and per bind; without this each
/// had an fsync of its own, running beside the definitions journal's and slowing it (ext4
/// commits one journal transaction at a time): 450 µs more per durable declare here.
const LINGER: Duration = Duration::from_millis(10);
/// How often the writer looks at its stop flag when no event comes.
const POLL: Duration = Duration::from_millis(100);

/// The running writer; [`AuditWriter::stop`] writes what is left and joins it.
pub struct AuditWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriter {
    /// Opens (or creates) the log and starts the writer.
    pub fn spawn(rx: AuditReceiver, settings: AuditSettings, broker: Arc<Broker>) -> std::io::Result<AuditWriter> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let log = Log::open(settings)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("audit".into()).spawn(move || run(rx, log, broker, flag))?;
        Ok(AuditWriter { stop, thread: Some(thread) })
    }

    /// Writes every event emitted so far and stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: AuditReceiver, mut log: Log, broker: Arc<Broker>, stop: Arc<AtomicBool>) {
    let mut batch = Vec::with_capacity(64);
    let mut text = Vec::with_capacity(64 * 1024);
    loop {
        match rx.rx.recv_timeout(POLL) {
            Ok(e) => batch.push(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Acquire) {
                    // The queue was empty when asked after the stop: nothing is left.
                    return;
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Sleep rather than wait on the queue: a sender then wakes no one, where waiting
        // had each event of a storm wake this thread (a futex call and a context switch).
        if !stop.load(Ordering::Acquire) {
            std::thread::sleep(LINGER);
        }
        while batch.len() < BATCH {
            match rx.rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        text.clear();
        for e in &batch {
            line(e, &mut text);
        }
        // The log must not lose an event: a failed write is retried (the disk may come
        // back) while connections, once the backlog grows, stop making new events.
        let mut delay = Duration::from_millis(10);
        while let Err(e) = log.append(&text) {
            tracing::error!("cannot write the audit log {}: {e}; retrying", log.settings.path.display());
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
            if stop.load(Ordering::Acquire) && delay >= Duration::from_secs(5) {
                tracing::error!("audit log: {} events not written at shutdown", batch.len());
                return;
            }
        }
        rx.written(batch.len() as u64);
        publish(&broker, &batch);
        batch.clear();
    }
}

/// The live log file and its size.
struct Log {
    settings: AuditSettings,
    file: File,
    size: u64,
}

impl Log {
    fn open(settings: AuditSettings) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(&settings.path)?;
        let size = file.metadata()?.len();
        Ok(Log { settings, file, size })
    }

    /// Appends `text` (whole lines) and makes it durable, rotating first if it would not fit.
    fn append(&mut self, text: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + text.len() as u64 > self.settings.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(text)?;
        self.file.sync_data()?;
        self.size += text.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.settings.path;
        let numbered = |n: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.settings.files == 0 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.settings.files));
            for n in (1..self.settings.files).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.size = 0;
        Ok(())
    }
}

/// An event as one JSON line, its fields in the order a reader scans them.
fn line(e: &AuditEvent, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        time: String,
        event: &'a str,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<&'a str>,
        via: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        vhost: Option<&'a str>,
        object: Object<'a>,
        outcome: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }
    /// The object's fields in the order the event gave them.
    struct Object<'a>(&'a [(&'static str, Value)]);
    impl serde::Serialize for Object<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in self.0 {
                match v {
                    Value::Str(x) => m.serialize_entry(k, x)?,
                    Value::Bool(b) => m.serialize_entry(k, b)?,
                    Value::Int(n) => m.serialize_entry(k, n)?,
                }
            }
            m.end()
        }
    }
    let (outcome, reason) = match &e.outcome {
        Outcome::Ok => ("ok", None),
        Outcome::Refused(r) => ("refused", Some(r.as_str())),
    };
    let l = Line {
        time: rfc3339(e.time_ms),
        event: e.event,
        user: &e.user,
        source: e.source.as_deref(),
        via: e.via,
        vhost: e.vhost.as_deref(),
        object: Object(&e.object),
        outcome,
        reason,
    };
    // Strings, booleans and integers always serialise.
    if serde_json::to_writer(&mut *out, &l).is_ok() {
        out.push(b'\n');
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC, with milliseconds.
fn rfc3339(ms: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Publishes each event to `amq.rabbitmq.event` as RabbitMQ's event exchange does: the
/// event's name as routing key, its properties as headers, an empty body, persistent;
/// at most once (no confirm to wait for), and only when something is bound.
fn publish(broker: &Broker, events: &[AuditEvent]) {
    let Some(vhost) = broker.vhost(EVENT_VHOST) else { return };
    let mut queues = Vec::new();
    for e in events {
        queues.clear();
        let probe = bytes::Bytes::new();
        if vhost.route_internal(EVENT_EXCHANGE, e.event, &probe, &mut queues).is_err() || queues.is_empty() {
            continue;
        }
        let props = BasicProperties {
            delivery_mode: Some(2),
            timestamp: Some(e.time_ms / 1000),
            headers: Some(headers(e)),
            ..Default::default()
        };
        let message =
            Arc::new(Message::new(EVENT_EXCHANGE.into(), e.event.into(), props.to_bytes(), bytes::Bytes::new(), true));
        for q in &queues {
            if let Err(err) = q.publish(message.clone(), None) {
                tracing::warn!("audit event {} not delivered to queue {}: {err}", e.event, q.name);
            }
        }
    }
}

/// An event's headers: its object, then who did it, when, from where and the outcome,
/// with RabbitMQ's names (`user_who_performed_action`, `timestamp_in_ms`) where it has them.
fn headers(e: &AuditEvent) -> FieldTable {
    let s = |v: &str| FieldValue::LongStr(bytes::Bytes::copy_from_slice(v.as_bytes()));
    let mut t = FieldTable::new();
    for (k, v) in &e.object {
        let v = match v {
            Value::Str(x) => s(x),
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Int(n) => FieldValue::I64(*n),
        };
        t.0.push(((*k).into(), v));
    }
    if let Some(v) = &e.vhost {
        t.0.push(("vhost".into(), s(v)));
    }
    t.0.push(("user_who_performed_action".into(), s(&e.user)));
    t.0.push(("timestamp_in_ms".into(), FieldValue::I64(e.time_ms.min(i64::MAX as u64) as i64)));
    if let Some(src) = &e.source {
        t.0.push(("source".into(), s(src)));
    }
    t.0.push(("via".into(), s(e.via)));
    match &e.outcome {
        Outcome::Ok => t.0.push(("outcome".into(), s("ok"))),
        Outcome::Refused(r) => {
            t.0.push(("outcome".into(), s("refused")));
            t.0.push(("reason".into(), s(r)));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::audit::Actor;

    #[test]
    fn a_line_is_json_with_the_outcome() {
        let by = Actor::http("admin", Some("127.0.0.1:1".into()));
        let e = AuditEvent::new("queue.deleted", &by, Some("/")).with("name", "q").refused("no");
        let mut out = Vec::new();
        line(&e, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"], "queue.deleted");
        assert_eq!(v["user"], "admin");
        assert_eq!(v["via"], "http");
        assert_eq!(v["object"]["name"], "q");
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["reason"], "no");
        assert_eq!(rfc3339(1_796_286_600_123), "2026-12-03T08:30:00.123Z");
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("hare-audit-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let mut log = Log::open(AuditSettings { path: path.clone(), max_bytes: 10, files: 2 }).unwrap();
        for i in 0..5 {
            log.append(format!("line {i}\n").as_bytes()).unwrap();
        }
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("audit.log"), "line 4\n");
        assert_eq!(read("audit.log.1"), "line 3\n");
        assert_eq!(read("audit.log.2"), "line 2\n");
        assert!(!dir.join("audit.log.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
