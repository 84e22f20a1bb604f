//! The ring engine driven as the daemon drives it, without QEMU: a device
//! over fake guest memory, requests through a command-queue batch, the
//! application's side written straight into the ring area.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use xxcapture_abi::event::{FLAG_COMPLETION, FLAG_RING, LOST, RING_WAKE};
use xxcapture_abi::{
    cq_flags, dma_dir, irq, regs, ring_setup, sq_flags, Event, RingSetupReq, SgEntry, SqEntry,
    TaskFile, TaskFileResult, TfError, MAGIC, RING_ARENA_OFFSET, RING_ARENA_SIZE, RING_CQ_ENTRIES,
    RING_CQ_OFFSET, RING_SQ_ENTRIES, RING_SQ_OFFSET,
};
use xxcapture_model::{Card, CardConfig, CAPTURE_CARD_CAPS};
use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::card_ram::CardRam;
use crate::clock::Clock;
use crate::device::{ShmemMapper, XxcapDevice};
use crate::queue::mock::MockQueue;
use crate::request::Device;

const OWNER: u32 = 5;
const EVENT_BUFS: u64 = 0x10_0000;
const GUEST_BUF: u64 = 0x40_0000;

struct OkMapper;

impl ShmemMapper for OkMapper {
    fn map(&self, _ram: &CardRam) -> io::Result<()> {
        Ok(())
    }
    fn unmap(&self, _ram: &CardRam) -> io::Result<()> {
        Ok(())
    }
}

struct Rig {
    dev: Arc<XxcapDevice>,
    mem: GuestMemoryMmap,
    ram: Arc<CardRam>,
}

fn rig_with(clock: Clock) -> Rig {
    let card = Card::new(CardConfig {
        card_ram_size: 4 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    })
    .expect("card");
    let dev = XxcapDevice::new(card, None, clock).expect("device");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("memory");
    for (i, b) in (0..0x4000u64).map(|i| (i, (i % 253) as u8)) {
        mem.write_obj(b, GuestAddress(GUEST_BUF + i)).expect("fill");
    }
    dev.memory().set(GuestMemoryAtomic::new(mem.clone()));
    dev.set_mapper(Arc::new(OkMapper));
    dev.begin_batch().expect("batch").attach().expect("attach");
    let ram = dev.card_ram();
    Rig { dev, mem, ram }
}

fn rig() -> Rig {
    rig_with(Clock::host())
}

