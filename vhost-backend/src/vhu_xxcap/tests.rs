use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use vm_memory::GuestMemoryMmap;

use super::*;
use crate::card_ram::CardRam;
use crate::clock::{Clock, REQUEST_NS};
use crate::device::ShmemMapper;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use xxcapture_abi::{regs, req_type, Command, Op, TaskFileHeader, VqRequest, VqStatus};
use xxcapture_model::CardConfig;
use zerocopy::{FromBytes, IntoBytes};

fn backend() -> XxcapBackend {
    XxcapBackend::new(Card::new(CardConfig::default()).expect("card"), true, None).expect("backend")
}

#[test]
fn offers_the_documented_features() {
    let b = backend();
    assert_eq!(b.num_queues(), 3);
    assert_eq!(b.max_queue_size(), 1024);
    for bit in [32, 28, 29, 30] {
        assert_ne!(b.features() & (1 << bit), 0, "feature bit {bit}");
    }
    let no_idx = XxcapBackend::new(Card::new(CardConfig::default()).expect("card"), false, None)
        .expect("backend");
    assert_eq!(no_idx.features() & (1 << 29), 0);
    let p = b.protocol_features();
    assert!(p.contains(VhostUserProtocolFeatures::CONFIG));
    assert!(p.contains(VhostUserProtocolFeatures::MQ));
    assert!(p.contains(VhostUserProtocolFeatures::REPLY_ACK));
    assert!(!p.contains(VhostUserProtocolFeatures::BACKEND_REQ));
}

#[test]
fn config_reads_are_clipped_and_never_panic() {
    let b = backend();
    let all = b.get_config(0, 96);
    assert_eq!(&all[..4], b"XXCP");
    assert_eq!(b.get_config(4, 8), all[4..12].to_vec());
    assert_eq!(b.get_config(90, 16), all[90..].to_vec());
    assert!(b.get_config(96, 4).is_empty());
    assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
    assert_eq!(b.get_config(0, u32::MAX), all);
    assert!(b.get_config(10, 0).is_empty());
}

#[test]
fn config_writes_are_counted_and_ignored() {
    let b = backend();
    let before = b.get_config(0, 96);
    b.set_config(0, &[0xff; 96]).expect("accepted");
    b.set_config(200, &[]).expect("accepted");
    assert_eq!(b.get_config(0, 96), before);
    assert_eq!(
        b.device().counters().config_writes.load(Ordering::Relaxed),
        2
    );
}

