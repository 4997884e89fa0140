//! Model-based tests of a transient queue that pages to disk under memory pressure: random
//! publishes, fetches, page-outs and pressure changes, against a plain FIFO of what should
//! be in the queue.

use super::*;
use crate::broker::vhost::VHost;
use crate::storage::DiskStorage;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::AtomicU64;

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A transient queue with a pager on its own data directory, and the pressure switch.
fn paging_queue() -> (Arc<Queue>, Arc<AtomicBool>, std::path::PathBuf) {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hare-queue-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let storage: Arc<dyn super::super::store::Storage> = Arc::new(DiskStorage::open(&dir, None).unwrap());
    let pressure = Arc::new(AtomicBool::new(false));
    let options = QueueOptions {
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
        args: QueueArguments::default(),
    };
    let pager = Pager { storage, pressure: pressure.clone() };
    let q = Queue::new("paged".into(), "/", options, None, Some(pager), Weak::<VHost>::new());
    (q, pressure, dir)
}

fn message(id: u64, size: usize) -> Arc<Message> {
    let mut body = id.to_be_bytes().to_vec();
    body.resize(size.max(8), b'x');
    Arc::new(Message::new("".into(), "paged".into(), Bytes::new(), Bytes::from(body), false))
}

fn id_of(m: &QueuedMessage) -> u64 {
    u64::from_be_bytes(m.message.body.to_bytes()[..8].try_into().unwrap())
}

#[test]
fn a_paging_queue_keeps_order_and_a_bounded_front_whatever_the_pressure_does() {
    const LARGEST: usize = 40 * 1024;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (q, pressure, dir) = paging_queue();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next_id = 0u64;
        for step in 0..3000 {
            match rng.gen_range(0..100) {
                0..=59 => {
                    let size = if rng.gen_bool(0.5) { rng.gen_range(8..64) } else { rng.gen_range(8..LARGEST) };
                    let p = q.publish(message(next_id, size), None).unwrap();
                    assert!(!p.rejected);
                    model.push_back(next_id);
                    next_id += 1;
                }
                60..=84 => {
                    let got = q.get(true).map(|(m, _)| id_of(&m));
                    assert_eq!(got, model.pop_front(), "seed {seed} step {step}");
                }
                85..=92 => {
                    q.page_out();
                }
                _ => pressure.store(!pressure.load(Ordering::Relaxed), Ordering::Relaxed),
            }
            let st = q.state.lock();
            assert_eq!(st.ready_count() as usize, model.len(), "seed {seed} step {step}");
            // Once part of the queue is on disk, the front in memory stays small, so a
            // page-out has nothing it cannot move.
            if st.tail_len() > 0 {
                assert!(st.ready.len() <= PRESSURE_WINDOW, "seed {seed} step {step}: {} in memory", st.ready.len());
                assert!(st.ready_bytes <= PRESSURE_WINDOW_BYTES + LARGEST as u64, "seed {seed} step {step}");
            }
            drop(st);
            // Under pressure, a page-out leaves no more than the small window in memory.
            if pressure.load(Ordering::Relaxed) && rng.gen_bool(0.1) {
                q.page_out();
                let st = q.state.lock();
                assert!(
                    st.ready.len() <= PRESSURE_WINDOW,
                    "seed {seed} step {step}: {} after page-out",
                    st.ready.len()
                );
            }
        }
        // Everything comes back, in order.
        while let Some(want) = model.pop_front() {
            assert_eq!(q.get(true).map(|(m, _)| id_of(&m)), Some(want), "seed {seed} draining");
        }
        assert!(q.get(true).is_none());
        drop(q);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
