use super::*;
use vm_memory::Bytes;
use xxcapture_model::FrameGeometry;

fn sg(addr: u64, len: u32) -> SgEntry {
    SgEntry {
        addr: addr.into(),
        len: len.into(),
        reserved: 0.into(),
    }
}

#[test]
fn memfd_is_whole_pages_and_status_is_initialised() {
    let ram = CardRam::new(4 << 20).expect("ram");
    assert_eq!(ram.file().metadata().expect("meta").len(), (4 << 20) + 4096);
    let sb = ram.read_status().expect("status");
    assert_eq!(sb.magic.get(), STATUS_MAGIC);
    assert_eq!(sb.version.get(), STATUS_BLOCK_VERSION);
    assert_eq!(sb.seq.get(), 2);
    assert_eq!(sb.status.get(), status::READY);
    assert!(CardRam::new(4097).is_err());
}

#[test]
fn dma_copies_both_ways_across_guest_regions() {
    // Two guest regions with a hole between them.
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(0x40000), 0x1000),
    ])
    .expect("mem");
    let pattern: Vec<u8> = (0..0x20000u32).map(|i| (i * 7 % 256) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(0)).expect("fill");
    let ram = CardRam::new(4 << 20).expect("ram");
    // An entry spanning the boundary of two regions.
    let table = [sg(0xff00, 0x200), sg(0x40000, 0x1000)];
    let mut port = GuestDma {
        ram: &ram,
        mem: &mem,
    };
    port.transfer(DmaDirection::ToCard, 100, &table)
        .expect("to card");
    let got = ram.read(100, 0x1200).expect("read");
    assert_eq!(&got[..0x200], &pattern[0xff00..0x10100]);
    assert!(got[0x200..].iter().all(|&b| b == 0));
    // Out of card RAM into a fresh guest buffer.
    let back = [sg(0x8000, 0x100), sg(0x18000, 0x100)];
    port.transfer(DmaDirection::FromCard, 100, &back)
        .expect("from card");
    let mut out = vec![0u8; 0x100];
    mem.read_slice(&mut out, GuestAddress(0x18000))
        .expect("read");
    assert_eq!(&out[..], &pattern[0x10000..0x10100]);
}

#[test]
fn entries_outside_guest_memory_fault_before_anything_moves() {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x20000), 0x1000),
    ])
    .expect("mem");
    mem.write_slice(&[0xaa; 0x100], GuestAddress(0))
        .expect("fill");
    let ram = CardRam::new(4 << 20).expect("ram");
    let mut port = GuestDma {
        ram: &ram,
        mem: &mem,
    };
    for (bad, index) in [
        (sg(0x10000, 1), 1),        // the hole
        (sg(0xffff, 2), 1),         // runs into the hole
        (sg(0x20fff, 2), 1),        // runs off the end
        (sg(u64::MAX, 16), 1),      // wraps
        (sg(u64::MAX - 15, 16), 1), // ends exactly at 2^64
    ] {
        let table = [sg(0, 0x100), bad];
        for dir in [DmaDirection::ToCard, DmaDirection::FromCard] {
            assert_eq!(
                port.transfer(dir, 0, &table),
                Err(DmaFault::OutsideGuestMemory { index })
            );
        }
    }
    assert!(ram.read(0, 0x200).expect("read").iter().all(|&b| b == 0));
    let mut out = vec![0u8; 0x100];
    mem.read_slice(&mut out, GuestAddress(0)).expect("read");
    assert!(out.iter().all(|&b| b == 0xaa));
}

#[test]
fn slots_are_bounds_checked() {
    let ram = CardRam::new(4 << 20).expect("ram");
    assert_eq!(ram.with_slot((4 << 20) - 16, 16, |s| s.len()), Some(16));
    assert_eq!(ram.with_slot((4 << 20) - 15, 16, |s| s.len()), None);
    assert_eq!(ram.with_slot(u64::MAX, 16, |s| s.len()), None);
    ram.with_slot(4096, 4, |s| s.copy_from_slice(b"abcd"));
    assert_eq!(ram.read(4096, 4).as_deref(), Some(&b"abcd"[..]));
}

