//! DMA commands against a fake port: validation, SG consumption, faults and
//! the transaction rules.

use proptest::prelude::*;
use xxcapture_abi::{dma_dir, regs, Command, Op, SgEntry, TaskFile, TaskFileResult, TfError};

use crate::dma::{DmaDirection, DmaFault, DmaPort};
use crate::{Card, CardConfig, CAPTURE_CARD_CAPS};

const RAM: u64 = 4 << 20;
const GUEST: usize = 1 << 16;

/// Card RAM and guest memory as plain vectors; guest address = index.
struct FakePort {
    card: Vec<u8>,
    guest: Vec<u8>,
    calls: Vec<(DmaDirection, u64, Vec<SgEntry>)>,
    /// Registered buffer 7, if set.
    registered: Option<crate::RegisteredTable>,
}

impl FakePort {
    fn new() -> Self {
        FakePort {
            card: vec![0; RAM as usize],
            guest: (0..GUEST).map(|i| (i % 251) as u8).collect(),
            calls: Vec::new(),
            registered: None,
        }
    }
}

impl DmaPort for FakePort {
    fn transfer(
        &mut self,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> Result<(), DmaFault> {
        self.calls.push((direction, card_offset, sg.to_vec()));
        for (index, e) in sg.iter().enumerate() {
            let end = e.addr.get().checked_add(u64::from(e.len.get()));
            if end.is_none_or(|end| end > GUEST as u64) {
                return Err(DmaFault::OutsideGuestMemory { index });
            }
        }
        let mut at = card_offset as usize;
        for e in sg {
            let (g, n) = (e.addr.get() as usize, e.len.get() as usize);
            match direction {
                DmaDirection::ToCard => {
                    self.card[at..at + n].copy_from_slice(&self.guest[g..g + n])
                }
                DmaDirection::FromCard => {
                    self.guest[g..g + n].copy_from_slice(&self.card[at..at + n])
                }
            }
            at += n;
        }
        Ok(())
    }

    fn registered_entries(
        &self,
        id: u32,
        offset: u64,
        length: u64,
    ) -> Result<Vec<SgEntry>, DmaFault> {
        let table = self
            .registered
            .as_ref()
            .filter(|_| id == 7)
            .ok_or(DmaFault::UnknownBuffer { id })?;
        table.range(offset, length).ok_or(DmaFault::OutsideBuffer {
            id,
            offset,
            length,
            size: table.length(),
        })
    }
}

fn card() -> Card {
    Card::new(CardConfig {
        card_ram_size: RAM,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    })
    .expect("card")
}

fn sg(addr: u64, len: u32) -> SgEntry {
    SgEntry::new(addr, len)
}

fn dma(dir: u16, first: u64, offset: u64, length: u64) -> Command {
    Command {
        op: (Op::DmaTransferBlock as u16).into(),
        reg: dir.into(),
        flags: 0.into(),
        value: first.into(),
        mask: offset.into(),
        length: length.into(),
    }
}

fn run(card: &mut Card, port: &mut FakePort, tf: &TaskFile, table: &[SgEntry]) -> TaskFileResult {
    let mut bytes = tf.to_bytes();
    card.execute_dma(
        &mut bytes,
        table,
        port,
        &mut card.interrupt_controller(),
        1_000,
    );
    TaskFileResult::parse(&bytes).expect("result parses")
}

#[test]
fn to_card_then_from_card_over_split_entries() {
    let mut c = card();
    let mut port = FakePort::new();
    // 10000 bytes from three scattered guest pieces into card RAM at 0x1000,
    // then back out into two other pieces.
    let table = [
        sg(0x100, 3000),
        sg(0x4000, 4096),
        sg(0x9000, 2904),
        sg(0xc000, 5000),
        sg(0xe000, 5000),
    ];
    let mut tf = TaskFile::new();
    let a = tf.push_raw(dma(dma_dir::TO_CARD, 0, 0x1000, 10_000));
    let b = tf.push_raw(Command {
        op: (Op::DmaTransferNonBlock as u16).into(),
        ..dma(dma_dir::FROM_CARD, 3, 0x1000, 10_000)
    });
    let transferred = tf.get_register(regs::DMA_TRANSFERRED);
    let direction = tf.get_register(regs::DMA_DIRECTION);
    let addr = tf.get_address(regs::DMA_CARD_ADDR);
    let res = run(&mut c, &mut port, &tf, &table);
    assert_eq!((res.error, res.index), (TfError::Ok, 5));
    assert_eq!(res.commands[a].length.get(), 10_000);
    assert_eq!(res.commands[b].length.get(), 10_000);
    // The user's value is echoed (the driver restores its own).
    assert_eq!(res.commands[b].value.get(), 3);
    assert_eq!(res.value(transferred), Some(10_000));
    assert_eq!(res.value(direction), Some(1));
    assert_eq!(res.value(addr), Some(0x1000));
    let mut expected = Vec::new();
    for e in &table[..3] {
        let g = e.addr.get() as usize;
        expected.extend_from_slice(&FakePort::new().guest[g..g + e.len.get() as usize]);
    }
    assert_eq!(&port.card[0x1000..0x1000 + 10_000], &expected[..]);
    let mut back = port.guest[0xc000..0xc000 + 5000].to_vec();
    back.extend_from_slice(&port.guest[0xe000..0xe000 + 5000]);
    assert_eq!(back, expected);
    assert_eq!(c.registers().peek(regs::DMA_LENGTH), 10_000);
}

#[test]
fn dma_validation_codes() {
    let table = [sg(0, 4096), sg(4096, 4096)];
    let cases = [
        (dma(2, 0, 0, 4096), TfError::BadValue),
        (dma(0xffff, 0, 0, 4096), TfError::BadValue),
        (dma(0, 0, 0, 0), TfError::DmaRange),
        (dma(0, 0, RAM, 1), TfError::DmaRange),
        (dma(0, 0, RAM - 4095, 4096), TfError::DmaRange),
        (dma(1, 0, u64::MAX, 2), TfError::DmaRange),
        (dma(1, 0, 1, u64::MAX), TfError::DmaRange),
        // SG problems are faults.
        (dma(0, 2, 0, 4096), TfError::DmaFault),
        (dma(0, u64::MAX, 0, 4096), TfError::DmaFault),
        (dma(0, 0, 0, 4000), TfError::DmaFault),
        (dma(0, 0, 0, 8193), TfError::DmaFault),
        (dma(0, 1, 0, 8192), TfError::DmaFault),
    ];
    for (cmd, expected) in cases {
        let mut c = card();
        let mut port = FakePort::new();
        let mut tf = TaskFile::new();
        tf.set_register(regs::SCRATCH, 1);
        tf.push_raw(cmd);
        let res = run(&mut c, &mut port, &tf, &table);
        assert_eq!((res.error, res.index), (expected, 1), "{cmd:?}");
        assert_eq!(c.registers().peek(regs::SCRATCH), 0);
        if expected != TfError::DmaFault {
            assert!(port.calls.is_empty(), "{cmd:?} reached the port");
        }
    }
    // The last byte of card RAM is in range.
    let mut c = card();
    let mut port = FakePort::new();
    let mut tf = TaskFile::new();
    tf.push_raw(dma(0, 0, RAM - 4096, 4096));
    assert_eq!(run(&mut c, &mut port, &tf, &table).error, TfError::Ok);
}

#[test]
fn flags_and_op_checks_come_before_dma_checks() {
    let mut c = card();
    let mut port = FakePort::new();
    let mut cmd = dma(7, 0, 0, 0);
    cmd.flags = 1.into();
    let mut tf = TaskFile::new();
    tf.push_raw(cmd);
    assert_eq!(run(&mut c, &mut port, &tf, &[]).error, TfError::Reserved);
}

#[test]
fn guest_fault_fails_the_transaction_but_earlier_data_stays_moved() {
    let mut c = card();
    let mut port = FakePort::new();
    let table = [sg(0, 100), sg(GUEST as u64 - 50, 100)];
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 7);
    tf.push_raw(dma(0, 0, 0, 100));
    tf.push_raw(dma(0, 1, 200, 100));
    let res = run(&mut c, &mut port, &tf, &table);
    assert_eq!((res.error, res.index), (TfError::DmaFault, 2));
    // Registers: nothing committed.
    assert_eq!(c.registers().peek(regs::SCRATCH), 0);
    assert_eq!(c.registers().peek(regs::DMA_TRANSFERRED), 0);
    // Data: the first command's bytes are in card RAM; the faulting
    // command's range is untouched.
    assert_eq!(&port.card[..100], &FakePort::new().guest[..100]);
    assert!(port.card[200..300].iter().all(|&b| b == 0));
    // Outputs are not written on failure.
    assert_eq!(res.commands[1].length.get(), 100);
}

