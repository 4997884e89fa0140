//! Queue and consumer `x-` arguments: one validator per argument, as RabbitMQ checks them,
//! and the parsed settings a queue runs with. A wrong type or value is a 406 naming the
//! argument, in RabbitMQ's words; arguments no validator knows are kept and ignored.

use super::error::{AmqpError, AmqpResult};
use crate::types::{FieldTable, FieldValue, ShortStr};

/// The largest TTL or expiry RabbitMQ accepts, in milliseconds.
const MAX_EXPIRY: i64 = u32::MAX as i64;
/// The highest priority a priority queue supports.
pub const MAX_PRIORITY: i64 = 255;

/// What a full queue does with one more message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message to make room.
    #[default]
    DropHead,
    /// Refuse the new message: publishers with confirms get a nack.
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

/// A queue's settings from its arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArguments {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub dead_letter_exchange: Option<ShortStr>,
    pub dead_letter_routing_key: Option<ShortStr>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    /// `x-queue-type: quorum`: redeliveries carry `x-delivery-count`, as quorum queues do.
    pub quorum: bool,
    /// `x-queue-type: stream`: an append-only log read by offset (see `queue::stream`).
    pub stream: bool,
    /// A stream's `x-max-age`, in milliseconds.
    pub max_age: Option<u64>,
    /// A stream's `x-stream-max-segment-size-bytes`.
    pub max_segment_bytes: Option<u64>,
}

