//! The writer task of a connection: writes what the connection encoded, in order, so that a
//! slow socket never blocks the connection from reading (and so from seeing close or acks).
//!
//! Besides bytes, a connection may hand it a region of a file (a stream's chunk, as the
//! stream protocol delivers it): over plain TCP it goes with `sendfile(2)`, from the page
//! cache to the socket without passing through the broker; over TLS or WebSocket it is read
//! and written a piece at a time.

use crate::broker::consumer::ConnectionSink;
use crate::types::parts::{Parts, MAX_SLICES};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What a flush hands the writer.
#[derive(Debug)]
pub enum Encoded {
    One(Bytes),
    Parts(Vec<Bytes>),
    /// `head`, then `len` bytes of `file` from `position`.
    File {
        head: Bytes,
        file: Arc<File>,
        position: u64,
        len: usize,
    },
}

/// The socket half a writer writes to. Plain TCP says so, and is handed file regions with
/// `sendfile(2)`; other transports (TLS, WebSocket) are written the file's bytes.
pub trait Socket: AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl Socket for tokio::net::tcp::OwnedWriteHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T: tokio::io::AsyncRead + AsyncWrite + Send + 'static> Socket for tokio::io::WriteHalf<T> {}

impl Encoded {
    pub fn len(&self) -> usize {
        match self {
            Encoded::One(b) => b.len(),
            Encoded::Parts(p) => p.iter().map(Bytes::len).sum(),
            Encoded::File { head, len, .. } => head.len() + len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How many slices it is written as.
    pub fn slices(&self) -> usize {
        match self {
            Encoded::One(_) | Encoded::File { .. } => 1,
            Encoded::Parts(p) => p.len(),
        }
    }
}

/// Message bodies at least this large are handed to the writer as their own slices rather
/// than copied beside the frames around them: below it, a copy costs less than the extra
/// slices.
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// What a connection has encoded and not yet handed to its writer: small things in one
/// buffer, and large message bodies as their own reference-counted slices (as they were read
/// from the publisher's socket) beside it, in order, written together with one vectored write.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub buf: BytesMut,
    /// What came before `buf`, in order, once a slice was added.
    pub parts: Vec<Bytes>,
}

impl Outgoing {
    pub fn with_capacity(n: usize) -> Outgoing {
        Outgoing { buf: BytesMut::with_capacity(n), parts: Vec::new() }
    }
    /// Adds `slice` after what is encoded so far, without copying it.
    pub fn push_slice(&mut self, slice: Bytes) {
        push_slice(&mut self.buf, &mut self.parts, slice)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.parts.is_empty()
    }
    pub fn len(&self) -> usize {
        self.buf.len() + self.parts.iter().map(Bytes::len).sum::<usize>()
    }
    /// Everything encoded so far, in order: one buffer, or parts.
    pub fn take(&mut self) -> Encoded {
        if self.parts.is_empty() {
            return Encoded::One(self.buf.split().freeze());
        }
        if !self.buf.is_empty() {
            self.parts.push(self.buf.split().freeze());
        }
        Encoded::Parts(std::mem::take(&mut self.parts))
    }
}

/// [`Outgoing::push_slice`] on its two fields, for an encoder that holds the buffer already.
pub fn push_slice(buf: &mut BytesMut, parts: &mut Vec<Bytes>, slice: Bytes) {
    if !buf.is_empty() {
        parts.push(buf.split().freeze());
    }
    parts.push(slice);
}

/// Bytes handed to the writer but not yet written, past which the connection stops reading.
pub const WRITE_HIGH_WATER: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub enum WriteItem {
    Data {
        bytes: Encoded,
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

/// The connection's handle on its writer (clones share it).
#[derive(Debug, Clone)]
pub struct WriterHandle {
    queue: Arc<Queue>,
    pub unwritten: Arc<AtomicUsize>,
    pub drained: Arc<Notify>,
    /// Set whenever something is queued; heartbeats are only sent when nothing else was.
    pub wrote: Arc<AtomicBool>,
}

impl WriterHandle {
    pub fn spawn<W: Socket>(socket: W, sink: Arc<ConnectionSink>) -> (Self, tokio::task::JoinHandle<()>) {
        let queue = Arc::new(Queue::default());
        let unwritten = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = tokio::spawn(run(socket, queue.clone(), sink, unwritten.clone(), drained.clone()));
        (WriterHandle { queue, unwritten, drained, wrote: Arc::new(AtomicBool::new(false)) }, task)
    }
    pub fn send(&self, bytes: Encoded, charge: usize) {
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

/// Adds an item's bytes to a batch; a file region's head goes in, and the region is
/// returned to be written after the batch.
fn push_parts(batch: &mut Vec<Bytes>, e: Encoded) -> Option<(Arc<File>, u64, usize)> {
    match e {
        Encoded::One(b) => batch.push(b),
        Encoded::Parts(p) => batch.extend(p),
        Encoded::File { head, file, position, len } => {
            batch.push(head);
            return Some((file, position, len));
        }
    }
    None
}

/// Writes `len` bytes of `file` from `position`: with `sendfile(2)` to a plain TCP socket
/// (waiting for room as any write does), else read and written 256 KiB at a time.
async fn write_file<W: Socket>(socket: &mut W, file: &File, mut position: u64, mut len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(tcp) = socket.tcp() {
        let (out, input) = (tcp.as_raw_fd(), file.as_raw_fd());
        while len > 0 {
            tcp.writable().await?;
            let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
                let mut offset = position as libc::off_t;
                // SAFETY: both descriptors are open for the call (the socket is borrowed and
                // `file` is held); `offset` is a valid, exclusively borrowed off_t.
                let n = unsafe { libc::sendfile(out, input, &mut offset, len) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                // The file ends before the region does: the region was wrong.
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    position += n as u64;
                    len -= n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    let mut buf = vec![0u8; len.min(256 * 1024)];
    while len > 0 {
        let n = len.min(buf.len());
        file.read_exact_at(&mut buf[..n], position)?;
        socket.write_all(&buf[..n]).await?;
        position += n as u64;
        len -= n;
    }
    Ok(())
}

/// Writes parts in order with vectored writes (as many as the kernel takes at once).
async fn write_parts<W: AsyncWrite + Unpin>(socket: &mut W, parts: &[Bytes]) -> std::io::Result<()> {
    let mut left = Parts::new(parts);
    while !left.is_done() {
        // The slices are made in each poll, on its stack: held across the await, their
        // array would make every connection's writer task 1 KiB larger while it idles.
        let written = std::future::poll_fn(|cx| {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
            let n = left.slices(&mut slices);
            std::pin::Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        left.advance(written);
    }
    Ok(())
}

/// Bytes gathered into one vectored write at most: items queued together go out in one
/// system call (and one wake-up of the peer) instead of one each.
const BATCH_BYTES: usize = 1024 * 1024;
/// Slices gathered at most; `write_parts` writes 64 per call.
const BATCH_SLICES: usize = 64;

async fn run<W: Socket>(
    mut socket: W,
    queue: Arc<Queue>,
    sink: Arc<ConnectionSink>,
    unwritten: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut failed = false;
    let mut batch: Vec<Bytes> = Vec::new();
    'outer: loop {
        queue.ready.notified().await;
        let mut items = std::mem::take(&mut *queue.items.lock());
        while let Some(item) = items.pop_front() {
            match item {
                WriteItem::Data { bytes, charge } => {
                    // Gather this item and those queued behind it, within the batch bounds;
                    // a file region ends the batch (its head in it, the region after it).
                    let (mut len, mut charges) = (bytes.len(), charge);
                    let mut region = push_parts(&mut batch, bytes);
                    while let Some(WriteItem::Data { bytes, .. }) = items.front() {
                        if region.is_some()
                            || len + bytes.len() > BATCH_BYTES
                            || batch.len() + bytes.slices() > BATCH_SLICES
                        {
                            break;
                        }
                        let Some(WriteItem::Data { bytes, charge }) = items.pop_front() else { break };
                        len += bytes.len();
                        charges += charge;
                        region = push_parts(&mut batch, bytes);
                    }
                    let mut written = match batch.as_slice() {
                        [one] => socket.write_all(one).await,
                        parts => write_parts(&mut socket, parts).await,
                    };
                    if let (Ok(()), Some((file, position, len))) = (&written, region) {
                        written = write_file(&mut socket, &file, position, len).await;
                    }
                    if written.is_ok() {
                        // Free for TCP; a TLS or WebSocket stream that met a full socket
                        // holds its last record until flushed.
                        written = socket.flush().await;
                    }
                    batch.clear();
                    if !failed && written.is_err() {
                        // Keep going so credit is returned; the reader sees the socket close.
                        failed = true;
                    }
                    unwritten.fetch_sub(len, Ordering::AcqRel);
                    if charges > 0 {
                        sink.release(charges);
                    }
                    // Every waiter (the connection, a stream protocol subscription's task),
                    // and a permit for the connection if it is not waiting yet.
                    drained.notify_waiters();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    /// A file of `len` numbered bytes, and the region of it a test sends.
    fn numbered_file(len: usize) -> (Arc<File>, Vec<u8>) {
        let path = std::env::temp_dir().join(format!("hare-writer-test-{}-{len}", std::process::id()));
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&bytes).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        (Arc::new(file), bytes)
    }

    /// What a writer sends of bytes, a file region and bytes again, in order.
    fn items(file: &Arc<File>) -> Vec<Encoded> {
        vec![
            Encoded::One(Bytes::from_static(b"before|")),
            Encoded::File { head: Bytes::from_static(b"head|"), file: file.clone(), position: 1000, len: 3_000_000 },
            Encoded::Parts(vec![Bytes::from_static(b"|after"), Bytes::from_static(b"|end")]),
        ]
    }

    fn expected(bytes: &[u8]) -> Vec<u8> {
        let mut want = b"before|head|".to_vec();
        want.extend_from_slice(&bytes[1000..3_001_000]);
        want.extend_from_slice(b"|after|end");
        want
    }

    /// Over plain TCP a file region goes with sendfile; over anything else it is read and
    /// written. Either way the peer reads everything in the order it was handed over, and
    /// the writer counts it all as written.
    #[tokio::test]
    async fn a_file_region_is_written_in_order_over_tcp_and_other_transports() {
        let (file, bytes) = numbered_file(3_100_000);
        let want = expected(&bytes);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (_rd, wr) = server.into_split();
        let (writer, _task) = WriterHandle::spawn(wr, ConnectionSink::new(1));
        for item in items(&file) {
            writer.send(item, 0);
        }
        let mut got = vec![0u8; want.len()];
        let mut client = client;
        tokio::time::timeout(std::time::Duration::from_secs(30), client.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(got == want, "TCP: the bytes differ");

        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let (_rd, wr) = tokio::io::split(near);
        let (writer, _task) = WriterHandle::spawn(wr, ConnectionSink::new(2));
        for item in items(&file) {
            writer.send(item, 0);
        }
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(std::time::Duration::from_secs(30), far.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(got == want, "duplex: the bytes differ");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while writer.unwritten.load(Ordering::Acquire) != 0 && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(writer.unwritten.load(Ordering::Acquire), 0);
    }
}
