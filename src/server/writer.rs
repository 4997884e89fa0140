//! The writer task of a connection: writes what the connection encoded, in order, so that a
//! slow socket never blocks the connection from reading (and so from seeing close or acks).

use crate::broker::consumer::ConnectionSink;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};

/// Bytes handed to the writer but not yet written, past which the connection stops reading.
pub const WRITE_HIGH_WATER: usize = 8 * 1024 * 1024;

pub enum WriteItem {
    Data {
        bytes: Bytes,
        charge: usize,
    },
    /// Flush, shut the socket down, and stop.
    Close,
}

/// The connection's handle on its writer.
#[derive(Debug)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<WriteItem>,
    pub unwritten: Arc<AtomicUsize>,
    pub drained: Arc<Notify>,
    /// Set whenever something is queued; heartbeats are only sent when nothing else was.
    pub wrote: Arc<AtomicBool>,
}

impl WriterHandle {
    pub fn spawn(socket: OwnedWriteHalf, sink: Arc<ConnectionSink>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let unwritten = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = tokio::spawn(run(socket, rx, sink, unwritten.clone(), drained.clone()));
        (WriterHandle { tx, unwritten, drained, wrote: Arc::new(AtomicBool::new(false)) }, task)
    }
    pub fn send(&self, bytes: Bytes, charge: usize) {
        self.unwritten.fetch_add(bytes.len(), Ordering::AcqRel);
        self.wrote.store(true, Ordering::Release);
        let _ = self.tx.send(WriteItem::Data { bytes, charge });
    }
    pub fn close(&self) {
        let _ = self.tx.send(WriteItem::Close);
    }
    pub fn backlogged(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) > WRITE_HIGH_WATER
    }
}

async fn run(
    mut socket: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<WriteItem>,
    sink: Arc<ConnectionSink>,
    unwritten: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut failed = false;
    while let Some(item) = rx.recv().await {
        match item {
            WriteItem::Data { bytes, charge } => {
                if !failed && socket.write_all(&bytes).await.is_err() {
                    // Keep draining so credit is returned; the reader sees the socket close.
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
                break;
            }
        }
    }
    // Return credit for anything still queued so queues do not wait on a dead connection.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        if let WriteItem::Data { bytes, charge } = item {
            unwritten.fetch_sub(bytes.len(), Ordering::AcqRel);
            sink.release(charge);
        }
    }
    drained.notify_one();
}
