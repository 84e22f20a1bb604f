use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use virtio_queue::mock::MockSplitQueue;
use zerocopy::FromBytes;

use crate::queue::mock::MockQueue;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(2 << 20), 1 << 20)])
        .expect("mem")
}

#[test]
fn frames_go_only_into_the_entries_and_are_checked_first() {
    let mem = mem();
    mem.write_slice(&[0xcc; 0x3000], GuestAddress(0x1_0000))
        .expect("canary");
    let frame: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let sg = [
        SgEntry::new(0x1_0100, 1000),
        SgEntry::new(0x1_1000, 3000),
        SgEntry::new(0x1_2800, 2000),
    ];
    write_frame(&mem, &sg, &frame).expect("written");
    let mut all = vec![0u8; 0x3000];
    mem.read_slice(&mut all, GuestAddress(0x1_0000))
        .expect("read");
    assert!(all[..0x100].iter().all(|&b| b == 0xcc));
    assert_eq!(&all[0x100..0x100 + 1000], &frame[..1000]);
    assert!(all[0x100 + 1000..0x1000].iter().all(|&b| b == 0xcc));
    assert_eq!(&all[0x1000..0x1000 + 3000], &frame[1000..4000]);
    assert!(all[0x1000 + 3000..0x2800].iter().all(|&b| b == 0xcc));
    assert_eq!(&all[0x2800..0x2800 + 1000], &frame[4000..]);
    assert!(
        all[0x2800 + 1000..].iter().all(|&b| b == 0xcc),
        "past the frame"
    );
    // Too small, and an entry in the hole between the regions: nothing
    // is written at all.
    assert_eq!(write_frame(&mem, &sg[..2], &frame), Err(TfError::DmaRange));
    let bad = [
        SgEntry::new(0x1_0000, 4000),
        SgEntry::new((1 << 20) - 16, 4000),
    ];
    mem.write_slice(&[0xcc; 0x3000], GuestAddress(0x1_0000))
        .expect("canary");
    assert_eq!(write_frame(&mem, &bad, &frame), Err(TfError::DmaFault));
    mem.read_slice(&mut all, GuestAddress(0x1_0000))
        .expect("read");
    assert!(all.iter().all(|&b| b == 0xcc));
}

fn buffer(head: u16) -> HeldBuffer {
    HeldBuffer {
        head,
        tag: u64::from(head),
        sg: vec![SgEntry::new(0x4_0000, 4096)],
        capacity: 4096,
        result: vec![
            (0x8_0000 + u64::from(head) * 64, 16),
            (0x9_0000 + u64::from(head) * 64, 16),
        ],
    }
}

fn result(mem: &GuestMemoryMmap, head: u16) -> StreamResult {
    let mut raw = vec![0u8; 32];
    mem.read_slice(
        &mut raw[..16],
        GuestAddress(0x8_0000 + u64::from(head) * 64),
    )
    .expect("read");
    mem.read_slice(
        &mut raw[16..],
        GuestAddress(0x9_0000 + u64::from(head) * 64),
    )
    .expect("read");
    StreamResult::read_from_bytes(&raw).expect("result")
}

#[test]
fn abort_cancels_only_the_buffers_it_names_and_keeps_the_order() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0xc_0000), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let s = StreamBuffers::default();
    s.set_queue(q.clone());
    for head in 0..5 {
        s.hold(buffer(head));
    }
    // The engine is filling buffer 0: an ABORT cannot take it back.
    let filling = s.take().expect("oldest");
    assert_eq!(s.cancel_tags(&[0, 1, 3, 42], Some(&mem), 9), 2);
    let used = q.used(&vq);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), vec![1, 3]);
    for head in [1, 3] {
        let r = result(&mem, head);
        assert_eq!(r.error.get(), TfError::Cancelled as u32);
        assert_eq!((r.bytes.get(), r.device_time_ns.get()), (0, 9));
    }
    assert_eq!(q.notifications(), 1);
    assert_eq!(s.held(), 2);
    // The others stay held, in order.
    assert_eq!(s.take().expect("next").head, 2);
    assert_eq!(s.take().expect("next").head, 4);
    // Naming nothing held cancels nothing and does not notify.
    assert_eq!(s.cancel_tags(&[7], Some(&mem), 10), 0);
    assert_eq!(q.notifications(), 1);
    assert_eq!(s.stats().cancelled, 2);
    drop(filling);
}