impl Rig {
    fn area(&self) -> RingArea<'_> {
        self.ram.ring_area().expect("ring area")
    }

    fn setup(&self, owner: u32, flags: u32, idle: u32) -> Result<(), RingError> {
        let req = RingSetupReq {
            owner: owner.into(),
            flags: flags.into(),
            sq_idle_us: idle.into(),
            reserved: 0.into(),
        };
        self.dev.begin_batch().expect("batch").ring_setup(req)
    }

    fn kick(&self) {
        self.dev
            .begin_batch()
            .expect("batch")
            .ring_kick(&self.mem)
            .expect("kick");
    }

    fn load(&self, at: usize) -> u32 {
        self.area().load(at, Ordering::Acquire)
    }

    fn store(&self, at: usize, value: u32) {
        self.area().store(at, value, Ordering::Release);
    }

    fn load64(&self, at: usize) -> u64 {
        self.area()
            .word64(at)
            .map_or(u64::MAX, |w| w.load(Ordering::Acquire))
    }

    /// Places `tf` in the arena at `offset`.
    fn put_tf(&self, offset: u32, tf: &[u8]) {
        self.area()
            .write(RING_ARENA_OFFSET as usize + offset as usize, tf)
            .expect("inside the arena");
    }

    fn arena(&self, offset: u32, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.area()
            .read(RING_ARENA_OFFSET as usize + offset as usize, &mut out)
            .expect("inside the arena");
        out
    }

    /// Writes SQ entry `index` and advances `sq_tail` past it.
    fn submit_raw(&self, index: u32, offset: u32, size: u32, user_data: u64) {
        let sqe = SqEntry {
            offset: offset.into(),
            size: size.into(),
            user_data: user_data.into(),
        };
        let at = RING_SQ_OFFSET as usize
            + (index % RING_SQ_ENTRIES) as usize * std::mem::size_of::<SqEntry>();
        self.area().write(at, sqe.as_bytes()).expect("sq");
        self.store(field::SQ_TAIL, index.wrapping_add(1));
    }

    /// Places `tf` at `offset` and submits it as the next entry.
    fn submit(&self, offset: u32, tf: &TaskFile, user_data: u64) -> u32 {
        let bytes = tf.to_bytes();
        self.put_tf(offset, &bytes);
        let index = self.load(field::SQ_TAIL);
        self.submit_raw(index, offset, bytes.len() as u32, user_data);
        index
    }

    fn cq(&self, index: u32) -> Event {
        let mut raw = [0u8; 64];
        let at = RING_CQ_OFFSET as usize + (index % RING_CQ_ENTRIES) as usize * 64;
        self.area().read(at, &mut raw).expect("cq");
        Event::read_from_bytes(&raw).expect("event")
    }

    fn reg(&self, offset: u16) -> u64 {
        self.dev.card().registers().peek(offset)
    }

    fn register(&self, id: u32, owner: u32, addr: u64, len: u32) {
        self.dev
            .begin_batch()
            .expect("batch")
            .register_buffer(
                id,
                owner,
                u64::from(len),
                vec![SgEntry::new(addr, len)],
                &self.mem,
            )
            .expect("register");
    }

    /// Runs a task file on the command queue.
    fn exec(&self, tf: &TaskFile) -> TaskFileResult {
        let mut bytes = tf.to_bytes();
        self.dev
            .begin_batch()
            .expect("batch")
            .execute(&mut bytes, &[], &self.mem, false);
        TaskFileResult::parse(&bytes).expect("result")
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn setup_writes_the_header_and_refuses_what_it_must() {
    let r = rig();
    assert_eq!(r.load(field::MAGIC), 0, "no ring before setup");
    r.setup(OWNER, 0, 0).expect("setup");
    assert_eq!(r.load(field::MAGIC), xxcapture_abi::RING_MAGIC);
    assert_eq!(r.load(field::SQ_ENTRIES), RING_SQ_ENTRIES);
    assert_eq!(r.load(field::CQ_ENTRIES), RING_CQ_ENTRIES);
    assert_eq!(r.load(field::ARENA_SIZE), RING_ARENA_SIZE);
    assert_eq!(r.load(field::SQ_FLAGS), sq_flags::NEED_WAKEUP);
    assert_eq!(r.load(field::SQ_IDLE_US), 0);
    // Virtual time refuses SQPOLL.
    let v = rig_with(Clock::virtual_time());
    assert!(matches!(
        v.setup(OWNER, ring_setup::SQPOLL, 0),
        Err(RingError::Unsupported(_))
    ));
    assert_eq!(v.load(field::MAGIC), 0);
    v.setup(OWNER, 0, 0).expect("setup without SQPOLL");
    // A refused setup leaves the ring as it was.
    assert!(v.setup(OWNER + 1, ring_setup::SQPOLL, 0).is_err());
    assert_eq!(v.load(field::MAGIC), xxcapture_abi::RING_MAGIC);
    // A teardown zeroes the area even without a ring.
    v.setup(0, 0, 0).expect("teardown");
    v.store(field::SQ_TAIL, 3);
    v.setup(0, 0, 0).expect("teardown again");
    assert_eq!(v.load(field::SQ_TAIL), 0);
}

#[test]
fn an_entry_runs_and_completes_with_its_results_written_back() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    let mut tf = TaskFile::new();
    let id = tf.get_register(regs::ID);
    tf.set_register(regs::SCRATCH, 0x1234);
    let len = tf.to_bytes().len();
    let index = r.submit(64, &tf, 0xfeed);
    r.kick();
    assert_eq!(r.load(field::SQ_HEAD), 1);
    assert_eq!(r.load(field::CQ_TAIL), 1);
    assert_eq!(r.load64(field::SQES), 1);
    assert_eq!(r.load64(field::KICKS), 1);
    let c = r.cq(0);
    assert_eq!(c.cause.get(), irq::DMA_DONE);
    assert_eq!(c.status.get(), TfError::Ok as u32);
    assert_eq!(c.count.get(), 2);
    assert_eq!(c.request_id.get(), u64::from(index));
    assert_eq!(c.refcon.get(), 0xfeed);
    assert_eq!(c.flags.get(), FLAG_COMPLETION | FLAG_RING);
    let res = TaskFileResult::parse(&r.arena(64, len)).expect("result");
    assert_eq!((res.error, res.index), (TfError::Ok, 2));
    assert_eq!(res.value(id), Some(u64::from(MAGIC)));
    assert_eq!(r.reg(regs::SCRATCH), 0x1234);
    assert_eq!(r.reg(regs::REQUEST_COUNT), 1);
    // A failing task file: DMA_ERROR, its index, nothing committed.
    let mut bad = TaskFile::new();
    bad.set_register(regs::SCRATCH, 7);
    bad.set_register(regs::ID, 1);
    r.submit(0, &bad, 9);
    r.kick();
    let c = r.cq(1);
    assert_eq!(c.cause.get(), irq::DMA_ERROR);
    assert_eq!(c.status.get(), TfError::ReadOnly as u32);
    assert_eq!(c.count.get(), 1);
    assert_eq!(r.reg(regs::SCRATCH), 0x1234);
}

