//! Publishers of a stream protocol connection: their declaration, publish frames (entries,
//! uncompressed sub-entry batches, deduplication by publisher reference), and the confirms
//! sent once the group commit that holds them is durable.

use super::{code, key, put_frame, Conn, Perm, Publisher, MAX_IDS, MAX_REFERENCE};
use bytes::{Buf, BufMut, Bytes};

impl Conn {
    pub(super) fn declare_publisher(&mut self, id: u8, reference: String, stream: String) -> u16 {
        if self.shared.alarm.borrow().is_some() {
            // RabbitMQ refuses new publishers while a resource alarm blocks publishing.
            return code::PRECONDITION_FAILED;
        }
        if !self.allowed(&stream, Perm::Write) {
            return code::ACCESS_REFUSED;
        }
        let taken = self.publishers.contains_key(&id)
            || (!reference.is_empty()
                && self.publishers.values().any(|p| p.stream == stream && p.reference.as_deref() == Some(&reference)));
        if taken || reference.len() > MAX_REFERENCE || self.publishers.len() >= MAX_IDS {
            return code::PRECONDITION_FAILED;
        }
        let Some(queue) = self.stream(&stream) else { return code::STREAM_DOES_NOT_EXIST };
        let reference = (!reference.is_empty()).then_some(reference);
        self.publishers.insert(id, Publisher { stream, reference, queue });
        code::OK
    }

    /// A publish frame: each message appended (a named publisher's ids not above the last
    /// it stored are confirmed without being stored again), confirmed once durable.
    pub(super) fn publish(&mut self, id: u8, version: u16, count: u32, mut messages: Bytes) {
        let Some(p) = self.publishers.get(&id) else {
            let ids = publishing_ids(version, count, messages);
            self.publish_error(id, code::PUBLISHER_DOES_NOT_EXIST, &ids);
            return;
        };
        if p.queue.is_deleted() {
            let stream = p.stream.clone();
            let ids = publishing_ids(version, count, messages);
            self.publish_error(id, code::PUBLISHER_DOES_NOT_EXIST, &ids);
            self.stream_gone(&stream);
            return;
        }
        if !self.allowed(&p.stream, Perm::Write) {
            let ids = publishing_ids(version, count, messages);
            self.publish_error(id, code::ACCESS_REFUSED, &ids);
            return;
        }
        let queue = p.queue.clone();
        let store = queue.stream.clone();
        let reference = p.reference.clone();
        let mut last = reference.as_deref().and_then(|r| store.as_ref().and_then(|s| s.writer_sequence(r)));
        let mut appended = 0u64;
        let mut malformed = false;
        for _ in 0..count {
            let Some(entry) = next_entry(&mut messages, version) else {
                malformed = true;
                break;
            };
            let (publishing_id, filter, data) = entry;
            if last.is_some_and(|l| publishing_id <= l) {
                // A duplicate: confirmed, not stored.
                self.unconfirmed.push_back((0, id, publishing_id));
                continue;
            }
            let writer = reference.as_deref().map(|r| (r, publishing_id));
            let ticket = match data {
                Entry::One(message) => {
                    appended += 1;
                    queue.stream_append(writer, message, filter.as_deref()).map(|(_, t)| t)
                }
                Entry::Batch(batch) => {
                    let mut ticket = None;
                    let n = batch.len();
                    for (i, message) in batch.into_iter().enumerate() {
                        // The batch's publishing id goes with its last message.
                        let w = if i + 1 == n { writer } else { None };
                        ticket = queue.stream_append(w, message, None).map(|(_, t)| t);
                    }
                    appended += n as u64;
                    ticket
                }
                Entry::Compressed(_, 0) => {
                    // A batch of no message would take no offset.
                    self.publish_error(id, code::PRECONDITION_FAILED, &[publishing_id]);
                    continue;
                }
                Entry::Compressed(entry, n) => {
                    appended += n as u64;
                    queue.stream_append_batch(writer, entry, n).map(|(_, t)| t)
                }
            };
            if reference.is_some() {
                last = Some(publishing_id);
            }
            self.unconfirmed.push_back((ticket.unwrap_or(0), id, publishing_id));
        }
        if appended > 0 {
            queue.count_stream_publishes(appended);
        }
        if malformed {
            self.close(code::UNKNOWN_FRAME, "malformed publish frame");
        }
    }