#[test]
fn fifo_completion_cancel_and_flush() {
    let mem = mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0xc_0000), 16);
    let q = Arc::new(MockQueue::new(&mem, &vq));
    let s = StreamBuffers::default();
    s.set_queue(q.clone());
    for head in 0..4 {
        s.hold(buffer(head));
    }
    let first = s.take().expect("oldest");
    assert_eq!(first.head, 0);
    s.complete(
        first,
        Outcome {
            error: TfError::Ok,
            frame_number: 9,
            device_time_ns: 77,
            bytes: 4000,
        },
        Some(&mem),
    );
    let r = result(&mem, 0);
    assert_eq!(
        (
            r.status.get(),
            r.error.get(),
            r.frame_number.get(),
            r.bytes.get()
        ),
        (vq_status::OK, 0, 9, 4000)
    );
    assert_eq!(r.device_time_ns.get(), 77);
    // One in flight while FLUSH cancels the rest and waits for it.
    let second = s.take().expect("next");
    assert_eq!(second.head, 1);
    let s = Arc::new(s);
    let filler = {
        let (s, mem) = (Arc::clone(&s), mem.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.complete(second, Outcome::cancelled(5), Some(&mem));
        })
    };
    assert!(s.flush(Some(&mem), 100, Duration::from_secs(5)));
    filler.join().expect("filler");
    let used = q.used(&vq);
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        vec![0, 2, 3, 1]
    );
    assert!(used.iter().all(|u| u.1 == 32));
    assert_eq!(result(&mem, 3).error.get(), TfError::Cancelled as u32);
    assert_eq!(s.held(), 0);
    assert_eq!(s.stats().cancelled, 3);
    // Three notifications: the completion, the cancel batch, the in-flight one.
    assert_eq!(q.notifications(), 3);
}

#[test]
fn waiting_for_a_buffer_wakes_on_hold_and_on_stop() {
    let s = Arc::new(StreamBuffers::default());
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || s.wait_for_buffer(&|| stop.load(Ordering::Acquire)))
    };
    std::thread::sleep(Duration::from_millis(20));
    s.hold(buffer(1));
    assert!(waiter.join().expect("waiter"));
    s.take();
    let waiter = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || s.wait_for_buffer(&|| stop.load(Ordering::Acquire)))
    };
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Release);
    s.wake();
    assert!(!waiter.join().expect("waiter"));
}

/// Stream-queue chains as the vring worker parses them.
mod chains {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use xxcapture_abi::{req_type, SgEntry, StreamResult, VqRequest, MAX_SG_ENTRIES};
    use zerocopy::{FromBytes, IntoBytes};

    use crate::request::{ChainError, Completion, Disposition};
    use crate::stream::{process_stream_chain, StreamChain};

