//! Events, streaming and FLUSH_BUFFERS through the backend's queues, as
//! the vring worker and the capture thread run them (mock queues in guest
//! memory, `handle_event` as the worker calls it).

use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use xxcapture_abi::event::LOST;
use xxcapture_abi::frame::{verify, PixelFormat};
use xxcapture_abi::{
    control, irq, regs, req_type, vq_status, Event, SgEntry, StreamResult, TaskFile,
    TaskFileResult, TfError, VqRequest, VqStatus,
};
use xxcapture_model::{CardConfig, CAPTURE_CARD_CAPS};
use zerocopy::{FromBytes, IntoBytes};

use vhost_user_backend::VringT;

use super::*;

const QSIZE: u16 = 16;
const MEM: u64 = 128 << 20;
const CMD_Q: u64 = 0;
const EVT_Q: u64 = 0x8000;
const STR_Q: u64 = 0xc000;
const CMD_BUF: u64 = 0x10_0000;
const EVT_BUF: u64 = 0x30_0000;
const STR_REQ: u64 = 0x40_0000;
const STR_RES: u64 = 0x48_0000;
/// Frame buffers: 8 MiB apart, each surrounded by canary bytes.
const FRAMES: u64 = 0x100_0000;
const FRAME_STRIDE: u64 = 0x80_0000;
const CANARY: u8 = 0x5a;

fn vring(atomic: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> VringRwLock {
    let vring = VringRwLock::new(atomic.clone(), 1024).expect("vring");
    vring.set_queue_size(QSIZE);
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
        .expect("queue info");
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// Makes one chain available from descriptor `first` (ring indices modulo
/// the queue size, unlike the mock's own helper).
fn push_chain(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    descs: &[(u64, u32, u16)],
    first: u16,
) {
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let index = first + i as u16;
        let last = i + 1 == descs.len();
        let flags = if last {
            flags
        } else {
            flags | VRING_DESC_F_NEXT as u16
        };
        let d = RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            flags,
            if last { 0 } else { index + 1 },
        ));
        vq.desc_table().store(index, d).expect("descriptor");
    }
    let avail = vq.avail_addr();
    let idx: u16 = mem.read_obj(avail.unchecked_add(2)).expect("avail idx");
    mem.write_obj(first, avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE)))
        .expect("avail ring");
    mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
        .expect("avail idx");
}

/// Used-ring entries from index `from` on: (head, len).
fn used_since(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    from: u16,
) -> Vec<(u32, u32)> {
    let base = vq.used_addr();
    let idx: u16 = mem.read_obj(base.unchecked_add(2)).expect("used idx");
    (from..idx)
        .map(|i| {
            let at = base.unchecked_add(4 + 8 * u64::from(i % QSIZE));
            (
                mem.read_obj(at).expect("id"),
                mem.read_obj(at.unchecked_add(4)).expect("len"),
            )
        })
        .collect()
}

struct Rig<'a> {
    mem: GuestMemoryMmap,
    b: XxcapBackend,
    cmd: MockSplitQueue<'a, GuestMemoryMmap>,
    evt: MockSplitQueue<'a, GuestMemoryMmap>,
    strq: MockSplitQueue<'a, GuestMemoryMmap>,
    vrings: [VringRwLock; 3],
    cmd_next: u16,
    evt_next: u16,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("mem")
}