/// The arguments RabbitMQ 3.10's stream queues take (`rabbit_stream_queue:capabilities/0`),
/// which are also those it compares when a stream is declared again.
pub const STREAM_ARGS: &[&str] = &[
    "x-max-length-bytes",
    "x-queue-type",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Whether some queue type takes `key` (RabbitMQ 3.10's `rabbit_queue_type:arguments/1`, the
/// union of the types' lists): one the declared type does not take is refused, naming the
/// type; any other `x-` argument is kept and ignored.
fn of_some_queue_type(key: &str) -> bool {
    CLASSIC_ARGS.contains(&key) || QUORUM_ARGS.contains(&key) || STREAM_ARGS.contains(&key)
}

/// The arguments classic queues take (`rabbit_classic_queue:capabilities/0`), and
/// `x-delivery-limit`: Hare's classic queues take it too (a deliberate extension, see
/// docs/compatibility.md), where RabbitMQ refuses it.
pub const CLASSIC_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
    "x-delivery-limit",
];

/// The arguments quorum queues take (`rabbit_quorum_queue:capabilities/0`).
pub const QUORUM_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// The order RabbitMQ validates the arguments' values in (`rabbit_amqqueue:declare_args/0`),
/// whatever their order in the table. `x-delivery-limit` and `x-queue-master-locator` have
/// no validator there: any value is accepted.
const VALIDATION_ORDER: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// RabbitMQ's checks of a quorum queue's or a stream's properties, in its order
/// (`rabbit_queue_type_util`: auto-delete, then exclusive, then non-durable): the 406 for
/// the first that makes the declaration invalid, if one does.
pub fn check_type_properties(
    auto_delete: bool,
    exclusive: bool,
    durable: bool,
    queue: &str,
    vhost: &str,
) -> AmqpResult<()> {
    let property = if auto_delete {
        "auto-delete"
    } else if exclusive {
        "exclusive-owner"
    } else if !durable {
        "non-durable"
    } else {
        return Ok(());
    };
    Err(AmqpError::precondition_failed(format!("invalid property '{property}' for queue '{queue}' in vhost '{vhost}'")))
}

/// The largest `x-stream-max-segment-size-bytes` RabbitMQ accepts.
pub const MAX_STREAM_SEGMENT_BYTES: u64 = 3_000_000_000;

/// Parses `x-max-age` as RabbitMQ does: a positive integer and one unit of `Y`, `M`
/// (30 days), `D`, `h`, `m` or `s`; milliseconds.
pub fn parse_max_age(text: &str) -> Option<u64> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let value: u64 = text[..digits].parse().ok().filter(|&v| v > 0)?;
    let unit: u64 = match &text[digits..] {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return None,
    };
    value.checked_mul(unit)
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    First,
    /// The start of the newest chunk.
    Last,
    /// What is published from now on (the default).
    Next,
    Offset(u64),
    /// The first chunk stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// basic.consume's `x-stream-offset`, as RabbitMQ parses it: `first`, `last`, `next`, an
/// integer offset, a timestamp (seconds), or an interval such as `1h` (from that long ago).
/// `now_ms` is the time an interval counts back from.
pub fn stream_offset(args: &FieldTable, queue: &str, vhost: &str, now_ms: u64) -> AmqpResult<StreamOffset> {
    let Some(v) = args.get("x-stream-offset") else { return Ok(StreamOffset::Next) };
    let parsed = match v {
        FieldValue::LongStr(b) => match std::str::from_utf8(b).unwrap_or("") {
            "first" => Some(StreamOffset::First),
            "last" => Some(StreamOffset::Last),
            "next" => Some(StreamOffset::Next),
            other => parse_max_age(other).map(|ms| StreamOffset::Timestamp(now_ms as i64 - ms as i64)),
        },
        FieldValue::Timestamp(secs) => Some(StreamOffset::Timestamp((*secs as i64).saturating_mul(1000))),
        other => integer(other).ok().map(|n| StreamOffset::Offset(n.max(0) as u64)),
    };
    parsed.ok_or_else(|| {
        let value = match v {
            FieldValue::LongStr(b) => format!("<<\"{}\">>", String::from_utf8_lossy(b)),
            other => super::error::erlang_value(other),
        };
        AmqpError::precondition_failed(format!(
            "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': \
             {{invalid_stream_offset_arg,{{{},{value}}}}}",
            v.type_name()
        ))
    })
}

impl QueueArguments {
    /// A queue of the type named `name` (`x-queue-type`), with no arguments yet, and
    /// RabbitMQ's module for the type (its error texts name it); None for an unknown type.
    fn of_type(name: &str) -> Option<(QueueArguments, &'static str)> {
        let mut out = QueueArguments::default();
        let module = match name {
            "classic" => "rabbit_classic_queue",
            "quorum" => {
                out.quorum = true;
                "rabbit_quorum_queue"
            }
            "stream" => {
                out.stream = true;
                "rabbit_stream_queue"
            }
            _ => return None,
        };
        Some((out, module))
    }

    /// The arguments this queue's type takes, in RabbitMQ's order: also those a declaration
    /// of an existing queue must repeat unchanged (`rabbit_misc:assert_args_equivalence`).
    pub fn type_arguments(&self) -> &'static [&'static str] {
        if self.stream {
            STREAM_ARGS
        } else if self.quorum {
            QUORUM_ARGS
        } else {
            CLASSIC_ARGS
        }
    }

    /// Checks the arguments as RabbitMQ 3.10's `check_declare_arguments` does and parses the
    /// settings; `queue` and `vhost` name the queue in the error text. First `x-queue-type`;
    /// then the values of the arguments the type takes, in RabbitMQ's order
    /// ([`VALIDATION_ORDER`]); then, in the table's order, any argument of another queue type
    /// (406 naming the type). Other `x-` arguments are kept and ignored.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<QueueArguments> {
        let invalid = |key: &str, why: String| {
            AmqpError::precondition_failed(format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"))
        };
        let type_name = match args.get("x-queue-type") {
            None => ShortStr::from("classic"),
            Some(value) => string(value).map_err(|why| invalid("x-queue-type", why))?,
        };
        let Some((mut out, module)) = QueueArguments::of_type(&type_name) else {
            return Err(invalid("x-queue-type", format!("\"unsupported queue type '{type_name}'\"")));
        };
        let taken = out.type_arguments();
        for &key in VALIDATION_ORDER.iter().filter(|k| taken.contains(k)) {
            if let Some(value) = args.get(key) {
                out.check(key, value, args).map_err(|why| invalid(key, why))?;
            }
        }
        if let Some((key, _)) =
            args.iter().find(|(k, _)| of_some_queue_type(k.as_str()) && !taken.contains(&k.as_str()))
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type {module}"
            )));
        }
        out.read_delivery_limit(args);
        Ok(out)
    }

    /// The settings of arguments stored earlier (a journal, a snapshot, the cluster's log):
    /// they were checked when declared, perhaps by a version of Hare that checked less, so
    /// nothing here refuses. A value that does not pass its check now is skipped (and
    /// logged); arguments the queue's type does not take are ignored.
    pub fn stored(args: &FieldTable, queue: &str, vhost: &str) -> QueueArguments {
        let type_name = args.get("x-queue-type").and_then(FieldValue::as_str);
        let (mut out, _) = type_name.and_then(QueueArguments::of_type).unwrap_or_default();
        let taken = out.type_arguments();
        for &key in VALIDATION_ORDER.iter().filter(|k| taken.contains(k)) {
            if let Some(value) = args.get(key) {
                if let Err(why) = out.check(key, value, args) {
                    tracing::warn!("queue '{queue}' in vhost '{vhost}': argument '{key}' ignored: {why}");
                }
            }
        }
        out.read_delivery_limit(args);
        out
    }

    /// `x-delivery-limit` (a quorum or classic queue's), which RabbitMQ does not validate: an
    /// integer is the limit (a negative one acts as 0: every return dead-letters), anything
    /// else none.
    fn read_delivery_limit(&mut self, args: &FieldTable) {
        if !self.stream {
            self.delivery_limit = args.get("x-delivery-limit").and_then(|v| integer(v).ok()).map(|n| n.max(0) as u64);
        }
    }

    /// Checks one argument's value (RabbitMQ's validator for `key`) and keeps what it sets;
    /// the error is RabbitMQ's reason, after "invalid arg '...' for queue '...':".
    fn check(&mut self, key: &str, value: &FieldValue, args: &FieldTable) -> Result<(), String> {
        match key {
            "x-expires" => self.expires = Some(expiry(value, true)?),
            "x-message-ttl" => self.message_ttl = Some(expiry(value, false)?),
            "x-dead-letter-exchange" => self.dead_letter_exchange = Some(string(value)?),
            "x-dead-letter-routing-key" => {
                let rk = string(value)?;
                if args.get("x-dead-letter-exchange").is_none() {
                    return Err("routing_key_but_no_dlx_defined".into());
                }
                self.dead_letter_routing_key = Some(rk);
            }
            "x-dead-letter-strategy" => {
                if !matches!(string(value)?.as_str(), "at-most-once" | "at-least-once") {
                    return Err("invalid_dlx_strategy".into());
                }
            }
            "x-max-length" => self.max_length = Some(non_negative(value)?),
            "x-max-length-bytes" => self.max_length_bytes = Some(non_negative(value)?),
            "x-max-in-memory-length" | "x-max-in-memory-bytes" => {
                non_negative(value)?;
            }
            "x-max-priority" => {
                let p = non_negative(value)?;
                if p as i64 > MAX_PRIORITY {
                    return Err(format!("{{max_value_exceeded,{p}}}"));
                }
                self.max_priority = Some(p as u8);
            }
            "x-overflow" => {
                self.overflow = match string(value)?.as_str() {
                    "drop-head" => Overflow::DropHead,
                    "reject-publish" => Overflow::RejectPublish,
                    "reject-publish-dlx" => Overflow::RejectPublishDlx,
                    _ => return Err("invalid_overflow".into()),
                }
            }
            "x-queue-mode" => {
                let mode = string(value)?;
                if !matches!(mode.as_str(), "default" | "lazy") {
                    return Err(format!("\"unsupported queue mode '{mode}'\""));
                }
            }
            "x-queue-version" => {
                let v = non_negative(value)?;
                if !matches!(v, 1 | 2) {
                    return Err(format!("\"unsupported queue version '{v}'\""));
                }
            }
            "x-single-active-consumer" => self.single_active_consumer = boolean(value)?,
            "x-quorum-initial-group-size" | "x-initial-cluster-size" => {
                if non_negative(value)? == 0 {
                    return Err("{value_zero,0}".into());
                }
            }
            "x-max-age" => {
                self.max_age = Some(match value {
                    FieldValue::LongStr(b) => {
                        std::str::from_utf8(b).ok().and_then(parse_max_age).ok_or("invalid_max_age")?
                    }
                    other => return Err(unacceptable(other)),
                })
            }
            "x-stream-max-segment-size-bytes" => self.max_segment_bytes = Some(non_negative(value)?),
            "x-queue-leader-locator" => {
                let locator = string(value)?;
                if !matches!(locator.as_str(), "client-local" | "balanced" | "random" | "least-leaders") {
                    return Err("invalid_queue_locator_arg".into());
                }
            }
            // x-queue-type was checked first.
            _ => {}
        }
        Ok(())
    }
}

