//! The Raft log on disk: one append-only file of records (the storage layer's framing: magic,
//! length, CRC32C), and a small file for the vote and the committed position.
//!
//! Entries are kept in memory too (openraft reads them back to replicate and apply). Appends
//! go to one writer thread, which takes every append waiting, writes them in one `write` and
//! makes them durable with one `fdatasync` before it tells openraft they are flushed: a node
//! acknowledges an entry to the leader only once it is on its disk, and the entries of many
//! queues' commands of one round cost one fsync. Truncations (a new leader overwriting an
//! uncommitted suffix) and purges (entries a snapshot covers) are records in the same file;
//! once most of the file is purged entries, the writer writes the live ones to a new file and
//! renames it over the old one.

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::storage::cipher::{open_maybe, CipherError, KeyRing, Nonces};
use crate::storage::record::{put_record, scan, Scanned, HEADER_LEN};
use crate::types::parts::{Parts, MAX_SLICES};
use bytes::{BufMut, Bytes, BytesMut};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

/// Rewrite the log file once this many purged entries are still in it.
const REWRITE_AFTER_PURGED: u64 = 20_000;
/// One AppendEntries carries entries of about this many bytes at most (always at least one
/// entry; a batch is at most 4 MiB). openraft gives the RPC its heartbeat interval (100 ms)
/// to reach a follower, be written and synced there and be answered; a follower behind by
/// hundreds of entries would otherwise be sent them all at once, time out, and never catch up.
const APPEND_BYTES: usize = 4 * 1024 * 1024;

/// About how many bytes an entry is on the wire.
fn entry_weight(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(b) => b.weight(),
        _ => 64,
    }
}

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Entry),
    /// Entries from this index on are gone.
    Truncate(u64),
    /// Entries up to this log id are gone (a snapshot has them).
    Purge(LogId),
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct VoteFile {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

/// What the writer thread is asked to do.
enum Job {
    Append(Bytes, LogFlushed<TypeConfig>),
    /// Write and sync, then answer.
    Write(Bytes, mpsc::SyncSender<std::io::Result<()>>),
    /// Replace the file with these records.
    Rewrite(Bytes),
}

struct Inner {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    /// Purged entries still in the file.
    purged_in_file: u64,
}

/// Where the log's writes go.
#[derive(Clone)]
enum Writer {
    /// The writer thread, which syncs each group of writes.
    Thread(mpsc::Sender<Job>),
    /// Written by the caller, unsynced (the simulation: see [`super::host::Host::synced_log`]).
    Inline(Arc<Mutex<(File, PathBuf)>>),
}

/// The log store openraft appends to; clones share it (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    dir: PathBuf,
    writer: Writer,
    /// Whether the vote is synced too.
    synced: bool,
    seal: Seal,
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from(openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())))
}

fn encode(seal: &Seal, record: &Record, buf: &mut BytesMut) -> Result<(), bincode::Error> {
    if seal.keys.is_some() {
        let bytes = seal.seal(bincode::serialize(record)?);
        put_record(buf, |b| b.extend_from_slice(&bytes));
        return Ok(());
    }
    // Plain: encoded in place, into room made for it at once (a batch is megabytes: no
    // intermediate copy, no buffer grown by doubling).
    let start = buf.len();
    buf.reserve(HEADER_LEN + bincode::serialized_size(record)? as usize);
    let mut failed = None;
    put_record(buf, |b| failed = bincode::serialize_into(b.writer(), record).err());
    if let Some(e) = failed {
        buf.truncate(start);
        return Err(e);
    }
    Ok(())
}

/// Encryption at rest of what the cluster writes (log records, snapshots, the genesis
/// definitions) with the broker's keys (`--encryption-key-file`), as sealed blobs of the
/// storage layer ([`crate::storage::cipher`]); without keys, plain. A plain record is read
/// as it is (written before a key was given); a sealed one without the key is an error.
#[derive(Clone, Default, Debug)]
pub struct Seal {
    keys: Option<Arc<KeyRing>>,
    nonces: Arc<Mutex<Nonces>>,
}

impl Seal {
    pub fn new(keys: Option<Arc<KeyRing>>) -> Seal {
        Seal { keys, nonces: Arc::new(Mutex::new(Nonces::new())) }
    }