fn backend(width: u32, height: u32) -> XxcapBackend {
    let config = CardConfig {
        card_ram_size: 16 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        defaults: xxcapture_model::FrameDefaults {
            geometry: xxcapture_model::FrameGeometry {
                format: PixelFormat::Yuyv,
                width,
                height,
            },
            fps: 30,
        },
        ..CardConfig::default()
    };
    XxcapBackend::new(Card::new(config).expect("card"), false, None).expect("backend")
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, b: XxcapBackend) -> Rig<'a> {
        let atomic = GuestMemoryAtomic::new(mem.clone());
        b.update_memory(atomic.clone()).expect("memory");
        let cmd = MockSplitQueue::create(mem, GuestAddress(CMD_Q), QSIZE);
        let evt = MockSplitQueue::create(mem, GuestAddress(EVT_Q), QSIZE);
        let strq = MockSplitQueue::create(mem, GuestAddress(STR_Q), QSIZE);
        let vrings = [
            vring(&atomic, &cmd),
            vring(&atomic, &evt),
            vring(&atomic, &strq),
        ];
        Rig {
            mem: mem.clone(),
            b,
            cmd,
            evt,
            strq,
            vrings,
            cmd_next: 0,
            evt_next: 0,
        }
    }

    fn kick(&self, queue: u16) {
        self.b
            .handle_event(queue, EventSet::IN, &self.vrings, 0)
            .expect("handled");
    }

    /// One command-queue request; returns its writable area.
    fn request(&mut self, bytes: &[u8], wlen: u32) -> Vec<u8> {
        let slot = self.cmd_next % 8;
        self.cmd_next += 1;
        let src = CMD_BUF + u64::from(slot) * 0x1000;
        let out = CMD_BUF + 0x10_0000 + u64::from(slot) * 0x1000;
        self.mem
            .write_slice(bytes, GuestAddress(src))
            .expect("write");
        push_chain(
            &self.mem,
            &self.cmd,
            &[
                (src, bytes.len() as u32, 0),
                (out, wlen, VRING_DESC_F_WRITE as u16),
            ],
            slot * 2,
        );
        self.kick(queue::COMMAND);
        let mut raw = vec![0u8; wlen as usize];
        self.mem
            .read_slice(&mut raw, GuestAddress(out))
            .expect("read");
        raw
    }

    fn exec(&mut self, tf: &TaskFile) -> (TaskFileResult, VqStatus) {
        let req = VqRequest {
            req_type: req_type::EXEC_TASK_FILE.into(),
            ..VqRequest::default()
        };
        let body = tf.to_bytes();
        let mut bytes = req.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let raw = self.request(&bytes, (body.len() + 16) as u32);
        let st = VqStatus::read_from_bytes(&raw[body.len()..]).expect("status");
        assert_eq!(st.status.get(), vq_status::OK);
        (
            TaskFileResult::parse(&raw[..body.len()]).expect("result"),
            st,
        )
    }

    fn run(&mut self, tf: &TaskFile) -> TaskFileResult {
        let (res, _) = self.exec(tf);
        assert_eq!(res.error, TfError::Ok, "{res:?}");
        res
    }

    fn flush(&mut self) -> VqStatus {
        let req = VqRequest {
            req_type: req_type::FLUSH_BUFFERS.into(),
            ..VqRequest::default()
        };
        VqStatus::read_from_bytes(&self.request(req.as_bytes(), 16)).expect("status")
    }

    /// Posts `n` event buffers of 4096 bytes and kicks the event queue.
    fn post_event_buffers(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.evt_next % QSIZE;
            self.evt_next += 1;
            let at = EVT_BUF + u64::from(slot) * 0x1000;
            push_chain(
                &self.mem,
                &self.evt,
                &[(at, 4096, VRING_DESC_F_WRITE as u16)],
                slot,
            );
        }
        self.kick(queue::EVENT);
    }

    /// Event records delivered since used index `from`.
    fn records_since(&self, from: u16) -> Vec<Event> {
        let mut out = Vec::new();
        for (head, len) in used_since(&self.mem, &self.evt, from) {
            let mut raw = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut raw, GuestAddress(EVT_BUF + u64::from(head) * 0x1000))
                .expect("read");
            out.extend(
                raw.chunks(64)
                    .map(|c| Event::read_from_bytes(c).expect("record")),
            );
        }
        out
    }

    /// Queues stream buffer `slot` (descriptors 2*slot, 2*slot+1): `len`
    /// bytes in two entries inside its canary-filled 8 MiB area. Returns
    /// the entries.
    fn queue_buffer(&self, slot: u16, len: u32, kick: bool) -> Vec<SgEntry> {
        self.queue_buffer_with(slot, len, kick, true)
    }

    /// As `queue_buffer`; `canary` false leaves the area as it is.
    fn queue_buffer_with(&self, slot: u16, len: u32, kick: bool, canary: bool) -> Vec<SgEntry> {
        let base = FRAMES + u64::from(slot) * FRAME_STRIDE;
        if canary {
            self.mem
                .write_slice(&vec![CANARY; FRAME_STRIDE as usize], GuestAddress(base))
                .expect("canary");
        }
        let first = len.min(0x4_0000);
        let mut sg = vec![SgEntry::new(base + 0x1000, first)];
        if len > first {
            sg.push(SgEntry::new(base + 0x40_0010, len - first));
        }
        let header = VqRequest {
            req_type: req_type::STREAM_BUFFER.into(),
            tag: u64::from(slot).into(),
            sg_count: (sg.len() as u32).into(),
            ..VqRequest::default()
        };
        let mut req = header.as_bytes().to_vec();
        for e in &sg {
            req.extend_from_slice(e.as_bytes());
        }
        let at = STR_REQ + u64::from(slot) * 0x100;
        self.mem
            .write_slice(&req, GuestAddress(at))
            .expect("request");
        let res = STR_RES + u64::from(slot) * 0x100;
        self.mem
            .write_slice(&[0xee; 32], GuestAddress(res))
            .expect("result");
        push_chain(
            &self.mem,
            &self.strq,
            &[
                (at, req.len() as u32, 0),
                (res, 32, VRING_DESC_F_WRITE as u16),
            ],
            slot * 2,
        );
        if kick {
            self.kick(queue::STREAM);
        }
        sg
    }

    fn stream_result(&self, slot: u16) -> StreamResult {
        let mut raw = [0u8; 32];
        self.mem
            .read_slice(&mut raw, GuestAddress(STR_RES + u64::from(slot) * 0x100))
            .expect("read");
        StreamResult::read_from_bytes(&raw).expect("result")
    }

    /// The frame in buffer `slot` (whose entries are `sg`), and whether
    /// every byte around the entries still holds the canary.
    fn frame_in(&self, slot: u16, sg: &[SgEntry], len: usize) -> (Vec<u8>, bool) {
        let base = FRAMES + u64::from(slot) * FRAME_STRIDE;
        let mut area = vec![0u8; FRAME_STRIDE as usize];
        self.mem
            .read_slice(&mut area, GuestAddress(base))
            .expect("read");
        let mut frame = Vec::with_capacity(len);
        let mut inside = vec![false; area.len()];
        for e in sg {
            let off = (e.addr.get() - base) as usize;
            let n = (e.len.get() as usize).min(len - frame.len());
            frame.extend_from_slice(&area[off..off + n]);
            inside[off..off + e.len.get() as usize]
                .iter_mut()
                .for_each(|b| *b = true);
        }
        let intact = area.iter().zip(&inside).all(|(&b, &i)| i || b == CANARY);
        (frame, intact)
    }

    fn wait_used(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let used = used_since(&self.mem, vq, 0);
            if used.len() >= n {
                return used;
            }
            assert!(Instant::now() < deadline, "only {} of {n} used", used.len());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn start(tf: &mut TaskFile, stream: bool) {
    let bits = if stream {
        control::CAPTURE | control::STREAM
    } else {
        control::CAPTURE
    };
    tf.set_to_register(regs::CONTROL, bits, control::CAPTURE | control::STREAM);
}

fn stop(tf: &mut TaskFile) {
    tf.set_to_register(regs::CONTROL, 0, control::CAPTURE | control::STREAM);
}

#[test]
fn raised_records_arrive_once_before_the_completion_with_device_times() {
    let mem = memory();
    let mut r = Rig::new(&mem, backend(640, 480));
    // Records raised before any buffer wait in the backlog.
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::TEST);
    for _ in 0..3 {
        tf.set_register(regs::INT_RAISE, irq::TEST);
    }
    let (_, st) = r.exec(&tf);
    assert!(st.device_time_ns.get() > 0, "device clock in the status");
    assert!(used_since(&mem, &r.evt, 0).is_empty());
    r.post_event_buffers(2);
    let got = r.records_since(0);
    assert_eq!(
        got.iter().map(|e| e.sequence.get()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(got.iter().all(|e| e.cause.get() == irq::TEST));
    assert!(got
        .iter()
        .all(|e| e.device_time_ns.get() <= st.device_time_ns.get()));
    // The next task file's records are in the event queue when its own
    // completion is.
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_RAISE, irq::TEST);
    let count = tf.get_register(regs::EVENT_COUNT);
    let (res, st2) = r.exec(&tf);
    assert_eq!(
        res.value(count),
        Some(3),
        "counted before this task file's own"
    );
    let got = r.records_since(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sequence.get(), 3);
    assert!(st2.device_time_ns.get() >= st.device_time_ns.get());
    // Nothing is delivered twice; nothing without a raise.
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    r.exec(&tf);
    assert_eq!(used_since(&mem, &r.evt, 0).len(), 2);
    // A reset restarts the sequence and drops what waited.
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::TEST);
    tf.set_register(regs::INT_COALESCE_COUNT, 100);
    tf.set_register(regs::INT_RAISE, irq::TEST);
    r.run(&tf);
    r.b.stop_vring(0).expect("stop");
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::TEST);
    tf.set_register(regs::INT_RAISE, irq::TEST);
    r.run(&tf);
    assert_eq!(used_since(&mem, &r.evt, 0).len(), 2, "no buffer left");
    r.post_event_buffers(1);
    let got = r.records_since(2);
    assert_eq!(got.len(), 1, "the record from before the reset is gone");
    assert_eq!(got[0].sequence.get(), 0);
}

