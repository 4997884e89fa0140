//! A dynamic shovel's value (the `shovel` runtime parameter), checked as RabbitMQ's
//! `rabbit_shovel_parameters:validate` checks it, with its texts, and read into the settings a
//! worker runs with. No I/O.

use super::uri;
use crate::broker::policy::erlang_term;
use serde_json::{Map, Value};

/// When a shovel acknowledges a message at its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Once the destination confirmed it (the default): a dropped link or a crash of either
    /// side loses nothing.
    OnConfirm,
    /// Once it is published to the destination.
    OnPublish,
    /// Consumed without acknowledgements.
    NoAck,
}

/// When a shovel stops and deletes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteAfter {
    Never,
    /// After as many messages as the source queue held when the shovel started.
    QueueLength,
    Count(u64),
}

/// A shovel's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ShovelDef {
    pub src_uri: String,
    pub src_queue: Option<String>,
    pub src_exchange: Option<String>,
    pub src_exchange_key: String,
    pub src_queue_args: Map<String, Value>,
    pub src_prefetch_count: u16,
    pub delete_after: DeleteAfter,
    pub dest_uri: String,
    pub dest_queue: Option<String>,
    pub dest_exchange: Option<String>,
    pub dest_exchange_key: Option<String>,
    pub dest_queue_args: Map<String, Value>,
    pub ack_mode: AckMode,
    pub reconnect_delay_s: f64,
    pub add_forward_headers: bool,
    pub add_timestamp_header: bool,
}

/// RabbitMQ's default reconnect delay of a dynamic shovel, in seconds.
const DEFAULT_RECONNECT_DELAY: f64 = 5.0;
const DEFAULT_PREFETCH: u16 = 1000;

type Check = fn(&str, &Value) -> Result<(), String>;

fn number(name: &str, v: &Value) -> Result<(), String> {
    if v.is_number() {
        return Ok(());
    }
    Err(format!("{name} should be a number, actually was {}", erlang_term(v)))
}

fn binary(name: &str, v: &Value) -> Result<(), String> {
    if v.is_string() {
        return Ok(());
    }
    Err(format!("{name} should be binary, actually was {}", erlang_term(v)))
}

fn boolean(name: &str, v: &Value) -> Result<(), String> {
    if v.is_boolean() {
        return Ok(());
    }
    Err(format!("{name} should be boolean, actually was {}", erlang_term(v)))
}

fn object(name: &str, v: &Value) -> Result<(), String> {
    if v.is_object() {
        return Ok(());
    }
    Err(format!("{name} not a list {}", erlang_term(v)))
}

fn queue_name(name: &str, v: &Value) -> Result<(), String> {
    binary(name, v)?;
    let len = v.as_str().map_or(0, str::len);
    if len > 255 {
        return Err(format!("{name} should be less than 255 bytes, actually was {len}"));
    }
    Ok(())
}

fn enumerated(name: &str, v: &Value, options: &[&str]) -> Result<(), String> {
    let list = format!("[{}]", options.iter().map(|o| format!("<<\"{o}\">>")).collect::<Vec<_>>().join(","));
    match v.as_str() {
        Some(s) if options.contains(&s) => Ok(()),
        Some(_) => Err(format!("{name} should be one of {list}, actually was {}", erlang_term(v))),
        None => Err(format!("{name} should be binary, actually was {}", erlang_term(v))),
    }
}

fn ack_mode(name: &str, v: &Value) -> Result<(), String> {
    enumerated(name, v, &["no-ack", "on-publish", "on-confirm"])
}

fn protocol(name: &str, v: &Value) -> Result<(), String> {
    enumerated(name, v, &["amqp10", "amqp091"])
}

fn uri_check(name: &str, v: &Value) -> Result<(), String> {
    let one = |s: &str| uri::parse(s).map(|_| ()).map_err(|e| format!("\"{s}\" not a valid URI: {{{e},\"{s}\"}}"));
    match v {
        Value::String(s) => one(s),
        Value::Array(items) => {
            for i in items {
                match i.as_str() {
                    Some(s) => one(s)?,
                    None => return Err(format!("{name} should be binary, actually was {}", erlang_term(i))),
                }
            }
            Ok(())
        }
        other => Err(format!("{name} should be list, actually was {}", erlang_term(other))),
    }
}

