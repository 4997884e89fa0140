//! AMQP errors as RabbitMQ raises them: a reply code, a text naming the problem, and whether
//! it closes the channel or the whole connection.

use crate::types::constants::*;
use crate::types::FieldValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Channel,
    Connection,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} - {text}", reply_name(*code))]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    pub scope: Scope,
    /// The method that failed, filled in by the channel that ran it.
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        let scope = match code {
            CONTENT_TOO_LARGE | NO_ROUTE | NO_CONSUMERS | ACCESS_REFUSED | NOT_FOUND | RESOURCE_LOCKED
            | PRECONDITION_FAILED => Scope::Channel,
            _ => Scope::Connection,
        };
        AmqpError { code, text: text.into(), scope, class_id: 0, method_id: 0 }
    }
    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(NOT_FOUND, text)
    }
    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::new(ACCESS_REFUSED, text)
    }
    pub fn resource_locked(text: impl Into<String>) -> Self {
        Self::new(RESOURCE_LOCKED, text)
    }
    pub fn precondition_failed(text: impl Into<String>) -> Self {
        Self::new(PRECONDITION_FAILED, text)
    }
    pub fn command_invalid(text: impl Into<String>) -> Self {
        Self::new(COMMAND_INVALID, text)
    }
    pub fn not_allowed(text: impl Into<String>) -> Self {
        Self::new(NOT_ALLOWED, text)
    }
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Self::new(NOT_IMPLEMENTED, text)
    }
    pub fn channel_error(text: impl Into<String>) -> Self {
        Self::new(CHANNEL_ERROR, text)
    }
    pub fn frame_error(text: impl Into<String>) -> Self {
        Self::new(FRAME_ERROR, text)
    }
    pub fn syntax_error(text: impl Into<String>) -> Self {
        Self::new(SYNTAX_ERROR, text)
    }
    pub fn unexpected_frame(text: impl Into<String>) -> Self {
        Self::new(UNEXPECTED_FRAME, text)
    }
    pub fn internal_error(text: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, text)
    }
    pub fn with_method(mut self, ids: (u16, u16)) -> Self {
        self.class_id = ids.0;
        self.method_id = ids.1;
        self
    }
    /// The reply text as sent on the wire, at most 255 bytes.
    pub fn reply_text(&self) -> String {
        let mut s = format!("{} - {}", reply_name(self.code), self.text);
        if s.len() > 255 {
            let mut cut = 255;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

pub type AmqpResult<T> = Result<T, AmqpError>;

/// A field value as RabbitMQ prints it in error texts: strings as their text, other values
/// as Erlang terms (`1`, `true`, `[{<<"k">>,longstr,<<"v">>}]` for a table).
pub fn erlang_value(v: &FieldValue) -> String {
    fn term(v: &FieldValue) -> String {
        match v {
            FieldValue::LongStr(b) | FieldValue::ByteArray(b) => format!("<<\"{}\">>", String::from_utf8_lossy(b)),
            other => erlang_value(other),
        }
    }
    match v {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::I8(n) => n.to_string(),
        FieldValue::U8(n) => n.to_string(),
        FieldValue::I16(n) => n.to_string(),
        FieldValue::U16(n) => n.to_string(),
        FieldValue::I32(n) => n.to_string(),
        FieldValue::U32(n) => n.to_string(),
        FieldValue::I64(n) => n.to_string(),
        FieldValue::Timestamp(n) => n.to_string(),
        FieldValue::F32(f) => format!("{:?}", *f as f64),
        FieldValue::F64(f) => format!("{f:?}"),
        FieldValue::Decimal(scale, value) => format!("{{{scale},{value}}}"),
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => String::from_utf8_lossy(b).into_owned(),
        FieldValue::Void => "undefined".into(),
        FieldValue::Array(items) => {
            let parts: Vec<String> = items.iter().map(|i| format!("{{{},{}}}", i.type_name(), term(i))).collect();
            format!("[{}]", parts.join(","))
        }
        FieldValue::Table(t) => {
            let parts: Vec<String> =
                t.iter().map(|(k, i)| format!("{{<<\"{k}\">>,{},{}}}", i.type_name(), term(i))).collect();
            format!("[{}]", parts.join(","))
        }
    }
}

/// The two sides of an `inequivalent arg` text, as RabbitMQ words them: both values bare when
/// both are present (`received '2' but current is '1'`), with their types when one is missing
/// (`received none but current is the value '1' of type 'signedint'`).
pub fn describe_args(received: Option<&FieldValue>, current: Option<&FieldValue>) -> (String, String) {
    let typed = |v: Option<&FieldValue>| match v {
        Some(v) => format!("the value '{}' of type '{}'", erlang_value(v), v.type_name()),
        None => "none".into(),
    };
    match (received, current) {
        (Some(r), Some(c)) => (format!("'{}'", erlang_value(r)), format!("'{}'", erlang_value(c))),
        _ => (typed(received), typed(current)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FieldTable;

    #[test]
    fn values_print_as_rabbitmq_prints_them() {
        let one = FieldValue::I32(1);
        let e1 = FieldValue::string("E1");
        assert_eq!(describe_args(Some(&FieldValue::I32(2)), Some(&one)), ("'2'".into(), "'1'".into()));
        assert_eq!(describe_args(None, Some(&one)), ("none".into(), "the value '1' of type 'signedint'".into()));
        assert_eq!(describe_args(Some(&e1), None), ("the value 'E1' of type 'longstr'".into(), "none".into()));
        assert_eq!(describe_args(Some(&FieldValue::Bool(true)), Some(&e1)), ("'true'".into(), "'E1'".into()));
        let mut t = FieldTable::new();
        t.insert("k", FieldValue::string("v"));
        assert_eq!(erlang_value(&FieldValue::Table(t)), "[{<<\"k\">>,longstr,<<\"v\">>}]");
    }
}

impl From<crate::auth::Refused> for AmqpError {
    fn from(r: crate::auth::Refused) -> Self {
        if r.not_allowed {
            AmqpError::not_allowed(r.text)
        } else {
            AmqpError::access_refused(r.text)
        }
    }
}
