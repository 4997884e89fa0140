//! The definitions journal: every durable change (declare, delete, bind, unbind) is one
//! record appended to a journal file and group-committed by the syncer with the messages,
//! so a declare costs a buffered append under the broker's locks and shares an fsync with
//! whatever else is in flight. A snapshot of the whole state is written now and then by a
//! background thread, from the previous snapshot and the journal it covers, never from the
//! broker's own structures: nothing on the message path waits for it.
//!
//! ```text
//! definitions/
//!   snapshot.json         every vhost's definitions, and the last journal they include
//!   <n>.journal           changes after that, in order (record framing, one JSON change each)
//! ```
//!
//! With encryption at rest both the snapshot and each journal record are sealed blobs
//! (see [`super::cipher`]): users' password hashes and queue arguments are not left in the
//! clear. Plain ones written before encryption was turned on still read.
//!
//! Recovery reads the snapshot and replays the journals after it. A torn record at the end
//! of a journal (a crash mid-write) was never confirmed and is dropped.

use super::cipher::{open_maybe, KeyRing, Nonces};
use super::record::{put_record, scan, Scanned};
use super::syncer::{LogFile, Syncer};
use super::write_atomically;
use crate::broker::definitions::Definitions;
use crate::broker::definitions::{Change, DefinitionsState, Snapshot};
use crate::broker::store::StoreError;
use bytes::BufMut;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A journal is folded into a new snapshot once it holds this much, or more than the last
/// snapshot did (so the work of snapshots stays proportional to the changes).
const COMPACT_AFTER: u64 = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize, Default)]
struct SnapshotFile {
    /// The snapshot includes the changes of every journal numbered up to this.
    journal: u64,
    #[serde(flatten)]
    snapshot: Snapshot,
}

#[derive(Debug)]
pub struct DefinitionsJournal {
    dir: PathBuf,
    syncer: Arc<Syncer>,
    inner: Arc<Mutex<Inner>>,
    /// What recovery read, handed out vhost by vhost at start and then dropped.
    recovered: Mutex<DefinitionsState>,
    /// A snapshot is being written.
    compacting: Arc<AtomicBool>,
    /// [`COMPACT_AFTER`]; smaller in tests.
    compact_after: u64,
    /// With encryption at rest, the keys records and snapshots are sealed with.
    keys: Option<Arc<KeyRing>>,
}

#[derive(Debug)]
struct Inner {
    file: Arc<LogFile>,
    number: u64,
    bytes: u64,
    /// The next journal file, created ahead by the background thread so that switching to
    /// it does no I/O under the broker's locks.
    next: Option<Arc<LogFile>>,
    /// Size of the last snapshot written.
    snapshot_bytes: u64,
    nonces: Nonces,
}

fn journal_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}.journal"))
}

