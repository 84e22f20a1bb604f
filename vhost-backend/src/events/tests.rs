use super::*;
use std::time::Instant;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use xxcapture_abi::event::{DEVICE_BACKLOG, LOST};
use xxcapture_abi::irq;
use xxcapture_model::IrqConfig;
use zerocopy::FromBytes;

use crate::queue::mock::MockQueue;

const BUFS: u64 = 0x10_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem")
}

fn events(mask: u32, count: u32, usec: u32) -> Events {
    let mut irq = InterruptController::new(true);
    irq.set_config(IrqConfig { mask, count, usec });
    Events::new(irq).expect("events")
}

/// Posts `n` buffers of `len` bytes (slot-numbered) from descriptor `first`.
fn post(vq: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, n: u16, len: u32) {
    for i in first..first + n {
        let d = RawDescriptor::from(SplitDescriptor::new(
            BUFS + u64::from(i) * 0x1000,
            len,
            VRING_DESC_F_WRITE as u16,
            0,
        ));
        vq.add_desc_chains(&[d], i).expect("chain");
    }
}

fn records(mem: &GuestMemoryMmap, slot: u16, n: usize) -> Vec<Event> {
    let mut raw = vec![0u8; n * RECORD_SIZE];
    mem.read_slice(&mut raw, GuestAddress(BUFS + u64::from(slot) * 0x1000))
        .expect("read");
    raw.chunks(RECORD_SIZE)
        .map(|c| Event::read_from_bytes(c).expect("record"))
        .collect()
}

#[test]
fn records_are_delivered_once_in_order_with_one_notification_per_batch() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let ev = events(irq::ALL, 1, 0);
    // Raised before any buffer: backlog.
    for n in 0..70 {
        ev.raise(irq::FRAME_DONE, n, 1_000 + n, Some(&mem));
    }
    ev.set_queue(q.clone());
    ev.deliver(5_000, Some(&mem));
    assert_eq!(q.notifications(), 0, "no buffers yet");
    post(&vq, 0, 2, 4096);
    ev.deliver(5_000, Some(&mem));
    assert_eq!(q.used(&vq), vec![(0, 4096), (1, 6 * 64)]);
    assert_eq!(q.notifications(), 1, "one notification for the batch");
    let mut got = records(&mem, 0, 64);
    got.extend(records(&mem, 1, 6));
    let seqs: Vec<u64> = got.iter().map(|e| e.sequence.get()).collect();
    assert_eq!(seqs, (0..70).collect::<Vec<_>>());
    assert_eq!(got[69].frame_number.get(), 69);
    // Nothing twice.
    post(&vq, 2, 1, 4096);
    ev.deliver(6_000, Some(&mem));
    assert_eq!(q.used(&vq).len(), 2, "no record left: buffer stays posted");
    ev.raise(irq::TEST, 0, 7_000, Some(&mem));
    assert_eq!(q.used(&vq)[2], (2, 64));
    assert_eq!(records(&mem, 2, 1)[0].sequence.get(), 70);
    let st = ev.lock();
    assert_eq!((st.stats.records, st.stats.batches), (71, 2));
    assert!(st.stats.delay_us.len() == 71);
}

#[test]
fn bad_buffers_are_returned_unused_and_records_wait_for_good_ones() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let ev = events(irq::ALL, 1, 0);
    for _ in 0..3 {
        ev.raise(irq::TEST, 0, 10, Some(&mem));
    }
    ev.set_queue(q.clone());
    // Too small; readable; outside guest memory; then a split good one.
    let canary = vec![0xa5u8; 64];
    mem.write_slice(&canary, GuestAddress(BUFS))
        .expect("canary");
    let chains: Vec<Vec<RawDescriptor>> = vec![
        vec![RawDescriptor::from(SplitDescriptor::new(
            BUFS,
            63,
            VRING_DESC_F_WRITE as u16,
            0,
        ))],
        vec![RawDescriptor::from(SplitDescriptor::new(
            BUFS + 0x1000,
            4096,
            0,
            0,
        ))],
        vec![RawDescriptor::from(SplitDescriptor::new(
            (4 << 20) - 32,
            64,
            VRING_DESC_F_WRITE as u16,
            0,
        ))],
        vec![
            RawDescriptor::from(SplitDescriptor::new(
                BUFS + 0x3000,
                100,
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                4,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                BUFS + 0x4000,
                60,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ],
    ];
    let mut at = 0u16;
    for c in &chains {
        vq.add_desc_chains(c, at).expect("chain");
        at += c.len() as u16;
    }
    ev.deliver(20, Some(&mem));
    // 160 bytes hold 2 records; the third waits.
    assert_eq!(q.used(&vq), vec![(0, 0), (1, 0), (2, 0), (3, 128)]);
    assert_eq!(q.notifications(), 1, "one for the batch");
    let mut first = vec![0u8; 64];
    mem.read_slice(&mut first, GuestAddress(BUFS))
        .expect("read");
    assert_eq!(first, canary, "nothing written into a bad buffer");
    assert_eq!(ev.lock().stats.bad_buffers, 3);
    assert_eq!(ev.lock().irq.held(), 1);
}

#[test]
fn coalescing_by_count_holds_records_until_the_count() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let ev = events(irq::ALL, 4, 0);
    ev.set_queue(q.clone());
    post(&vq, 0, 4, 4096);
    for n in 0..3 {
        ev.raise(irq::FRAME_DONE, n, 100, Some(&mem));
    }
    assert!(q.used(&vq).is_empty());
    ev.raise(irq::FRAME_DONE, 3, 100, Some(&mem));
    assert_eq!(q.used(&vq), vec![(0, 256)]);
    assert_eq!(q.notifications(), 1);
}

