use super::*;
use vm_memory::GuestAddress;

const MEM_SIZE: u64 = 1 << 20;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
}

fn sg(addr: u64, len: u32) -> SgEntry {
    SgEntry::new(addr, len)
}

#[test]
fn register_use_and_unregister() {
    let mem = memory();
    let mut b = RegisteredBuffers::default();
    b.register(1, 9, 8192, vec![sg(0x1000, 4096), sg(0x8000, 4096)], &mem)
        .expect("register");
    assert_eq!((b.len(), b.entry_count()), (1, 2));
    assert_eq!(
        b.range(1, 4000, 200),
        Ok(vec![sg(0x1000 + 4000, 96), sg(0x8000, 104)])
    );
    assert_eq!(b.range(2, 0, 1), Err(DmaFault::UnknownBuffer { id: 2 }));
    assert!(matches!(
        b.range(1, 8000, 193),
        Err(DmaFault::OutsideBuffer { id: 1, .. })
    ));
    assert!(b.range(1, u64::MAX, 1).is_err());
    assert!(b.range(1, 0, 0).is_err());
    b.unregister(1).expect("unregister");
    assert_eq!(b.unregister(1), Err(RegisterError::Unknown(1)));
    assert_eq!(b.range(1, 0, 1), Err(DmaFault::UnknownBuffer { id: 1 }));
    assert!(b.is_empty());
    assert_eq!(b.entry_count(), 0);
}

#[test]
fn bad_ids_lengths_and_entries_are_refused() {
    let mem = memory();
    let mut b = RegisteredBuffers::default();
    let one = || vec![sg(0x1000, 4096)];
    assert_eq!(
        b.register(0, 9, 4096, one(), &mem),
        Err(RegisterError::BadId(0))
    );
    assert_eq!(
        b.register(registered::MAX_BUFFERS + 1, 9, 4096, one(), &mem),
        Err(RegisterError::BadId(registered::MAX_BUFFERS + 1))
    );
    assert_eq!(
        b.register(3, 9, 4095, one(), &mem),
        Err(RegisterError::LengthMismatch {
            sum: 4096,
            length: 4095
        })
    );
    assert_eq!(
        b.register(3, 9, 0, Vec::new(), &mem),
        Err(RegisterError::LengthMismatch { sum: 0, length: 0 })
    );
    // Partly or wholly outside guest RAM, or wrapping around.
    for bad in [sg(MEM_SIZE - 100, 200), sg(MEM_SIZE, 1), sg(u64::MAX, 2)] {
        let len = u64::from(bad.len.get()) + 4096;
        assert_eq!(
            b.register(3, 9, len, vec![sg(0, 4096), bad], &mem),
            Err(RegisterError::EntryOutOfBounds(1))
        );
    }
    assert!(b.is_empty());
    b.register(3, 9, 4096, one(), &mem).expect("register");
    assert_eq!(
        b.register(3, 9, 4096, one(), &mem),
        Err(RegisterError::InUse(3))
    );
    // Overlapping buffers are the guest's business: both are held.
    b.register(4, 9, 4096, one(), &mem).expect("overlap");
    assert_eq!(b.len(), 2);
    assert_eq!(RegisterError::InUse(3).status(), vq_status::BAD_REQUEST);
}

#[test]
fn the_card_holds_a_bounded_number_of_buffers_and_entries() {
    let mem = memory();
    let mut b = RegisteredBuffers::default();
    for id in 1..=registered::MAX_BUFFERS {
        b.register(id, 9, 1, vec![sg(0, 1)], &mem)
            .expect("register");
    }
    b.unregister(7).expect("unregister");
    b.register(7, 9, 1, vec![sg(0, 1)], &mem)
        .expect("room again");
    b.unregister(8).expect("unregister");
    let held = b.len();
    // Too many entries in all: refused as a device error, nothing held.
    let many = registered::MAX_TOTAL_ENTRIES as usize;
    let err = b
        .register(8, 9, many as u64, vec![sg(0, 1); many], &mem)
        .expect_err("full");
    assert!(matches!(err, RegisterError::Full { .. }));
    assert_eq!(err.status(), vq_status::DEVICE_ERROR);
    assert_eq!(b.len(), held);
    b.clear();
    assert!(b.is_empty());
    assert_eq!(b.entry_count(), 0);
}
