//! Storage: the data directory, durable definitions, per-queue message logs and the
//! group-commit syncer. Implements [`crate::broker::store::Storage`] for the core.
//!
//! ```text
//! data/
//!   .lock                     held while a broker runs on this directory
//!   encryption.json           with encryption at rest: the key id and a sealed check value
//!                             (see [`cipher`])
//!   definitions/              durable exchanges, queues and bindings: a snapshot and the
//!                             journal of changes since (see [`journal`])
//!   queues/<id>/              one durable queue's log: NNNN.seg + NNNN.ack; also the
//!                             messages a durable delayed exchange holds (id delayed-...)
//!   mqtt-retained.log         MQTT's retained messages (see [`retained`])
//!   streams/<id>/             a stream's log: NNNN.segment + NNNN.index (see [`stream_log`])
//!   transient/<id>/           messages of non-durable queues paged out under memory
//!                             pressure; removed at start
//! ```

pub mod cipher;
pub mod journal;
pub mod queue_log;
pub mod record;
pub mod retained;
pub mod stream;
pub mod stream_log;
pub mod syncer;

use crate::broker::definitions::Change;
use crate::broker::definitions::Definitions;
use crate::broker::store::{MessageLog, RecoveredQueue, Storage, StoreError, StreamSettings, StreamStore};
use cipher::KeyRing;
use journal::DefinitionsJournal;
use queue_log::QueueLog;
use rand::Rng;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use syncer::Syncer;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {dir}: {source}")]
    Create { dir: PathBuf, source: std::io::Error },
    #[error("data directory {dir} is in use by another hare process (lock file {dir}/.lock)")]
    Locked { dir: PathBuf },
    #[error("cannot lock data directory {dir}: {source}")]
    Lock { dir: PathBuf, source: std::io::Error },
    #[error("cannot read the definitions in {dir}: {source}")]
    Definitions { dir: PathBuf, source: StoreError },
    #[error(transparent)]
    Encryption(#[from] cipher::MarkerError),
}

#[derive(Debug)]
pub struct DiskStorage {
    dir: PathBuf,
    /// Held open for the life of the broker: the lock goes with it.
    _lock: File,
    pub syncer: Arc<Syncer>,
    definitions: DefinitionsJournal,
    /// With encryption at rest, the keys every log seals and opens its records with.
    keys: Option<Arc<KeyRing>>,
}

impl DiskStorage {
    /// MQTT's retained messages, kept beside the definitions (see [`retained`]).
    pub fn open_retained(&self) -> std::io::Result<retained::RetainedStore> {
        retained::RetainedStore::open(&self.dir, self.keys.clone())
    }

    /// Opens (creating) the data directory and takes its lock. With `keys`, message
    /// records and definitions are sealed (encryption at rest); a directory that was
    /// encrypted opens only with its key.
    pub fn open(dir: &Path, keys: Option<Arc<KeyRing>>) -> Result<DiskStorage, OpenError> {
        std::fs::create_dir_all(dir.join("queues")).map_err(|source| OpenError::Create { dir: dir.into(), source })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))
            .map_err(|source| OpenError::Lock { dir: dir.into(), source })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { dir: dir.into() }),
            Err(std::fs::TryLockError::Error(source)) => return Err(OpenError::Lock { dir: dir.into(), source }),
        }
        cipher::check_marker(dir, keys.as_deref())?;
        // Paged-out transient messages do not survive a restart.
        let _ = std::fs::remove_dir_all(dir.join("transient"));
        let syncer = Syncer::start();
        let definitions =
            DefinitionsJournal::open(&dir.join("definitions"), syncer.clone(), legacy_definitions(dir), keys.clone())
                .map_err(|source| OpenError::Definitions { dir: dir.into(), source })?;
        Ok(DiskStorage { dir: dir.to_path_buf(), _lock: lock, syncer, definitions, keys })
    }

    fn queue_dir(&self, id: &str) -> PathBuf {
        self.dir.join("queues").join(id)
    }

    fn stream_dir(&self, id: &str) -> PathBuf {
        self.dir.join("streams").join(id)
    }

    /// Removes queue and stream logs no definition names (a crash between creating a log
    /// and saving the definitions that reference it, or after deleting a queue).
    pub fn remove_orphan_logs(&self, keep: &[String]) {
        let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
        for (kind, dir) in [("queue", "queues"), ("stream", "streams")] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(dir)) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(name.as_str()) {
                    tracing::info!("removing {kind} log {name}, which no durable queue uses");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A new log's name: 16 random hex digits.
fn new_id() -> String {
    let mut rng = rand::thread_rng();
    (0..16).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
}

/// Definitions files of the older format, one per vhost (`definitions-<hex of the name>.json`
/// in the data directory): the journal reads them in once and removes them.
fn legacy_definitions(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = file.strip_prefix("definitions-").and_then(|f| f.strip_suffix(".json")) else { continue };
        let bytes: Option<Vec<u8>> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
        if let Some(name) = bytes.and_then(|b| String::from_utf8(b).ok()) {
            out.push((name, e.path()));
        }
    }
    out
}