/// Waits until the timerfd expires (poll with a limit).
fn wait_timer(ev: &Events, limit: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fd = ev.timer.as_fd();
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(1))
}

#[test]
fn coalescing_by_time_arms_the_timer_for_the_oldest_record() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let ev = events(irq::ALL, 100, 20_000);
    ev.set_queue(q.clone());
    post(&vq, 0, 1, 4096);
    let start = Instant::now();
    let now = || u64::try_from(start.elapsed().as_nanos()).expect("ns");
    ev.raise(irq::FRAME_DONE, 0, now(), Some(&mem));
    ev.raise(irq::FRAME_DONE, 1, now(), Some(&mem));
    assert!(q.used(&vq).is_empty());
    assert!(wait_timer(&ev, Duration::from_secs(5)), "timer never fired");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(20),
        "fired early: {waited:?}"
    );
    ev.timer_fired();
    ev.deliver(now(), Some(&mem));
    assert_eq!(q.used(&vq), vec![(0, 128)]);
    // Disarmed: nothing waits.
    assert!(!wait_timer(&ev, Duration::from_millis(50)));
}

#[test]
fn backlog_overflow_delivers_a_lost_record_with_the_right_range() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 128);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let ev = events(irq::ALL, 1, 0);
    ev.set_queue(q.clone());
    let total = DEVICE_BACKLOG as u64 + 5;
    for n in 0..total {
        ev.raise(irq::FRAME_DONE, n, n, Some(&mem));
    }
    // 65 buffers: 4096 records, then the LOST record.
    for i in 0..65u16 {
        let d = RawDescriptor::from(SplitDescriptor::new(
            0x20_0000 + u64::from(i) * 0x1000,
            4096,
            VRING_DESC_F_WRITE as u16,
            0,
        ));
        vq.add_desc_chains(&[d], i).expect("chain");
    }
    ev.deliver(total, Some(&mem));
    let used = q.used(&vq);
    assert_eq!(used.len(), 65);
    assert_eq!(used[64], (64, 64));
    let mut raw = vec![0u8; 64];
    mem.read_slice(&mut raw, GuestAddress(0x20_0000 + 64 * 0x1000))
        .expect("read");
    let lost = Event::read_from_bytes(&raw).expect("record");
    assert_eq!(lost.cause.get(), LOST);
    assert_eq!(lost.sequence.get(), DEVICE_BACKLOG as u64);
    assert_eq!(lost.count.get(), 5);
    assert!(ev.summary().contains("lost=5"));
}

#[test]
fn reset_drops_the_backlog() {
    let ev = events(irq::ALL, 1, 0);
    ev.raise(irq::TEST, 0, 1, None);
    assert_eq!(ev.lock().irq.held(), 1);
    ev.reset();
    assert_eq!(ev.lock().irq.held(), 0);
    assert_eq!(ev.lock().irq.next_sequence(), 0);
}

#[test]
fn injected_record_faults_lose_duplicate_and_storm() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let ev = events(irq::ALL, 1, 0);
    ev.set_queue(q.clone());
    for spec in ["irq-lost@2", "irq-dup@4", "irq-storm=5@5"] {
        ev.faults().arm(spec.parse().expect("spec")).expect("armed");
    }
    // Raised in a burst, delivered in one buffer.
    for n in 0..6 {
        ev.lock().irq.raise(irq::FRAME_DONE, n, 10);
    }
    post(&vq, 0, 1, 4096);
    ev.deliver(20, Some(&mem));
    assert_eq!(q.used(&vq), vec![(0, 6 * 64)]);
    let seqs: Vec<u64> = records(&mem, 0, 6)
        .iter()
        .map(|e| e.sequence.get())
        .collect();
    // Record 2 (sequence 1) lost, record 4 (sequence 3) twice.
    assert_eq!(seqs, [0, 2, 3, 3, 4, 5]);
    assert_eq!(q.notifications(), 1 + 5, "one batch plus the storm");
    assert_eq!(ev.faults().injected(), 3);
    assert!(!ev.faults().is_live());
}
