//! `hare ctl migrate`: a move from a running RabbitMQ to Hare that loses nothing.
//!
//! 1. The definitions (vhosts, users with their password hashes, permissions, limits,
//!    policies, exchanges, queues, bindings) are read from RabbitMQ's management API and
//!    imported into Hare's; RabbitMQ's own shovels are left out (they would move messages
//!    from Hare too), and reported.
//! 2. Each queue gets a dynamic shovel in Hare (`migrate-<queue>`): from the queue at
//!    RabbitMQ (`--from-amqp`) to the same queue here, acknowledging at RabbitMQ only what Hare
//!    confirmed (on-confirm), in order, and deleting itself once it moved what the queue held
//!    when it started (`src-delete-after: queue-length`).
//! 3. Progress per queue while the shovels run, then a report: messages per queue at the
//!    source before, moved, left there, and now in Hare; messages moved per second.
//!
//! Run again after an interruption (of this command, of Hare, of RabbitMQ), it imports the
//! definitions again (no change), keeps the shovels still there, makes new ones for queues
//! that still hold messages, and goes on: nothing confirmed is lost, as the shovels only ack at
//! RabbitMQ what Hare confirmed (what was in flight may arrive twice).

use super::client::{encode, Api, CtlError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A queue at the source: (vhost, name).
type QueueKey = (String, String);

/// The name of the shovel that moves `queue`.
fn shovel_name(queue: &str) -> String {
    format!("migrate-{queue}")
}

/// The management API's URL and credentials from `http://user:pass@host:port`.
fn api_from(url: &str) -> Result<Api, CtlError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| CtlError::Usage(format!("--from {url}: not a URL")))?;
    let (user, password, host) = match rest.rsplit_once('@') {
        Some((cred, host)) => {
            let (u, p) = cred.split_once(':').unwrap_or((cred, ""));
            (decode(u), decode(p), host)
        }
        None => ("guest".to_string(), "guest".to_string(), rest),
    };
    Ok(Api::new(&format!("{scheme}://{host}"), &user, &password))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The AMQP URI of a vhost at the source: `--from-amqp` with the vhost as its path.
fn source_uri(from_amqp: &str, vhost: &str) -> String {
    let base = from_amqp.trim_end_matches('/');
    // Drop a vhost the base URI names: each queue's shovel names its own.
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _)) => format!("{scheme}://{authority}"),
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    format!("{base}/{}", encode(vhost))
}

/// What the source's definitions hold that the import takes, and what it leaves.
fn importable(mut defs: Value) -> (Value, usize) {
    let mut shovels = 0;
    if let Some(params) = defs.get_mut("parameters").and_then(Value::as_array_mut) {
        let before = params.len();
        params.retain(|p| p.get("component").and_then(Value::as_str) != Some("shovel"));
        shovels = before - params.len();
    }
    (defs, shovels)
}

fn queues_of(defs: &Value) -> Vec<QueueKey> {
    defs.get("queues")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|q| Some((q.get("vhost")?.as_str()?.to_string(), q.get("name")?.as_str()?.to_string())))
        .collect()
}