fn delete_after(name: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) if s == "never" || s == "queue-length" => Ok(()),
        Value::Number(n) if n.as_u64().is_some() => Ok(()),
        other => Err(format!(
            "{name} should be a number greater than or equal to 0, \"never\" or \"queue-length\", actually was {}",
            erlang_term(other)
        )),
    }
}

/// The keys RabbitMQ validates, in its order: (key, check, mandatory).
const KEYS: &[(&str, Check, bool)] = &[
    ("reconnect-delay", number, false),
    ("ack-mode", ack_mode, false),
    ("src-protocol", protocol, false),
    ("dest-protocol", protocol, false),
    ("src-uri", uri_check, true),
    ("src-exchange", binary, false),
    ("src-exchange-key", binary, false),
    ("src-queue", binary, false),
    ("src-queue-args", object, false),
    ("src-consumer-args", object, false),
    ("prefetch-count", number, false),
    ("src-prefetch-count", number, false),
    ("delete-after", delete_after, false),
    ("src-delete-after", delete_after, false),
    ("dest-uri", uri_check, true),
    ("dest-exchange", binary, false),
    ("dest-exchange-key", binary, false),
    ("dest-queue", queue_name, false),
    ("dest-queue-args", object, false),
    ("add-forward-headers", boolean, false),
    ("add-timestamp-header", boolean, false),
    ("dest-add-forward-headers", boolean, false),
    ("dest-add-timestamp-header", boolean, false),
    ("publish-properties", object, false),
    ("dest-publish-properties", object, false),
];