    const MEM_SIZE: u64 = 8 << 20;
    const QUEUE_SIZE: u16 = 256;
    /// Data buffers live above the queue structures.
    const DATA: u64 = 0x10_0000;
    const BUF: u64 = 0x40_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Writes `bytes` at `addr`.
    fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
        mem.write_slice(bytes, GuestAddress(addr)).expect("write");
    }

    fn get(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        mem.read_slice(&mut out, GuestAddress(addr)).expect("read");
        out
    }

    fn sg(addr: u64, len: u32) -> SgEntry {
        SgEntry::new(addr, len)
    }

    fn header(req: u32, sg_count: u32) -> VqRequest {
        VqRequest {
            req_type: req.into(),
            sg_count: sg_count.into(),
            tag: 77.into(),
            ..VqRequest::default()
        }
    }

    fn stream_req(req: u32, flags: u32, sg_count: u32, entries: &[SgEntry]) -> Vec<u8> {
        let mut h = header(req, sg_count);
        h.flags = flags.into();
        let mut buf = h.as_bytes().to_vec();
        for e in entries {
            buf.extend_from_slice(e.as_bytes());
        }
        buf
    }

    fn run_stream(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> StreamChain {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let chain = vq.build_desc_chain(descs).expect("chain");
        process_stream_chain(&chain, 999)
    }

    #[test]
    fn good_stream_buffers_are_held_with_their_entries_and_result_area() {
        let mem = memory();
        let entries = [sg(BUF, 0x1000), sg(BUF + 0x3000, 0x800)];
        let req = stream_req(req_type::STREAM_BUFFER, 0, 2, &entries);
        put(&mem, DATA, &req);
        let out = 0x30_0000;
        // Readable split in two, result split in two.
        let descs = [
            desc(DATA, 10, 0),
            desc(DATA + 10, req.len() as u32 - 10, 0),
            desc(out, 20, W),
            desc(out + 0x100, 12, W),
        ];
        let StreamChain::Hold(held) = run_stream(&mem, &descs) else {
            panic!("not held");
        };
        assert_eq!(held.sg, entries.to_vec());
        assert_eq!((held.tag, held.capacity), (77, 0x1800));
        assert_eq!(held.result, vec![(out, 20), (out + 0x100, 12)]);
    }

    #[test]
    fn malformed_stream_buffers_are_answered_at_once() {
        let mem = memory();
        let good = [sg(BUF, 0x1000)];
        let mut zero = good;
        zero[0].len = 0.into();
        let mut reserved = good;
        reserved[0].reserved = 1.into();
        let mut hdr_reserved = stream_req(req_type::STREAM_BUFFER, 0, 1, &good);
        hdr_reserved[20] = 1;
        let cases: Vec<(Vec<u8>, ChainError)> = vec![
            (
                stream_req(req_type::EXEC_TASK_FILE, 0, 1, &good),
                ChainError::Unsupported {
                    req_type: 1,
                    flags: 0,
                },
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 2, 1, &good),
                ChainError::Unsupported {
                    req_type: 3,
                    flags: 2,
                },
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 0, &[]),
                ChainError::BadEntryCount(0),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, MAX_SG_ENTRIES + 1, &good),
                ChainError::BadEntryCount(MAX_SG_ENTRIES + 1),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 2, &good),
                ChainError::BadStreamLength {
                    readable: 40,
                    sg_count: 2,
                },
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 1, &zero),
                ChainError::BadEntry(0),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 1, &reserved),
                ChainError::BadEntry(0),
            ),
            (
                stream_req(
                    req_type::STREAM_BUFFER,
                    0,
                    1,
                    &[sg(MEM_SIZE - 0x800, 0x1000)],
                ),
                ChainError::EntryOutOfBounds(0),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 1, &[sg(u64::MAX - 0x10, 0x100)]),
                ChainError::EntryOutOfBounds(0),
            ),
            (hdr_reserved, ChainError::Reserved(1)),
            (vec![0u8; 16], ChainError::TooShort(16)),
        ];
        let out = 0x30_0000;
        for (req, expected) in cases {
            put(&mem, DATA, &req);
            put(&mem, out, &[0xee; 64]);
            let descs = [desc(DATA, req.len() as u32, 0), desc(out, 32, W)];
            let StreamChain::Done(c) = run_stream(&mem, &descs) else {
                panic!("held: {expected:?}");
            };
            assert_eq!(c.used_len, 32);
            assert_eq!(c.disposition, Disposition::Rejected(expected));
            let r = StreamResult::read_from_bytes(&get(&mem, out, 32)).expect("result");
            assert_eq!(r.status.get(), expected.status(), "{expected:?}");
            assert_eq!(r.device_time_ns.get(), 999);
            assert_eq!(get(&mem, out + 32, 32), vec![0xee; 32], "past the result");
        }
        // Too little room for a result: nothing written, used length 0.
        let req = stream_req(req_type::STREAM_BUFFER, 0, 1, &good);
        put(&mem, DATA, &req);
        put(&mem, out, &[0xee; 64]);
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, 31, W)];
        let StreamChain::Done(c) = run_stream(&mem, &descs) else {
            panic!("held");
        };
        assert_eq!(c, Completion::dropped(ChainError::NoStatusRoom(31)));
        assert_eq!(get(&mem, out, 64), vec![0xee; 64]);
        // Readable after writable.
        let descs = [desc(out, 32, W), desc(DATA, req.len() as u32, 0)];
        assert!(matches!(
            run_stream(&mem, &descs),
            StreamChain::Done(Completion {
                disposition: Disposition::Rejected(ChainError::Misordered),
                ..
            })
        ));
    }
}
