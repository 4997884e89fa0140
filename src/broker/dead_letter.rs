//! Dead-lettering: the copy of a message a queue republishes to its dead-letter exchange,
//! with the `x-death` history exactly as RabbitMQ writes it, and the cycle check.

use super::message::Message;
use crate::types::{BasicProperties, FieldTable, FieldValue, ShortStr};
use bytes::Bytes;

/// Why a message left its queue for the dead-letter exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject or basic.nack with requeue=false.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// A length limit dropped it (or refused it, with reject-publish-dlx).
    MaxLen,
    /// It was returned more often than `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn text(v: Option<&FieldValue>) -> Option<&[u8]> {
    match v {
        Some(FieldValue::LongStr(b)) => Some(b),
        _ => None,
    }
}

fn long(s: &str) -> FieldValue {
    FieldValue::string(s)
}

/// The message as it goes to the dead-letter exchange `dlx` with `routing_key`: its x-death
/// gains (or counts up) the entry for this queue and reason, most recent first; the
/// x-first-death-* headers are set once and x-last-death-* each time; a per-message
/// expiration moves into the entry as original-expiration so the copy does not expire again.
/// Returned beside it: the keys of its `CC` header, which it is routed to as well when
/// `keep_cc` (no dead-letter routing key); with one, as RabbitMQ, `CC` is removed.
pub fn dead_letter(
    m: &Message,
    reason: Reason,
    queue: &str,
    dlx: &ShortStr,
    routing_key: ShortStr,
    keep_cc: bool,
    now_ms: u64,
) -> (Message, Vec<ShortStr>) {
    let mut props = m.decode_properties();
    let mut headers = props.headers.take().unwrap_or_default();
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        text(t.get("queue")) == Some(queue.as_bytes()) && text(t.get("reason")) == Some(reason.as_str().as_bytes())
    };
    let found = deaths.iter().position(|d| matches!(d, FieldValue::Table(t) if same(t)));
    let entry = match found.map(|i| deaths.remove(i)) {
        Some(FieldValue::Table(mut t)) => {
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert("count", FieldValue::I64(count + 1));
            t
        }
        _ => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", long(reason.as_str()));
            t.insert("queue", long(queue));
            t.insert("time", FieldValue::Timestamp(now_ms / 1000));
            t.insert("exchange", long(&m.exchange));
            let mut keys = vec![long(&m.routing_key)];
            if let Some(FieldValue::Array(cc)) = headers.get("CC") {
                keys.extend(cc.iter().filter(|v| matches!(v, FieldValue::LongStr(_))).cloned());
            }
            t.insert("routing-keys", FieldValue::Array(keys));
            if let Some(exp) = &props.expiration {
                t.insert("original-expiration", long(exp));
            }
            t
        }
    };
    props.expiration = None;
    deaths.insert(0, FieldValue::Table(entry));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", long(reason.as_str()));
        headers.insert("x-first-death-queue", long(queue));
        headers.insert("x-first-death-exchange", long(&m.exchange));
    }
    headers.insert("x-last-death-reason", long(reason.as_str()));
    headers.insert("x-last-death-queue", long(queue));
    headers.insert("x-last-death-exchange", long(&m.exchange));
    headers.insert("x-death", FieldValue::Array(deaths));
    let cc = if keep_cc {
        crate::broker::message::header_routes(&headers).unwrap_or_default()
    } else {
        headers.remove("CC");
        Vec::new()
    };
    props.headers = Some(headers);
    let properties: Bytes = props.to_bytes();
    (Message::new(dlx.clone(), routing_key, properties, m.body.clone(), m.persistent), cc)
}

/// RabbitMQ's cycle rule: a dead-lettered message is not delivered to a queue it already
/// died in unless a client rejected it somewhere along the way; an automatic cycle
/// (expiry, length limit) would otherwise go round for ever.
pub fn is_cycle(dead: &Message, target_queue: &str) -> bool {
    let props = dead.decode_properties();
    let Some(FieldValue::Array(deaths)) = props.headers.as_ref().and_then(|h| h.get("x-death")) else {
        return false;
    };
    let tables = deaths.iter().filter_map(|d| match d {
        FieldValue::Table(t) => Some(t),
        _ => None,
    });
    let mut seen = false;
    for t in tables {
        if text(t.get("reason")) == Some(b"rejected") {
            return false;
        }
        seen |= text(t.get("queue")) == Some(target_queue.as_bytes());
    }
    seen
}

/// A message's `x-delivery-count` header set to `count`, as quorum queues add on redelivery.
pub fn with_delivery_count(m: &Message, count: u64) -> Message {
    let mut props: BasicProperties = m.decode_properties();
    props.headers.get_or_insert_with(FieldTable::new).insert("x-delivery-count", FieldValue::I64(count as i64));
    Message::new(m.exchange.clone(), m.routing_key.clone(), props.to_bytes(), m.body.clone(), m.persistent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiration: Option<&str>) -> Message {
        let props = BasicProperties { expiration: expiration.map(ShortStr::from), ..Default::default() };
        Message::new("work".into(), "job".into(), props.to_bytes(), Bytes::from_static(b"x"), true)
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m.decode_properties().headers.and_then(|mut h| h.remove("x-death")) {
            Some(FieldValue::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    FieldValue::Table(t) => t,
                    _ => panic!("x-death entry is not a table"),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn x_death_entries_are_counted_per_queue_and_reason() {
        let m = message(Some("500"));
        let once = dead_letter(&m, Reason::Expired, "q1", &"dlx".into(), "job".into(), true, 5_000).0;
        assert_eq!(once.exchange.as_str(), "dlx");
        let props = once.decode_properties();
        assert_eq!(props.expiration, None);
        let h = props.headers.unwrap();
        assert_eq!(h.get("x-first-death-reason"), Some(&FieldValue::string("expired")));
        assert_eq!(h.get("x-first-death-queue"), Some(&FieldValue::string("q1")));
        assert_eq!(h.get("x-first-death-exchange"), Some(&FieldValue::string("work")));
        let d = deaths(&once);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(d[0].get("time"), Some(&FieldValue::Timestamp(5)));
        assert_eq!(d[0].get("routing-keys"), Some(&FieldValue::Array(vec![FieldValue::string("job")])));
        assert_eq!(d[0].get("original-expiration"), Some(&FieldValue::string("500")));

        let twice = dead_letter(&once, Reason::Rejected, "q2", &"dlx2".into(), "job".into(), true, 6_000).0;
        let thrice = dead_letter(&twice, Reason::Expired, "q1", &"dlx".into(), "job".into(), true, 7_000).0;
        let d = deaths(&thrice);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].get("queue"), Some(&FieldValue::string("q1")));
        assert_eq!(d[0].get("count"), Some(&FieldValue::I64(2)));
        assert_eq!(d[1].get("reason"), Some(&FieldValue::string("rejected")));
        let h = thrice.decode_properties().headers.unwrap();
        assert_eq!(h.get("x-first-death-queue"), Some(&FieldValue::string("q1")));
        assert_eq!(h.get("x-last-death-queue"), Some(&FieldValue::string("q1")));
    }

    #[test]
    fn automatic_cycles_are_detected_rejections_break_them() {
        let m = message(None);
        let expired = dead_letter(&m, Reason::Expired, "a", &"dlx".into(), "job".into(), true, 0).0;
        assert!(is_cycle(&expired, "a"));
        assert!(!is_cycle(&expired, "b"));
        let rejected = dead_letter(&m, Reason::Rejected, "a", &"dlx".into(), "job".into(), true, 0).0;
        assert!(!is_cycle(&rejected, "a"));
    }
}
