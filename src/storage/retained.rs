//! MQTT's retained messages: the last message published with the retain flag to each topic
//! of each vhost, handed to every new subscriber whose filter matches it. Kept in memory
//! and in `data/mqtt-retained.log`, a log of set and clear records (framed as the queue
//! logs' records, sealed when encryption at rest is on) that each change appends and
//! `fdatasync`s before it is acknowledged; at start it is replayed and written again
//! compacted, one record per retained message.

use super::cipher::{open_maybe, KeyRing, Nonces};
use super::record::{put_record, scan, Scanned};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FILE: &str = "mqtt-retained.log";

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub qos: u8,
    pub payload: Bytes,
    /// The AMQP properties it was published with (content type, headers...), encoded.
    pub properties: Bytes,
}

#[derive(Debug)]
struct State {
    /// By vhost, then topic.
    messages: BTreeMap<String, BTreeMap<String, Retained>>,
    file: File,
    nonces: Nonces,
}

#[derive(Debug)]
pub struct RetainedStore {
    path: PathBuf,
    keys: Option<Arc<KeyRing>>,
    state: Mutex<State>,
}

impl RetainedStore {
    /// Reads the store in `dir` (an empty one if there is none) and compacts its file.
    pub fn open(dir: &Path, keys: Option<Arc<KeyRing>>) -> std::io::Result<RetainedStore> {
        let path = dir.join(FILE);
        let mut messages: BTreeMap<String, BTreeMap<String, Retained>> = BTreeMap::new();
        if let Ok(data) = std::fs::read(&path) {
            for s in scan(&Bytes::from(data)) {
                let Scanned::Record { payload, .. } = s else { continue };
                let Ok(plain) = open_maybe(keys.as_deref(), &payload) else {
                    tracing::warn!("{}: a record that does not open is skipped", path.display());
                    continue;
                };
                match decode(Bytes::from(plain)) {
                    Some((vhost, topic, Some(m))) => {
                        messages.entry(vhost).or_default().insert(topic, m);
                    }
                    Some((vhost, topic, None)) => {
                        if let Some(v) = messages.get_mut(&vhost) {
                            v.remove(&topic);
                        }
                    }
                    None => tracing::warn!("{}: a record that does not decode is skipped", path.display()),
                }
            }
        }
        // Compacted: written whole to a new file, synced, then renamed over the old one.
        let tmp = dir.join(format!("{FILE}.new"));
        let mut nonces = Nonces::new();
        {
            let mut f = File::create(&tmp)?;
            let mut buf = BytesMut::new();
            for (vhost, topics) in &messages {
                for (topic, m) in topics {
                    record(&mut buf, keys.as_deref(), &mut nonces, vhost, topic, Some(m));
                }
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(RetainedStore { path, keys, state: Mutex::new(State { messages, file, nonces }) })
    }

    /// Retains `message` for `topic`, or clears the topic's (an empty payload, as MQTT
    /// says); on disk when it returns. Blocks for the write and its fdatasync.
    pub fn set(&self, vhost: &str, topic: &str, message: Option<Retained>) -> std::io::Result<()> {
        let mut st = self.state.lock();
        let State { messages, file, nonces } = &mut *st;
        let known = messages.get(vhost).is_some_and(|v| v.contains_key(topic));
        if message.is_none() && !known {
            return Ok(());
        }
        let mut buf = BytesMut::new();
        record(&mut buf, self.keys.as_deref(), nonces, vhost, topic, message.as_ref());
        file.write_all(&buf)?;
        file.sync_data()?;
        match message {
            Some(m) => {
                messages.entry(vhost.to_string()).or_default().insert(topic.to_string(), m);
            }
            None => {
                if let Some(v) = messages.get_mut(vhost) {
                    v.remove(topic);
                }
            }
        }
        Ok(())
    }

    /// The retained messages of `vhost` whose topics `matches` accepts, in topic order.
    pub fn matching(&self, vhost: &str, mut matches: impl FnMut(&str) -> bool) -> Vec<(String, Retained)> {
        let st = self.state.lock();
        st.messages
            .get(vhost)
            .map(|v| v.iter().filter(|(t, _)| matches(t)).map(|(t, m)| (t.clone(), m.clone())).collect())
            .unwrap_or_default()
    }

    /// How many messages are retained in `vhost`.
    pub fn count(&self, vhost: &str) -> usize {
        self.state.lock().messages.get(vhost).map_or(0, BTreeMap::len)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn record(
    buf: &mut BytesMut,
    keys: Option<&KeyRing>,
    nonces: &mut Nonces,
    vhost: &str,
    topic: &str,
    m: Option<&Retained>,
) {
    let mut plain = BytesMut::new();
    let put_str = |b: &mut BytesMut, s: &[u8]| {
        b.put_u32(s.len() as u32);
        b.put_slice(s);
    };
    put_str(&mut plain, vhost.as_bytes());
    put_str(&mut plain, topic.as_bytes());
    match m {
        None => plain.put_u8(0),
        Some(m) => {
            plain.put_u8(1);
            plain.put_u8(m.qos);
            put_str(&mut plain, &m.properties);
            plain.put_slice(&m.payload);
        }
    }
    let sealed = match keys {
        Some(k) => k.seal(nonces, &plain),
        None => plain.to_vec(),
    };
    put_record(buf, |b| b.put_slice(&sealed));
}

fn decode(mut b: Bytes) -> Option<(String, String, Option<Retained>)> {
    fn take_str(b: &mut Bytes) -> Option<Bytes> {
        if b.remaining() < 4 {
            return None;
        }
        let n = b.get_u32() as usize;
        (b.remaining() >= n).then(|| b.split_to(n))
    }
    let vhost = String::from_utf8(take_str(&mut b)?.to_vec()).ok()?;
    let topic = String::from_utf8(take_str(&mut b)?.to_vec()).ok()?;
    if !b.has_remaining() {
        return None;
    }
    let m = match b.get_u8() {
        0 => None,
        1 => {
            if !b.has_remaining() {
                return None;
            }
            let qos = b.get_u8();
            let properties = take_str(&mut b)?;
            Some(Retained { qos, payload: b, properties })
        }
        _ => return None,
    };
    Some((vhost, topic, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hare-retained-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn msg(p: &str) -> Retained {
        Retained { qos: 1, payload: Bytes::from(p.to_string()), properties: Bytes::from_static(b"\x00\x00") }
    }

    #[test]
    fn kept_across_reopen_cleared_and_compacted() {
        let dir = temp_dir();
        for keys in [None, Some(Arc::new(KeyRing::from_key([7; 32])))] {
            let _ = std::fs::remove_file(dir.as_path().join(FILE));
            let s = RetainedStore::open(dir.as_path(), keys.clone()).unwrap();
            s.set("/", "a/b", Some(msg("one"))).unwrap();
            s.set("/", "a/b", Some(msg("two"))).unwrap();
            s.set("/", "a/c", Some(msg("three"))).unwrap();
            s.set("v", "a/b", Some(msg("other vhost"))).unwrap();
            s.set("/", "a/c", None).unwrap();
            s.set("/", "never", None).unwrap();
            drop(s);
            let s = RetainedStore::open(dir.as_path(), keys.clone()).unwrap();
            assert_eq!(s.matching("/", |_| true), vec![("a/b".to_string(), msg("two"))]);
            assert_eq!(s.matching("v", |t| t == "a/b").len(), 1);
            assert_eq!(s.count("/"), 1);
            // Compacted: one record per message left.
            let data = Bytes::from(std::fs::read(dir.as_path().join(FILE)).unwrap());
            assert_eq!(scan(&data).len(), 2);
        }
    }

    #[test]
    fn a_torn_last_record_is_skipped() {
        let dir = temp_dir();
        let s = RetainedStore::open(dir.as_path(), None).unwrap();
        s.set("/", "t", Some(msg("kept"))).unwrap();
        s.set("/", "u", Some(msg("torn"))).unwrap();
        drop(s);
        let path = dir.as_path().join(FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let s = RetainedStore::open(dir.as_path(), None).unwrap();
        assert_eq!(s.matching("/", |_| true), vec![("t".to_string(), msg("kept"))]);
    }
}