#[test]
fn card_without_dma_still_answers_not_supported() {
    let mut c = Card::new(CardConfig::default()).expect("card");
    let mut port = FakePort::new();
    let mut tf = TaskFile::new();
    tf.push_raw(dma(0, 0, 0, 4096));
    let res = run(&mut c, &mut port, &tf, &[sg(0, 4096)]);
    assert_eq!((res.error, res.index), (TfError::NotSupported, 0));
    assert!(port.calls.is_empty());
}

#[test]
fn plain_execute_faults_dma() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.push_raw(dma(1, 0, 0, 16));
    let mut bytes = tf.to_bytes();
    c.execute(&mut bytes, &mut c.interrupt_controller(), 0);
    let res = TaskFileResult::parse(&bytes).expect("parse");
    assert_eq!(res.error, TfError::DmaFault);
}

fn status_bits(c: &Card) -> u32 {
    c.status()
}

#[test]
fn nonblock_dma_is_refused_in_a_synchronous_request() {
    let table = [sg(0, 4096)];
    let nonblock = Command {
        op: (Op::DmaTransferNonBlock as u16).into(),
        ..dma(dma_dir::TO_CARD, 0, 0, 4096)
    };
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 1);
    tf.push_raw(nonblock);
    for asynchronous in [false, true] {
        let mut c = card();
        let mut port = FakePort::new();
        let mut bytes = tf.to_bytes();
        let mut irq = c.interrupt_controller();
        c.execute_request(&mut bytes, &table, &mut port, &mut irq, 1_000, asynchronous);
        let res = TaskFileResult::parse(&bytes).expect("result parses");
        if asynchronous {
            assert_eq!((res.error, res.index), (TfError::Ok, 2));
            assert_eq!(port.calls.len(), 1);
        } else {
            // Check 1 of the validation order: before the DMA checks, no
            // data moved, nothing latched.
            assert_eq!((res.error, res.index), (TfError::BadOp, 1));
            assert!(port.calls.is_empty());
            assert_eq!(status_bits(&c) & xxcapture_abi::status::DMA_ERROR, 0);
            assert_eq!(c.registers().peek(regs::SCRATCH), 0);
        }
    }
    // DMA_TRANSFER_BLOCK is fine in both.
    let mut c = card();
    let mut port = FakePort::new();
    let mut tf = TaskFile::new();
    tf.push_raw(dma(dma_dir::TO_CARD, 0, 0, 4096));
    let mut bytes = tf.to_bytes();
    let mut irq = c.interrupt_controller();
    c.execute_request(&mut bytes, &table, &mut port, &mut irq, 1_000, false);
    assert_eq!(
        TaskFileResult::parse(&bytes).expect("parse").error,
        TfError::Ok
    );
}

