//! On-disk record framing shared by segment and ack files:
//! `magic u32 | length u32 | crc32c u32 | payload`, the CRC covering length and payload.
//! The magic lets a scan find the next intact record after a corrupt one.

use bytes::{BufMut, Bytes, BytesMut};

pub const MAGIC: u32 = 0x4852_4543; // "HREC"
pub const HEADER_LEN: usize = 12;
/// No record is larger than a message can be plus its routing data.
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;

fn checksum(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_be_bytes()), payload)
}

/// Appends a record whose payload `write` puts into the buffer; returns the record's length.
pub fn put_record(buf: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) -> usize {
    let start = buf.len();
    buf.put_u32(MAGIC);
    buf.put_u32(0);
    buf.put_u32(0);
    write(buf);
    let len = (buf.len() - start - HEADER_LEN) as u32;
    let crc = checksum(len, &buf[start + HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&len.to_be_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_be_bytes());
    buf.len() - start
}

/// What a scan of a file finds, in file order.
#[derive(Debug, PartialEq)]
pub enum Scanned {
    Record {
        offset: u64,
        payload: Bytes,
    },
    /// Bytes that are not an intact record, followed by an intact one.
    Corrupt {
        offset: u64,
        len: u64,
    },
    /// Bytes at the end with no intact record after them: a torn write.
    TornTail {
        offset: u64,
        len: u64,
    },
}

/// The record starting at `pos`, if one is intact there.
fn record_at(data: &Bytes, pos: usize) -> Option<(Bytes, usize)> {
    let rest = data.len().checked_sub(pos)?;
    if rest < HEADER_LEN {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    if word(pos) != MAGIC {
        return None;
    }
    let len = word(pos + 4);
    let crc = word(pos + 8);
    let len_usize = len as usize;
    if len_usize > MAX_PAYLOAD || len_usize > rest - HEADER_LEN {
        return None;
    }
    let payload = &data[pos + HEADER_LEN..pos + HEADER_LEN + len_usize];
    if checksum(len, payload) != crc {
        return None;
    }
    Some((data.slice(pos + HEADER_LEN..pos + HEADER_LEN + len_usize), HEADER_LEN + len_usize))
}

/// Splits a whole file into intact records, corrupt stretches and a torn tail.
pub fn scan(data: &Bytes) -> Vec<Scanned> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if let Some((payload, len)) = record_at(data, pos) {
            out.push(Scanned::Record { offset: pos as u64, payload });
            pos += len;
            continue;
        }
        // Look for the next intact record; without one, the rest is a torn tail.
        let magic = MAGIC.to_be_bytes();
        let next = (pos + 1..data.len().saturating_sub(HEADER_LEN - 1))
            .find(|&p| data[p..p + 4] == magic && record_at(data, p).is_some());
        match next {
            Some(p) => {
                out.push(Scanned::Corrupt { offset: pos as u64, len: (p - pos) as u64 });
                pos = p;
            }
            None => {
                out.push(Scanned::TornTail { offset: pos as u64, len: (data.len() - pos) as u64 });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> (Bytes, Vec<usize>) {
        let mut buf = BytesMut::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(buf.len());
            put_record(&mut buf, |b| b.put_slice(p));
        }
        (buf.freeze(), starts)
    }

    fn records(items: &[Scanned]) -> Vec<Bytes> {
        items
            .iter()
            .filter_map(|i| match i {
                Scanned::Record { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let (data, _) = file(&[b"one", b"", b"three"]);
        let items = scan(&data);
        assert_eq!(records(&items), vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from_static(b"three")]);
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn tail_torn_at_every_byte() {
        let (data, starts) = file(&[b"first record", b"second record", b"third"]);
        let last = *starts.last().unwrap();
        for cut in last + 1..data.len() {
            let items = scan(&data.slice(..cut));
            assert_eq!(records(&items).len(), 2, "cut at {cut}");
            assert_eq!(items.last(), Some(&Scanned::TornTail { offset: last as u64, len: (cut - last) as u64 }));
        }
        assert_eq!(records(&scan(&data.slice(..last))).len(), 2);
    }

    #[test]
    fn flipped_byte_in_the_middle_skips_one_record() {
        let (data, starts) = file(&[b"aaaa", b"bbbbbbbb", b"cccc", b"dddd"]);
        for at in starts[1]..starts[2] {
            let mut bad = BytesMut::from(&data[..]);
            bad[at] ^= 0x5a;
            let items = scan(&bad.freeze());
            let got = records(&items);
            assert_eq!(
                got,
                vec![Bytes::from_static(b"aaaa"), Bytes::from_static(b"cccc"), Bytes::from_static(b"dddd")]
            );
            assert!(items.iter().any(|i| matches!(i, Scanned::Corrupt { offset, .. } if *offset == starts[1] as u64)));
        }
    }

    #[test]
    fn empty_file_and_garbage_file() {
        assert!(scan(&Bytes::new()).is_empty());
        let items = scan(&Bytes::from_static(b"not a record at all, just bytes"));
        assert!(matches!(items[..], [Scanned::TornTail { offset: 0, .. }]));
    }
}
