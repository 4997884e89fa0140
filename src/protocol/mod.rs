//! The wire codec: bytes in, frames and methods out, and back. No I/O, no broker state.

pub mod codec;
pub mod constants;
pub mod frame;
pub mod method;
pub mod properties;
pub mod reader;

pub use codec::{CodecError, FieldTable, FieldValue, LongStr, ShortStr};
pub use frame::{ContentHeader, Frame, FrameError};
pub use method::Method;
pub use properties::BasicProperties;