#[test]
fn dma_error_latches_in_status_until_dma_reset() {
    use xxcapture_abi::{control, status};
    let table = [sg(0, 4096)];
    let mut c = card();
    let mut port = FakePort::new();
    assert_eq!(status_bits(&c) & status::DMA_ERROR, 0);
    // An out-of-range transfer fails: the task file commits nothing, but
    // DMA_ERROR is set and stays.
    let mut bad = TaskFile::new();
    bad.set_register(regs::SCRATCH, 1);
    bad.push_raw(dma(dma_dir::TO_CARD, 0, RAM, 4096));
    assert_eq!(
        run(&mut c, &mut port, &bad, &table).error,
        TfError::DmaRange
    );
    assert_eq!(c.registers().peek(regs::SCRATCH), 0);
    assert_ne!(status_bits(&c) & status::DMA_ERROR, 0);
    // A later good transfer leaves it set, and a task file reads it.
    let mut good = TaskFile::new();
    good.push_raw(dma(dma_dir::TO_CARD, 0, 0, 4096));
    let st = good.get_register(regs::STATUS);
    let res = run(&mut c, &mut port, &good, &table);
    assert_eq!(res.error, TfError::Ok);
    let read = res.value(st).expect("status read") as u32;
    assert_ne!(read & status::DMA_ERROR, 0);
    // A task file never sees DMA_BUSY: the transfer ended before it.
    assert_eq!(read & status::DMA_BUSY, 0);
    // A guest fault latches it too; DMA_RESET clears it.
    let mut reset = TaskFile::new();
    reset.set_register(regs::CONTROL, control::ENABLE | control::DMA_RESET);
    assert_eq!(run(&mut c, &mut port, &reset, &[]).error, TfError::Ok);
    assert_eq!(status_bits(&c) & status::DMA_ERROR, 0);
    let mut fault = TaskFile::new();
    fault.push_raw(dma(dma_dir::TO_CARD, 0, 0, 4096));
    let far = [sg(GUEST as u64, 4096)];
    assert_eq!(
        run(&mut c, &mut port, &fault, &far).error,
        TfError::DmaFault
    );
    assert_ne!(status_bits(&c) & status::DMA_ERROR, 0);
    c.reset(2_000);
    assert_eq!(status_bits(&c) & status::DMA_ERROR, 0);
}

