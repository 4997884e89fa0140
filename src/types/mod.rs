//! The value types every layer shares: AMQP 0-9-1's strings, field tables and basic
//! properties, their binary encoding, and the reply codes.
//!
//! They are the broker's message model, not only one wire protocol's: as in RabbitMQ, a
//! message carries AMQP 0-9-1 properties and headers whichever protocol brought it, queues
//! and exchanges take their arguments as field tables, the journal and queue logs store them
//! in this encoding, and the core's errors carry these reply codes. The wire protocols
//! (`amqp/` and the ones beside it) translate to and from them. No I/O, no broker state.

pub mod amqp10;
pub mod codec;
pub mod constants;
pub mod parts;
pub mod properties;

pub use codec::{CodecError, FieldTable, FieldValue, LongStr, ShortStr};
pub use properties::BasicProperties;
