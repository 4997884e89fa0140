//! Read buffers that are used again once the messages cut from them are gone.
//!
//! A frame read from a socket is a zero-copy slice of the connection's read buffer, and the
//! message keeps that slice until it is delivered and written (see `broker::message::Body`).
//! So a busy connection keeps moving to a fresh buffer while the old one is still held by
//! messages in flight. Left to the allocator, each fresh megabyte comes back from the kernel
//! as new zeroed pages: with 64 KiB messages a profile put a quarter of the broker's CPU in
//! page faults and `clear_page`, more than the socket copies themselves.
//!
//! Instead, a buffer left behind is kept, emptied, in a small pool; once the messages cut
//! from it are dropped it is the only owner of its memory again, and
//! [`BytesMut::try_reclaim`] hands the whole allocation back, its pages already mapped.
//!
//! There is one pool for the process, behind a mutex taken once per megabyte read, not one
//! per worker thread. A connection's task runs on whichever worker the runtime picks, so
//! per-thread pools each kept buffers of the same connections: with two workers and 64 KiB
//! messages the receive copy wrote into more distinct memory, colder in the cache, and the
//! broker spent 7 % more CPU per message (24.1 against 26.0 µs, five alternated runs; see
//! docs/performance.md). The pool is bounded: at most [`SPARES_PER_WORKER`] buffers of
//! [`READ_MAX`] bytes for each core; and it is emptied when a worker goes idle after
//! [`SPARE_IDLE`] without the pool being used (see [`trim_if_idle`]), so that a broker gives
//! the memory of a burst of large messages back once the burst is over.

use bytes::BytesMut;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Read buffer bounds: idle connections stay small, busy ones read in large chunks.
pub const READ_MIN: usize = 1024;
pub const READ_MAX: usize = 1024 * 1024;
/// Buffers smaller than this are not pooled: they are cheap to allocate and few pages.
const POOL_FROM: usize = 64 * 1024;
/// Spare buffers kept per core. What pins a publisher's buffers is its messages in flight:
/// up to 8 MiB ready in a queue before the queue holds its publishers back
/// (`broker::queue::FLOW_HIGH_BYTES`) and 4 MiB of deliveries not yet written (a consumer
/// connection's credit), so about a dozen megabyte buffers; sixteen leave room, and a core
/// keeps about one such publisher busy.
const SPARES_PER_WORKER: usize = 16;
/// Spares unused for this long are freed when a worker next parks. Far longer than the gaps
/// within a burst, so a busy connection keeps its pages mapped.
pub const SPARE_IDLE: Duration = Duration::from_secs(5);

/// Buffers left behind, oldest first, and when one was last asked for.
struct Pool {
    cap: usize,
    state: Mutex<Spares>,
}

#[derive(Default)]
struct Spares {
    buffers: Vec<BytesMut>,
    last_used: Option<Instant>,
}

/// The process's pool, sized for the runtime's default of one worker per core.
static POOL: LazyLock<Pool> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Pool::new(SPARES_PER_WORKER * cores)
});

impl Pool {
    fn new(cap: usize) -> Pool {
        Pool { cap, state: Mutex::new(Spares::default()) }
    }

    /// The spares, even if a thread panicked holding them (a list of buffers stays valid).
    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest spare that is free again and can hold `needed` bytes, taken out of the pool.
    fn take(&self, needed: usize, now: Instant) -> Option<BytesMut> {
        let mut s = self.lock();
        s.last_used = Some(now);
        let at = s.buffers.iter_mut().position(|b| b.try_reclaim(needed))?;
        Some(s.buffers.remove(at))
    }

    /// Keeps a buffer left behind; when full the oldest goes (its memory is freed once its
    /// messages are). Kept in age order, so one pinned for long by a message that waits in a
    /// queue ages out.
    fn keep(&self, old: BytesMut) {
        let mut s = self.lock();
        if s.buffers.len() >= self.cap {
            s.buffers.remove(0);
        }
        s.buffers.push(old);
    }

    /// Frees the spares if none was asked for within [`SPARE_IDLE`] before `now`; true if it
    /// freed any. Skips a pool another thread is using (it is not idle).
    fn trim_if_idle(&self, now: Instant) -> bool {
        let Ok(mut s) = self.state.try_lock() else { return false };
        if s.buffers.is_empty() {
            return false;
        }
        let idle = s.last_used.is_none_or(|t| now.saturating_duration_since(t) >= SPARE_IDLE);
        if idle {
            s.buffers = Vec::new();
        }
        idle
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().buffers.len()
    }
}

/// Frees the pooled buffers if none was used for [`SPARE_IDLE`] before `now`, and hands the
/// allocator's free memory back to the system. Called by each worker thread as it parks
/// (`on_thread_park`); nearly free when the pool is empty, as it is with small messages only.
/// Buffers still held by messages are freed with them.
pub fn trim_if_idle(now: Instant) {
    if POOL.trim_if_idle(now) {
        // Freed blocks of that size stay in the allocator's heap unless handed back.
        super::alarms::release_free_memory();
    }
}

