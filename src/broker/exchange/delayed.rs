//! The delayed-message exchange (`x-delayed-message`), as RabbitMQ's
//! rabbitmq_delayed_message_exchange plugin: it routes as the type its `x-delayed-type`
//! argument names (direct, fanout, topic, headers, x-consistent-hash), except that a message
//! whose `x-delay` header asks for 1 ms to 2^32-1 ms is held until then and routed through
//! the exchange's bindings as they are at that moment, with the header turned negative so it
//! is not held again (and consumers can tell it was delayed).
//!
//! This file holds the type's rules: the declare checks and their texts, how a header value
//! becomes a delay, the header swap. Where held messages wait is the holding queue
//! (`broker::queue::delayed`); the vhost makes one for each delayed exchange
//! (`broker::vhost::delayed`).

use super::ExchangeKind;
use crate::broker::error::{AmqpError, AmqpResult};
use crate::types::{FieldTable, FieldValue};

/// The longest delay: the plugin's, Erlang's timer limit (2^32-1 ms, about 49.7 days). A
/// longer one, like a zero or negative one, routes the message at once.
pub const MAX_DELAY_MS: u64 = u32::MAX as u64;

/// The header a publisher sets.
pub const DELAY_HEADER: &str = "x-delay";

/// The exchange type a delayed exchange routes as, from its arguments, checked as the plugin
/// checks them at declare: a string naming an existing type other than itself.
pub fn routing_kind(arguments: &FieldTable) -> AmqpResult<ExchangeKind> {
    let named = match arguments.get("x-delayed-type") {
        Some(FieldValue::LongStr(b)) | Some(FieldValue::ByteArray(b)) => Some(String::from_utf8_lossy(b)),
        _ => None,
    };
    let Some(name) = named else {
        return Err(AmqpError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ));
    };
    if name == "x-delayed-message" {
        return Err(AmqpError::precondition_failed(
            "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        ));
    }
    ExchangeKind::parse(&name)
}

/// How long a message with these headers is held, if it is: the `x-delay` header as the
/// plugin reads it (an integer of any width, a string holding an integer, a float or
/// decimal truncated), when it is 1 to [`MAX_DELAY_MS`].
pub fn delay_of(headers: Option<&FieldTable>) -> Option<u64> {
    let value = headers?.get(DELAY_HEADER)?;
    let ms: i64 = match value {
        FieldValue::F32(f) => f.trunc() as i64,
        FieldValue::F64(f) => f.trunc() as i64,
        FieldValue::Decimal(scale, v) => (*v as u64 / 10u64.checked_pow(*scale as u32)?) as i64,
        // The plugin converts a string with Erlang's binary_to_integer; one that is not an
        // integer routes the message at once here.
        FieldValue::LongStr(b) => std::str::from_utf8(b).ok()?.trim().parse().ok()?,
        other => other.as_i64()?,
    };
    (ms > 0 && ms as u64 <= MAX_DELAY_MS).then_some(ms as u64)
}

/// A held message's headers as it is routed when due: `x-delay` set to minus the delay (a
/// signed 32-bit integer, as the plugin writes it, or 64-bit past its range). False, and
/// nothing changed, if they hold no delay.
pub fn swap_delay(headers: &mut FieldTable) -> bool {
    let Some(delay) = delay_of(Some(headers)) else { return false };
    let negative = -(delay as i64);
    let value = i32::try_from(negative).map_or(FieldValue::I64(negative), FieldValue::I32);
    headers.insert(DELAY_HEADER, value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: FieldValue) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert(DELAY_HEADER, v);
        t
    }

    #[test]
    fn delays_as_the_plugin_reads_them() {
        let cases = [
            (FieldValue::I32(1500), Some(1500)),
            (FieldValue::U8(7), Some(7)),
            (FieldValue::I64(MAX_DELAY_MS as i64), Some(MAX_DELAY_MS)),
            (FieldValue::I64(MAX_DELAY_MS as i64 + 1), None),
            (FieldValue::I32(0), None),
            (FieldValue::I32(-5), None),
            (FieldValue::string("250"), Some(250)),
            (FieldValue::string("soon"), None),
            (FieldValue::F64(99.9), Some(99)),
            (FieldValue::Decimal(2, 12345), Some(123)),
            (FieldValue::Bool(true), None),
        ];
        for (value, want) in cases {
            assert_eq!(delay_of(Some(&headers(value.clone()))), want, "{value:?}");
        }
        assert_eq!(delay_of(None), None);
        assert_eq!(delay_of(Some(&FieldTable::new())), None);
    }

    #[test]
    fn declare_checks_and_texts() {
        let mut args = FieldTable::new();
        let err = routing_kind(&args).unwrap_err();
        assert_eq!(
            (err.code, err.text.as_str()),
            (406, "Invalid argument, 'x-delayed-type' must be an existing exchange type")
        );
        args.insert("x-delayed-type", FieldValue::string("x-delayed-message"));
        let err = routing_kind(&args).unwrap_err();
        assert_eq!(err.text, "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'");
        args.insert("x-delayed-type", FieldValue::string("nonesuch"));
        assert_eq!(routing_kind(&args).unwrap_err().code, 503);
        args.insert("x-delayed-type", FieldValue::string("topic"));
        assert_eq!(routing_kind(&args).unwrap(), ExchangeKind::Topic);
    }

    #[test]
    fn released_header_is_negative() {
        let mut h = headers(FieldValue::I32(3000));
        assert!(swap_delay(&mut h));
        assert_eq!(h.get(DELAY_HEADER), Some(&FieldValue::I32(-3000)));
        let mut h = headers(FieldValue::I64(MAX_DELAY_MS as i64));
        assert!(swap_delay(&mut h));
        assert_eq!(h.get(DELAY_HEADER), Some(&FieldValue::I64(-(MAX_DELAY_MS as i64))));
        // Turned negative, it is not held again.
        assert!(!swap_delay(&mut h));
    }
}