#[test]
fn frames_raise_records_coalesced_by_the_timer_in_the_worker() {
    let mem = memory();
    let mut r = Rig::new(&mem, backend(320, 240));
    r.post_event_buffers(4);
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::FRAME_DONE);
    tf.set_register(regs::INT_COALESCE_COUNT, 1000);
    tf.set_register(regs::INT_COALESCE_USEC, 30_000);
    // Frame 0 at once, the next 100 ms later: only the timer can deliver
    // frame 0's record in between.
    tf.set_register(regs::FRAME_RATE, 10);
    start(&mut tf, false);
    r.run(&tf);
    // The worker's epoll would see the timer; here we wait for it.
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    // SAFETY: the fd belongs to the backend's timer, which outlives this
    // borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(r.b.device().timer_fd()) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    assert!(
        matches!(poll(&mut fds, PollTimeout::from(5000u16)), Ok(1)),
        "timer never fired"
    );
    assert!(
        used_since(&mem, &r.evt, 0).is_empty(),
        "held until the deadline"
    );
    r.kick(TIMER_EVENT);
    let got = r.records_since(0);
    assert_eq!(got.len(), 1, "{got:?}");
    // Frames in order, one record each, contiguous sequence numbers.
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.cause.get(), irq::FRAME_DONE);
        assert_eq!(e.sequence.get(), i as u64);
        assert_eq!(e.frame_number.get(), i as u64);
    }
    let mut tf = TaskFile::new();
    stop(&mut tf);
    tf.set_register(regs::INT_COALESCE_COUNT, 1);
    r.run(&tf);
    let summary = r.b.device().events().summary();
    assert!(summary.contains("records="), "{summary}");
}

