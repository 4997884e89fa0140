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

/// What a stream protocol client reads from a chunk as it is sent: the header's counts and
/// CRC checked, the entries split.
fn delivered(wire: StreamWire) -> Vec<Bytes> {
    let bytes = match wire {
        StreamWire::Memory(b) => b,
        StreamWire::File { file, position, len } => {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, position).expect("the region");
            Bytes::from(b)
        }
    };
    assert_eq!(bytes[0], MAGIC_VERSION);
    assert_eq!(bytes[1], 0, "a user chunk");
    let entries = u16::from_be_bytes([bytes[2], bytes[3]]) as u32;
    let records = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let data_len = u32::from_be_bytes(bytes[36..40].try_into().expect("4 bytes")) as usize;
    assert_eq!(bytes.len(), CHUNK_HEADER + data_len, "header and data, no trailer");
    let crc = u32::from_be_bytes(bytes[32..36].try_into().expect("4 bytes"));
    assert_eq!(crc, crc32fast::hash(&bytes[CHUNK_HEADER..]), "the CRC clients check");
    let h = Header {
        format: RecordFormat::Amqp10,
        count: records,
        entries,
        first_offset: u64::from_be_bytes(bytes[24..32].try_into().expect("8 bytes")),
        timestamp: 0,
        data_len: data_len as u64,
        trailer_len: 0,
        crc,
        sealed: false,
        legacy: false,
    };
    split_entries(bytes.slice(CHUNK_HEADER..), &h).expect("entries").0
}

