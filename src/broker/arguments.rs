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

/// Every queue argument some queue type of RabbitMQ 3.10 takes: one a stream does not take
/// is refused on a stream (others are kept and ignored, as on any queue).
const KNOWN_ARGS: &[&str] = &[
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
    "x-delivery-limit",
    "x-queue-master-locator",
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
    /// Checks every known argument and parses the settings; `queue` and `vhost` name the
    /// queue in the error text.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<QueueArguments> {
        let mut out = QueueArguments::default();
        let stream = matches!(args.get("x-queue-type"), Some(FieldValue::LongStr(t)) if &t[..] == b"stream");
        // A stream checks the values of the arguments it takes, then refuses those it does
        // not (RabbitMQ's check_declare_arguments: values first, then keys).
        let mut refused = None;
        for (key, value) in args.iter() {
            let invalid = |why: String| {
                AmqpError::precondition_failed(format!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
                ))
            };
            if stream && !STREAM_ARGS.contains(&key.as_str()) {
                if refused.is_none() && KNOWN_ARGS.contains(&key.as_str()) {
                    refused = Some(key.to_string());
                }
                continue;
            }
            match key.as_str() {
                "x-max-age" => {
                    out.max_age = Some(match value {
                        FieldValue::LongStr(b) => std::str::from_utf8(b)
                            .ok()
                            .and_then(parse_max_age)
                            .ok_or_else(|| invalid("invalid_max_age".into()))?,
                        other => return Err(invalid(unacceptable(other))),
                    })
                }
                "x-stream-max-segment-size-bytes" => {
                    out.max_segment_bytes = Some(non_negative(value).map_err(invalid)?)
                }
                "x-initial-cluster-size" => {
                    if non_negative(value).map_err(invalid)? == 0 {
                        return Err(invalid("{value_zero,0}".into()));
                    }
                }
                "x-queue-leader-locator" => {
                    let locator = string(value).map_err(invalid)?;
                    if !matches!(locator.as_str(), "client-local" | "balanced" | "random" | "least-leaders") {
                        return Err(invalid("invalid_queue_locator_arg".into()));
                    }
                }
                "x-message-ttl" => out.message_ttl = Some(expiry(value, false).map_err(invalid)?),
                "x-expires" => out.expires = Some(expiry(value, true).map_err(invalid)?),
                "x-dead-letter-exchange" => out.dead_letter_exchange = Some(string(value).map_err(invalid)?),
                "x-dead-letter-routing-key" => {
                    let rk = string(value).map_err(invalid)?;
                    if args.get("x-dead-letter-exchange").is_none() {
                        return Err(invalid("routing_key_but_no_dlx_defined".into()));
                    }
                    out.dead_letter_routing_key = Some(rk);
                }
                "x-max-length" => out.max_length = Some(non_negative(value).map_err(invalid)?),
                "x-max-length-bytes" => out.max_length_bytes = Some(non_negative(value).map_err(invalid)?),
                "x-delivery-limit" => out.delivery_limit = Some(non_negative(value).map_err(invalid)?),
                "x-max-priority" => {
                    let p = non_negative(value).map_err(invalid)?;
                    if p as i64 > MAX_PRIORITY {
                        return Err(invalid(format!("{{max_value_exceeded,{p}}}")));
                    }
                    out.max_priority = Some(p as u8);
                }
                "x-overflow" => {
                    out.overflow = match string(value).map_err(invalid)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        _ => return Err(invalid("invalid_overflow".into())),
                    }
                }
                "x-single-active-consumer" => out.single_active_consumer = boolean(value).map_err(invalid)?,
                "x-queue-mode" => {
                    if !matches!(string(value).map_err(invalid)?.as_str(), "default" | "lazy") {
                        return Err(invalid("invalid_queue_mode".into()));
                    }
                }
                "x-queue-type" => match string(value).map_err(invalid)?.as_str() {
                    "classic" => {}
                    // Accepted so that clients asking for them work; they run as classic
                    // queues on one node (see the README).
                    "quorum" => out.quorum = true,
                    "stream" => out.stream = true,
                    _ => return Err(invalid("invalid_queue_type".into())),
                },
                _ => {}
            }
        }
        if let Some(key) = refused {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_stream_queue"
            )));
        }
        Ok(out)
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
                ("x-delivery-limit", FieldValue::I32(1)),
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
        assert_eq!(a.delivery_limit, Some(1));
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
        assert!(err(&[("x-queue-type", FieldValue::string("fancy"))]).ends_with("invalid_queue_type"));
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