#[test]
fn streaming_fills_queued_buffers_with_verified_frames_and_nothing_else() {
    let mem = memory();
    let mut r = Rig::new(&mem, backend(640, 480));
    let frame_len = 640 * 480 * 2;
    let sgs: Vec<Vec<SgEntry>> = (0..3)
        .map(|s| r.queue_buffer(s, frame_len as u32 + 100, true))
        .collect();
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_RATE, 0);
    start(&mut tf, true);
    r.run(&tf);
    let used = r.wait_used(&r.strq, 3);
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        vec![0, 2, 4],
        "FIFO"
    );
    assert!(used.iter().all(|u| u.1 == 32));
    for (slot, sg) in sgs.iter().enumerate() {
        let slot = slot as u16;
        let res = r.stream_result(slot);
        assert_eq!((res.status.get(), res.error.get()), (vq_status::OK, 0));
        assert_eq!(res.frame_number.get(), u64::from(slot));
        assert_eq!(res.bytes.get() as usize, frame_len);
        assert!(res.device_time_ns.get() > 0);
        let (frame, intact) = r.frame_in(slot, sg, frame_len);
        assert!(intact, "bytes outside the entries changed (slot {slot})");
        let stamp = verify(&frame, PixelFormat::Yuyv, 640, 480).expect("verified frame");
        assert_eq!(stamp.frame_number, u64::from(slot));
    }
    // Free-running waits for buffers without spinning: nothing happens.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(used_since(&mem, &r.strq, 0).len(), 3);
    // A buffer one byte short: DMA_RANGE, nothing written, frame dropped
    // with an OVERFLOW record.
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::OVERFLOW | irq::FRAME_DONE);
    r.run(&tf);
    r.post_event_buffers(1);
    let small = r.queue_buffer(3, frame_len as u32 - 1, true);
    r.wait_used(&r.strq, 4);
    let res = r.stream_result(3);
    assert_eq!(res.error.get(), TfError::DmaRange as u32);
    assert_eq!((res.frame_number.get(), res.bytes.get()), (3, 0));
    let (frame, intact) = r.frame_in(3, &small, frame_len - 1);
    assert!(
        intact && frame.iter().all(|&b| b == CANARY),
        "written into a small buffer"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.records_since(0).is_empty() {
        assert!(Instant::now() < deadline, "no OVERFLOW record");
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = r.records_since(0);
    assert_eq!(
        (got[0].cause.get(), got[0].frame_number.get()),
        (irq::OVERFLOW, 3)
    );
    // FRAME_DONE latched (no record: the buffer completion is the
    // notification); the next frame keeps number 3.
    let sg = r.queue_buffer(4, frame_len as u32, true);
    r.wait_used(&r.strq, 5);
    let (frame, intact) = r.frame_in(4, &sg, frame_len);
    assert!(intact);
    assert_eq!(
        verify(&frame, PixelFormat::Yuyv, 640, 480)
            .expect("frame")
            .frame_number,
        3
    );
    let mut tf = TaskFile::new();
    let status = tf.get_register(regs::INT_STATUS);
    let dropped = tf.get_register(regs::DROPPED_FRAMES);
    let counter = tf.get_register(regs::FRAME_COUNTER);
    let res = r.run(&tf);
    assert_eq!(
        res.value(status),
        Some(u64::from(irq::FRAME_DONE | irq::OVERFLOW))
    );
    assert_eq!((res.value(counter), res.value(dropped)), (Some(4), Some(1)));
    assert_eq!(
        r.records_since(0).len(),
        1,
        "no FRAME_DONE records when streaming"
    );
}

#[test]
fn stop_flush_and_reset_return_held_buffers_cancelled() {
    let mem = memory();
    let mut r = Rig::new(&mem, backend(320, 240));
    let frame_len = 320 * 240 * 2;
    // Held while capture is stopped; FLUSH_BUFFERS returns them.
    for slot in 0..3 {
        r.queue_buffer(slot, frame_len, slot == 2);
    }
    assert_eq!(r.b.device().stream_buffers().held(), 3);
    let st = r.flush();
    assert_eq!(st.status.get(), vq_status::OK);
    let used = used_since(&mem, &r.strq, 0);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), vec![0, 2, 4]);
    for slot in 0..3 {
        let res = r.stream_result(slot);
        assert_eq!(res.error.get(), TfError::Cancelled as u32);
        assert_eq!(res.bytes.get(), 0);
    }
    // A paced stream at 1 fps takes one buffer for frame 0; stopping
    // returns the others.
    for slot in 3..6 {
        r.queue_buffer(slot, frame_len, true);
    }
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_RATE, 1);
    start(&mut tf, true);
    r.run(&tf);
    r.wait_used(&r.strq, 4);
    let mut tf = TaskFile::new();
    stop(&mut tf);
    r.run(&tf);
    let used = used_since(&mem, &r.strq, 3);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), vec![6, 8, 10]);
    assert_eq!(r.stream_result(3).error.get(), TfError::Ok as u32);
    assert_eq!(r.stream_result(4).error.get(), TfError::Cancelled as u32);
    assert_eq!(r.stream_result(5).error.get(), TfError::Cancelled as u32);
    // A device reset returns them too.
    r.queue_buffer(6, frame_len, true);
    r.b.stop_vring(0).expect("stop");
    assert_eq!(used_since(&mem, &r.strq, 6).len(), 1);
    assert_eq!(r.stream_result(6).error.get(), TfError::Cancelled as u32);
}