/// A vring set up as QEMU would, over a mock queue at `base`.
fn vring(atomic: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> VringRwLock {
    let vring = VringRwLock::new(atomic.clone(), 1024).expect("vring");
    vring.set_queue_size(16);
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
        .expect("queue info");
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

fn put_request(mem: &GuestMemoryMmap, at: u64) -> usize {
    let header = VqRequest {
        req_type: req_type::EXEC_TASK_FILE.into(),
        ..VqRequest::default()
    };
    let tf = TaskFileHeader {
        count: 1.into(),
        ..TaskFileHeader::default()
    };
    let cmd = Command {
        op: (Op::GetRegister as u16).into(),
        reg: regs::REQUEST_COUNT.into(),
        ..Command::default()
    };
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(tf.as_bytes());
    bytes.extend_from_slice(cmd.as_bytes());
    mem.write_slice(&bytes, GuestAddress(at)).expect("write");
    bytes.len()
}

/// Posts one request on `vq` and returns where its result goes.
fn post(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16) -> u64 {
    let src = 0x10_0000 + u64::from(slot) * 0x1000;
    let out = 0x20_0000 + u64::from(slot) * 0x1000;
    let len = put_request(mem, src) as u32;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(src, len, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(
            out,
            len - 24 + 16,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    vq.build_desc_chain(&descs).expect("chain");
    out
}

/// Posts at descriptor index `slot * 2` without resetting the avail ring.
fn post_more(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16) -> u64 {
    let src = 0x10_0000 + u64::from(slot) * 0x1000;
    let out = 0x20_0000 + u64::from(slot) * 0x1000;
    let len = put_request(mem, src) as u32;
    let next = slot * 2 + 1;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(
            src,
            len,
            virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
            next,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            out,
            len - 24 + 16,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    vq.add_desc_chains(&descs, slot * 2).expect("chain");
    out
}

fn result(mem: &GuestMemoryMmap, out: u64) -> (u64, u32) {
    let mut raw = [0u8; 64];
    mem.read_slice(&mut raw, GuestAddress(out)).expect("read");
    let cmd = Command::read_from_bytes(&raw[16..48]).expect("cmd");
    let status = VqStatus::read_from_bytes(&raw[48..]).expect("status");
    (cmd.value.get(), status.status.get())
}

fn used_idx(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    mem.read_obj::<u16>(vq.used_addr().unchecked_add(2))
        .expect("used idx")
}

use vm_memory::Address;

#[test]
fn kick_executes_requests_and_stop_resets_the_card() {
    for event_idx in [false, true] {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let cmd_q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt_q = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let b = backend();
        b.update_memory(atomic.clone()).expect("memory");
        b.set_event_idx(event_idx);
        let str_q = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let vrings = [
            vring(&atomic, &cmd_q),
            vring(&atomic, &evt_q),
            vring(&atomic, &str_q),
        ];
        for v in &vrings {
            v.set_queue_event_idx(event_idx);
        }

        let out0 = post(&mem, &cmd_q, 0);
        let out1 = post_more(&mem, &cmd_q, 1);
        b.handle_event(0, EventSet::IN, &vrings, 0)
            .expect("handled");
        assert_eq!(used_idx(&mem, &cmd_q), 2);
        // REQUEST_COUNT counts the request itself.
        assert_eq!(result(&mem, out0), (1, 0));
        assert_eq!(result(&mem, out1), (2, 0));

        // Event-queue buffers are left alone.
        post(&mem, &evt_q, 3);
        b.handle_event(1, EventSet::IN, &vrings, 0)
            .expect("handled");
        assert_eq!(used_idx(&mem, &evt_q), 0);
        assert_eq!(vrings[1].queue_next_avail(), 0);

        // Stopping the command queue resets the card.
        b.stop_vring(1).expect("stop");
        assert_eq!(b.device().card().request_count(), 2);
        b.stop_vring(0).expect("stop");
        assert_eq!(b.device().card().request_count(), 0);
        assert!(b.device().rebase_pending());
        let out2 = post_more(&mem, &cmd_q, 2);
        b.handle_event(0, EventSet::IN, &vrings, 0)
            .expect("handled");
        assert!(!b.device().rebase_pending());
        assert_eq!(result(&mem, out2), (1, 0));
        assert_eq!(b.device().counters().requests.load(Ordering::Relaxed), 3);
        assert_eq!(b.device().counters().resets.load(Ordering::Relaxed), 1);
    }
}

/// An ABORT overtakes the task files queued ahead of it: the one it names
/// comes back CANCELLED without running, before the ABORT's own status;
/// the one it does not name runs after it.
#[test]
fn abort_cancels_a_queued_task_file_and_overtakes_the_queue() {
    for event_idx in [false, true] {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let cmd_q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt_q = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let str_q = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let b = backend();
        b.update_memory(atomic.clone()).expect("memory");
        b.set_event_idx(event_idx);
        let vrings = [
            vring(&atomic, &cmd_q),
            vring(&atomic, &evt_q),
            vring(&atomic, &str_q),
        ];
        for v in &vrings {
            v.set_queue_event_idx(event_idx);
        }
        // Task files tagged 10 and 11, then an ABORT of 11 and of a tag
        // nobody has.
        let out0 = post_more(&mem, &cmd_q, 0);
        let out1 = post_more(&mem, &cmd_q, 1);
        for (slot, tag) in [(0u64, 10u64), (1, 11)] {
            mem.write_obj(tag, GuestAddress(0x10_0008 + slot * 0x1000))
                .expect("tag");
        }
        let abort = VqRequest {
            req_type: req_type::ABORT.into(),
            tag: 12.into(),
            ..VqRequest::default()
        };
        let mut bytes = abort.as_bytes().to_vec();
        for tag in [11u64, 99] {
            bytes.extend_from_slice(&tag.to_le_bytes());
        }
        mem.write_slice(&bytes, GuestAddress(0x10_2000))
            .expect("write");
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                0x10_2000,
                bytes.len() as u32,
                VRING_DESC_F_NEXT as u16,
                5,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0x20_2000,
                16,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        cmd_q.add_desc_chains(&descs, 4).expect("chain");

        b.handle_event(0, EventSet::IN, &vrings, 0)
            .expect("handled");
        assert_eq!(used_idx(&mem, &cmd_q), 3);
        let used_id = |i: u64| {
            mem.read_obj::<u32>(cmd_q.used_addr().unchecked_add(4 + 8 * i))
                .expect("used id")
        };
        assert_eq!((used_id(0), used_id(1), used_id(2)), (2, 4, 0));
        // Task file 11: CANCELLED, count 0, nothing run; transport OK.
        let mut header = [0u8; 16];
        mem.read_slice(&mut header, GuestAddress(out1))
            .expect("read");
        let header = TaskFileHeader::read_from_bytes(&header).expect("header");
        assert_eq!(header.error.get(), TfError::Cancelled as u32);
        assert_eq!(header.count.get(), 0);
        assert_eq!(result(&mem, out1), (0, vq_status::OK));
        // The ABORT: OK.
        let st = mem
            .read_obj::<u32>(GuestAddress(0x20_2000))
            .expect("status");
        assert_eq!(st, vq_status::OK);
        // Task file 10 ran, as the card's first request.
        assert_eq!(result(&mem, out0), (1, vq_status::OK));
        assert_eq!(b.device().card().request_count(), 1);
    }
}

// ---- ATTACH, DMA and capture through the queue ----------------------

use std::sync::atomic::AtomicU32;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use xxcapture_abi::frame::{verify, PixelFormat};
use xxcapture_abi::{control, slot_state, status, vq_status, TaskFile, TaskFileResult, TfError};
use xxcapture_model::CAPTURE_CARD_CAPS;

/// Records SHMEM_MAP requests; can be told to refuse.
#[derive(Default)]
struct FakeMapper {
    maps: AtomicU32,
    unmaps: AtomicU32,
    refuse: AtomicBool,
}

impl ShmemMapper for FakeMapper {
    fn map(&self, ram: &CardRam) -> io::Result<()> {
        // Card RAM, the status page and (CAP_RING) the ring area.
        assert_eq!(
            ram.region_size(),
            (4 << 20) + 4096 + u64::from(xxcapture_abi::RING_AREA_SIZE)
        );
        assert_eq!(ram.file().metadata()?.len(), ram.region_size());
        if self.refuse.load(Ordering::Relaxed) {
            return Err(io::Error::other("refused"));
        }
        self.maps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unmap(&self, _ram: &CardRam) -> io::Result<()> {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn capture_backend() -> XxcapBackend {
    let config = CardConfig {
        card_ram_size: 4 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    };
    XxcapBackend::new(Card::new(config).expect("card"), false, None).expect("backend")
}

/// A guest with a command queue driven through `handle_event`.
struct Guest {
    mem: GuestMemoryMmap,
    vrings: [VringRwLock; 3],
    next: u16,
}

impl Guest {
    fn new(
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        evt: &MockSplitQueue<'_, GuestMemoryMmap>,
        str_q: &MockSplitQueue<'_, GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        b: &XxcapBackend,
    ) -> Guest {
        let atomic = GuestMemoryAtomic::new(mem.clone());
        b.update_memory(atomic.clone()).expect("memory");
        Guest {
            mem: mem.clone(),
            vrings: [
                vring(&atomic, vq),
                vring(&atomic, evt),
                vring(&atomic, str_q),
            ],
            next: 0,
        }
    }

    /// Posts `bytes` with `wlen` writable bytes, kicks, returns the
    /// writable area's contents.
    fn request(
        &mut self,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        b: &XxcapBackend,
        bytes: &[u8],
        wlen: u32,
    ) -> Vec<u8> {
        let slot = self.next % 8;
        self.next += 1;
        let src = 0x10_0000 + u64::from(slot) * 0x1000;
        let out = 0x20_0000 + u64::from(slot) * 0x1000;
        self.mem
            .write_slice(bytes, GuestAddress(src))
            .expect("write");
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                src,
                bytes.len() as u32,
                VRING_DESC_F_NEXT as u16,
                slot * 2 + 1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                out,
                wlen,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, slot * 2).expect("chain");
        b.handle_event(0, EventSet::IN, &self.vrings, 0)
            .expect("handled");
        let mut raw = vec![0u8; wlen as usize];
        self.mem
            .read_slice(&mut raw, GuestAddress(out))
            .expect("read");
        raw
    }

    fn attach(&mut self, vq: &MockSplitQueue<'_, GuestMemoryMmap>, b: &XxcapBackend) -> u32 {
        let req = VqRequest {
            req_type: req_type::ATTACH.into(),
            ..VqRequest::default()
        };
        let raw = self.request(vq, b, req.as_bytes(), 16);
        VqStatus::read_from_bytes(&raw)
            .expect("status")
            .status
            .get()
    }

    fn exec(
        &mut self,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        b: &XxcapBackend,
        tf: &TaskFile,
    ) -> TaskFileResult {
        let req = VqRequest {
            req_type: req_type::EXEC_TASK_FILE.into(),
            ..VqRequest::default()
        };
        let body = tf.to_bytes();
        let mut bytes = req.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let raw = self.request(vq, b, &bytes, (body.len() + 16) as u32);
        let st = VqStatus::read_from_bytes(&raw[body.len()..]).expect("status");
        assert_eq!(st.status.get(), vq_status::OK);
        TaskFileResult::parse(&raw[..body.len()]).expect("result")
    }
}

#[test]
fn attach_maps_once_per_reset_and_reports_failures() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    assert!(b
        .protocol_features()
        .contains(VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ));
    let config = b.get_shmem_config().expect("shmem config");
    // A PCI BAR: the next power of two above card RAM + status page.
    assert_eq!((config.nregions, config.memory_sizes[0]), (1, 8 << 20));
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    // No backend channel yet: DEVICE_ERROR.
    assert_eq!(g.attach(&vq, &b), vq_status::DEVICE_ERROR);
    let mapper = Arc::new(FakeMapper::default());
    b.device().set_mapper(mapper.clone());
    assert_eq!(g.attach(&vq, &b), vq_status::OK);
    assert_eq!(g.attach(&vq, &b), vq_status::OK);
    assert_eq!(mapper.maps.load(Ordering::Relaxed), 1, "mapped once");
    // A reset drops the mapping: the next ATTACH maps again.
    b.stop_vring(0).expect("stop");
    assert_eq!(g.attach(&vq, &b), vq_status::OK);
    assert_eq!(mapper.maps.load(Ordering::Relaxed), 2);
    // A refused map (after a retry with unmap) is DEVICE_ERROR.
    b.stop_vring(0).expect("stop");
    mapper.refuse.store(true, Ordering::Relaxed);
    assert_eq!(g.attach(&vq, &b), vq_status::DEVICE_ERROR);
    assert_eq!(mapper.unmaps.load(Ordering::Relaxed), 1);
    assert_eq!(b.device().counters().attaches.load(Ordering::Relaxed), 3);
    assert_eq!(
        b.device()
            .counters()
            .attach_failures
            .load(Ordering::Relaxed),
        2
    );
    // A card without CARD_RAM_SHM offers no shared memory.
    let plain = backend();
    assert!(plain.get_shmem_config().is_err());
}

fn start_capture(tf: &mut TaskFile) {
    tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
}

fn stop_capture(tf: &mut TaskFile) {
    tf.set_to_register(regs::CONTROL, 0, control::CAPTURE);
}

/// Waits until the status block shows `frames` completed frames.
fn wait_frames(b: &XxcapBackend, frames: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sb = b
            .device()
            .card_ram()
            .read_status()
            .expect("consistent status");
        if sb.frame_counter.get() >= frames {
            return;
        }
        assert!(Instant::now() < deadline, "no progress: {sb:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn capture_fills_the_ring_with_verifiable_frames() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_FORMAT, xxcapture_abi::format::NV12);
    tf.set_register(regs::FRAME_RATE, 0);
    start_capture(&mut tf);
    let slots = tf.get_register(regs::RING_SLOTS);
    let res = g.exec(&vq, &b, &tf);
    assert_eq!(res.error, TfError::Ok);
    let ring_slots = res.value(slots).expect("slots");
    // 640x480 NV12 = 460800 bytes = 112.5 pages -> 113 pages; 4 MiB / that.
    assert_eq!(ring_slots, (4u64 << 20) / (113 * 4096));
    // Free-running waits for its reader: one ring, then nothing more
    // until frames are released.
    wait_frames(&b, ring_slots);
    std::thread::sleep(Duration::from_millis(100));
    let sb = b
        .device()
        .card_ram()
        .read_status()
        .expect("consistent status");
    assert_eq!(
        sb.frame_counter.get(),
        ring_slots,
        "overwrote unreleased frames"
    );
    let mut tf = TaskFile::new();
    tf.set_register(regs::RING_RELEASE, (ring_slots + 3) as u32);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    wait_frames(&b, 2 * ring_slots + 3);
    // Registers follow the capture thread.
    let mut tf = TaskFile::new();
    let counter = tf.get_register(regs::FRAME_COUNTER);
    let res = g.exec(&vq, &b, &tf);
    assert!(res.value(counter).expect("counter") >= 2 * ring_slots + 3);
    // Formats are busy while capturing.
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_WIDTH, 800);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Busy);

    let mut tf = TaskFile::new();
    stop_capture(&mut tf);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    let sb = b.device().card_ram().read_status().expect("status");
    assert_eq!(sb.status.get(), status::READY);
    assert_eq!(u64::from(sb.ring_slots.get()), ring_slots);
    assert_eq!(sb.slot_size.get(), 113 * 4096);
    assert_eq!(sb.frame_size.get(), 460_800);
    assert_eq!(
        (sb.format.get(), sb.width.get(), sb.height.get()),
        (2, 640, 480)
    );
    let frames = sb.frame_counter.get();
    assert_eq!(sb.dropped.get(), 0, "free-running never drops");
    // FRAME_COUNTER holds the final count.
    let mut tf = TaskFile::new();
    let counter = tf.get_register(regs::FRAME_COUNTER);
    assert_eq!(
        g.exec(&vq, &b, &tf).value(counter),
        Some(frames & 0xffff_ffff)
    );
    // Every slot holds the newest frame of its residue class, verified.
    let mut seen = 0;
    for (index, slot) in sb.slots.iter().enumerate().take(ring_slots as usize) {
        assert_eq!(slot.state.get(), slot_state::FULL, "slot {index}");
        let n = slot.frame_number.get();
        assert_eq!(n % ring_slots, index as u64);
        assert!(
            n < frames && n + ring_slots >= frames,
            "slot {index} holds stale frame {n} of {frames}"
        );
        let bytes = b
            .device()
            .card_ram()
            .read(u64::from(sb.slot_size.get()) * index as u64, 460_800)
            .expect("slot");
        let stamp = verify(&bytes, PixelFormat::Nv12, 640, 480).expect("verified frame");
        assert_eq!(stamp.frame_number, n);
        assert!(slot.timestamp_ns.get() <= sb.device_time_ns.get());
        seen += 1;
    }
    assert_eq!(seen, ring_slots);
}

#[test]
fn paced_capture_keeps_to_the_frame_rate() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_RATE, 50);
    start_capture(&mut tf);
    let started = Instant::now();
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    wait_frames(&b, 5);
    std::thread::sleep(Duration::from_millis(100));
    let mut tf = TaskFile::new();
    stop_capture(&mut tf);
    g.exec(&vq, &b, &tf);
    let elapsed = started.elapsed().as_secs_f64();
    let sb = b.device().card_ram().read_status().expect("status");
    let (frames, dropped) = (sb.frame_counter.get(), sb.dropped.get());
    // Never ahead of the schedule (frame 0 is due at once).
    assert!(
        (frames + dropped) as f64 <= elapsed * 50.0 + 1.0,
        "{frames} frames + {dropped} dropped in {elapsed} s"
    );
    assert!(frames >= 5);
    assert_eq!(sb.fps.get(), 50);
}

/// Each ring slot's (frame number, timestamp).
type RingStamps = Vec<(u64, u64)>;

/// A 50 fps ring capture on virtual time, driven by one fixed sequence of
/// requests with host-time pauses in it: every ring slot's (frame,
/// timestamp) after the first ring and after the second, and the status
/// block's device time after the stop.
fn virtual_ring_run() -> (RingStamps, RingStamps, u64) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let config = CardConfig {
        card_ram_size: 4 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    };
    let card = Card::new(config).expect("card");
    let b = XxcapBackend::with_clock(card, false, None, Clock::virtual_time()).expect("backend");
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    let slots_of = |b: &XxcapBackend, n: u64| -> RingStamps {
        let sb = b.device().card_ram().read_status().expect("status");
        sb.slots
            .iter()
            .take(n as usize)
            .map(|s| (s.frame_number.get(), s.timestamp_ns.get()))
            .collect()
    };
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_RATE, 50);
    start_capture(&mut tf);
    let slots = tf.get_register(regs::RING_SLOTS);
    let ring_slots = g.exec(&vq, &b, &tf).value(slots).expect("slots");
    wait_frames(&b, ring_slots);
    // Host time passing while the reader holds the ring changes nothing:
    // no frame is dropped, none is produced.
    std::thread::sleep(Duration::from_millis(150));
    let sb = b.device().card_ram().read_status().expect("status");
    assert_eq!((sb.frame_counter.get(), sb.dropped.get()), (ring_slots, 0));
    let first = slots_of(&b, ring_slots);
    let mut tf = TaskFile::new();
    tf.set_register(regs::RING_RELEASE, ring_slots as u32);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    wait_frames(&b, 2 * ring_slots);
    let second = slots_of(&b, ring_slots);
    let mut tf = TaskFile::new();
    stop_capture(&mut tf);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    let end = b.device().card_ram().read_status().expect("status");
    (first, second, end.device_time_ns.get())
}

#[test]
fn virtual_time_stamps_frames_by_their_number_and_repeats_exactly() {
    let (first, second, end) = virtual_ring_run();
    // The start request ran at 1 us (one request after time zero); frame
    // k ends its 20 ms period at 1 us + (k + 1) * 20 ms.
    let stamp = |k: u64| REQUEST_NS + (k + 1) * 20_000_000;
    for (index, &(n, t)) in first.iter().enumerate() {
        assert_eq!((n, t), (index as u64, stamp(index as u64)));
    }
    let ring = first.len() as u64;
    for (index, &(n, t)) in second.iter().enumerate() {
        assert_eq!((n, t), (ring + index as u64, stamp(ring + index as u64)));
    }
    // The stop request comes one request time after the last frame (the
    // release request ran before the second ring was rendered).
    assert_eq!(end, stamp(2 * ring - 1) + REQUEST_NS);
    assert_eq!(virtual_ring_run(), (first, second, end));
}

/// Holds ATTACH inside SHMEM_MAP until released: a request in flight.
#[derive(Default)]
struct BlockingMapper {
    entered: AtomicBool,
    released: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl ShmemMapper for BlockingMapper {
    fn map(&self, _ram: &CardRam) -> io::Result<()> {
        self.entered.store(true, Ordering::Release);
        let mut released = self.released.lock().expect("lock");
        while !*released {
            released = self.wake.wait(released).expect("wait");
        }
        Ok(())
    }

    fn unmap(&self, _ram: &CardRam) -> io::Result<()> {
        Ok(())
    }
}

impl BlockingMapper {
    fn release(&self) {
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

/// Releases the mapper however the test ends, so a failing assertion
/// cannot leave the worker blocked and the test hanging.
struct Release<'a>(&'a BlockingMapper);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// SIGTERM's first step: the request being executed is completed (used
/// and notified) before `quiesce` returns, and nothing more is taken.
#[test]
fn quiesce_completes_the_request_in_flight_and_takes_no_more() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    let mapper = Arc::new(BlockingMapper::default());
    b.device().set_mapper(mapper.clone());
    let guest = Guest::new(&vq, &evt, &strq, &mem, &b);

    // Two requests on the queue, one kick: ATTACH (which will block in
    // SHMEM_MAP), then a task file.
    let attach = VqRequest {
        req_type: req_type::ATTACH.into(),
        ..VqRequest::default()
    };
    mem.write_slice(attach.as_bytes(), GuestAddress(0x10_0000))
        .expect("write");
    let len = put_request(&mem, 0x10_1000) as u32;
    let status_len = std::mem::size_of::<VqStatus>() as u32;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(
            0x10_0000,
            attach.as_bytes().len() as u32,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            0x20_0000,
            status_len,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            0x10_1000,
            len,
            VRING_DESC_F_NEXT as u16,
            3,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            0x20_1000,
            len - 24 + status_len,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    vq.add_desc_chains(&descs, 0).expect("chains");

    let quiesced = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _release = Release(&mapper);
        let worker = s.spawn(|| b.handle_event(0, EventSet::IN, &guest.vrings, 0));
        let started = Instant::now();
        while !mapper.entered.load(Ordering::Acquire) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "ATTACH never ran"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let quiescer = s.spawn(|| {
            b.device().quiesce();
            quiesced.store(true, Ordering::Release);
        });
        // quiesce waits for the request in flight.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!quiesced.load(Ordering::Acquire));
        assert_eq!(used_idx(&mem, &vq), 0);
        mapper.release();
        quiescer.join().expect("quiescer");
        // By then the ATTACH is completed, and the task file not taken.
        assert_eq!(used_idx(&mem, &vq), 1);
        assert_eq!(guest.vrings[0].queue_next_avail(), 1);
        worker.join().expect("worker").expect("handled");
    });
    let mut st = [0u8; 4];
    mem.read_slice(&mut st, GuestAddress(0x20_0000))
        .expect("read");
    assert_eq!(u32::from_le_bytes(st), vq_status::OK);
    // Later kicks take nothing either.
    b.handle_event(0, EventSet::IN, &guest.vrings, 0)
        .expect("handled");
    assert_eq!(guest.vrings[0].queue_next_avail(), 1);
    assert_eq!(used_idx(&mem, &vq), 1);
    assert_eq!(b.device().counters().requests.load(Ordering::Relaxed), 1);
}

#[test]
fn reset_and_shutdown_stop_capture_without_hanging() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    for fps in [0, 1] {
        let mut tf = TaskFile::new();
        tf.set_register(regs::FRAME_RATE, fps);
        start_capture(&mut tf);
        assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
        wait_frames(&b, 1);
        // A device reset stops the thread (even mid-way through a 1 s
        // frame period) and re-initialises the status block.
        let t = Instant::now();
        b.stop_vring(0).expect("stop");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(b.device().capture_slot().is_none());
        let sb = b.device().card_ram().read_status().expect("status");
        assert_eq!(
            (sb.status.get(), sb.frame_counter.get()),
            (status::READY, 0)
        );
        assert!(b.device().card().capture_session().is_none());
    }
    // Daemon shutdown while capturing.
    let mut tf = TaskFile::new();
    start_capture(&mut tf);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    wait_frames(&b, 1);
    let t = Instant::now();
    b.device().shutdown();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(b.device().capture_slot().is_none());
    assert_eq!(
        b.device()
            .card_ram()
            .read_status()
            .expect("status")
            .status
            .get(),
        status::READY
    );
}