#[test]
fn entries_out_of_range_or_disagreeing_complete_bad_count_untouched() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 1);
    let bytes = tf.to_bytes();
    let size = bytes.len() as u32;
    r.put_tf(0, &bytes);
    let mut three = TaskFile::new();
    for _ in 0..3 {
        three.get_register(regs::ID);
    }
    let mut wrong = three.to_bytes();
    // The header says 2 commands, the entry's size 3.
    wrong[4] = 2;
    r.put_tf(4096, &wrong);
    let cases = [
        (RING_ARENA_SIZE - 16, size),
        (RING_ARENA_SIZE, size),
        (u32::MAX, size),
        (0, u32::MAX),
        (0, 0),
        (0, 16),
        (0, size - 1),
        (0, size + 32),
        (4096, wrong.len() as u32),
    ];
    for (n, &(offset, size)) in cases.iter().enumerate() {
        let before = r.arena(0, 8192);
        r.submit_raw(n as u32, offset, size, n as u64);
        r.kick();
        let c = r.cq(n as u32);
        assert_eq!(
            (c.status.get(), c.count.get(), c.cause.get()),
            (TfError::BadCount as u32, 0, irq::DMA_ERROR),
            "{offset} {size}"
        );
        assert_eq!(c.refcon.get(), n as u64);
        assert_eq!(r.arena(0, 8192), before, "nothing written back");
    }
    assert_eq!(r.reg(regs::REQUEST_COUNT), 0, "nothing ran");
    assert_eq!(r.reg(regs::SCRATCH), 0);
}

#[test]
fn raw_dma_is_refused_and_registered_buffers_only_of_the_owner() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    r.register(1, OWNER, GUEST_BUF, 0x1000);
    r.register(2, OWNER + 1, GUEST_BUF + 0x1000, 0x1000);
    let before = r.ram.read(0, 0x2000).expect("card RAM");
    let mut raw = TaskFile::new();
    raw.dma(true, dma_dir::TO_CARD, 0, 0, 16);
    r.submit(0, &raw, 1);
    r.kick();
    assert_eq!(r.cq(0).status.get(), TfError::Refused as u32);
    assert_eq!(r.cq(0).count.get(), 0);
    // Another owner's buffer and an unknown id: DMA_FAULT, nothing moves.
    for (n, id) in [(1u32, 2u32), (2, 9)] {
        let mut tf = TaskFile::new();
        tf.dma_buffer(dma_dir::TO_CARD, id, 0, 0, 64);
        r.submit(0, &tf, 0);
        r.kick();
        assert_eq!(r.cq(n).status.get(), TfError::DmaFault as u32, "id {id}");
    }
    assert_eq!(r.ram.read(0, 0x2000).expect("card RAM"), before);
    // The owner's own buffer works, both ways.
    let mut tf = TaskFile::new();
    tf.dma_buffer(dma_dir::TO_CARD, 1, 16, 0x100, 256);
    r.submit(0, &tf, 0);
    r.kick();
    assert_eq!(r.cq(3).status.get(), TfError::Ok as u32);
    let mut want = vec![0u8; 256];
    r.mem
        .read_slice(&mut want, GuestAddress(GUEST_BUF + 16))
        .expect("read");
    assert_eq!(r.ram.read(0x100, 256).expect("card RAM"), want);
    // The command queue may still name any buffer.
    let mut tf = TaskFile::new();
    tf.dma_buffer(dma_dir::FROM_CARD, 2, 0, 0x100, 256);
    assert_eq!(r.exec(&tf).error, TfError::Ok);
}