/// A queue's ready count through an API (None: no such queue).
fn count(api: &Api, (vhost, name): &QueueKey) -> Result<Option<u64>, CtlError> {
    match api.get(&format!("/api/queues/{}/{}", encode(vhost), encode(name))) {
        Ok(q) => Ok(q.get("messages").and_then(Value::as_u64)),
        Err(CtlError::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The queue's message count at the source, exactly (a passive declare over AMQP: the
/// management API's figures lag by its statistics interval).
fn amqp_counts(from_amqp: &str, queues: &[QueueKey]) -> Result<BTreeMap<QueueKey, u64>, CtlError> {
    use amqprs::channel::QueueDeclareArguments;
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Usage(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let mut by_vhost: BTreeMap<&str, Vec<&QueueKey>> = BTreeMap::new();
        for q in queues {
            by_vhost.entry(q.0.as_str()).or_default().push(q);
        }
        let mut out = BTreeMap::new();
        for (vhost, qs) in by_vhost {
            let uri = crate::shovel::uri::parse(&source_uri(from_amqp, vhost))
                .map_err(|e| CtlError::Usage(format!("--from-amqp: {e}")))?;
            let host = uri.host.clone().unwrap_or_else(|| "127.0.0.1".into());
            let mut args = OpenConnectionArguments::new(&host, uri.port, &uri.user, &uri.password);
            args.virtual_host(&uri.vhost).connection_name("hare ctl migrate");
            let conn = Connection::open(&args.finish()).await.map_err(|e| CtlError::Unreachable {
                url: format!("amqp://{host}:{}", uri.port),
                reason: e.to_string(),
            })?;
            for q in qs {
                let ch = conn.open_channel(None).await.map_err(|e| CtlError::Usage(e.to_string()))?;
                let mut passive = QueueDeclareArguments::new(&q.1);
                passive.passive(true);
                if let Ok(Some((_, n, _))) = ch.queue_declare(passive.finish()).await {
                    out.insert(q.clone(), u64::from(n));
                    let _ = ch.close().await;
                }
            }
            let _ = conn.close().await;
        }
        Ok(out)
    })
}

/// Runs the migration; prints progress and the report.
pub fn run(hare: &Api, from: &str, from_amqp: &str, json_output: bool) -> Result<(), CtlError> {
    let source = api_from(from)?;
    let started = Instant::now();
    let defs = source.get("/api/definitions")?;
    let (defs, left_out) = importable(defs);
    hare.post("/api/definitions", &defs)?;
    let queues = queues_of(&defs);
    let count_of = |k: &str| defs.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    if !json_output {
        println!(
            "definitions imported: {} vhosts, {} users, {} permissions, {} policies, {} exchanges, {} queues, {} bindings",
            count_of("vhosts"),
            count_of("users"),
            count_of("permissions"),
            count_of("policies"),
            count_of("exchanges"),
            count_of("queues"),
            count_of("bindings")
        );
        if left_out > 0 {
            println!("left out: {left_out} shovels of the source (set them up in Hare when it is retired)");
        }
    }
    let before = amqp_counts(from_amqp, &queues)?;
    // A shovel for each queue that holds messages and has none yet (a rerun keeps those
    // still at work).
    for q in &queues {
        let (vhost, name) = q;
        let path = format!("/api/parameters/shovel/{}/{}", encode(vhost), encode(&shovel_name(name)));
        let running = hare.get(&path).is_ok();
        if running || before.get(q).copied().unwrap_or(0) == 0 {
            continue;
        }
        let value = json!({
            "src-uri": source_uri(from_amqp, vhost),
            "src-queue": name,
            "dest-uri": format!("amqp:///{}", encode(vhost)),
            "dest-queue": name,
            "ack-mode": "on-confirm",
            "src-delete-after": "queue-length",
            "reconnect-delay": 1,
        });
        hare.put(&path, &json!({ "value": value }))?;
    }
    wait(hare, &queues, &before, json_output)?;
    let after = amqp_counts(from_amqp, &queues)?;
    let mut rows = Vec::new();
    let mut moved_total = 0;
    for q in &queues {
        let b = before.get(q).copied().unwrap_or(0);
        let left = after.get(q).copied().unwrap_or(0);
        let here = count(hare, q)?.unwrap_or(0);
        let moved = b.saturating_sub(left);
        moved_total += moved;
        rows.push(json!({ "vhost": q.0, "queue": q.1, "at_source_before": b, "moved": moved, "left_at_source": left, "in_hare": here }));
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { moved_total as f64 / secs } else { 0.0 };
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "queues": rows, "moved": moved_total, "seconds": secs, "per_second": rate, "left_out_shovels": left_out })
            )
            .unwrap_or_default()
        );
    } else {
        println!("{:<24} {:<30} {:>12} {:>12} {:>12} {:>12}", "vhost", "queue", "before", "moved", "left", "in hare");
        for r in &rows {
            println!(
                "{:<24} {:<30} {:>12} {:>12} {:>12} {:>12}",
                r["vhost"].as_str().unwrap_or_default(),
                r["queue"].as_str().unwrap_or_default(),
                r["at_source_before"],
                r["moved"],
                r["left_at_source"],
                r["in_hare"]
            );
        }
        println!("moved {moved_total} messages in {secs:.1} s ({rate:.0} msg/s)");
    }
    Ok(())
}

/// Waits until every queue's shovel is gone (done), drawing a progress bar per queue.
fn wait(hare: &Api, queues: &[QueueKey], before: &BTreeMap<QueueKey, u64>, quiet: bool) -> Result<(), CtlError> {
    let tty = std::io::stdout().is_terminal() && !quiet;
    let mut drawn = 0;
    let mut last_line = Instant::now();
    loop {
        let statuses = hare.get("/api/shovels")?;
        let moved_of = |q: &QueueKey| {
            statuses.as_array().into_iter().flatten().find_map(|s| {
                (s["vhost"] == q.0.as_str() && s["name"] == shovel_name(&q.1).as_str())
                    .then(|| s["messages_shovelled"].as_u64().unwrap_or(0))
            })
        };
        let mut pending = 0;
        let mut lines = Vec::new();
        for q in queues {
            let path = format!("/api/parameters/shovel/{}/{}", encode(&q.0), encode(&shovel_name(&q.1)));
            let active = hare.get(&path).is_ok();
            let total = before.get(q).copied().unwrap_or(0);
            let moved = if active { moved_of(q).unwrap_or(0).min(total) } else { total };
            pending += usize::from(active);
            let width = 30;
            let filled = (moved * width as u64).checked_div(total).map_or(width, |f| f as usize);
            lines.push(format!(
                "{:<30} [{}{}] {moved}/{total}",
                format!("{}{}", if q.0 == "/" { String::new() } else { format!("{}/", q.0) }, q.1),
                "#".repeat(filled),
                "-".repeat(width - filled)
            ));
        }
        if tty {
            let mut out = std::io::stdout().lock();
            if drawn > 0 {
                let _ = write!(out, "\x1b[{drawn}A");
            }
            for l in &lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            let _ = out.flush();
            drawn = lines.len();
        } else if !quiet && (pending == 0 || last_line.elapsed() >= Duration::from_secs(5)) {
            last_line = Instant::now();
            for l in &lines {
                println!("{l}");
            }
        }
        if pending == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_uris_name_each_vhost() {
        assert_eq!(source_uri("amqp://u:p@rabbit:5672", "/"), "amqp://u:p@rabbit:5672/%2F");
        assert_eq!(source_uri("amqp://u:p@rabbit:5672/%2F", "shop"), "amqp://u:p@rabbit:5672/shop");
        assert_eq!(decode("p%40ss"), "p@ss");
        let (defs, n) = importable(json!({"parameters": [{"component": "shovel"}, {"component": "vhost-limits"}]}));
        assert_eq!((n, defs["parameters"].as_array().unwrap().len()), (1, 1));
    }
}