#[test]
fn paced_streaming_without_buffers_drops_frames_with_overflow_records() {
    let mem = memory();
    let mut r = Rig::new(&mem, backend(320, 240));
    r.post_event_buffers(4);
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::OVERFLOW);
    tf.set_register(regs::FRAME_RATE, 100);
    start(&mut tf, true);
    r.run(&tf);
    std::thread::sleep(Duration::from_millis(200));
    let mut tf = TaskFile::new();
    stop(&mut tf);
    r.run(&tf);
    // Final counts once the capture thread has stopped.
    let mut tf = TaskFile::new();
    let dropped = tf.get_register(regs::DROPPED_FRAMES);
    let counter = tf.get_register(regs::FRAME_COUNTER);
    let generated = tf.get_register(regs::EVENT_COUNT);
    let res = r.run(&tf);
    let dropped = res.value(dropped).expect("dropped");
    assert!(dropped >= 5, "{dropped} dropped");
    assert_eq!(res.value(counter), Some(0));
    assert_eq!(
        res.value(generated),
        Some(dropped),
        "one OVERFLOW per dropped frame"
    );
    // COUNT 1: each record is its own batch, one buffer each.
    let got = r.records_since(0);
    assert_eq!(got.len(), 4);
    assert!(got
        .iter()
        .all(|e| e.cause.get() == irq::OVERFLOW && e.frame_number.get() == 0));
    assert_eq!(
        got.iter().map(|e| e.sequence.get()).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    // The rest waits for buffers, in order.
    r.post_event_buffers(1);
    let more = r.records_since(4);
    assert_eq!(more.len() as u64, (dropped - 4).min(64));
    assert_eq!(more[0].sequence.get(), 4);
    assert!(more.iter().all(|e| e.cause.get() != LOST));
}

