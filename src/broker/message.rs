//! A published message as the broker holds it: routing data, raw properties, body.

use crate::protocol::{BasicProperties, ShortStr};
use bytes::Bytes;

#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Property flags and list exactly as published (or as rewritten for direct reply-to).
    pub properties: Bytes,
    pub body: Bytes,
    pub persistent: bool,
}

impl Message {
    /// Bytes this message adds to a queue or an outbound buffer, for flow control.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len() + self.exchange.len() + self.routing_key.len()
    }
    /// Decodes the properties; the raw bytes were checked when the message was published.
    pub fn decode_properties(&self) -> BasicProperties {
        BasicProperties::decode(self.properties.clone()).unwrap_or_default()
    }
}