    pub fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        match &self.keys {
            None => plain,
            Some(k) => k.seal(&mut self.nonces.lock(), &plain),
        }
    }

    pub fn open(&self, data: &[u8]) -> Result<Vec<u8>, CipherError> {
        open_maybe(self.keys.as_deref(), data)
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, reading back what it holds; `synced`: whether
    /// appends are synced by a writer thread before they count as done.
    pub fn open(dir: &Path, synced: bool, seal: Seal) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let data = Bytes::from(std::fs::read(&path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(e),
        })?);
        let mut inner = Inner { entries: BTreeMap::new(), last_purged: None, purged_in_file: 0 };
        let mut good_len = 0u64;
        for s in scan(&data) {
            match s {
                Scanned::Record { offset, payload } => {
                    // An intact record that does not decode was written by another version of
                    // the format: refusing to start keeps it (dropping it could drop
                    // committed entries).
                    let plain = seal.open(&payload).map_err(|e| {
                        std::io::Error::other(format!("{}: record at offset {offset}: {e}", path.display()))
                    })?;
                    let record = bincode::deserialize::<Record>(&plain).map_err(|e| {
                        std::io::Error::other(format!(
                            "{}: record at offset {offset} is unreadable: {e}",
                            path.display()
                        ))
                    })?;
                    good_len = offset + payload.len() as u64 + crate::storage::record::HEADER_LEN as u64;
                    match record {
                        Record::Entry(e) => {
                            inner.entries.insert(e.log_id.index, e);
                        }
                        Record::Truncate(from) => {
                            inner.entries.split_off(&from);
                        }
                        Record::Purge(upto) => {
                            let keep = inner.entries.split_off(&(upto.index + 1));
                            inner.purged_in_file += inner.entries.len() as u64;
                            inner.entries = keep;
                            inner.last_purged = Some(upto);
                        }
                    }
                }
                // A torn or corrupt stretch ends what this node knows: Raft's leader sends the
                // rest again (an entry never acknowledged may be lost; one acknowledged was
                // synced before, so only a failing disk reaches here with one).
                Scanned::Corrupt { .. } | Scanned::TornTail { .. } => break,
            }
        }
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        file.set_len(good_len)?;
        let writer = if synced {
            let (tx, rx) = mpsc::channel();
            let writer_path = path.clone();
            std::thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || writer(file, good_len, writer_path, rx))?;
            Writer::Thread(tx)
        } else {
            use std::io::{Seek, SeekFrom};
            let mut file = file;
            file.seek(SeekFrom::Start(good_len))?;
            Writer::Inline(Arc::new(Mutex::new((file, path))))
        };
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)), dir: dir.to_path_buf(), writer, synced, seal })
    }

    /// Hands a job to the writer.
    fn send(&self, job: Job) -> Result<(), StorageError> {
        match &self.writer {
            Writer::Thread(tx) => tx.send(job).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e)),
            Writer::Inline(f) => {
                let mut g = f.lock();
                let (file, path) = &mut *g;
                run_jobs(file, path, vec![job], false);
                Ok(())
            }
        }
    }

    fn write_sync(&self, record: &Record) -> Result<(), StorageError> {
        let mut buf = BytesMut::new();
        encode(&self.seal, record, &mut buf).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Write(buf.freeze(), tx))?;
        rx.recv()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    fn read_vote_file(&self) -> VoteFile {
        std::fs::read(self.dir.join("vote")).ok().and_then(|b| bincode::deserialize(&b).ok()).unwrap_or_default()
    }

    fn write_vote_file(&self, f: &VoteFile) -> Result<(), StorageError> {
        let bytes = bincode::serialize(f).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let tmp = self.dir.join("vote.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            if self.synced {
                file.sync_all()?;
            }
            std::fs::rename(&tmp, self.dir.join("vote"))?;
            if self.synced {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }
}

/// The writer thread: group commit of appends, then their callbacks. Jobs keep their order: a
/// rewrite lands between the records sent before it and those sent after.
fn writer(mut file: File, len: u64, path: PathBuf, rx: mpsc::Receiver<Job>) {
    use std::io::{Seek, SeekFrom};
    let _ = file.seek(SeekFrom::Start(len));
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        run_jobs(&mut file, &path, jobs, true);
    }
}