#[test]
fn a_full_cq_stalls_the_sq_and_drops_no_completion() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    let bytes = tf.to_bytes();
    r.put_tf(0, &bytes);
    let mut next = 0u32;
    // Fill the CQ: the application consumes nothing.
    while next < RING_CQ_ENTRIES {
        for _ in 0..RING_SQ_ENTRIES {
            r.submit_raw(next, 0, bytes.len() as u32, u64::from(next));
            next += 1;
        }
        r.kick();
    }
    assert_eq!(r.load(field::CQ_TAIL), RING_CQ_ENTRIES);
    // One more: it waits.
    r.submit_raw(next, 0, bytes.len() as u32, u64::from(next));
    r.kick();
    assert_eq!(r.load(field::SQ_HEAD), RING_CQ_ENTRIES);
    assert_eq!(r.load(field::CQ_TAIL), RING_CQ_ENTRIES);
    // The application takes 3: the waiting entry completes.
    r.store(field::CQ_HEAD, 3);
    r.kick();
    assert_eq!(r.load(field::SQ_HEAD), RING_CQ_ENTRIES + 1);
    assert_eq!(r.load(field::CQ_TAIL), RING_CQ_ENTRIES + 1);
    for i in 0..=RING_CQ_ENTRIES {
        if i < 3 {
            continue;
        }
        let c = r.cq(i);
        assert_eq!(c.request_id.get(), u64::from(i), "in order");
        assert_eq!(c.refcon.get(), u64::from(i));
        assert_eq!(c.status.get(), 0);
    }
}

#[test]
fn events_go_to_the_cq_by_mask_with_lost_records_under_overflow() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::FRAME_DONE | irq::OVERFLOW);
    assert_eq!(r.exec(&tf).error, TfError::Ok);
    r.store(field::EVENT_MASK, irq::FRAME_DONE | irq::DMA_DONE);
    let events = r.dev.events();
    let room = RING_CQ_ENTRIES - RING_SQ_ENTRIES;
    for n in 0..u64::from(room) + 5 {
        events.raise(irq::FRAME_DONE, n, 1_000 + n, Some(&r.mem));
    }
    // OVERFLOW is not routed: it stays with the event queue.
    events.raise(irq::OVERFLOW, 99, 9_000, Some(&r.mem));
    assert_eq!(events.lock().irq.held(), 1);
    assert_eq!(r.load(field::CQ_TAIL), room, "room kept for completions");
    assert_eq!(r.load(field::CQ_LOST), 5);
    assert_eq!(events.lock().irq.lost(), 5);
    for i in 0..room {
        let c = r.cq(i);
        assert_eq!(c.cause.get(), irq::FRAME_DONE);
        assert_eq!(c.sequence.get(), u64::from(i));
        assert_eq!(c.frame_number.get(), u64::from(i));
        assert_eq!(c.flags.get(), 0);
    }
    // The application consumes; the next event comes after one LOST
    // record standing for the five.
    r.store(field::CQ_HEAD, 100);
    events.raise(irq::FRAME_DONE, 77, 10_000, Some(&r.mem));
    let lost = r.cq(room);
    assert_eq!(lost.cause.get(), LOST);
    assert_eq!(lost.count.get(), 5);
    assert_eq!(lost.sequence.get(), u64::from(room));
    let next = r.cq(room + 1);
    assert_eq!(next.cause.get(), irq::FRAME_DONE);
    assert_eq!(next.sequence.get(), u64::from(room) + 6);
    assert_eq!(r.load(field::CQ_TAIL), room + 2);
    // Completions still fit.
    let mut get = TaskFile::new();
    get.get_register(regs::ID);
    r.submit(0, &get, 1);
    r.kick();
    assert_eq!(r.load(field::CQ_TAIL), room + 3);
    assert_eq!(r.cq(room + 2).flags.get(), FLAG_COMPLETION | FLAG_RING);
}

