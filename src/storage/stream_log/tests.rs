//! The stream log against a model (a list of chunks in memory): random appends, reads by
//! offset and by time, retention and reopening, with printed, replayable seeds; and the
//! recovery of a torn tail and of a damaged index.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hare-stream-test-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// What the log should hold: each chunk's first offset, timestamp and messages.
#[derive(Default)]
struct Model {
    chunks: Vec<Chunk>,
    /// Offsets below this were removed by retention.
    first: u64,
    next: u64,
}

impl Model {
    /// The chunk holding `offset`, or the first after it.
    fn at(&self, offset: u64) -> Option<&Chunk> {
        let offset = offset.max(self.first);
        self.chunks.iter().find(|c| c.first_offset + c.messages.len() as u64 > offset)
    }
}

fn messages(rng: &mut StdRng, tag: u64) -> Vec<Bytes> {
    (0..rng.gen_range(1..20))
        .map(|i| {
            let len = if rng.gen_bool(0.05) { rng.gen_range(0..20_000) } else { rng.gen_range(0..100) };
            let mut m = format!("{tag}/{i}/").into_bytes();
            m.resize(m.len() + len, (tag % 251) as u8);
            Bytes::from(m)
        })
        .collect()
}

#[test]
fn the_log_agrees_with_a_model_under_random_operations() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = temp_dir("model");
        let settings = Settings { max_segment_bytes: rng.gen_range(200..20_000) };
        // Odd seeds seal their chunks, as encryption at rest does.
        let keys = (seed % 2 == 1).then(|| Arc::new(KeyRing::from_key([7; 32])));
        let mut log = StreamLog::open(&dir, settings, keys.clone()).expect("open");
        let mut model = Model::default();
        let mut now = 1_000_000i64;
        for step in 0..300u64 {
            let ctx = format!("seed {seed} step {step}");
            match rng.gen_range(0..100) {
                0..=49 => {
                    now += rng.gen_range(0..50);
                    let m = messages(&mut rng, step);
                    let first = log.append(&m, now).expect("append");
                    assert_eq!(first, model.next, "{ctx}");
                    model.next += m.len() as u64;
                    model.chunks.push(Chunk { first_offset: first, timestamp: now, messages: m });
                }
                50..=69 => {
                    let offset = rng.gen_range(0..model.next + 3);
                    let got = log.chunk_at(offset).map(|c| log.read(&c).expect("read"));
                    assert_eq!(got.as_ref(), model.at(offset), "{ctx}: chunk at {offset}");
                }
                70..=79 => {
                    let t = now - rng.gen_range(-5..300);
                    let got = log.chunk_from_time(t).map(|c| c.first_offset);
                    let want = model.chunks.iter().find(|c| c.timestamp >= t).map(|c| c.first_offset);
                    assert_eq!(got, want, "{ctx}: from time {t}");
                }
                80..=86 => {
                    // Reading on from a chunk visits every later chunk once, in order.
                    let mut seen = Vec::new();
                    let mut c = log.chunk_at(model.first);
                    while let Some(info) = c {
                        seen.push(info.first_offset);
                        c = log.next_chunk(&info);
                    }
                    let want: Vec<u64> = model.chunks.iter().map(|c| c.first_offset).collect();
                    assert_eq!(seen, want, "{ctx}: the chunks in order");
                }
                87..=92 => {
                    let max_bytes = rng.gen_bool(0.5).then(|| rng.gen_range(0..log.size() + 1));
                    let max_age = rng.gen_bool(0.5).then(|| rng.gen_range(0..500));
                    let before = log.segment_count();
                    let removed = log.apply_retention(max_bytes, max_age, now).expect("retention");
                    assert_eq!(log.segment_count(), before - removed, "{ctx}");
                    assert!(log.segment_count() >= 1, "{ctx}: the active segment stays");
                    if removed == 0 {
                        assert_eq!(log.first_offset(), model.first, "{ctx}");
                    }
                    // Whole segments go: the first offset kept is a chunk's first.
                    model.first = log.first_offset();
                    model.chunks.retain(|c| c.first_offset >= model.first);
                    assert!(model.chunks.first().is_none_or(|c| c.first_offset == model.first), "{ctx}");
                    if let Some(m) = max_bytes {
                        // Only the segment being written may leave it over the bound.
                        assert!(log.size() <= m || log.segment_count() == 1, "{ctx}: {} over {m}", log.size());
                    }
                }
                _ => {
                    if rng.gen_bool(0.5) {
                        log.sync().expect("sync");
                    }
                    drop(log);
                    log = StreamLog::open(&dir, settings, keys.clone()).expect("reopen");
                    assert_eq!((log.first_offset(), log.next_offset()), (model.first, model.next), "{ctx}: reopened");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_torn_chunk_at_the_end_is_cut_off_and_the_log_goes_on() {
    let dir = temp_dir("torn");
    let settings = Settings { max_segment_bytes: 1 << 20 };
    let mut log = StreamLog::open(&dir, settings, None).expect("open");
    log.append(&[Bytes::from_static(b"one"), Bytes::from_static(b"two")], 10).expect("append");
    log.append(&[Bytes::from_static(b"three")], 20).expect("append");
    log.sync().expect("sync");
    drop(log);
    // A crash halfway through a third append: part of its chunk and no index entry.
    let segment = dir.join(format!("{:020}.segment", 0));
    let mut f = OpenOptions::new().append(true).open(&segment).expect("segment");
    f.write_all(&[0x48, 0x53, 0x43, 0x31, 0, 0, 0, 1, 0, 0]).expect("torn write");
    drop(f);
    let mut log = StreamLog::open(&dir, settings, None).expect("reopen");
    assert_eq!(log.next_offset(), 3);
    assert_eq!(log.append(&[Bytes::from_static(b"four")], 30).expect("append"), 3);
    let c = log.chunk_at(3).expect("the new chunk");
    assert_eq!(log.read(&c).expect("read").messages, vec![Bytes::from_static(b"four")]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lost_or_damaged_index_is_rebuilt_from_the_chunks() {
    let dir = temp_dir("index");
    let settings = Settings { max_segment_bytes: 1 << 20 };
    let mut log = StreamLog::open(&dir, settings, None).expect("open");
    for i in 0..10u8 {
        log.append(&[Bytes::from(vec![i; 10 + i as usize])], i as i64 * 100).expect("append");
    }
    drop(log);
    let index = dir.join(format!("{:020}.index", 0));
    // Cut short, as if the last entries were never written.
    let len = std::fs::metadata(&index).expect("index").len();
    OpenOptions::new().write(true).open(&index).expect("index").set_len(len - 3 * INDEX_ENTRY as u64 - 5).expect("cut");
    let log = StreamLog::open(&dir, settings, None).expect("reopen");
    assert_eq!(log.next_offset(), 10);
    assert_eq!(log.chunk_from_time(650).map(|c| c.first_offset), Some(7));
    assert_eq!(log.read(&log.chunk_at(9).expect("chunk")).expect("read").messages, vec![Bytes::from(vec![9u8; 19])]);
    drop(log);
    // Lost altogether.
    std::fs::remove_file(&index).expect("remove");
    let log = StreamLog::open(&dir, settings, None).expect("reopen");
    assert_eq!(log.next_offset(), 10);
    assert_eq!(std::fs::metadata(&index).expect("rebuilt").len(), 10 * INDEX_ENTRY as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_chunk_does_not_read_as_messages() {
    let dir = temp_dir("damaged");
    let settings = Settings { max_segment_bytes: 1 << 20 };
    let mut log = StreamLog::open(&dir, settings, None).expect("open");
    log.append(&[Bytes::from_static(b"kept safe")], 1).expect("append");
    let segment = dir.join(format!("{:020}.segment", 0));
    let f = OpenOptions::new().write(true).open(&segment).expect("segment");
    f.write_all_at(b"X", CHUNK_HEADER as u64 + 5).expect("damage");
    let c = log.chunk_at(0).expect("chunk");
    assert_eq!(log.read(&c).expect_err("a damaged chunk").kind(), std::io::ErrorKind::InvalidData);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sealed_chunks_keep_no_message_in_the_clear() {
    let dir = temp_dir("sealed");
    let settings = Settings { max_segment_bytes: 1 << 20 };
    let keys = Some(Arc::new(KeyRing::from_key([9; 32])));
    let mut log = StreamLog::open(&dir, settings, keys.clone()).expect("open");
    log.append(&[Bytes::from_static(b"a secret message")], 10).expect("append");
    log.sync().expect("sync");
    drop(log);
    let raw = std::fs::read(dir.join(format!("{:020}.segment", 0))).expect("segment");
    assert!(!raw.windows(6).any(|w| w == b"secret"), "the message is on disk in the clear");
    // Read back with the key; without it, an error rather than garbage.
    let log = StreamLog::open(&dir, settings, keys).expect("reopen");
    let chunk = log.read(&log.chunk_at(0).expect("chunk")).expect("read");
    assert_eq!(chunk.messages, vec![Bytes::from_static(b"a secret message")]);
    let log = StreamLog::open(&dir, settings, None).expect("reopen without a key");
    assert!(log.read(&log.chunk_at(0).expect("chunk")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