/// Writes every part, in order, with as few vectored writes as the kernel takes.
fn write_parts(file: &mut File, parts: &[Bytes]) -> std::io::Result<()> {
    let mut left = Parts::new(parts);
    let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
    while !left.is_done() {
        let n = left.slices(&mut slices);
        let written = file.write_vectored(&slices[..n])?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        left.advance(written);
    }
    Ok(())
}

/// Writes the jobs' records with vectored writes of their buffers as they are (synced once
/// if `sync`), then answers them.
fn run_jobs(file: &mut File, path: &Path, jobs: Vec<Job>, sync: bool) {
    let flush = |file: &mut File, buf: &[Bytes]| {
        write_parts(file, buf).and_then(|_| if sync { file.sync_data() } else { Ok(()) })
    };
    let mut buf: Vec<Bytes> = Vec::new();
    let mut callbacks = Vec::new();
    let mut answers = Vec::new();
    let mut result: std::io::Result<()> = Ok(());
    for j in jobs {
        match j {
            Job::Append(b, cb) => {
                buf.push(b);
                callbacks.push(cb);
            }
            Job::Write(b, tx) => {
                buf.push(b);
                answers.push(tx);
            }
            Job::Rewrite(live) => {
                if result.is_ok() {
                    result = flush(file, &buf);
                    buf.clear();
                }
                if result.is_ok() {
                    result = rewrite(path, &live).map(|f| *file = f);
                }
            }
        }
    }
    if result.is_ok() && !buf.is_empty() {
        result = flush(file, &buf);
    }
    let copy = |r: &std::io::Result<()>| match r {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    };
    for cb in callbacks {
        cb.log_io_completed(copy(&result));
    }
    for tx in answers {
        let _ = tx.send(copy(&result));
    }
    if let Err(e) = &result {
        tracing::error!("raft log {}: {e}", path.display());
    }
}

/// The live records to a new file, synced, renamed over the old one; returns it, positioned at
/// its end.
fn rewrite(path: &Path, live: &[u8]) -> std::io::Result<File> {
    use std::io::{Seek, SeekFrom};
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(live)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.inner.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    /// What replication sends: the entries from `start`, up to [`APPEND_BYTES`].
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, e) in inner.entries.range(start..end) {
            let w = entry_weight(e);
            if !out.is_empty() && bytes + w > APPEND_BYTES {
                break;
            }
            bytes += w;
            out.push(e.clone());
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut f = self.read_vote_file();
        f.vote = Some(*vote);
        self.write_vote_file(&f)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.read_vote_file().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a lost committed position is learnt again from the leader.
        let mut f = self.read_vote_file();
        f.committed = committed;
        let bytes = bincode::serialize(&f).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let tmp = self.dir.join("vote.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, self.dir.join("vote")))
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_vote_file().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut buf = BytesMut::new();
        let mut inner = self.inner.lock();
        for e in entries {
            encode(&self.seal, &Record::Entry(e.clone()), &mut buf)
                .map_err(|err| io_err(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))?;
            inner.entries.insert(e.log_id.index, e);
        }
        self.send(Job::Append(buf.freeze(), callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.lock().entries.split_off(&log_id.index);
        self.write_sync(&Record::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_sync(&Record::Purge(log_id))?;
        let mut inner = self.inner.lock();
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.purged_in_file += inner.entries.len() as u64;
        inner.entries = keep;
        inner.last_purged = Some(log_id);
        if inner.purged_in_file >= REWRITE_AFTER_PURGED {
            // Sent under the lock that appends take too: no append's record can come between
            // the copy of the live entries and the rewrite.
            let mut buf = BytesMut::new();
            let mut ok = encode(&self.seal, &Record::Purge(log_id), &mut buf).is_ok();
            for e in inner.entries.values() {
                ok &= encode(&self.seal, &Record::Entry(e.clone()), &mut buf).is_ok();
            }
            if ok {
                inner.purged_in_file = 0;
                self.send(Job::Rewrite(buf.freeze()))?;
            }
        }
        Ok(())
    }
}
