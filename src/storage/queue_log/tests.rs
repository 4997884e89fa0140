use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

static DIRS: AtomicU64 = AtomicU64::new(0);

fn temp_dir() -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hare-qlog-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn msg(body: &str, persistent: bool) -> Message {
    Message::new(
        "ex".into(),
        "rk".into(),
        Bytes::from_static(&[0, 0]),
        Bytes::copy_from_slice(body.as_bytes()),
        persistent,
    )
}

fn bodies(ms: &[LoadedMessage]) -> Vec<String> {
    ms.iter().map(|m| String::from_utf8(m.message.body.to_bytes().to_vec()).unwrap()).collect()
}

fn recover(dir: &Path, syncer: &Arc<Syncer>, window: usize) -> RecoveredQueue {
    QueueLog::recover(dir.to_path_buf(), "test".into(), syncer.clone(), window, u64::MAX, None).unwrap()
}

#[test]
fn recovery_keeps_order_drops_acked_and_transient_and_marks_delivered() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    for i in 0..10u64 {
        log.append(i, &msg(&format!("m{i}"), i != 5), 0, false).unwrap();
    }
    log.ack(0).unwrap();
    log.ack(3).unwrap();
    log.delivered(1);
    syncer.flush_now();
    drop(log);
    let r = recover(&dir, &syncer, 100);
    assert_eq!(bodies(&r.messages), ["m1", "m2", "m4", "m6", "m7", "m8", "m9"]);
    assert!(r.messages[0].redelivered);
    assert!(!r.messages[1].redelivered);
    assert_eq!(r.next_seq, 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn torn_tail_is_cut_at_every_byte_of_the_last_record() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    for i in 0..3u64 {
        log.append(i, &msg(&format!("message {i}"), true), 0, false).unwrap();
    }
    syncer.flush_now();
    drop(log);
    let seg = segment_path(&dir, 1);
    let full = std::fs::read(&seg).unwrap();
    let last_start = full.len() - (HEADER_LEN + 1 + 8 + 1 + 3 + 3 + 4 + 2 + 4 + 9);
    for cut in last_start + 1..full.len() {
        let dir2 = temp_dir();
        std::fs::create_dir_all(&dir2).unwrap();
        std::fs::write(segment_path(&dir2, 1), &full[..cut]).unwrap();
        let r = recover(&dir2, &syncer, 100);
        assert_eq!(bodies(&r.messages), ["message 0", "message 1"], "cut at {cut}");
        assert_eq!(std::fs::metadata(segment_path(&dir2, 1)).unwrap().len(), last_start as u64);
        std::fs::remove_dir_all(&dir2).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_record_in_the_middle_is_skipped() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    for i in 0..5u64 {
        log.append(i, &msg(&format!("message {i}"), true), 0, false).unwrap();
    }
    syncer.flush_now();
    drop(log);
    let seg = segment_path(&dir, 1);
    let mut data = std::fs::read(&seg).unwrap();
    let record = data.len() / 5;
    data[2 * record + HEADER_LEN + 20] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let r = recover(&dir, &syncer, 100);
    assert_eq!(bodies(&r.messages), ["message 0", "message 1", "message 3", "message 4"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tail_beyond_the_window_reads_back_in_order_across_segments() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    let big = "x".repeat(100_000);
    // ~20 MB: three segments.
    for i in 0..200u64 {
        log.append(i, &msg(&format!("{i}:{big}"), true), 0, i >= 10).unwrap();
    }
    assert_eq!(log.tail_len(), 190);
    let mut seen = Vec::new();
    loop {
        let batch = log.read_tail(7, u64::MAX).unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().map(|m| m.seq));
    }
    assert_eq!(seen, (10..200).collect::<Vec<_>>());
    assert!(log.segments.len() >= 3);
    // Acking everything deletes every segment but the active one.
    for i in 0..200 {
        log.ack(i).unwrap();
    }
    assert_eq!(log.segments.len(), 1);
    syncer.flush_now();
    drop(log);
    let r = recover(&dir, &syncer, 5);
    assert!(r.messages.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tail_reads_and_recovery_stop_at_the_byte_budget() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    let big = "y".repeat(10_000);
    for i in 0..40u64 {
        log.append(i, &msg(&big, true), 0, true).unwrap();
    }
    // Reading stops once 25,000 bytes are in: after the third 10,000-byte body.
    let batch = log.read_tail(100, 25_000).unwrap();
    assert_eq!(batch.iter().map(|m| m.seq).collect::<Vec<_>>(), [0, 1, 2]);
    // At least one message, however small the budget; then on in order.
    assert_eq!(log.read_tail(100, 1).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(log.tail_len(), 36);
    syncer.flush_now();
    drop(log);
    // Recovery keeps about the budget in memory and the rest as the tail.
    let r = QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 100, 45_000, None).unwrap();
    assert_eq!(r.messages.len(), 5);
    assert_eq!(r.log.tail_len(), 35);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recovery_with_a_tail_then_purge() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    for i in 0..50u64 {
        log.append(i, &msg(&format!("m{i}"), true), 0, false).unwrap();
    }
    log.ack(20).unwrap();
    syncer.flush_now();
    drop(log);
    let mut r = recover(&dir, &syncer, 10);
    assert_eq!(bodies(&r.messages), (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(r.log.tail_len(), 39);
    let next = r.log.read_tail(15, u64::MAX).unwrap();
    assert_eq!(next.first().map(|m| m.seq), Some(10));
    assert!(!next.iter().any(|m| m.seq == 20), "acked message came back");
    assert_eq!(r.log.purge_tail().unwrap(), 24);
    syncer.flush_now();
    drop(r);
    // Purged messages stay gone; the 25 read into memory were never acked, so they return.
    let r = recover(&dir, &syncer, 100);
    assert_eq!(r.messages.len(), 25);
    assert_eq!(r.messages.last().map(|m| m.seq), Some(25));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expiry_times_survive_recovery() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    log.append(0, &msg("a", true), 1_700_000_000_123, false).unwrap();
    log.append(1, &msg("b", true), 0, false).unwrap();
    syncer.flush_now();
    drop(log);
    let r = recover(&dir, &syncer, 10);
    let got: Vec<u64> = r.messages.iter().map(|m| m.expires_at).collect();
    assert_eq!(got, vec![1_700_000_000_123, 0]);
    assert_eq!(bodies(&r.messages), vec!["a", "b"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sparse_segments_are_compacted_and_recover() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    log.segment_bytes = 16 * 1024;
    let body = "y".repeat(200);
    for i in 0..400u64 {
        log.append(i, &msg(&format!("{i}:{body}"), true), 0, false).unwrap();
    }
    let first = segment_path(&dir, 1);
    let full = std::fs::metadata(&first).unwrap().len();
    let records = log.segments[0].records;
    assert!(records >= COMPACT_MIN_RECORDS, "{records} records in the first segment");
    // Keep seq 3 (delivered) and seq 7 of the first segment; ack the rest of it.
    log.delivered(3);
    for seq in 0..records {
        if seq != 3 && seq != 7 {
            log.ack(seq).unwrap();
        }
    }
    let compacted = std::fs::metadata(&first).unwrap().len();
    assert!(compacted < full / 10, "segment not compacted: {full} -> {compacted}");
    syncer.flush_now();
    drop(log);
    let r = recover(&dir, &syncer, 1000);
    let seqs: Vec<u64> = r.messages.iter().map(|m| m.seq).collect();
    let mut expected = vec![3, 7];
    expected.extend(records..400);
    assert_eq!(seqs, expected);
    assert!(r.messages[0].redelivered && !r.messages[1].redelivered);
    assert!(bodies(&r.messages)[1].starts_with("7:"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn keyring(key: u8, previous: &[u8]) -> Arc<KeyRing> {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let write = |k: u8| {
        let path = dir.join(format!("key{k}"));
        std::fs::write(&path, [k; 32]).unwrap();
        path
    };
    let current = write(key);
    let old: Vec<PathBuf> = previous.iter().map(|&k| write(k)).collect();
    Arc::new(KeyRing::load(&current, &old).unwrap())
}

#[test]
fn sealed_records_hold_no_plaintext_and_need_their_key() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let keys = keyring(1, &[]);
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), Some(keys.clone())).unwrap();
    log.segment_bytes = 4 * 1024;
    for i in 0..40u64 {
        let expires = if i % 2 == 0 { 0 } else { 1_000 + i };
        log.append(i, &msg(&format!("secret body {i}"), true), expires, false).unwrap();
    }
    log.ack(0).unwrap();
    syncer.flush_now();
    drop(log);
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!data.windows(6).any(|w| w == b"secret"), "plaintext on disk");
    }
    let r = QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 100, u64::MAX, Some(keys)).unwrap();
    assert_eq!(r.messages.len(), 39);
    assert_eq!(bodies(&r.messages)[0], "secret body 1");
    assert_eq!(r.messages[0].expires_at, 1_001);
    assert_eq!(&r.messages[0].message.exchange[..], "ex");
    // Without the key, or with another, recovery refuses; it never returns garbage.
    for keys in [None, Some(keyring(2, &[]))] {
        let Err(err) = QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 100, u64::MAX, keys) else {
            panic!("recovered without the key")
        };
        assert!(err.0.contains("key"), "{}", err.0);
    }
    // A flipped byte of ciphertext with a fixed-up CRC fails the tag: an error too.
    let seg = segment_path(&dir, 1);
    let mut data = std::fs::read(&seg).unwrap();
    let len = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
    data[HEADER_LEN + len - 20] ^= 1;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_be_bytes()), &data[HEADER_LEN..HEADER_LEN + len]);
    data[8..12].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&seg, &data).unwrap();
    let Err(err) = QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 100, u64::MAX, Some(keyring(1, &[])))
    else {
        panic!("recovered a tampered record")
    };
    assert!(err.0.contains("does not open it"), "{}", err.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotated_key_reads_old_records_and_compaction_reseals_them() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    // Plain records first, then records sealed with key 1.
    let mut log = QueueLog::create(dir.clone(), "test".into(), syncer.clone(), None).unwrap();
    log.segment_bytes = 16 * 1024;
    let body = "z".repeat(100);
    for i in 0..100u64 {
        log.append(i, &msg(&format!("{i}:{body}"), true), 0, false).unwrap();
    }
    syncer.flush_now();
    drop(log);
    let r =
        QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 1000, u64::MAX, Some(keyring(1, &[]))).unwrap();
    let mut log = r.log;
    for i in 100..400u64 {
        log.append(i, &msg(&format!("{i}:{body}"), true), 0, false).unwrap();
    }
    syncer.flush_now();
    drop(log);
    // Key 2 is current now, key 1 previous: everything reads back.
    let keys = keyring(2, &[1]);
    let r = QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 1000, u64::MAX, Some(keys.clone())).unwrap();
    assert_eq!(r.messages.len(), 400);
    assert!(bodies(&r.messages)[399].starts_with("399:"));
    drop(r);
    // Compaction of the key-1 segments re-seals their live records with key 2.
    let mut r = QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 1000, u64::MAX, Some(keys)).unwrap();
    for seq in 0..400u64 {
        if seq % 50 != 7 {
            r.log.ack(seq).unwrap();
        }
    }
    syncer.flush_now();
    drop(r);
    let r =
        QueueLog::recover(dir.clone(), "test".into(), syncer.clone(), 1000, u64::MAX, Some(keyring(2, &[]))).unwrap();
    let seqs: Vec<u64> = r.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (0..400).filter(|s| s % 50 == 7).collect::<Vec<_>>());
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!data.windows(4).any(|w| w == b"zzzz"), "plaintext left after compaction");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_directory_recovers_empty() {
    let dir = temp_dir();
    let syncer = Syncer::start();
    let r = recover(&dir, &syncer, 10);
    assert!(r.messages.is_empty());
    assert_eq!(r.next_seq, 0);
    // Recovery creates nothing; the first append makes the directory.
    assert!(!dir.exists());
}

#[test]
fn full_disk_is_reported_and_nothing_is_confirmed() {
    let syncer = Syncer::start();
    let Ok(full) = LogFile::open(Path::new("/dev/full")) else { return };
    let (_, ticket) = full.append(&syncer, |b| b.extend_from_slice(b"lost"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while syncer.failure().is_none() {
        assert!(std::time::Instant::now() < deadline, "no failure reported");
        std::thread::yield_now();
    }
    assert!(syncer.failure().unwrap().contains("/dev/full"));
    assert!(syncer.durable() < ticket);
    syncer.shutdown();
}
