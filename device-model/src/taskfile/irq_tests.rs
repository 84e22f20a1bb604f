//! Interrupts through task files: INT_STATUS latching, INT_ACK, INT_RAISE
//! records, the coalescing registers, EVENT_COUNT / EVENTS_LOST, and the
//! DMA latches.

use xxcapture_abi::event::DEVICE_BACKLOG;
use xxcapture_abi::{control, irq, regs, Command, Op, SgEntry, TaskFile, TaskFileResult, TfError};

use crate::dma::{DmaDirection, DmaFault, DmaPort};
use crate::{Card, CardConfig, InterruptController, CAPTURE_CARD_CAPS};

/// Moves nothing and never fails: the card's own checks decide.
struct OkPort;

impl DmaPort for OkPort {
    fn transfer(&mut self, _: DmaDirection, _: u64, _: &[SgEntry]) -> Result<(), DmaFault> {
        Ok(())
    }
}

fn card() -> (Card, InterruptController) {
    let card = Card::new(CardConfig {
        card_ram_size: 4 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    })
    .expect("card");
    let irq = card.interrupt_controller();
    (card, irq)
}

fn run(c: &mut Card, irq: &mut InterruptController, tf: &TaskFile, now: u64) -> TaskFileResult {
    let mut bytes = tf.to_bytes();
    let table = [SgEntry::new(0x1000, 0x100)];
    c.execute_dma(&mut bytes, &table, &mut OkPort, irq, now);
    TaskFileResult::parse(&bytes).expect("result")
}

#[test]
fn n_raises_in_one_task_file_are_n_records_in_order_at_its_end() {
    let (mut c, mut irq) = card();
    let mut tf = TaskFile::new();
    let mask = tf.get_register(regs::INT_MASK);
    tf.set_register(regs::INT_MASK, irq::TEST);
    tf.set_register(regs::INT_COALESCE_COUNT, 100);
    for _ in 0..5 {
        tf.set_register(regs::INT_RAISE, irq::TEST);
    }
    let res = run(&mut c, &mut irq, &tf, 7_000);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.value(mask), Some(0), "INT_MASK resets to 0");
    // Delivered at the end of the task file despite COUNT = 100.
    let got = irq.take_due(7_000, 64);
    let seqs: Vec<u64> = got.iter().map(|e| e.sequence.get()).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert!(got.iter().all(|e| e.cause.get() == irq::TEST));
    // DEVICE_TIME_NS of the request (the card's epoch is 0).
    assert!(got.iter().all(|e| e.device_time_ns.get() == 7_000));
    assert_eq!(irq.status(), irq::TEST);
    // The counters are registers.
    let mut tf = TaskFile::new();
    let count = tf.get_register(regs::EVENT_COUNT);
    let lost = tf.get_register(regs::EVENTS_LOST);
    let status = tf.get_register(regs::INT_STATUS);
    let res = run(&mut c, &mut irq, &tf, 8_000);
    assert_eq!(res.value(count), Some(5));
    assert_eq!(res.value(lost), Some(0));
    assert_eq!(res.value(status), Some(u64::from(irq::TEST)));
}

#[test]
fn raises_follow_the_mask_at_the_time_of_the_write() {
    let (mut c, mut irq) = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_RAISE, irq::TEST); // masked: latch only
    tf.set_register(regs::INT_MASK, irq::TEST);
    tf.set_register(regs::INT_RAISE, irq::TEST); // a record
    tf.set_register(regs::INT_MASK, 0);
    tf.set_register(regs::INT_RAISE, 0); // no raise at all
    assert_eq!(run(&mut c, &mut irq, &tf, 1).error, TfError::Ok);
    assert_eq!(irq.generated(), 1);
    assert_eq!(irq.take_due(1, 64).len(), 1);
    assert_eq!(irq.config().mask, 0);
}

#[test]
fn a_failing_task_file_raises_nothing_and_acks_nothing() {
    let (mut c, mut irq) = card();
    irq.latch(irq::FRAME_DONE);
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::ALL);
    tf.set_register(regs::INT_RAISE, irq::TEST);
    tf.set_register(regs::INT_ACK, irq::FRAME_DONE);
    tf.set_register(regs::FRAME_WIDTH, 1); // BAD_VALUE
    let res = run(&mut c, &mut irq, &tf, 1);
    assert_eq!((res.error, res.index), (TfError::BadValue, 3));
    assert_eq!(irq.generated(), 0);
    assert_eq!(irq.status(), irq::FRAME_DONE);
    assert_eq!(irq.config().mask, 0);
}

#[test]
fn ack_clears_only_the_written_bits_and_latches_survive_a_zero_mask() {
    let (mut c, mut irq) = card();
    irq.raise(irq::FRAME_DONE, 3, 1);
    irq.raise(irq::OVERFLOW, 3, 1);
    assert_eq!(irq.generated(), 0, "INT_MASK 0: latch only");
    let mut tf = TaskFile::new();
    let before = tf.get_register(regs::INT_STATUS);
    tf.set_register(regs::INT_ACK, irq::FRAME_DONE | irq::TEST);
    let after = tf.get_register(regs::INT_STATUS);
    let ack_reads = tf.get_register(regs::INT_ACK);
    let res = run(&mut c, &mut irq, &tf, 2);
    assert_eq!(
        res.value(before),
        Some(u64::from(irq::FRAME_DONE | irq::OVERFLOW))
    );
    assert_eq!(res.value(after), Some(u64::from(irq::OVERFLOW)));
    assert_eq!(res.value(ack_reads), Some(0));
    assert_eq!(irq.status(), irq::OVERFLOW);
}