/// Found by fuzzing (fuzz/regressions/backend/): with EVENT_IDX, an
/// avail index more than a queue ahead made `enable_notification`
/// report new chains forever, and the kick spun with the card locked.
#[test]
fn broken_avail_index_ends_the_kick_instead_of_spinning() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let cmd_q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let b = Arc::new(backend());
    b.update_memory(atomic.clone()).expect("memory");
    b.set_event_idx(true);
    cmd_q.avail().idx().store(1000);
    let vrings = vec![vring(&atomic, &cmd_q)];
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || {
            let handled = b.handle_event(0, EventSet::IN, &vrings, 0);
            let _ = tx.send(handled.is_ok());
        })
    };
    let handled = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the kick returned");
    assert!(handled);
    worker.join().expect("worker");
    assert_eq!(b.device().counters().requests.load(Ordering::Relaxed), 0);
    assert_eq!(used_idx(&mem, &cmd_q), 0);
    // The card is not left locked: the frontend can still reset it.
    b.stop_vring(0).expect("stop");
}

/// A frontend going away stops capture, resets the card and forgets the
/// connection's backend channel; card RAM keeps its contents unless asked,
/// and the next connection maps and captures again.
#[test]
fn disconnect_resets_the_card_and_keeps_card_ram_unless_asked() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    let mapper = Arc::new(FakeMapper::default());
    b.device().set_mapper(mapper.clone());
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    assert_eq!(g.attach(&vq, &b), vq_status::OK);
    let mut tf = TaskFile::new();
    start_capture(&mut tf);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    wait_frames(&b, 1);
    let ram = b.device().card_ram();
    let end = ram.card_ram_size() - 4;
    ram.write(end, b"keep").expect("write");

    b.disconnected(false);
    assert!(b.device().capture_slot().is_none(), "capture stopped");
    assert!(b.device().card().capture_session().is_none());
    assert_eq!(ram.read(end, 4).expect("read"), b"keep");
    assert_eq!(
        ram.read_status().expect("status").status.get(),
        status::READY
    );
    // The old backend channel is gone with its connection.
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    assert_eq!(g.attach(&vq, &b), vq_status::DEVICE_ERROR);
    // The next connection's channel maps card RAM again.
    let next = Arc::new(FakeMapper::default());
    b.device().set_mapper(next.clone());
    assert_eq!(g.attach(&vq, &b), vq_status::OK);
    assert_eq!(next.maps.load(Ordering::Relaxed), 1);
    assert_eq!(ram.read(end, 4).expect("read"), b"keep");

    b.disconnected(true);
    assert_eq!(ram.read(end, 4).expect("read"), [0u8; 4]);
    assert_eq!(
        ram.read_status().expect("status").version.get(),
        crate::card_ram::STATUS_BLOCK_VERSION
    );
}

mod faults;