/// The journal files in `dir`, by number.
fn journals(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".journal")?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn read_snapshot(dir: &Path, keys: Option<&KeyRing>) -> Result<SnapshotFile, StoreError> {
    let path = dir.join("snapshot.json");
    match std::fs::read(&path) {
        Ok(data) => {
            let data = open_maybe(keys, &data).map_err(|e| StoreError(format!("{} is {e}", path.display())))?;
            serde_json::from_slice(&data).map_err(|e| StoreError(format!("cannot parse {}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SnapshotFile::default()),
        Err(e) => Err(StoreError(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Applies the changes of one journal file; returns how many it had.
fn replay(path: &Path, state: &mut DefinitionsState, keys: Option<&KeyRing>) -> Result<usize, StoreError> {
    let data = bytes::Bytes::from(std::fs::read(path)?);
    let mut n = 0;
    for item in scan(&data) {
        match item {
            Scanned::Record { offset, payload } => {
                // A sealed record that does not open is an error: skipping it would drop a
                // change that was confirmed.
                let payload = open_maybe(keys, &payload)
                    .map_err(|e| StoreError(format!("{}: the change at offset {offset} is {e}", path.display())))?;
                match serde_json::from_slice::<Change>(&payload) {
                    Ok(change) => {
                        state.apply(&change);
                        n += 1;
                    }
                    Err(e) => {
                        tracing::error!("{}: undecodable change at offset {offset}, skipped: {e}", path.display())
                    }
                }
            }
            Scanned::Corrupt { offset, len } => {
                tracing::error!("{}: corrupt record at offset {offset} ({len} bytes), skipped", path.display())
            }
            // A journal is zero-filled ahead of its writes: zeros after the last record are
            // where it ends, not a torn write.
            Scanned::TornTail { offset, .. } if data[offset as usize..].iter().all(|&b| b == 0) => {}
            Scanned::TornTail { offset, len } => {
                tracing::warn!("{}: torn write at the end: {len} bytes at offset {offset} dropped", path.display())
            }
        }
    }
    Ok(n)
}

/// Writes a snapshot including every journal up to `upto`, from the last snapshot and the
/// journals after it, then deletes those journals. Returns the snapshot's size.
fn compact(dir: &Path, upto: u64, keys: Option<&KeyRing>) -> Result<u64, StoreError> {
    let old = read_snapshot(dir, keys)?;
    let mut state = DefinitionsState::from_snapshot(&old.snapshot);
    let ids = journals(dir)?;
    for &n in ids.iter().filter(|&&n| n > old.journal && n <= upto) {
        replay(&journal_path(dir, n), &mut state, keys)?;
    }
    let file = SnapshotFile { journal: upto.max(old.journal), snapshot: state.to_snapshot() };
    let json = write_snapshot(dir, &file, keys)?;
    for &n in ids.iter().filter(|&&n| n <= upto) {
        let _ = std::fs::remove_file(journal_path(dir, n));
    }
    Ok(json.len() as u64)
}

/// Writes the snapshot file (sealed with the current key, when there is one); returns its size.
fn write_snapshot(dir: &Path, file: &SnapshotFile, keys: Option<&KeyRing>) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(file).map_err(|e| StoreError(e.to_string()))?;
    let data = match keys {
        Some(keys) => keys.seal(&mut Nonces::new(), &json),
        None => json,
    };
    write_atomically(&dir.join("snapshot.json"), &data)?;
    Ok(data)
}

/// Creates journal `n`, empty (kept zero-filled ahead of its records, so that most of its
/// fdatasyncs write only data), and makes its directory entry durable.
fn create_journal(dir: &Path, n: u64) -> std::io::Result<Arc<LogFile>> {
    let file = LogFile::create_zero_filled(&journal_path(dir, n))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(file)
}

impl DefinitionsJournal {
    /// Opens the journal in `dir`: reads the snapshot, replays the journals after it and,
    /// when there were any, folds them into a fresh snapshot. `legacy` lists definitions
    /// files of the older format (one JSON file per vhost): they are read in and removed.
    pub fn open(
        dir: &Path,
        syncer: Arc<Syncer>,
        legacy: Vec<(String, PathBuf)>,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<DefinitionsJournal, StoreError> {
        std::fs::create_dir_all(dir)?;
        let snap = read_snapshot(dir, keys.as_deref())?;
        let mut state = DefinitionsState::from_snapshot(&snap.snapshot);
        let ids = journals(dir)?;
        let mut replayed = 0;
        for &n in ids.iter().filter(|&&n| n > snap.journal) {
            replayed += replay(&journal_path(dir, n), &mut state, keys.as_deref())?;
        }
        for (vhost, path) in &legacy {
            let data = std::fs::read(path)?;
            let defs: Definitions = serde_json::from_slice(&data)
                .map_err(|e| StoreError(format!("cannot parse {}: {e}", path.display())))?;
            state.set_vhost(vhost, &defs);
        }
        let last = ids.last().copied().unwrap_or(0).max(snap.journal);
        let snapshot_path = dir.join("snapshot.json");
        let mut snapshot_bytes = std::fs::metadata(&snapshot_path).map_or(0, |m| m.len());
        // A snapshot sealed with another key than the current one (or none) is written anew.
        let resealed = match (&keys, std::fs::read(&snapshot_path)) {
            (Some(k), Ok(data)) => super::cipher::blob_key(&data) != Some(k.current_id()),
            _ => false,
        };
        if replayed > 0 || resealed || !legacy.is_empty() || ids.iter().any(|&n| n <= snap.journal) {
            // Start from a snapshot of everything, so the next start replays only new changes.
            let file = SnapshotFile { journal: last, snapshot: state.to_snapshot() };
            snapshot_bytes = write_snapshot(dir, &file, keys.as_deref())?.len() as u64;
            for &n in &ids {
                let _ = std::fs::remove_file(journal_path(dir, n));
            }
            for (_, path) in &legacy {
                std::fs::remove_file(path)?;
            }
            tracing::info!("definitions: {replayed} journal changes folded into a new snapshot");
        }
        let file = create_journal(dir, last + 1)?;
        let next = create_journal(dir, last + 2)?;
        Ok(DefinitionsJournal {
            dir: dir.to_path_buf(),
            syncer,
            inner: Arc::new(Mutex::new(Inner {
                file,
                number: last + 1,
                bytes: 0,
                next: Some(next),
                snapshot_bytes,
                nonces: Nonces::new(),
            })),
            recovered: Mutex::new(state),
            compacting: Arc::new(AtomicBool::new(false)),
            compact_after: COMPACT_AFTER,
            keys,
        })
    }

    /// The recovered definitions of `vhost`; each vhost asks once, at start.
    pub fn take_vhost(&self, vhost: &str) -> Definitions {
        let mut st = self.recovered.lock();
        let defs = st.vhost(vhost);
        st.forget_vhost(vhost);
        defs
    }

    /// The recovered users, vhosts and permissions (asked once, at start).
    pub fn take_access(&self) -> Option<crate::auth::AccessState> {
        self.recovered.lock().access().cloned()
    }

    /// The recovered policies (asked once, at start).
    pub fn take_policies(&self) -> crate::broker::policy::PolicyState {
        self.recovered.lock().policies().clone()
    }

    /// The recovered runtime parameters (asked once, at start).
    pub fn take_parameters(&self) -> crate::broker::parameters::ParameterState {
        self.recovered.lock().parameters().clone()
    }

    /// Appends a change; returns the group-commit ticket that makes it durable. No I/O:
    /// the syncer writes the record out.
    pub fn record(&self, change: &Change) -> u64 {
        super::syncer::count_definition_change();
        let json = serde_json::to_vec(change).expect("a change serialises");
        let mut inner = self.inner.lock();
        let json = match &self.keys {
            Some(keys) => keys.seal(&mut inner.nonces, &json),
            None => json,
        };
        let mut len = 0;
        let (_, ticket) = inner.file.append(&self.syncer, |buf| len = put_record(buf, |b| b.put_slice(&json)));
        inner.bytes += len as u64;
        if inner.bytes > self.compact_after.max(inner.snapshot_bytes) && !self.compacting.load(Ordering::Acquire) {
            if let Some(next) = inner.next.take() {
                // From now on changes go to the next journal; the full one is folded into a
                // snapshot in the background.
                let full = inner.number;
                let old = std::mem::replace(&mut inner.file, next);
                inner.number += 1;
                inner.bytes = 0;
                self.compacting.store(true, Ordering::Release);
                self.spawn_compaction(full, old);
            }
        }
        ticket
    }

    fn spawn_compaction(&self, full: u64, file: Arc<LogFile>) {
        let dir = self.dir.clone();
        let keys = self.keys.clone();
        let compacting = self.compacting.clone();
        let shared = self.inner.clone();
        let spawned = std::thread::Builder::new().name("hare-definitions".into()).spawn(move || {
            // What the syncer has not written yet of the full journal goes to the file first
            // (it still fsyncs it for the changes' tickets).
            let result =
                file.write_buffered().map_err(StoreError::from).and_then(|()| compact(&dir, full, keys.as_deref()));
            let next = create_journal(&dir, full + 2);
            let mut inner = shared.lock();
            match result {
                Ok(size) => {
                    inner.snapshot_bytes = size;
                    tracing::debug!("definitions: snapshot written ({size} bytes), journals to {full} removed");
                }
                // The journal stays; the next snapshot folds it in with the ones after it.
                Err(e) => tracing::error!("definitions: cannot write a snapshot: {e}"),
            }
            match next {
                Ok(next) => inner.next = Some(next),
                // Without a next journal, changes stay in the current one until a restart.
                Err(e) => tracing::error!("definitions: cannot create the next journal: {e}"),
            }
            drop(inner);
            compacting.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            tracing::error!("definitions: cannot start the snapshot thread: {e}");
            self.compacting.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::definitions::{BindingDef, QueueDef};
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    static DIRS: AtomicU64 = AtomicU64::new(0);

    fn temp_dir() -> PathBuf {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hare-journal-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn queue(i: u64) -> Change {
        Change::DeclareQueue {
            vhost: "/".into(),
            queue: QueueDef { name: format!("q{i}"), arguments: String::new(), log: format!("{i:016x}") },
        }
    }

    fn bind(i: u64) -> Change {
        Change::Bind {
            vhost: "/".into(),
            binding: BindingDef {
                source: "amq.topic".into(),
                destination: format!("q{i}"),
                destination_kind: "queue".into(),
                routing_key: format!("k.{i}.#"),
                arguments: String::new(),
            },
        }
    }

    fn wait_for_compaction(j: &DefinitionsJournal) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while j.compacting.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "snapshot still being written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn sealed_definitions_hold_no_names_and_open_only_with_the_key() {
        let dir = temp_dir();
        let syncer = Syncer::start();
        let keys = Arc::new(KeyRing::from_key([3; 32]));
        let mut model = DefinitionsState::default();
        // Plain changes first (before encryption was on), then sealed ones.
        let j = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), None).unwrap();
        for i in 0..5u64 {
            model.apply(&queue(i));
            j.record(&queue(i));
        }
        syncer.flush_now();
        drop(j);
        let mut j = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), Some(keys.clone())).unwrap();
        j.compact_after = 2048;
        for i in 5..200u64 {
            for c in [queue(i), bind(i)] {
                model.apply(&c);
                j.record(&c);
            }
        }
        wait_for_compaction(&j);
        syncer.flush_now();
        drop(j);
        for e in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!data.windows(5).any(|w| w == b"amq.t" || w == b"\"q199"), "plaintext in definitions");
        }
        let j = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), Some(keys)).unwrap();
        assert_eq!(j.take_vhost("/"), model.vhost("/"));
        drop(j);
        for keys in [None, Some(Arc::new(KeyRing::from_key([4; 32])))] {
            let err = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), keys).unwrap_err();
            assert!(err.0.contains("key"), "{}", err.0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_survive_reopening_through_snapshots_and_journals() {
        let dir = temp_dir();
        let syncer = Syncer::start();
        let mut model = DefinitionsState::default();
        let mut j = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), None).unwrap();
        // Small, so that several snapshots are written along the way.
        j.compact_after = 4096;
        for i in 0..600u64 {
            let mut changes = vec![queue(i), bind(i)];
            if i % 3 == 0 {
                changes.push(Change::DeleteQueue { vhost: "/".into(), name: format!("q{}", i / 2) });
            }
            for c in changes {
                model.apply(&c);
                j.record(&c);
            }
            if i % 100 == 0 {
                wait_for_compaction(&j);
            }
        }
        wait_for_compaction(&j);
        syncer.flush_now();
        assert!(dir.join("snapshot.json").exists());
        assert!(journals(&dir).unwrap().len() <= 3, "{:?}", journals(&dir));
        drop(j);
        let j = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), None).unwrap();
        assert_eq!(j.take_vhost("/"), model.vhost("/"));
        // Handed over once, then dropped.
        assert_eq!(j.take_vhost("/"), Definitions::default());
        drop(j);
        // Opening again (after the fold at open) still finds everything.
        let j = DefinitionsJournal::open(&dir, syncer, Vec::new(), None).unwrap();
        assert_eq!(j.take_vhost("/"), model.vhost("/"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_rest_kept() {
        let dir = temp_dir();
        let syncer = Syncer::start();
        let j = DefinitionsJournal::open(&dir, syncer.clone(), Vec::new(), None).unwrap();
        for i in 0..5 {
            j.record(&queue(i));
        }
        syncer.flush_now();
        let path = journal_path(&dir, j.inner.lock().number);
        drop(j);
        // The file is zero-filled ahead of its records; a crash in the middle of the last
        // record leaves zeros where the rest of it was.
        let mut data = std::fs::read(&path).unwrap();
        let end = match scan(&bytes::Bytes::from(data.clone())).last() {
            Some(Scanned::TornTail { offset, .. }) => *offset as usize,
            other => panic!("no zeros after the records: {other:?}"),
        };
        data[end - 7..end].fill(0);
        std::fs::write(&path, &data).unwrap();
        let j = DefinitionsJournal::open(&dir, syncer, Vec::new(), None).unwrap();
        let names: Vec<String> = j.take_vhost("/").queues.into_iter().map(|q| q.name).collect();
        assert_eq!(names, ["q0", "q1", "q2", "q3"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn definitions_of_the_older_format_are_read_in_and_removed() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let old = Definitions {
            queues: vec![QueueDef { name: "kept".into(), arguments: String::new(), log: "00".into() }],
            ..Default::default()
        };
        let legacy = dir.join("definitions-2f.json");
        std::fs::write(&legacy, serde_json::to_vec(&old).unwrap()).unwrap();
        let syncer = Syncer::start();
        let journal_dir = dir.join("definitions");
        let j =
            DefinitionsJournal::open(&journal_dir, syncer.clone(), vec![("/".into(), legacy.clone())], None).unwrap();
        assert!(!legacy.exists());
        drop(j);
        let j = DefinitionsJournal::open(&journal_dir, syncer, Vec::new(), None).unwrap();
        assert_eq!(j.take_vhost("/"), old);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