/// The `x-priority` argument of basic.consume: any integer (default 0).
pub fn consumer_priority(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<i64> {
    match args.get("x-priority") {
        None => Ok(0),
        Some(v) => integer(v).map_err(|why| {
            AmqpError::precondition_failed(format!(
                "invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        }),
    }
}

fn unacceptable(v: &FieldValue) -> String {
    format!("{{unacceptable_type,{}}}", v.type_name())
}

fn integer(v: &FieldValue) -> Result<i64, String> {
    match v {
        FieldValue::I8(_)
        | FieldValue::U8(_)
        | FieldValue::I16(_)
        | FieldValue::U16(_)
        | FieldValue::I32(_)
        | FieldValue::U32(_)
        | FieldValue::I64(_) => v.as_i64().ok_or_else(|| not_integer(v)),
        _ => Err(not_integer(v)),
    }
}

/// RabbitMQ's text for a non-integer where an integer argument belongs (an Erlang string).
fn not_integer(v: &FieldValue) -> String {
    format!("\"expected integer, got {}\"", v.type_name())
}

fn non_negative(v: &FieldValue) -> Result<u64, String> {
    let n = integer(v)?;
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    Ok(n as u64)
}

/// A TTL or expiry in milliseconds: 0 to 2^32-1 (`x-expires` must not be 0).
fn expiry(v: &FieldValue, nonzero: bool) -> Result<u64, String> {
    let n = integer(v)?;
    if nonzero && n == 0 {
        return Err("{value_zero,0}".into());
    }
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    if n > MAX_EXPIRY {
        return Err(format!("{{value_too_large,{n},{MAX_EXPIRY}}}"));
    }
    Ok(n as u64)
}

fn string(v: &FieldValue) -> Result<ShortStr, String> {
    match v {
        FieldValue::LongStr(b) => {
            std::str::from_utf8(b).map(|s| ShortStr::from(s.to_string())).map_err(|_| unacceptable(v))
        }
        _ => Err(unacceptable(v)),
    }
}

fn boolean(v: &FieldValue) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| unacceptable(v))
}

/// Parses a message's `expiration` property as RabbitMQ does: a string of milliseconds.
pub fn parse_expiration(raw: &[u8]) -> AmqpResult<u64> {
    let text = String::from_utf8_lossy(raw);
    let n: i64 =
        text.parse().map_err(|_| AmqpError::precondition_failed(format!("invalid expiration '{text}': no_integer")))?;
    if n < 0 {
        return Err(AmqpError::precondition_failed(format!("invalid expiration '{text}': {{value_negative,{n}}}")));
    }
    if n > MAX_EXPIRY {
        return Err(AmqpError::precondition_failed(format!(
            "invalid expiration '{text}': {{value_too_large,{n},{MAX_EXPIRY}}}"
        )));
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(k, v.clone());
        }
        t
    }

    fn err(pairs: &[(&str, FieldValue)]) -> String {
        QueueArguments::parse(&args(pairs), "q", "/").unwrap_err().text
    }

    #[test]
    fn valid_arguments_parse() {
        let a = QueueArguments::parse(
            &args(&[
                ("x-message-ttl", FieldValue::I32(0)),
                ("x-expires", FieldValue::I64(1000)),
                ("x-dead-letter-exchange", FieldValue::string("dlx")),
                ("x-dead-letter-routing-key", FieldValue::string("dead")),
                ("x-max-length", FieldValue::U8(3)),
                ("x-overflow", FieldValue::string("reject-publish-dlx")),
                ("x-max-priority", FieldValue::I16(255)),
                ("x-single-active-consumer", FieldValue::Bool(true)),
                ("x-unknown", FieldValue::string("kept")),
            ]),
            "q",
            "/",
        )
        .unwrap();
        assert_eq!(a.message_ttl, Some(0));
        assert_eq!(a.expires, Some(1000));
        assert_eq!(a.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(a.max_length, Some(3));
        assert_eq!(a.overflow, Overflow::RejectPublishDlx);
        assert_eq!(a.max_priority, Some(255));
        assert!(a.single_active_consumer);
        assert_eq!(a.delivery_limit, None);
        // Hare's classic queues take a delivery limit too.
        let a = QueueArguments::parse(&args(&[("x-delivery-limit", FieldValue::I32(2))]), "q", "/").unwrap();
        assert_eq!(a.delivery_limit, Some(2));
    }

    /// RabbitMQ 3.10's `check_declare_arguments`: the values of the arguments the queue's type
    /// takes, in its validators' order; then any argument of another type, naming the type.
    #[test]
    fn arguments_are_checked_in_rabbitmq_order_and_by_queue_type() {
        // x-message-ttl's validator runs before x-max-priority's, whatever the table's order.
        let e = err(&[("x-max-priority", FieldValue::I32(300)), ("x-message-ttl", FieldValue::I32(-1))]);
        assert!(e.starts_with("invalid arg 'x-message-ttl' "), "{e}");
        // Another type's argument, valid or not, is refused with the type's module.
        assert_eq!(
            err(&[("x-quorum-initial-group-size", FieldValue::I32(0))]),
            "invalid arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        );
        let quorum = |pairs: &[(&str, FieldValue)]| {
            let mut all = vec![("x-queue-type", FieldValue::string("quorum"))];
            all.extend(pairs.iter().cloned());
            QueueArguments::parse(&args(&all), "q", "/")
        };
        // Values first: the bad group size is named, not the priority it does not take.
        let e = quorum(&[("x-max-priority", FieldValue::I32(5)), ("x-quorum-initial-group-size", FieldValue::I32(0))])
            .unwrap_err();
        assert!(
            e.text.ends_with("'x-quorum-initial-group-size' for queue 'q' in vhost '/': {value_zero,0}"),
            "{}",
            e.text
        );
        let e = quorum(&[("x-queue-mode", FieldValue::string("lazy")), ("x-max-priority", FieldValue::I32(5))])
            .unwrap_err();
        assert!(e.text.ends_with("'x-queue-mode' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"));
        // x-delivery-limit has no validator: an integer is the limit (a negative one acts as
        // 0), anything else none.
        let limit = |v| quorum(&[("x-delivery-limit", v)]).map(|a| a.delivery_limit).ok();
        assert_eq!(limit(FieldValue::I32(3)), Some(Some(3)));
        assert_eq!(limit(FieldValue::I32(-1)), Some(Some(0)));
        assert_eq!(limit(FieldValue::string("five")), Some(None));
        let e = quorum(&[("x-dead-letter-strategy", FieldValue::string("sometimes"))]).unwrap_err();
        assert!(e.text.ends_with("invalid_dlx_strategy"));
        assert!(quorum(&[("x-quorum-initial-group-size", FieldValue::I32(5))]).is_ok());
        assert!(err(&[("x-queue-version", FieldValue::I32(3))]).ends_with("\"unsupported queue version '3'\""));
        assert!(err(&[("x-queue-mode", FieldValue::string("slow"))]).ends_with("\"unsupported queue mode 'slow'\""));
    }

    #[test]
    fn invalid_arguments_name_the_argument_as_rabbitmq_does() {
        assert_eq!(
            err(&[("x-message-ttl", FieldValue::I32(-1))]),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            err(&[("x-message-ttl", FieldValue::string("10"))]),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert!(err(&[("x-expires", FieldValue::I32(0))]).ends_with("{value_zero,0}"));
        assert!(err(&[("x-max-priority", FieldValue::I32(256))]).ends_with("{max_value_exceeded,256}"));
        assert!(err(&[("x-overflow", FieldValue::string("drop-tail"))]).ends_with("invalid_overflow"));
        assert!(
            err(&[("x-dead-letter-routing-key", FieldValue::string("k"))]).ends_with("routing_key_but_no_dlx_defined")
        );
        assert!(err(&[("x-single-active-consumer", FieldValue::I32(1))]).ends_with("{unacceptable_type,signedint}"));
        assert!(err(&[("x-max-length", FieldValue::I64(-5))]).starts_with("invalid arg 'x-max-length' "));
        assert!(err(&[("x-message-ttl", FieldValue::I64(1 << 33))]).contains("value_too_large"));
        assert!(err(&[("x-queue-type", FieldValue::string("fancy"))]).ends_with("\"unsupported queue type 'fancy'\""));
    }

    #[test]
    fn stream_arguments_parse_as_rabbitmq_parses_them() {
        assert_eq!(parse_max_age("7D"), Some(7 * 86_400_000));
        assert_eq!(parse_max_age("12h"), Some(12 * 3_600_000));
        assert_eq!(parse_max_age("1Y"), Some(365 * 86_400_000));
        for bad in ["0s", "h", "10", "10x", "-1h", "1.5h"] {
            assert_eq!(parse_max_age(bad), None, "{bad}");
        }
        let stream = |pairs: &[(&str, FieldValue)]| {
            let mut all = vec![("x-queue-type", FieldValue::string("stream"))];
            all.extend(pairs.iter().cloned());
            QueueArguments::parse(&args(&all), "q", "/")
        };
        let a = stream(&[("x-max-age", FieldValue::string("1h")), ("x-max-length-bytes", FieldValue::I64(9))]).unwrap();
        assert!(a.stream);
        assert_eq!((a.max_age, a.max_length_bytes), (Some(3_600_000), Some(9)));
        // Values first, then arguments streams do not take.
        let e = stream(&[("x-max-priority", FieldValue::I32(3)), ("x-max-age", FieldValue::I32(3))]).unwrap_err();
        assert!(
            e.text.ends_with("'x-max-age' for queue 'q' in vhost '/': {unacceptable_type,signedint}"),
            "{}",
            e.text
        );
        let e = stream(&[("x-max-priority", FieldValue::I32(3))]).unwrap_err();
        assert!(e.text.ends_with("of queue type rabbit_stream_queue"), "{}", e.text);
        // Arguments no queue type takes are kept and ignored, on streams too.
        assert!(stream(&[("x-custom", FieldValue::I32(3))]).is_ok());

        let offset = |v: FieldValue| stream_offset(&args(&[("x-stream-offset", v)]), "q", "/", 10_000_000);
        assert_eq!(offset(FieldValue::string("first")).unwrap(), StreamOffset::First);
        assert_eq!(offset(FieldValue::string("last")).unwrap(), StreamOffset::Last);
        assert_eq!(offset(FieldValue::I16(42)).unwrap(), StreamOffset::Offset(42));
        assert_eq!(offset(FieldValue::Timestamp(5)).unwrap(), StreamOffset::Timestamp(5000));
        assert_eq!(offset(FieldValue::string("1m")).unwrap(), StreamOffset::Timestamp(10_000_000 - 60_000));
        assert_eq!(stream_offset(&FieldTable::new(), "q", "/", 0).unwrap(), StreamOffset::Next);
        assert!(offset(FieldValue::Bool(true)).unwrap_err().text.ends_with("{invalid_stream_offset_arg,{bool,true}}"));
    }

    #[test]
    fn expiration_property() {
        assert_eq!(parse_expiration(b"1500").unwrap(), 1500);
        assert!(parse_expiration(b"soon").unwrap_err().text.contains("invalid expiration 'soon'"));
        assert!(parse_expiration(b"-1").is_err());
    }
}