/// The guest side of a stream: keeps `depth` buffers queued, re-queues
/// each one as it completes, checks every frame's stamp. Returns
/// (frames, seconds, dropped).
fn keep_streaming(r: &mut Rig<'_>, fps: u32, depth: u16, frames: u64) -> (u64, f64, u64) {
    let (w, h) = (1920u32, 1080u32);
    let frame_len = (w * h * 2) as usize;
    let mut sgs: Vec<Vec<SgEntry>> = (0..depth)
        .map(|s| r.queue_buffer(s, frame_len as u32, true))
        .collect();
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_RATE, fps);
    start(&mut tf, true);
    let started = Instant::now();
    r.run(&tf);
    let mut seen = 0u16;
    let mut next_frame = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while next_frame < frames {
        assert!(Instant::now() < deadline, "stalled at frame {next_frame}");
        let used = used_since(&r.mem, &r.strq, seen);
        if used.is_empty() {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for (head, len) in used {
            seen = seen.wrapping_add(1);
            assert_eq!(len, 32);
            let slot = (head / 2) as u16;
            let res = r.stream_result(slot);
            assert_eq!(res.error.get(), 0, "slot {slot}");
            assert_eq!(res.frame_number.get(), next_frame);
            // Checking every pixel costs a CRC of 4 MB; the stamp header
            // and the checksum of every 16th frame are enough here.
            if next_frame.is_multiple_of(16) {
                let (frame, intact) = r.frame_in(slot, &sgs[usize::from(slot)], frame_len);
                assert!(intact);
                assert_eq!(
                    verify(&frame, PixelFormat::Yuyv, w, h)
                        .expect("frame")
                        .frame_number,
                    next_frame
                );
            }
            next_frame += 1;
            // Fresh canaries only for the buffers whose frame is checked.
            let check_next = (next_frame + u64::from(depth) - 1).is_multiple_of(16);
            sgs[usize::from(slot)] = r.queue_buffer_with(slot, frame_len as u32, false, check_next);
        }
        r.kick(queue::STREAM);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut tf = TaskFile::new();
    let dropped = tf.get_register(regs::DROPPED_FRAMES);
    stop(&mut tf);
    let res = r.run(&tf);
    (next_frame, elapsed, res.value(dropped).expect("dropped"))
}

/// One test for both, so that the free-running stream (a whole host core)
/// never competes with the paced one for this 2-core machine.
#[test]
fn streaming_1080p_paced_30_fps_drops_nothing_and_free_running_goes_as_fast_as_the_guest() {
    let mem = memory();
    let mut r = Rig::new(&mem, backend(1920, 1080));
    let (frames, secs, dropped) = keep_streaming(&mut r, 30, 4, 60);
    eprintln!("stream 1080p YUYV paced 30 fps, 4 buffers queued: {frames} frames in {secs:.2} s, {dropped} dropped");
    assert_eq!(dropped, 0);
    assert!(secs < 60.0 / 30.0 + 1.0);
    let mem = memory();
    let mut r = Rig::new(&mem, backend(1920, 1080));
    let (frames, secs, dropped) = keep_streaming(&mut r, 0, 4, 120);
    eprintln!(
        "stream 1080p YUYV free-running, 4 buffers queued: {frames} frames in {secs:.2} s = {:.1} fps, {dropped} dropped",
        frames as f64 / secs
    );
    assert_eq!(dropped, 0);
}

/// The command queue's fuzz finding, on the stream queue: with EVENT_IDX a
/// broken avail index must end the kick, not spin.
#[test]
fn broken_stream_ring_ends_the_kick() {
    let mem = memory();
    let r = Rig::new(&mem, backend(320, 240));
    r.b.set_event_idx(true);
    for v in &r.vrings {
        v.set_queue_event_idx(true);
    }
    r.strq.avail().idx().store(1000);
    let (tx, rx) = std::sync::mpsc::channel();
    let (b, vrings) = (&r.b, &r.vrings);
    std::thread::scope(|s| {
        s.spawn(move || {
            let handled = b.handle_event(queue::STREAM, EventSet::IN, vrings, 0);
            let _ = tx.send(handled.is_ok());
        });
        let handled = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the kick returned");
        assert!(handled);
    });
    assert_eq!(r.b.device().stream_buffers().held(), 0);
}
