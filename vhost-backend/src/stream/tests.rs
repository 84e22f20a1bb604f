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