    fn publish_error(&mut self, publisher: u8, c: u16, ids: &[u64]) {
        put_frame(&mut self.out, key::PUBLISH_ERROR, |o| {
            o.put_u8(publisher);
            o.put_u32(ids.len() as u32);
            for &i in ids {
                o.put_u64(i);
                o.put_u16(c);
            }
        });
    }

    /// Sends the confirms of what is durable now, a frame per run of one publisher's ids.
    pub(super) fn confirm(&mut self) {
        while let Some(&(ticket, publisher, _)) = self.unconfirmed.front() {
            if ticket > self.durable {
                break;
            }
            let mut ids = Vec::new();
            while let Some(&(t, p, i)) = self.unconfirmed.front() {
                if t > self.durable || p != publisher {
                    break;
                }
                ids.push(i);
                self.unconfirmed.pop_front();
            }
            put_frame(&mut self.out, key::PUBLISH_CONFIRM, |o| {
                o.put_u8(publisher);
                o.put_u32(ids.len() as u32);
                ids.iter().for_each(|&i| o.put_u64(i));
            });
        }
    }
}

/// One entry of a publish frame.
enum Entry {
    One(Bytes),
    /// An uncompressed sub-entry batch: its messages.
    Batch(Vec<Bytes>),
    /// A compressed sub-entry batch: the entry as it came (its header and compressed
    /// body), and how many messages it holds. Stored and sent as it is.
    Compressed(Bytes, u16),
}

/// Cuts the next `publishing id | [filter value] | entry` out of a publish frame.
fn next_entry(b: &mut Bytes, version: u16) -> Option<(u64, Option<Bytes>, Entry)> {
    if b.remaining() < 12 {
        return None;
    }
    let id = b.get_u64();
    let mut filter = None;
    if version >= 2 {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_i16();
        if len >= 0 {
            if b.remaining() < len as usize {
                return None;
            }
            filter = Some(b.split_to(len as usize));
        }
    }
    if b.remaining() < 4 {
        return None;
    }
    let first = b[0];
    if first & 0x80 == 0 {
        let size = b.get_u32() as usize;
        if b.remaining() < size {
            return None;
        }
        return Some((id, filter, Entry::One(b.split_to(size))));
    }
    // 1 | compression (3 bits) | unused (4) | count u16 | uncompressed size u32 | size u32 | batch
    if b.remaining() < 11 {
        return None;
    }
    let whole = b.clone();
    let compression = (b.get_u8() >> 4) & 0x07;
    let count = b.get_u16() as usize;
    let _uncompressed = b.get_u32();
    let size = b.get_u32() as usize;
    if b.remaining() < size {
        return None;
    }
    let mut batch = b.split_to(size);
    if compression != 0 {
        return Some((id, filter, Entry::Compressed(whole.slice(..11 + size), count as u16)));
    }
    let mut messages = Vec::with_capacity(count.min(batch.remaining() / 4));
    for _ in 0..count {
        if batch.remaining() < 4 {
            return None;
        }
        let n = batch.get_u32() as usize;
        if batch.remaining() < n {
            return None;
        }
        messages.push(batch.split_to(n));
    }
    Some((id, filter, Entry::Batch(messages)))
}

/// The publishing ids of a frame refused whole.
fn publishing_ids(version: u16, count: u32, mut messages: Bytes) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..count {
        match next_entry(&mut messages, version) {
            Some((id, _, _)) => ids.push(id),
            None => break,
        }
    }
    ids
}
