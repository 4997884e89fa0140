//! Read buffers that are used again once the messages cut from them are gone.
//!
//! A frame read from a socket is a zero-copy slice of the connection's read buffer, and the
//! message keeps that slice until it is delivered and written (see `broker::message::Body`).
//! So a busy connection keeps moving to a fresh buffer while the old one is still held by
//! messages in flight. Left to the allocator, each fresh megabyte comes back from the kernel
//! as new zeroed pages: with 64 KiB messages a profile put a quarter of the broker's CPU in
//! page faults and `clear_page`, more than the socket copies themselves.
//!
//! Instead, a buffer left behind is kept, emptied, in a small per-thread pool; once the
//! messages cut from it are dropped it is the only owner of its memory again, and
//! [`BytesMut::try_reclaim`] hands the whole allocation back, its pages already mapped.
//! The pool is per worker thread (no lock) and bounded, so it holds at most
//! [`MAX_SPARES`] × [`READ_MAX`] bytes a thread; and it is emptied when its thread goes idle
//! after [`SPARE_IDLE`] without using it (see [`trim_if_idle`]), so that a broker gives the
//! memory of a burst of large messages back once the burst is over.

use bytes::BytesMut;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// Read buffer bounds: idle connections stay small, busy ones read in large chunks.
pub const READ_MIN: usize = 1024;
pub const READ_MAX: usize = 1024 * 1024;
/// Buffers smaller than this are not pooled: they are cheap to allocate and few pages.
const POOL_FROM: usize = 64 * 1024;
/// Buffers kept per worker thread. What pins a publisher's buffers is its messages in flight:
/// up to 8 MiB ready in a queue before the queue holds its publishers back
/// (`broker::queue::FLOW_HIGH_BYTES`) and 4 MiB of deliveries not yet written (a consumer
/// connection's credit), so about a dozen megabyte buffers; sixteen leave room.
const MAX_SPARES: usize = 16;
/// A thread's spares unused for this long are freed when the thread next parks. Far longer
/// than the gaps within a burst, so a busy connection keeps its pages mapped.
pub const SPARE_IDLE: Duration = Duration::from_secs(5);

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static LAST_USED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Frees this thread's spares if none was used for [`SPARE_IDLE`] before `now`, and hands
/// the allocator's free memory back to the system. Called by each worker thread as it parks
/// (`on_thread_park`); nearly free when the pool is empty, as it is with small messages only.
/// Buffers still held by messages are freed with them.
pub fn trim_if_idle(now: Instant) {
    SPARES.with(|s| {
        if s.borrow().is_empty() {
            return;
        }
        let idle = LAST_USED.get().is_none_or(|t| now.saturating_duration_since(t) >= SPARE_IDLE);
        if idle {
            *s.borrow_mut() = Vec::new();
            // Freed blocks of that size stay in the allocator's heap unless handed back.
            super::alarms::release_free_memory();
        }
    });
}

/// Makes room for about `want` more bytes in `buf` (at least half of it), keeping the bytes it holds (the start
/// of a frame not yet complete). Reuses `buf`'s own memory if no message holds part of it any
/// more, else a pooled buffer that is free again, and allocates only when neither is.
pub fn make_room(buf: &mut BytesMut, want: usize) {
    if buf.try_reclaim(want) {
        return;
    }
    if want < POOL_FROM {
        buf.reserve(want);
        return;
    }
    // A spare will do if it has room for the bytes kept and half a read (the caller asks for
    // more room only below half a read): asking for the full `want` would refuse every
    // spare of the same size whenever a partial frame is kept.
    let needed = buf.len() + want / 2;
    LAST_USED.set(Some(Instant::now()));
    let reused = SPARES.with(|s| {
        let mut spares = s.borrow_mut();
        let at = spares.iter_mut().position(|b| b.try_reclaim(needed))?;
        Some(spares.remove(at))
    });
    let mut fresh = reused.unwrap_or_else(|| BytesMut::with_capacity((buf.len() + want).max(READ_MAX)));
    fresh.extend_from_slice(buf);
    let mut old = std::mem::replace(buf, fresh);
    old.clear();
    SPARES.with(|s| {
        let mut spares = s.borrow_mut();
        if spares.len() >= MAX_SPARES {
            // Full: the oldest goes (its memory is freed once its messages are); kept in
            // age order, so one pinned for long by a message that waits in a queue ages out.
            spares.remove(0);
        }
        spares.push(old);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_whose_frames_are_gone_is_used_again() {
        let mut buf = BytesMut::with_capacity(READ_MAX);
        buf.extend_from_slice(&[7u8; 1000]);
        let frame = buf.split_to(600).freeze();
        let first = frame.as_ptr();
        // The frame still holds the buffer: a new one is made, the tail of 400 bytes kept.
        make_room(&mut buf, READ_MAX / 2);
        assert_eq!(&buf[..], &[7u8; 400][..]);
        assert!(buf.capacity() >= READ_MAX / 2);
        let second = buf.as_ptr();
        assert_ne!(first, second);
        drop(frame);
        // Once the frame is gone, moving on from the second buffer takes the first back.
        let held = buf.split_to(400).freeze();
        make_room(&mut buf, READ_MAX / 2);
        let at = (buf.as_ptr() as usize).wrapping_sub(first as usize);
        assert!(at < READ_MAX, "the pooled buffer is reused");
        assert!(buf.is_empty());
        drop(held);
    }

    #[test]
    fn idle_spares_are_freed_and_busy_ones_kept() {
        // A full buffer, most of it held by a message: moving on leaves it in the pool.
        let mut buf = BytesMut::with_capacity(READ_MAX);
        buf.extend_from_slice(&vec![3u8; READ_MAX - 100]);
        let held = buf.split_to(READ_MAX - 150).freeze();
        make_room(&mut buf, READ_MAX / 2);
        let used = Instant::now();
        let spares = || SPARES.with(|s| s.borrow().len());
        assert_eq!(spares(), 1, "the buffer left behind is kept");
        trim_if_idle(used + SPARE_IDLE / 2);
        assert_eq!(spares(), 1, "used recently: kept");
        trim_if_idle(used + SPARE_IDLE + Duration::from_millis(10));
        assert_eq!(spares(), 0, "idle: freed");
        assert!(held.iter().all(|&b| b == 3), "a message still holding its bytes keeps them");
    }

    #[test]
    fn an_unshared_buffer_is_reclaimed_in_place() {
        let mut buf = BytesMut::with_capacity(READ_MAX);
        let start = buf.as_ptr();
        buf.extend_from_slice(&[1u8; READ_MAX - 10]);
        drop(buf.split_to(READ_MAX - 20));
        make_room(&mut buf, READ_MAX / 2);
        assert_eq!(buf.as_ptr(), start);
        assert_eq!(&buf[..], &[1u8; 10][..]);
    }
}
