//! The writer task of a connection: writes what the connection encoded, in order, so that a
//! slow socket never blocks the connection from reading (and so from seeing close or acks).

use crate::broker::consumer::ConnectionSink;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// Bytes handed to the writer but not yet written, past which the connection stops reading.
pub const WRITE_HIGH_WATER: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub enum WriteItem {
    Data {
        bytes: Bytes,
        charge: usize,
    },
    /// Flush, shut the socket down, and stop.
    Close,
}

/// What the connection hands its writer; allocates nothing until used.
#[derive(Debug, Default)]
struct Queue {
    items: Mutex<VecDeque<WriteItem>>,
    ready: Notify,
}

impl Queue {
    fn push(&self, item: WriteItem) {
        self.items.lock().push_back(item);
        self.ready.notify_one();
    }
}

/// The connection's handle on its writer.
#[derive(Debug)]
pub struct WriterHandle {
    queue: Arc<Queue>,
    pub unwritten: Arc<AtomicUsize>,
    pub drained: Arc<Notify>,
    /// Set whenever something is queued; heartbeats are only sent when nothing else was.
    pub wrote: Arc<AtomicBool>,
}

impl WriterHandle {
    pub fn spawn(socket: OwnedWriteHalf, sink: Arc<ConnectionSink>) -> (Self, tokio::task::JoinHandle<()>) {
        let queue = Arc::new(Queue::default());
        let unwritten = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = tokio::spawn(run(socket, queue.clone(), sink, unwritten.clone(), drained.clone()));
        (WriterHandle { queue, unwritten, drained, wrote: Arc::new(AtomicBool::new(false)) }, task)
    }
    pub fn send(&self, bytes: Bytes, charge: usize) {
        self.unwritten.fetch_add(bytes.len(), Ordering::AcqRel);
        self.wrote.store(true, Ordering::Release);
        self.queue.push(WriteItem::Data { bytes, charge });
    }
    pub fn close(&self) {
        self.queue.push(WriteItem::Close);
    }
    pub fn backlogged(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) > WRITE_HIGH_WATER
    }
}

async fn run(
    mut socket: OwnedWriteHalf,
    queue: Arc<Queue>,
    sink: Arc<ConnectionSink>,
    unwritten: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut failed = false;
    'outer: loop {
        queue.ready.notified().await;
        let items = std::mem::take(&mut *queue.items.lock());
        for item in items {
            match item {
                WriteItem::Data { bytes, charge } => {
                    if !failed && socket.write_all(&bytes).await.is_err() {
                        // Keep going so credit is returned; the reader sees the socket close.
                        failed = true;
                    }
                    unwritten.fetch_sub(bytes.len(), Ordering::AcqRel);
                    if charge > 0 {
                        sink.release(charge);
                    }
                    drained.notify_one();
                }
                WriteItem::Close => {
                    let _ = socket.shutdown().await;
                    break 'outer;
                }
            }
        }
    }
    // Return credit for anything still queued so queues do not wait on a dead connection.
    for item in std::mem::take(&mut *queue.items.lock()) {
        if let WriteItem::Data { bytes, charge } = item {
            unwritten.fetch_sub(bytes.len(), Ordering::AcqRel);
            sink.release(charge);
        }
    }
    drained.notify_one();
}