/// How much a connection reads at a time: [`READ_MIN`] while it is idle (the common case),
/// doubled up to [`READ_MAX`] after each read that fills half the room, while a peer sends a lot.
#[derive(Debug, Clone, Copy)]
pub struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize(READ_MIN)
    }
}

impl ReadSize {
    /// Whether `buf` lacks room for half a read, or for the `need` bytes still to come of a
    /// frame or packet begun.
    #[inline]
    pub fn short(&self, buf: &BytesMut, need: usize) -> bool {
        buf.capacity() - buf.len() < (self.0 / 2).max(need)
    }

    /// Makes room in `buf` for a read and for `need` more bytes (see [`make_room`]).
    #[inline]
    pub fn make_room(&self, buf: &mut BytesMut, need: usize) {
        make_room(buf, self.0.max(2 * need))
    }

    /// A read of `n` bytes came: one that filled most of the room asks for a larger one next.
    #[inline]
    pub fn read(&mut self, n: usize) {
        if n >= self.0 / 2 {
            self.0 = (self.0 * 2).min(READ_MAX);
        }
    }
}

/// Makes room for about `want` more bytes in `buf` (at least half of it), keeping the bytes it holds (the start
/// of a frame not yet complete). Reuses `buf`'s own memory if no message holds part of it any
/// more, else a pooled buffer that is free again, and allocates only when neither is.
pub fn make_room(buf: &mut BytesMut, want: usize) {
    make_room_in(&POOL, buf, want)
}

