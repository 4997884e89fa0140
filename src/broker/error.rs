//! AMQP errors as RabbitMQ raises them: a reply code, a text naming the problem, and whether
//! it closes the channel or the whole connection.

use crate::protocol::constants::*;

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