/// Writes a file so that a crash leaves either the old or the new contents: write a
/// temporary file, fsync it, rename it over the old one, fsync the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl Storage for DiskStorage {
    fn create_queue_log(&self) -> Result<(Box<dyn MessageLog>, String), StoreError> {
        let id = new_id();
        let log =
            QueueLog::create(self.queue_dir(&id), format!("queue log {id}"), self.syncer.clone(), self.keys.clone())?;
        Ok((Box::new(log), id))
    }

    fn create_stream(&self, settings: StreamSettings) -> Result<(Arc<dyn StreamStore>, String), StoreError> {
        let id = new_id();
        let stream = self.open_stream(&id, settings)?;
        Ok((stream, id))
    }

    fn open_stream(&self, id: &str, settings: StreamSettings) -> Result<Arc<dyn StreamStore>, StoreError> {
        let stream = stream::DiskStream::open(
            &self.stream_dir(id),
            format!("stream log {id}"),
            settings,
            self.syncer.clone(),
            self.keys.clone(),
        )?;
        Ok(stream)
    }

    fn create_transient_log(&self) -> Result<Box<dyn MessageLog>, StoreError> {
        let id = new_id();
        let dir = self.dir.join("transient").join(&id);
        Ok(Box::new(QueueLog::create_transient(
            dir,
            format!("transient log {id}"),
            self.syncer.clone(),
            self.keys.clone(),
        )?))
    }

    fn recover_queue_log(
        &self,
        id: &str,
        label: &str,
        window: usize,
        window_bytes: u64,
    ) -> Result<RecoveredQueue, StoreError> {
        QueueLog::recover(
            self.queue_dir(id),
            label.to_string(),
            self.syncer.clone(),
            window,
            window_bytes,
            self.keys.clone(),
        )
    }

    fn load_definitions(&self, vhost: &str) -> Result<Definitions, StoreError> {
        Ok(self.definitions.take_vhost(vhost))
    }

    fn load_access(&self) -> Result<Option<crate::auth::AccessState>, StoreError> {
        Ok(self.definitions.take_access())
    }

    fn load_policies(&self) -> Result<crate::broker::policy::PolicyState, StoreError> {
        Ok(self.definitions.take_policies())
    }

    fn load_parameters(&self) -> Result<crate::broker::parameters::ParameterState, StoreError> {
        Ok(self.definitions.take_parameters())
    }

    fn record(&self, change: &Change) -> u64 {
        self.definitions.record(change)
    }

    fn last_ticket(&self) -> u64 {
        self.syncer.last_ticket()
    }

    fn failure(&self) -> Option<String> {
        self.syncer.failure()
    }

    fn durable_ticket(&self) -> u64 {
        self.syncer.durable()
    }

    fn delayed_log(&self, id: &str, fresh: bool) -> Result<RecoveredQueue, StoreError> {
        let dir = self.queue_dir(id);
        if fresh {
            // Left by an exchange of this name deleted just before a crash.
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        // Every held message in memory: they are ordered by due time, not by the log's order.
        QueueLog::recover(
            dir,
            format!("delayed exchange log {id}"),
            self.syncer.clone(),
            usize::MAX,
            u64::MAX,
            self.keys.clone(),
        )
    }

    fn sync_stats(&self) -> crate::broker::store::SyncStats {
        self.syncer.stats()
    }

    fn backlogged(&self, waiter: &Arc<tokio::sync::Notify>) -> bool {
        self.syncer.backlogged(waiter)
    }
}
