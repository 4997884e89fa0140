//! Headers exchange: x-match all, any, all-with-x or any-with-x over the binding arguments.
//! Values compare as RabbitMQ compares them: integers by value whatever their width, void
//! in a binding matches any value.

use super::{Binding, Destination, Router};
use crate::broker::error::{AmqpError, AmqpResult};
use crate::types::{FieldTable, FieldValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

#[derive(Debug)]
struct HeadersBinding {
    mode: MatchMode,
    arguments: FieldTable,
    binding: Binding,
}

#[derive(Debug, Default)]
pub struct HeadersRouter {
    bindings: Vec<HeadersBinding>,
}

fn mode_of(args: &FieldTable) -> AmqpResult<MatchMode> {
    match args.get("x-match") {
        None => Ok(MatchMode::All),
        Some(FieldValue::LongStr(s)) => match &s[..] {
            b"all" => Ok(MatchMode::All),
            b"any" => Ok(MatchMode::Any),
            b"all-with-x" => Ok(MatchMode::AllWithX),
            b"any-with-x" => Ok(MatchMode::AnyWithX),
            other => Err(AmqpError::precondition_failed(format!(
                "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                String::from_utf8_lossy(other)
            ))),
        },
        Some(v) => Err(AmqpError::precondition_failed(format!(
            "Invalid x-match field type {} (value {:?}); expected longstr",
            v.type_name(),
            v
        ))),
    }
}

pub fn validate(args: &FieldTable) -> AmqpResult<()> {
    mode_of(args).map(|_| ())
}

fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => match (a, b) {
            (FieldValue::LongStr(x) | FieldValue::ByteArray(x), FieldValue::LongStr(y) | FieldValue::ByteArray(y)) => {
                x == y
            }
            _ => a == b,
        },
    }
}

fn matches(mode: MatchMode, args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let with_x = matches!(mode, MatchMode::AllWithX | MatchMode::AnyWithX);
    let all = matches!(mode, MatchMode::All | MatchMode::AllWithX);
    let mut considered = args.iter().filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")));
    let hit = |(k, v): (&crate::types::ShortStr, &FieldValue)| match headers.and_then(|h| h.get(k)) {
        None => false,
        Some(hv) => matches!(v, FieldValue::Void) || values_equal(v, hv),
    };
    if all {
        considered.all(hit)
    } else {
        considered.any(hit)
    }
}

impl Router for HeadersRouter {
    fn bind(&mut self, b: &Binding) {
        let mode = mode_of(&b.arguments).unwrap_or(MatchMode::All);
        self.bindings.push(HeadersBinding { mode, arguments: b.arguments.clone(), binding: b.clone() });
    }
    fn unbind(&mut self, b: &Binding) {
        if let Some(pos) = self.bindings.iter().position(|h| {
            h.binding.destination == b.destination
                && h.binding.routing_key == b.routing_key
                && h.arguments.equivalent(&b.arguments)
        }) {
            self.bindings.remove(pos);
        }
    }
    fn route(&self, _routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        for h in &self.bindings {
            if matches(h.mode, &h.arguments, headers) && !out.contains(&h.binding.destination) {
                out.push(h.binding.destination.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(k, v.clone());
        }
        t
    }

    #[test]
    fn match_modes() {
        let h = table(&[("a", FieldValue::I32(1)), ("b", FieldValue::string("x")), ("x-k", FieldValue::I8(1))]);
        let all = table(&[("a", FieldValue::I64(1)), ("b", FieldValue::string("x"))]);
        assert!(matches(MatchMode::All, &all, Some(&h)));
        let all_miss = table(&[("a", FieldValue::I64(1)), ("c", FieldValue::Void)]);
        assert!(!matches(MatchMode::All, &all_miss, Some(&h)));
        assert!(matches(MatchMode::Any, &all_miss, Some(&h)));
        let void = table(&[("b", FieldValue::Void)]);
        assert!(matches(MatchMode::All, &void, Some(&h)));
        let x_only = table(&[("x-k", FieldValue::I8(1))]);
        assert!(!matches(MatchMode::Any, &x_only, Some(&h)));
        assert!(matches(MatchMode::AnyWithX, &x_only, Some(&h)));
        assert!(matches(MatchMode::AllWithX, &x_only, Some(&h)));
        assert!(matches(MatchMode::All, &FieldTable::new(), None));
        assert!(!matches(MatchMode::Any, &FieldTable::new(), None));
    }
}