/// An event queue with `n` posted buffers.
fn event_queue<'a>(r: &Rig, vq: &MockSplitQueue<'a, GuestMemoryMmap>, n: u16) -> Arc<MockQueue> {
    for i in 0..n {
        let d = RawDescriptor::from(SplitDescriptor::new(
            EVENT_BUFS + u64::from(i) * 0x1000,
            4096,
            VRING_DESC_F_WRITE as u16,
            0,
        ));
        vq.add_desc_chains(&[d], i).expect("chain");
    }
    let q = Arc::new(MockQueue::new(&r.mem, vq));
    r.dev.events().set_queue(q.clone());
    q
}

#[test]
fn an_armed_cq_gets_exactly_one_ring_wake() {
    let r = rig();
    let vq = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
    let q = event_queue(&r, &vq, 8);
    r.setup(OWNER, 0, 0).expect("setup");
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    // Not armed: no interrupt at all.
    r.submit(0, &tf, 0);
    r.kick();
    assert!(q.used(&vq).is_empty());
    r.store(field::CQ_FLAGS, cq_flags::ARMED);
    r.submit(0, &tf, 0);
    r.submit(0, &tf, 0);
    r.kick();
    assert_eq!(r.load(field::CQ_TAIL), 3);
    assert_eq!(r.load(field::CQ_FLAGS) & cq_flags::ARMED, 0, "cleared");
    let used = q.used(&vq);
    assert_eq!(used, vec![(0, 64)], "one record");
    let mut raw = [0u8; 64];
    r.mem
        .read_slice(&mut raw, GuestAddress(EVENT_BUFS))
        .expect("record");
    let wake = Event::read_from_bytes(&raw).expect("record");
    assert_eq!(wake.cause.get(), RING_WAKE);
    assert_eq!(r.load64(field::WAKEUPS), 1);
    assert!(q.notifications() >= 1);
    // Armed again: one more.
    r.store(field::CQ_FLAGS, cq_flags::ARMED);
    r.submit(0, &tf, 0);
    r.kick();
    assert_eq!(q.used(&vq).len(), 2);
    assert_eq!(r.load64(field::WAKEUPS), 2);
}

#[test]
fn hostile_indices_consume_nothing_and_never_panic() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    let bytes = tf.to_bytes();
    r.put_tf(0, &bytes);
    for tail in [RING_SQ_ENTRIES + 1, u32::MAX, 0x8000_0000] {
        r.store(field::SQ_TAIL, tail);
        r.kick();
        assert_eq!(r.load(field::SQ_HEAD), 0, "tail {tail}");
        assert_eq!(r.load(field::CQ_TAIL), 0);
    }
    // Card-owned fields written by the application change nothing.
    r.store(field::SQ_HEAD, 200);
    r.store(field::CQ_TAIL, 1000);
    r.submit_raw(0, 0, bytes.len() as u32, 1);
    r.kick();
    assert_eq!(r.load(field::SQ_HEAD), 1);
    assert_eq!(r.load(field::CQ_TAIL), 1);
    assert_eq!(r.cq(0).refcon.get(), 1);
    // A cq_head beyond the tail is not taken: the CQ is as full as the
    // card knows.
    r.store(field::CQ_HEAD, 5000);
    let events = r.dev.events();
    let mut st = events.lock();
    assert_eq!(st.ring.free(), RING_CQ_ENTRIES - 1);
    drop(st);
    r.store(field::CQ_HEAD, 1);
    assert_eq!(events.lock().ring.free(), RING_CQ_ENTRIES);
    // A head moving back is not taken either.
    r.store(field::CQ_HEAD, 0);
    assert_eq!(events.lock().ring.free(), RING_CQ_ENTRIES);
}