proptest! {
    /// Whatever the command and table, the port only ever sees entries of
    /// the table whose lengths sum to the command's length, inside the
    /// card-RAM range the card checked; and a failure commits nothing.
    #[test]
    fn port_sees_only_checked_transfers(
        dir in prop_oneof![Just(0u16), Just(1u16), any::<u16>()],
        first in prop_oneof![0u64..6, any::<u64>()],
        offset in prop_oneof![0u64..RAM, any::<u64>()],
        length in prop_oneof![0u64..20_000, any::<u64>()],
        lens in prop::collection::vec(1u32..9000, 0..6),
    ) {
        let table: Vec<SgEntry> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| sg(i as u64 * 9000, len))
            .collect();
        let mut c = card();
        let mut port = FakePort::new();
        let mut tf = TaskFile::new();
        tf.set_register(regs::SCRATCH, 9);
        tf.push_raw(dma(dir, first, offset, length));
        let res = run(&mut c, &mut port, &tf, &table);
        for (_, card_offset, entries) in &port.calls {
            let sum: u64 = entries.iter().map(|e| u64::from(e.len.get())).sum();
            prop_assert_eq!(sum, length);
            prop_assert!(card_offset + sum <= RAM);
        }
        if res.error == TfError::Ok {
            prop_assert_eq!(port.calls.len(), 1);
            prop_assert_eq!(c.registers().peek(regs::DMA_TRANSFERRED), length & 0xffff_ffff);
        } else {
            prop_assert_eq!(c.registers().peek(regs::SCRATCH), 0);
        }
    }
}

#[test]
fn registered_buffer_commands_use_the_held_table() {
    let mut c = card();
    let mut port = FakePort::new();
    port.registered = Some(crate::RegisteredTable::new(vec![
        sg(0x100, 3000),
        sg(0x4000, 4096),
    ]));
    let mut tf = TaskFile::new();
    let a = tf.dma_buffer(dma_dir::TO_CARD, 7, 1000, 0x2000, 5000);
    let transferred = tf.get_register(regs::DMA_TRANSFERRED);
    let res = run(&mut c, &mut port, &tf, &[]);
    assert_eq!((res.error, res.index), (TfError::Ok, 2));
    assert_eq!(res.commands[a].length.get(), 5000);
    assert_eq!(res.commands[a].flags.get(), 7);
    assert_eq!(res.commands[a].value.get(), 1000);
    assert_eq!(res.value(transferred), Some(5000));
    assert_eq!(
        port.calls,
        vec![(
            DmaDirection::ToCard,
            0x2000,
            vec![sg(0x100 + 1000, 2000), sg(0x4000, 3000)]
        )]
    );
    let mut expected = port.guest[0x100 + 1000..0x100 + 3000].to_vec();
    expected.extend_from_slice(&port.guest[0x4000..0x4000 + 3000]);
    assert_eq!(&port.card[0x2000..0x2000 + 5000], &expected[..]);

    // Unknown id, a range past the buffer's end, an offset that overflows:
    // DMA_FAULT, nothing moves.
    for (id, offset, length) in [(8, 0, 1), (7, 7000, 97), (7, u64::MAX, 1)] {
        let mut bad = TaskFile::new();
        bad.get_register(regs::ID);
        bad.dma_buffer(dma_dir::FROM_CARD, id, offset, 0, length);
        let calls = port.calls.len();
        let res = run(&mut c, &mut port, &bad, &[]);
        assert_eq!(
            (res.error, res.index),
            (TfError::DmaFault, 1),
            "{id} {offset} {length}"
        );
        assert_eq!(port.calls.len(), calls);
    }
    // The card-RAM range and the direction are checked first.
    let mut bad = TaskFile::new();
    bad.dma_buffer(dma_dir::FROM_CARD, 7, 0, RAM, 1);
    assert_eq!(run(&mut c, &mut port, &bad, &[]).error, TfError::DmaRange);
    let mut bad = TaskFile::new();
    bad.dma_buffer(2, 7, 0, 0, 1);
    assert_eq!(run(&mut c, &mut port, &bad, &[]).error, TfError::BadValue);
    let mut bad = TaskFile::new();
    bad.dma_buffer(dma_dir::FROM_CARD, 7, 0, 0, 0);
    assert_eq!(run(&mut c, &mut port, &bad, &[]).error, TfError::DmaRange);
}