/// Checks a shovel's value; the error is RabbitMQ's whole text (`Validation failed`, then
/// each problem on a line, in its order).
pub fn validate(name: &str, value: &Value) -> Result<ShovelDef, String> {
    let Some(def) = value.as_object() else {
        return Err(crate::broker::parameters::validation_failed(vec![format!(
            "{name} not a list {}",
            erlang_term(value)
        )]));
    };
    let mut errors = Vec::new();
    // The source and destination rules first, as RabbitMQ lists them.
    match (def.contains_key("src-exchange"), def.contains_key("src-queue")) {
        (false, false) => errors.push("Must specify 'src-exchange' or 'src-queue'".to_string()),
        (true, true) => errors.push("Cannot specify 'src-exchange' and 'src-queue'".to_string()),
        _ => {}
    }
    let after = def.get("src-delete-after").or_else(|| def.get("delete-after"));
    if after.is_some_and(Value::is_i64) && def.get("ack-mode").and_then(Value::as_str) == Some("no-ack") {
        errors.push("Cannot specify 'no-ack' and numerical 'delete-after'".to_string());
    }
    if def.contains_key("dest-exchange") && def.contains_key("dest-queue") {
        errors.push("Cannot specify 'dest-exchange' and 'dest-queue'".to_string());
    }
    // Then each key's check; RabbitMQ collects them in reverse, after the unknown keys.
    let mut checks = Vec::new();
    for (key, check, mandatory) in KEYS {
        match def.get(*key) {
            Some(v) => {
                if let Err(e) = check(key, v) {
                    checks.push(e);
                }
            }
            None if *mandatory => checks.push(format!("Key \"{key}\" not found in {name}")),
            None => {}
        }
    }
    let unknown: Vec<String> = def
        .iter()
        .filter(|(k, _)| !KEYS.iter().any(|(key, _, _)| key == k))
        .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang_term(v)))
        .collect();
    if !unknown.is_empty() {
        errors.push(format!("Unrecognised terms [{}] in {name}", unknown.join(",")));
    }
    errors.extend(checks.into_iter().rev());
    if errors.is_empty() {
        // RabbitMQ's checks passed; Hare's shovels speak AMQP 0-9-1 alone.
        for key in ["src-protocol", "dest-protocol"] {
            if def.get(key).and_then(Value::as_str) == Some("amqp10") {
                errors.push(format!("{key} amqp10 is not supported: Hare's shovels speak amqp091"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(crate::broker::parameters::validation_failed(errors));
    }
    Ok(read(def))
}

fn first_uri(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.first().and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// The settings of a validated value.
fn read(def: &Map<String, Value>) -> ShovelDef {
    let s = |k: &str| def.get(k).and_then(Value::as_str).map(str::to_string);
    let b = |k: &str, legacy: &str| def.get(k).or_else(|| def.get(legacy)).and_then(Value::as_bool).unwrap_or(false);
    let map = |k: &str| def.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
    let after = def.get("src-delete-after").or_else(|| def.get("delete-after"));
    ShovelDef {
        src_uri: first_uri(def.get("src-uri")),
        src_queue: s("src-queue"),
        src_exchange: s("src-exchange"),
        src_exchange_key: s("src-exchange-key").unwrap_or_default(),
        src_queue_args: map("src-queue-args"),
        src_prefetch_count: def
            .get("src-prefetch-count")
            .or_else(|| def.get("prefetch-count"))
            .and_then(Value::as_f64)
            .map_or(DEFAULT_PREFETCH, |n| n.clamp(1.0, u16::MAX as f64) as u16),
        delete_after: match after {
            Some(Value::String(x)) if x == "queue-length" => DeleteAfter::QueueLength,
            Some(Value::Number(n)) => DeleteAfter::Count(n.as_u64().unwrap_or(0)),
            _ => DeleteAfter::Never,
        },
        dest_uri: first_uri(def.get("dest-uri")),
        dest_queue: s("dest-queue"),
        dest_exchange: s("dest-exchange"),
        dest_exchange_key: s("dest-exchange-key"),
        dest_queue_args: map("dest-queue-args"),
        ack_mode: match def.get("ack-mode").and_then(Value::as_str) {
            Some("no-ack") => AckMode::NoAck,
            Some("on-publish") => AckMode::OnPublish,
            _ => AckMode::OnConfirm,
        },
        reconnect_delay_s: def
            .get("reconnect-delay")
            .and_then(Value::as_f64)
            .unwrap_or(DEFAULT_RECONNECT_DELAY)
            .max(0.0),
        add_forward_headers: b("dest-add-forward-headers", "add-forward-headers"),
        add_timestamp_header: b("dest-add-timestamp-header", "add-timestamp-header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_shovel_reads_with_rabbitmqs_defaults() {
        let d = validate(
            "s",
            &json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": ["amqp://h"], "dest-queue": "b"}),
        )
        .unwrap();
        assert_eq!((d.ack_mode, d.delete_after, d.src_prefetch_count), (AckMode::OnConfirm, DeleteAfter::Never, 1000));
        assert_eq!((d.dest_uri.as_str(), d.reconnect_delay_s), ("amqp://h", 5.0));
        let d = validate(
            "s",
            &json!({"src-uri": "amqp://", "src-exchange": "x", "src-exchange-key": "k", "dest-uri": "amqp://",
                    "src-delete-after": "queue-length", "ack-mode": "on-publish", "prefetch-count": 10}),
        )
        .unwrap();
        assert_eq!(
            (d.ack_mode, d.delete_after, d.src_prefetch_count),
            (AckMode::OnPublish, DeleteAfter::QueueLength, 10)
        );
    }

    #[test]
    fn refusals_read_as_rabbitmqs() {
        assert_eq!(
            validate("s", &json!({"src-uri": "amqp://", "dest-uri": 5, "bogus": 1, "ack-mode": "sometimes"})).unwrap_err(),
            "Validation failed\n\nMust specify 'src-exchange' or 'src-queue'\nUnrecognised terms [{<<\"bogus\">>,1}] in s\n\
             dest-uri should be list, actually was 5\n\
             ack-mode should be one of [<<\"no-ack\">>,<<\"on-publish\">>,<<\"on-confirm\">>], actually was <<\"sometimes\">>\n"
        );
        let e = validate(
            "s",
            &json!({"src-queue": "a", "src-exchange": "x", "dest-queue": "q", "dest-exchange": "e",
                                      "src-delete-after": 5, "ack-mode": "no-ack"}),
        )
        .unwrap_err();
        assert!(e.starts_with(
            "Validation failed\n\nCannot specify 'src-exchange' and 'src-queue'\nCannot specify 'no-ack' and numerical \
             'delete-after'\nCannot specify 'dest-exchange' and 'dest-queue'\nKey \"dest-uri\" not found in s\nKey \
             \"src-uri\" not found in s\n"
        ));
        assert!(validate("s", &json!({"src-uri": "http://x", "src-queue": "a", "dest-uri": "amqp://"}))
            .unwrap_err()
            .contains("\"http://x\" not a valid URI"));
        assert!(validate(
            "s",
            &json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-delete-after": "soon"})
        )
        .unwrap_err()
        .contains("src-delete-after should be a number greater than or equal to 0"));
    }
}