#[test]
fn teardown_and_reset_stop_everything() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    r.store(field::EVENT_MASK, irq::TEST);
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::TEST);
    assert_eq!(r.exec(&tf).error, TfError::Ok);
    // Owner 0 tears down: area zeroed, kicks do nothing, events go back
    // to the event queue.
    r.setup(0, 0, 0).expect("teardown");
    assert!(r.arena(0, 4096).iter().all(|&b| b == 0));
    assert_eq!(r.load(field::MAGIC), 0);
    let mut get = TaskFile::new();
    get.get_register(regs::ID);
    r.submit(0, &get, 0);
    r.kick();
    assert_eq!(r.load(field::CQ_TAIL), 0);
    assert_eq!(r.reg(regs::REQUEST_COUNT), 1, "only the command-queue one");
    r.dev.events().raise(irq::TEST, 0, 1, Some(&r.mem));
    assert_eq!(r.dev.events().lock().irq.held(), 1);
    // A device reset tears down too (with an SQ poller running).
    r.setup(OWNER, ring_setup::SQPOLL, 100).expect("setup");
    assert_eq!(r.load(field::MAGIC), xxcapture_abi::RING_MAGIC);
    r.dev.reset_card("test");
    assert_eq!(r.load(field::MAGIC), 0);
    let stats = r.dev.ring_stats();
    assert_eq!(stats.setups.load(Ordering::Relaxed), 2);
}

#[test]
fn the_sq_poller_takes_entries_without_a_kick_and_sleeps_when_idle() {
    let r = rig();
    // 200 ms idle: long enough for a loaded host to submit while the
    // poller is still awake.
    r.setup(OWNER, ring_setup::SQPOLL, 200_000).expect("setup");
    assert_eq!(r.load(field::SQ_FLAGS), 0, "awake at setup");
    assert_eq!(r.load(field::SQ_IDLE_US), 200_000);
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    r.submit(0, &tf, 1);
    wait_for(
        "the poller to complete an entry",
        Duration::from_secs(10),
        || r.load(field::CQ_TAIL) == 1,
    );
    assert_eq!(r.load64(field::KICKS), 0, "no kick was needed");
    // poll_sleeps moves once the poller is past its last look.
    wait_for("the poller to sleep", Duration::from_secs(10), || {
        r.load64(field::POLL_SLEEPS) >= 1
    });
    assert_ne!(r.load(field::SQ_FLAGS) & sq_flags::NEED_WAKEUP, 0);
    assert!(r.load64(field::POLL_AWAKE_NS) > 0);
    // Asleep: an entry waits for the kick.
    r.submit(0, &tf, 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        r.load(field::CQ_TAIL),
        1,
        "the sleeping poller took nothing"
    );
    r.kick();
    wait_for("the woken poller", Duration::from_secs(10), || {
        r.load(field::CQ_TAIL) == 2
    });
    assert_eq!(r.cq(1).refcon.get(), 2);
    assert_eq!(r.load64(field::KICKS), 1);
    // Teardown joins the poller.
    r.setup(0, 0, 0).expect("teardown");
    r.submit_raw(2, 0, 48, 3);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.load(field::CQ_TAIL), 0, "zeroed, nothing posted");
    assert!(r.dev.ring_stats().poll_sleeps.load(Ordering::Relaxed) >= 1);
}

#[test]
fn ring_entries_take_the_watched_path_with_faults_armed() {
    let r = rig();
    r.setup(OWNER, 0, 0).expect("setup");
    r.register(1, OWNER, GUEST_BUF, 0x1000);
    let spec: crate::faults::FaultSpec = "dma-error@1".parse().expect("spec");
    r.dev.faults().arm(spec).expect("arm");
    let mut tf = TaskFile::new();
    tf.dma_buffer(dma_dir::TO_CARD, 1, 0, 0, 64);
    // Apart: an executed task file is written back over its own bytes.
    r.submit(0, &tf, 0);
    r.submit(256, &tf, 1);
    r.kick();
    // The first transfer is the injected error, the second works.
    assert_eq!(r.cq(0).status.get(), TfError::DmaFault as u32);
    assert_eq!(r.cq(1).status.get(), TfError::Ok as u32);
    assert_eq!(r.dev.faults().injected(), 1);
}

#[test]
fn quiesce_tears_the_ring_down_and_joins_the_poller() {
    let r = rig();
    r.setup(OWNER, ring_setup::SQPOLL, 0).expect("setup");
    r.dev.quiesce();
    assert_eq!(r.load(field::MAGIC), 0);
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    r.submit(0, &tf, 0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.load(field::CQ_TAIL), 0);
    assert_eq!(r.reg(regs::REQUEST_COUNT), 0);
}