#[test]
fn ring_task_files_refuse_raw_dma_and_keep_registered_buffers() {
    let mut c = card();
    let mut port = FakePort::new();
    port.registered = Some(crate::RegisteredTable::new(vec![sg(0x100, 4096)]));
    let mut irq = c.interrupt_controller();
    let ring =
        |c: &mut Card, port: &mut FakePort, irq: &mut crate::InterruptController, tf: &TaskFile| {
            let mut bytes = tf.to_bytes();
            c.execute_ring(&mut bytes, port, irq, 1_000);
            TaskFileResult::parse(&bytes).expect("result parses")
        };
    for op in [Op::DmaTransferBlock, Op::DmaTransferNonBlock] {
        let mut tf = TaskFile::new();
        tf.set_register(regs::SCRATCH, 5);
        let mut cmd = dma(dma_dir::TO_CARD, 0, 0, 16);
        cmd.op = (op as u16).into();
        tf.push_raw(cmd);
        // Refused before its other fields are looked at.
        let mut bad = dma(7, 0, u64::MAX, 0);
        bad.op = (op as u16).into();
        bad.flags = 3.into();
        let mut tf2 = TaskFile::new();
        tf2.push_raw(bad);
        let calls = port.calls.len();
        let res = ring(&mut c, &mut port, &mut irq, &tf);
        assert_eq!((res.error, res.index), (TfError::Refused, 1), "{op:?}");
        let res = ring(&mut c, &mut port, &mut irq, &tf2);
        assert_eq!((res.error, res.index), (TfError::Refused, 0), "{op:?}");
        assert_eq!(port.calls.len(), calls, "nothing moved");
        assert_eq!(c.registers().peek(regs::SCRATCH), 0, "nothing committed");
        assert_eq!(status_bits(&c) & xxcapture_abi::status::DMA_ERROR, 0);
        assert_eq!(irq.status() & xxcapture_abi::irq::DMA_ERROR, 0);
    }
    // DMA_BUFFER works on the ring; an unknown id faults.
    let mut tf = TaskFile::new();
    tf.dma_buffer(dma_dir::TO_CARD, 7, 16, 0x1000, 100);
    let res = ring(&mut c, &mut port, &mut irq, &tf);
    assert_eq!((res.error, res.index), (TfError::Ok, 1));
    assert_eq!(
        &port.card[0x1000..0x1000 + 100],
        &port.guest[0x110..0x110 + 100]
    );
    let mut tf = TaskFile::new();
    tf.dma_buffer(dma_dir::TO_CARD, 8, 0, 0, 1);
    assert_eq!(
        ring(&mut c, &mut port, &mut irq, &tf).error,
        TfError::DmaFault
    );
    // The same raw DMA on the command queue still runs.
    let mut tf = TaskFile::new();
    tf.push_raw(dma(dma_dir::TO_CARD, 0, 0, 16));
    assert_eq!(run(&mut c, &mut port, &tf, &[sg(0, 16)]).error, TfError::Ok);
}