/// A compressed sub-entry batch of `n` messages (gzip, as a client writes one; its body is
/// opaque to the broker).
fn compressed_batch(n: u16, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0x80 | (1 << 4));
    b.put_u16(n);
    b.put_u32(body.len() as u32 * 2);
    b.put_u32(body.len() as u32);
    b.put_slice(body);
    b.freeze()
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
        let mut filters = std::collections::HashMap::new();
        let mut now = 1_000_000i64;
        for step in 0..300u64 {
            let ctx = format!("seed {seed} step {step}");
            match rng.gen_range(0..100) {
                0..=49 => {
                    now += rng.gen_range(0..50);
                    let m = messages(&mut rng, step);
                    let format = if rng.gen_bool(0.5) { RecordFormat::Amqp10 } else { RecordFormat::Hare };
                    let names: Vec<String> = (0..rng.gen_range(0..3)).map(|w| format!("writer-{w}-{step}")).collect();
                    let writers: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), rng.gen())).collect();
                    // Among the stream protocol's messages, now and then a compressed batch.
                    let batches: Vec<u16> = match format {
                        RecordFormat::Amqp10 if rng.gen_bool(0.3) => {
                            m.iter().map(|_| if rng.gen_bool(0.3) { rng.gen_range(1..4) } else { 0 }).collect()
                        }
                        _ => Vec::new(),
                    };
                    let entries: Vec<Bytes> = m
                        .iter()
                        .enumerate()
                        .map(|(i, m)| match batches.get(i) {
                            Some(&n) if n > 0 => compressed_batch(n, m),
                            _ => m.clone(),
                        })
                        .collect();
                    let filter = rng.gen::<u32>();
                    let first = log.append_entries(format, &entries, &batches, &writers, filter, now).expect("append");
                    filters.insert(first, filter);
                    assert_eq!(first, model.next, "{ctx}");
                    let (mut messages, mut compressed) = (Vec::new(), Vec::new());
                    for (i, e) in entries.iter().enumerate() {
                        match batches.get(i) {
                            Some(&n) if n > 0 => {
                                let at = first + messages.len() as u64;
                                compressed.push(CompressedBatch { first: at, records: n, entry: e.clone() });
                                messages.extend(std::iter::repeat_n(Bytes::new(), n as usize));
                            }
                            _ => messages.push(e.clone()),
                        }
                    }
                    model.next += messages.len() as u64;
                    let writers = writers.iter().map(|(n, id)| (n.to_string(), *id)).collect();
                    let batches = compressed;
                    model.chunks.push(Chunk {
                        first_offset: first,
                        timestamp: now,
                        format,
                        messages,
                        writers,
                        batches,
                    });
                }
                50..=69 => {
                    let offset = rng.gen_range(0..model.next + 3);
                    let info = log.chunk_at(offset);
                    // The filter summary kept in the index, across reopenings too.
                    if let Some(i) = info {
                        assert_eq!(Some(&i.filter), filters.get(&i.first_offset), "{ctx}: filter summary");
                    }
                    let got = info.map(|c| log.read(&c).expect("read"));
                    assert_eq!(got.as_ref(), model.at(offset), "{ctx}: chunk at {offset}");
                    // A chunk of AMQP 1.0 messages is also had as the stream protocol sends it.
                    if let (Some(info), Some(want)) = (info, got) {
                        let wire = log.wire(&info).expect("wire");
                        assert_eq!(wire.is_some(), want.format == RecordFormat::Amqp10, "{ctx}");
                        if let Some(wire) = wire {
                            // The messages, a compressed batch's as empty places.
                            assert_eq!(delivered(wire), want.messages, "{ctx}: sent as stored");
                        }
                    }
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
    log.append(RecordFormat::Amqp10, &[Bytes::from_static(b"one"), Bytes::from_static(b"two")], &[], 10)
        .expect("append");
    log.append(RecordFormat::Hare, &[Bytes::from_static(b"three")], &[("p", 1)], 20).expect("append");
    log.sync().expect("sync");
    drop(log);
    // A crash halfway through a third append: part of its chunk and no index entry.
    let segment = dir.join(format!("{:020}.segment", 0));
    let mut f = OpenOptions::new().append(true).open(&segment).expect("segment");
    f.write_all(&[MAGIC_VERSION, 0, 0, 1, 0, 0, 0, 1, 0, 0]).expect("torn write");
    drop(f);
    let mut log = StreamLog::open(&dir, settings, None).expect("reopen");
    assert_eq!(log.next_offset(), 3);
    assert_eq!(log.append(RecordFormat::Amqp10, &[Bytes::from_static(b"four")], &[], 30).expect("append"), 3);
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
        log.append(RecordFormat::Amqp10, &[Bytes::from(vec![i; 10 + i as usize])], &[], i as i64 * 100)
            .expect("append");
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
    log.append(RecordFormat::Amqp10, &[Bytes::from_static(b"kept safe")], &[], 1).expect("append");
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
    log.append(RecordFormat::Amqp10, &[Bytes::from_static(b"a secret message")], &[("secret-writer", 3)], 10)
        .expect("append");
    log.sync().expect("sync");
    drop(log);
    let raw = std::fs::read(dir.join(format!("{:020}.segment", 0))).expect("segment");
    assert!(!raw.windows(6).any(|w| w == b"secret"), "the message or its writer is on disk in the clear");
    // Read back with the key; without it, an error rather than garbage.
    let log = StreamLog::open(&dir, settings, keys).expect("reopen");
    let chunk = log.read(&log.chunk_at(0).expect("chunk")).expect("read");
    assert_eq!(chunk.messages, vec![Bytes::from_static(b"a secret message")]);
    assert_eq!(chunk.writers, vec![("secret-writer".to_string(), 3)]);
    // Sent opened, its header made to match.
    let wire = log.wire(&log.chunk_at(0).expect("chunk")).expect("wire").expect("a user chunk");
    assert!(matches!(wire, StreamWire::Memory(_)));
    assert_eq!(delivered(wire), vec![Bytes::from_static(b"a secret message")]);
    let log = StreamLog::open(&dir, settings, None).expect("reopen without a key");
    assert!(log.read(&log.chunk_at(0).expect("chunk")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stream written by an earlier version (the 32-byte "HSC1" header, CRC32C, records that
/// carry their publisher) reads as before, and new chunks follow it in the same segment.
#[test]
fn chunks_of_the_layout_before_osiris_read_still() {
    let dir = temp_dir("legacy");
    std::fs::create_dir_all(&dir).expect("dir");
    let records = [Bytes::from_static(b"\x01first"), Bytes::from_static(b"\x01second")];
    let mut data = BytesMut::new();
    for r in &records {
        data.put_u32(r.len() as u32);
        data.put_slice(r);
    }
    let mut chunk = BytesMut::new();
    chunk.put_u32(LEGACY_MAGIC);
    chunk.put_u32(2);
    chunk.put_u64(0);
    chunk.put_i64(500);
    chunk.put_u32(data.len() as u32);
    chunk.put_u32(crc32c::crc32c(&data));
    chunk.put_slice(&data);
    std::fs::write(dir.join(format!("{:020}.segment", 0)), &chunk).expect("segment");
    let settings = Settings { max_segment_bytes: 1 << 20 };
    let mut log = StreamLog::open(&dir, settings, None).expect("open");
    assert_eq!(log.next_offset(), 2);
    let info = log.chunk_at(1).expect("the old chunk");
    let read = log.read(&info).expect("read");
    assert_eq!((read.format, read.timestamp, read.messages), (RecordFormat::Hare, 500, records.to_vec()));
    assert!(log.wire(&info).expect("wire").is_none(), "records are converted to be sent");
    assert_eq!(log.append(RecordFormat::Amqp10, &[Bytes::from_static(b"new")], &[], 600).expect("append"), 2);
    drop(log);
    let log = StreamLog::open(&dir, settings, None).expect("reopen");
    assert_eq!(log.next_offset(), 3);
    assert_eq!(log.read(&log.chunk_at(0).expect("old")).expect("read").messages, records.to_vec());
    assert_eq!(log.read(&log.chunk_at(2).expect("new")).expect("read").messages, vec![Bytes::from_static(b"new")]);
    let _ = std::fs::remove_dir_all(&dir);
}