#[test]
fn coalescing_registers_reach_the_controller() {
    let (mut c, mut irq) = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::FRAME_DONE);
    tf.set_register(regs::INT_COALESCE_COUNT, 4);
    tf.set_register(regs::INT_COALESCE_USEC, 250);
    assert_eq!(run(&mut c, &mut irq, &tf, 1).error, TfError::Ok);
    for n in 0..3 {
        irq.raise(irq::FRAME_DONE, n, 10_000);
    }
    assert_eq!(irq.next_deadline(), Some(260_000));
    assert_eq!(irq.due(10_000), 0);
    irq.raise(irq::FRAME_DONE, 3, 10_000);
    assert_eq!(irq.due(10_000), 4);
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_COALESCE_USEC, 1_000_001);
    assert_eq!(run(&mut c, &mut irq, &tf, 1).error, TfError::BadValue);
}

#[test]
fn events_lost_counts_what_the_backlog_could_not_hold() {
    let (mut c, mut irq) = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::TEST);
    for _ in 0..(DEVICE_BACKLOG + 3) {
        tf.set_register(regs::INT_RAISE, irq::TEST);
    }
    // One task file holds at most 4096 commands: two of them.
    let cmds = tf.commands().to_vec();
    for chunk in cmds.chunks(4096) {
        let mut part = TaskFile::new();
        for cmd in chunk {
            part.push_raw(*cmd);
        }
        assert_eq!(run(&mut c, &mut irq, &part, 5).error, TfError::Ok);
    }
    let mut tf = TaskFile::new();
    let count = tf.get_register(regs::EVENT_COUNT);
    let lost = tf.get_register(regs::EVENTS_LOST);
    let res = run(&mut c, &mut irq, &tf, 6);
    assert_eq!(res.value(count), Some(DEVICE_BACKLOG as u64 + 3));
    assert_eq!(res.value(lost), Some(3));
}

fn dma_cmd(first: u64, length: u64) -> Command {
    Command::raw(Op::DmaTransferBlock as u16, 0, first, 0, length)
}

#[test]
fn dma_latches_done_or_error_even_when_the_task_file_fails() {
    let (mut c, mut irq) = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_MASK, irq::ALL);
    tf.push_raw(dma_cmd(0, 0x100));
    assert_eq!(run(&mut c, &mut irq, &tf, 1).error, TfError::Ok);
    assert_eq!(irq.status(), irq::DMA_DONE);
    assert_eq!(irq.generated(), 0, "DMA causes never make records");
    // A good DMA, then a faulting one: both latch though nothing commits.
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_ACK, irq::DMA_DONE);
    tf.push_raw(dma_cmd(0, 0x100));
    tf.push_raw(dma_cmd(1, 0x100)); // no entry 1: DMA_FAULT
    let res = run(&mut c, &mut irq, &tf, 2);
    assert_eq!((res.error, res.index), (TfError::DmaFault, 2));
    assert_eq!(irq.status(), irq::DMA_DONE | irq::DMA_ERROR);
    // Range errors latch DMA_ERROR too.
    irq.set_status(0);
    let mut tf = TaskFile::new();
    tf.push_raw(Command::raw(
        Op::DmaTransferBlock as u16,
        0,
        0,
        (4 << 20) - 1,
        0x100,
    ));
    assert_eq!(run(&mut c, &mut irq, &tf, 3).error, TfError::DmaRange);
    assert_eq!(irq.status(), irq::DMA_ERROR);
}

#[test]
fn stream_bit_is_sampled_at_start_and_busy_while_capturing() {
    let (mut c, mut irq) = card();
    let mut tf = TaskFile::new();
    tf.set_to_register(
        regs::CONTROL,
        control::CAPTURE | control::STREAM,
        control::CAPTURE | control::STREAM,
    );
    let slots = tf.get_register(regs::RING_SLOTS);
    let res = run(&mut c, &mut irq, &tf, 1);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.value(slots), Some(0), "streaming uses no ring");
    let session = c.capture_session().expect("capturing");
    assert!(session.stream);
    assert_eq!(session.ring.frame_size, 640 * 480 * 2);
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::CONTROL, 0, control::STREAM);
    assert_eq!(run(&mut c, &mut irq, &tf, 2).error, TfError::Busy);
    // Stop and switch to the ring in one task file, then start again.
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::CONTROL, 0, control::CAPTURE | control::STREAM);
    tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
    assert_eq!(run(&mut c, &mut irq, &tf, 3).error, TfError::Ok);
    assert!(!c.capture_session().expect("capturing").stream);
    // A card without STREAMING refuses the bit.
    let mut plain = Card::new(CardConfig {
        capabilities: CAPTURE_CARD_CAPS & !xxcapture_abi::caps::STREAMING,
        ..CardConfig::default()
    })
    .expect("card");
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::CONTROL, control::STREAM, control::STREAM);
    let mut pirq = plain.interrupt_controller();
    assert_eq!(
        run(&mut plain, &mut pirq, &tf, 1).error,
        TfError::NotSupported
    );
}
