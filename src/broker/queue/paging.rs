//! A queue under memory pressure: its ready messages paged out to disk past a small window,
//! and the dead letters a queue hands to their exchanges once its lock is released.

use super::*;

impl Queue {
    /// Under memory pressure: moves this queue's ready messages past the (small) window to
    /// disk, in order; from then on it keeps only a window in memory, as a durable queue does.
    /// Called for every queue while memory is short, and by a publish that finds its queue's
    /// window full. Returns how many messages moved.
    pub fn page_out(&self) -> usize {
        if self.pager.is_none() {
            return 0;
        }
        let mut st = self.state.lock();
        // With a tail on disk already, the front cannot be appended behind it; such a
        // queue's front never outgrows the small window anyway (`small_window`).
        if st.tail_len() > 0 || !st.after_tail.is_empty() || !st.window_full() {
            return 0;
        }
        let moved = self.page_out_locked(&mut st);
        drop(st);
        moved
    }

    /// Opens the queue's transient log (once memory is short) and appends the messages past
    /// the window to it as the tail. The appends go to the log's write buffer, which the
    /// sync thread writes out; each message's memory is released as it is copied.
    pub(super) fn page_out_locked(&self, st: &mut QueueState) -> usize {
        let Some(p) = self.pager.as_ref().filter(|p| p.pressure.load(Ordering::Acquire)) else {
            return 0;
        };
        if st.log.is_none() {
            match p.storage.create_transient_log() {
                Ok(log) => st.log = Some(log),
                Err(e) => {
                    tracing::warn!("queue '{}': cannot page to disk: {e}", self.name);
                    return 0;
                }
            }
        }
        // Keep the front: at most the pressure window, by count and by bytes.
        let mut keep = 0;
        let mut bytes = 0;
        while keep < st.ready.len().min(PRESSURE_WINDOW) {
            bytes += st.ready[keep].message.body.len() as u64;
            if bytes > PRESSURE_WINDOW_BYTES {
                break;
            }
            keep += 1;
        }
        // A requeued message keeps its redelivered flag only in memory: keep every one (they
        // sit near the front, at their places by publish order).
        if let Some(last) = st.ready.iter().rposition(|m| m.redelivered) {
            keep = keep.max(last + 1);
        }
        if keep >= st.ready.len() {
            return 0;
        }
        let moving = st.ready.split_off(keep);
        let n = moving.len();
        let Some(log) = st.log.as_mut() else { return 0 };
        let mut moved_bytes = 0u64;
        let mut kept = VecDeque::new();
        for m in moving {
            // Once one append fails, the rest stay in memory, behind the tail (in order).
            if !kept.is_empty() {
                kept.push_back(m);
                continue;
            }
            match log.append(m.seq, &m.message, m.expires_at, true) {
                Ok(_) => moved_bytes += m.message.body.len() as u64,
                Err(e) => {
                    tracing::warn!("queue '{}': cannot page to disk: {e}", self.name);
                    kept.push_back(m);
                }
            }
        }
        let moved = n - kept.len();
        st.disk_writes += moved as u64;
        st.after_tail = kept;
        st.ready_bytes = st.ready_bytes.saturating_sub(moved_bytes);
        st.tail_bytes += moved_bytes;
        if moved > 0 {
            tracing::info!("queue '{}': memory is short, {moved} messages paged to disk", self.name);
        }
        moved
    }

    /// Releases the lock, then republishes what died meanwhile to the dead-letter exchange.
    pub(super) fn unlock_and_dead_letter(self: &Arc<Self>, mut st: parking_lot::MutexGuard<'_, QueueState>) {
        if st.dead.is_empty() {
            return;
        }
        let dead = std::mem::take(&mut st.dead);
        drop(st);
        self.dead_letter(dead);
    }

    /// Routes dead letters through the dead-letter exchange, at most once: a missing exchange
    /// or no matching queue drops them, as in RabbitMQ.
    pub(super) fn dead_letter(self: &Arc<Self>, dead: Vec<(QueuedMessage, Reason)>) {
        let (dlx, dlrk) = {
            let st = self.state.lock();
            (st.args.dead_letter_exchange.clone(), st.args.dead_letter_routing_key.clone())
        };
        let (Some(dlx), Some(vhost)) = (dlx, self.owner.upgrade()) else {
            return;
        };
        let now = now_ms();
        let mut targets = Vec::new();
        for (m, reason) in dead {
            let rk = dlrk.clone().unwrap_or_else(|| m.message.routing_key.clone());
            let keep_cc = dlrk.is_none();
            let (letter, cc) = dead_letter::dead_letter(&m.message, reason, &self.name, &dlx, rk.clone(), keep_cc, now);
            let letter = Arc::new(letter);
            if let Err(e) = vhost.route_dead_letter(&dlx, &rk, &cc, &letter.properties, &mut targets) {
                tracing::debug!("queue '{}': dead letter dropped: {}", self.name, e.text);
                continue;
            }
            for q in targets.drain(..) {
                if dead_letter::is_cycle(&letter, &q.name) {
                    tracing::debug!("queue '{}': dead-letter cycle through '{}': message dropped", self.name, q.name);
                    continue;
                }
                if let Err(e) = q.publish(letter.clone(), None) {
                    tracing::warn!("queue '{}': dead letter not stored in '{}': {e}", self.name, q.name);
                }
            }
        }
    }
}