fn make_room_in(pool: &Pool, buf: &mut BytesMut, want: usize) {
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
    let reused = pool.take(needed, Instant::now());
    let mut fresh = reused.unwrap_or_else(|| BytesMut::with_capacity((buf.len() + want).max(READ_MAX)));
    fresh.extend_from_slice(buf);
    let mut old = std::mem::replace(buf, fresh);
    old.clear();
    pool.keep(old);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_whose_frames_are_gone_is_used_again() {
        let pool = Pool::new(4);
        let mut buf = BytesMut::with_capacity(READ_MAX);
        buf.extend_from_slice(&[7u8; 1000]);
        let frame = buf.split_to(600).freeze();
        let first = frame.as_ptr();
        // The frame still holds the buffer: a new one is made, the tail of 400 bytes kept.
        make_room_in(&pool, &mut buf, READ_MAX / 2);
        assert_eq!(&buf[..], &[7u8; 400][..]);
        assert!(buf.capacity() >= READ_MAX / 2);
        let second = buf.as_ptr();
        assert_ne!(first, second);
        drop(frame);
        // Once the frame is gone, moving on from the second buffer takes the first back.
        let held = buf.split_to(400).freeze();
        make_room_in(&pool, &mut buf, READ_MAX / 2);
        let at = (buf.as_ptr() as usize).wrapping_sub(first as usize);
        assert!(at < READ_MAX, "the pooled buffer is reused");
        assert!(buf.is_empty());
        drop(held);
    }

    /// Fills `buf` to nearly full and cuts a frame of most of it, as a busy read does: the
    /// frame holds the buffer, and what room is left is too little for the next read.
    fn read_a_frame(buf: &mut BytesMut, byte: u8) -> bytes::Bytes {
        let room = buf.capacity() - buf.len();
        buf.extend_from_slice(&vec![byte; room - 50]);
        buf.split_to(buf.len() - 10).freeze()
    }

    #[test]
    fn a_buffer_left_on_one_thread_is_used_again_on_another() {
        // A connection's task moves between worker threads; its old buffers go with it.
        let pool = std::sync::Arc::new(Pool::new(4));
        let (first, mut buf, frame) = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut buf = BytesMut::with_capacity(READ_MAX);
                let first = buf.as_ptr() as usize;
                let frame = read_a_frame(&mut buf, 5);
                make_room_in(&pool, &mut buf, READ_MAX / 2);
                assert_ne!(buf.as_ptr() as usize, first, "held: a fresh buffer");
                (first, buf, frame)
            })
            .join()
            .expect("the first thread ran")
        };
        assert_eq!(pool.len(), 1, "the buffer left behind is kept");
        drop(frame);
        let frame = read_a_frame(&mut buf, 6);
        let buf = std::thread::spawn(move || {
            make_room_in(&pool, &mut buf, READ_MAX / 2);
            assert_eq!(buf.as_ptr() as usize, first, "the buffer left on the other thread is reused");
            assert_eq!(&buf[..], &[6u8; 10][..], "with the bytes not yet cut");
            assert_eq!(pool.len(), 1, "and the one left now is kept");
            buf
        })
        .join()
        .expect("the second thread ran");
        drop((buf, frame));
    }

    #[test]
    fn a_full_pool_lets_its_oldest_go() {
        let pool = Pool::new(2);
        let mut buf = BytesMut::with_capacity(READ_MAX);
        let mut held = Vec::new();
        let mut starts = Vec::new();
        for i in 0..3 {
            starts.push(buf.as_ptr() as usize);
            held.push(read_a_frame(&mut buf, i));
            make_room_in(&pool, &mut buf, READ_MAX / 2);
        }
        assert_eq!(pool.len(), 2, "bounded");
        let kept: Vec<usize> = pool.lock().buffers.iter_mut().map(|b| b.as_ptr() as usize).collect();
        // A kept buffer is the part of an allocation after the frames cut from it.
        let within = |at: usize, start: usize| at >= start && at < start + READ_MAX;
        assert!(
            within(kept[0], starts[1]) && within(kept[1], starts[2]),
            "the oldest went, the others are kept in age order"
        );
        drop(held);
    }

    /// Model-based: a connection's reads as `serve_io` makes them (room for half a read, a
    /// frame begun kept), frames cut at random sizes and dropped in random order, as
    /// deliveries are. The bytes of a frame begun survive each move, each move leaves room for
    /// half a read, the pool stays within its bound and is used again, and no frame still held
    /// sees its bytes change whatever buffer the pool hands back. Byte `o` of the stream read
    /// is `o % 251`, so a frame's bytes follow from where in the stream it starts.
    #[test]
    fn reused_buffers_never_touch_a_frame_still_held() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        const READ: usize = 64 * 1024;
        let byte = |o: usize| (o % 251) as u8;
        let intact = |frame: &bytes::Bytes, at: usize| frame.iter().enumerate().all(|(i, &b)| b == byte(at + i));
        let mut reused = 0;
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let pool = Pool::new(rng.gen_range(1..5));
            let mut buf = BytesMut::new();
            // Frames held, each with where in the stream it starts.
            let mut held: Vec<(bytes::Bytes, usize)> = Vec::new();
            let (mut read, mut cut) = (0usize, 0usize);
            for step in 0..400 {
                if buf.capacity() - buf.len() < READ / 2 {
                    let spares: Vec<usize> = pool.lock().buffers.iter().map(|b| b.as_ptr() as usize).collect();
                    make_room_in(&pool, &mut buf, READ);
                    // A spare taken back starts where its allocation does, before the spare's view.
                    let at = buf.as_ptr() as usize;
                    reused += spares.iter().filter(|&&p| p >= at && p < at + buf.capacity()).count();
                    assert!(intact(&buf.clone().freeze(), cut), "seed {seed} step {step}: the frame begun is kept");
                    assert!(buf.capacity() - buf.len() >= READ / 2, "seed {seed} step {step}: room made");
                    assert!(pool.len() <= pool.cap, "seed {seed} step {step}: bounded");
                }
                // A read of up to the room left.
                let n = rng.gen_range(1..=(buf.capacity() - buf.len()).min(READ));
                buf.extend((read..read + n).map(byte));
                read += n;
                // Frames cut from what was read; some of it may stay as a frame begun.
                while !buf.is_empty() && rng.gen_bool(0.7) {
                    let len = rng.gen_range(1..=buf.len());
                    held.push((buf.split_to(len).freeze(), cut));
                    cut += len;
                }
                // Deliveries written: some frames go, in any order.
                for _ in 0..rng.gen_range(0..5) {
                    if !held.is_empty() {
                        held.swap_remove(rng.gen_range(0..held.len()));
                    }
                }
                if step % 20 == 19 {
                    for (frame, at) in &held {
                        assert!(intact(frame, *at), "seed {seed} step {step}: a frame still held was overwritten");
                    }
                }
            }
        }
        assert!(reused > 100, "the pool handed buffers back {reused} times");
    }

    #[test]
    fn idle_spares_are_freed_and_busy_ones_kept() {
        let pool = Pool::new(4);
        // A full buffer, most of it held by a message: moving on leaves it in the pool.
        let mut buf = BytesMut::with_capacity(READ_MAX);
        buf.extend_from_slice(&vec![3u8; READ_MAX - 100]);
        let held = buf.split_to(READ_MAX - 150).freeze();
        make_room_in(&pool, &mut buf, READ_MAX / 2);
        let used = Instant::now();
        assert_eq!(pool.len(), 1, "the buffer left behind is kept");
        assert!(!pool.trim_if_idle(used + SPARE_IDLE / 2));
        assert_eq!(pool.len(), 1, "used recently: kept");
        assert!(pool.trim_if_idle(used + SPARE_IDLE + Duration::from_millis(10)));
        assert_eq!(pool.len(), 0, "idle: freed");
        assert!(held.iter().all(|&b| b == 3), "a message still holding its bytes keeps them");
    }

    #[test]
    fn an_unshared_buffer_is_reclaimed_in_place() {
        let mut buf = BytesMut::with_capacity(READ_MAX);
        let start = buf.as_ptr();
        buf.extend_from_slice(&[1u8; READ_MAX - 10]);
        drop(buf.split_to(READ_MAX - 20));
        make_room_in(&Pool::new(4), &mut buf, READ_MAX / 2);
        assert_eq!(buf.as_ptr(), start);
        assert_eq!(&buf[..], &[1u8; 10][..]);
    }
}
