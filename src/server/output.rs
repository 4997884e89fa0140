//! Frames a connection has encoded but not yet handed to its writer task.

use crate::protocol::frame::{write_content, write_heartbeat, write_method};
use crate::protocol::Method;
use bytes::BytesMut;

#[derive(Debug)]
pub struct Output {
    pub buf: BytesMut,
    /// Delivery bytes in `buf` charged to the connection's sink; released once written.
    pub charge: usize,
    pub frame_max: usize,
}

impl Output {
    pub fn new(frame_max: usize) -> Self {
        // Grows with use; idle connections keep it small.
        Output { buf: BytesMut::with_capacity(1024), charge: 0, frame_max }
    }
    pub fn method(&mut self, channel: u16, method: impl Into<Method>) {
        write_method(&mut self.buf, channel, &method.into());
    }
    pub fn content(&mut self, channel: u16, properties: &[u8], body: &[u8]) {
        write_content(&mut self.buf, channel, properties, body, self.frame_max);
    }
    pub fn heartbeat(&mut self) {
        write_heartbeat(&mut self.buf);
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}