#[test]
fn status_updates_keep_seq_even_and_fields_consistent() {
    let ram = CardRam::new(4 << 20).expect("ram");
    let session = CaptureSession {
        generation: 1,
        geometry: FrameGeometry {
            format: xxcapture_abi::frame::PixelFormat::Yuyv,
            width: 640,
            height: 480,
        },
        fps: 30,
        source: 0,
        ring: xxcapture_model::Ring {
            ring_offset: 0,
            ring_slots: 6,
            slot_size: 614_400,
            frame_size: 614_400,
        },
        stream: false,
    };
    let w = ram.status();
    w.begin(&session, 5);
    w.slot(&SlotUpdate {
        slot: 3,
        info: full(3, 99, 614_400),
        frame_counter: 4,
        dropped: 1,
        errors: 0,
        device_time_ns: 100,
    });
    let sb = ram.read_status().expect("status");
    assert_eq!(sb.seq.get() % 2, 0);
    assert_eq!(sb.status.get(), status::READY | status::CAPTURING);
    assert_eq!(sb.ring_slots.get(), 6);
    assert_eq!(sb.frame_counter.get(), 4);
    assert_eq!(sb.slots[3], full(3, 99, 614_400));
    w.end(200);
    w.init();
    let sb = ram.read_status().expect("status");
    assert_eq!(sb.status.get(), status::READY);
    assert_eq!(sb.slots[3], SlotInfo::default());
    assert_eq!(sb.ring_slots.get(), 0);
    assert_eq!(sb.seq.get(), 2 * 5);
}

#[test]
fn dma_busy_shows_while_a_transfer_moves_data() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("mem");
    let ram = CardRam::new(64 << 20).expect("ram");
    let status_now = |ram: &CardRam| ram.read_status().expect("status").status.get();
    {
        let _busy = DmaBusy::new(ram.status());
        assert_eq!(status_now(&ram), status::READY | status::DMA_BUSY);
    }
    assert_eq!(status_now(&ram), status::READY);
    // A concurrent reader sees DMA_BUSY during a long transfer (stop as
    // soon as it did), and never after the last one ended.
    let table: Vec<SgEntry> = (0..4).map(|i| sg(i << 22, 4 << 20)).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Acquire) && !seen.load(Ordering::Acquire) {
                if status_now(&ram) & status::DMA_BUSY != 0 {
                    seen.store(true, Ordering::Release);
                }
            }
        });
        let mut port = GuestDma {
            ram: &ram,
            mem: &mem,
        };
        for _ in 0..200 {
            if seen.load(Ordering::Acquire) {
                break;
            }
            port.transfer(DmaDirection::ToCard, 0, &table)
                .expect("transfer");
        }
        done.store(true, Ordering::Release);
    });
    let seen = seen.load(Ordering::Acquire);
    assert!(seen, "DMA_BUSY never seen during 200 transfers of 16 MiB");
    assert_eq!(status_now(&ram), status::READY);
    // A faulting transfer clears it too, and DMA_ERROR is kept apart.
    ram.status().set_dma_error(true);
    let mut port = GuestDma {
        ram: &ram,
        mem: &mem,
    };
    assert!(port
        .transfer(DmaDirection::ToCard, 0, &[sg(64 << 20, 4096)])
        .is_err());
    assert_eq!(status_now(&ram), status::READY | status::DMA_ERROR);
    ram.status().set_dma_error(false);
    assert_eq!(status_now(&ram), status::READY);
}

#[test]
fn the_ring_area_follows_the_status_page_and_is_bounds_checked() {
    let plain = CardRam::new(4 << 20).expect("ram");
    assert!(plain.ring_area().is_none());
    let ram = CardRam::with_ring(4 << 20, true).expect("ram");
    let area_size = RING_AREA_SIZE as usize;
    assert_eq!(ram.ring_offset(), (4 << 20) + 4096);
    assert_eq!(ram.region_size(), (4 << 20) + 4096 + area_size as u64);
    assert_eq!(ram.bar_size(), 8 << 20);
    assert_eq!(
        ram.file().metadata().expect("meta").len(),
        ram.region_size()
    );
    let area = ram.ring_area().expect("area");
    // Whole-area access works; anything reaching past it does nothing.
    area.store(area_size - 4, 0xdead_beef, Ordering::Relaxed);
    assert_eq!(area.load(area_size - 4, Ordering::Relaxed), 0xdead_beef);
    assert!(area.word(area_size).is_none());
    assert!(area.word(2).is_none(), "misaligned");
    assert!(area.word64(area_size - 4).is_none());
    assert_eq!(area.load(usize::MAX - 3, Ordering::Relaxed), 0);
    let mut buf = [0u8; 8];
    assert!(area.read(area_size - 4, &mut buf).is_none());
    assert!(area.write(area_size - 4, &buf).is_none());
    assert!(area.write(usize::MAX, &buf).is_none());
    assert!(area.read(area_size - 8, &mut buf).is_some());
    assert_eq!(&buf[4..], &0xdead_beef_u32.to_le_bytes());
    // The status block and card RAM are not the area's.
    assert_eq!(ram.read_status().expect("status").magic.get(), STATUS_MAGIC);
    area.zero();
    assert_eq!(area.load(area_size - 4, Ordering::Relaxed), 0);
}
