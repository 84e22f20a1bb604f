use proptest::prelude::*;
use xxcapture_abi::{format, irq, regs, Command, TaskFile, TaskFileResult, TfError};
use zerocopy::IntoBytes;

use crate::{Card, CardConfig};

fn card() -> Card {
    Card::new(CardConfig::default()).expect("default config is valid")
}

fn run(card: &mut Card, tf: &TaskFile) -> TaskFileResult {
    let mut bytes = tf.to_bytes();
    card.execute(&mut bytes, &mut card.interrupt_controller(), 1_000);
    TaskFileResult::parse(&bytes).expect("result parses")
}

fn raw(op: u16, reg: u16, value: u64, mask: u64) -> Command {
    Command::raw(op, reg, value, mask, 0)
}

#[test]
fn get_and_set_registers() {
    let mut c = card();
    let mut tf = TaskFile::new();
    let id = tf.get_register(regs::ID);
    tf.set_register(regs::SCRATCH, 0xdead_beef);
    let scratch = tf.get_register(regs::SCRATCH);
    tf.set_address(regs::SCRATCH64, 0x0123_4567_89ab_cdef);
    let scratch64 = tf.get_address(regs::SCRATCH64);
    let pages = tf.get_register(regs::CARD_RAM_PAGES);
    let res = run(&mut c, &tf);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.index, 6);
    assert_eq!(res.value(id), Some(u64::from(xxcapture_abi::MAGIC)));
    assert_eq!(res.value(scratch), Some(0xdead_beef));
    assert_eq!(res.value(scratch64), Some(0x0123_4567_89ab_cdef));
    assert_eq!(res.value(pages), Some((64 << 20) / 4096));
}

#[test]
fn set_to_register_changes_only_masked_bits() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 0xff00_ff00);
    tf.set_to_register(regs::SCRATCH, 0xffff_ffff, 0x0000_00f0);
    tf.set_to_register(regs::SCRATCH, 0, 0xf000_0000);
    let out = tf.get_register(regs::SCRATCH);
    let res = run(&mut c, &tf);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.value(out), Some(0x0f00_fff0));
}

#[test]
fn clear_register_and_value_rules() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 5);
    tf.clear_register(regs::SCRATCH);
    let out = tf.get_register(regs::SCRATCH);
    assert_eq!(run(&mut c, &tf).value(out), Some(0));
    // Clearing the frame width would leave an invalid width.
    let mut tf = TaskFile::new();
    tf.clear_register(regs::FRAME_WIDTH);
    let res = run(&mut c, &tf);
    assert_eq!((res.error, res.index), (TfError::BadValue, 0));
}

#[test]
fn dma_reset_strobe_self_clears() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::CONTROL, u32::MAX, xxcapture_abi::control::DMA_RESET);
    let ctl = tf.get_register(regs::CONTROL);
    let res = run(&mut c, &tf);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(
        res.value(ctl),
        Some(u64::from(xxcapture_abi::control::ENABLE))
    );
}

#[test]
fn capture_is_not_supported_yet() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::CONTROL, u32::MAX, xxcapture_abi::control::CAPTURE);
    let res = run(&mut c, &tf);
    assert_eq!((res.error, res.index), (TfError::NotSupported, 0));
}

#[test]
fn interrupt_raise_and_ack() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_RAISE, irq::TEST);
    let pending = tf.get_register(regs::INT_STATUS);
    tf.set_register(regs::INT_ACK, irq::TEST);
    let after = tf.get_register(regs::INT_STATUS);
    let raise_reads = tf.get_register(regs::INT_RAISE);
    let res = run(&mut c, &tf);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.value(pending), Some(u64::from(irq::TEST)));
    assert_eq!(res.value(after), Some(0));
    assert_eq!(res.value(raise_reads), Some(0));
    // Only TEST can be raised by software.
    let mut tf = TaskFile::new();
    tf.set_register(regs::INT_RAISE, irq::FRAME_DONE);
    assert_eq!(run(&mut c, &tf).error, TfError::ReadOnly);
}

#[test]
fn each_invalid_command_gets_its_code_and_index() {
    let cases: Vec<(Command, TfError)> = vec![
        (raw(9, regs::SCRATCH, 0, 0), TfError::BadOp),
        (raw(0xffff, regs::SCRATCH, 0, 0), TfError::BadOp),
        (raw(1, 0x002, 0, 0), TfError::BadRegister),
        (raw(1, 0xfff0, 0, 0), TfError::BadRegister),
        (raw(0, regs::SCRATCH, 0, 0), TfError::BadRegister), // GetAddress on 32-bit
        (raw(1, regs::SCRATCH64, 0, 0), TfError::BadRegister), // GetRegister on 64-bit
        (raw(3, regs::ID, 1, 0), TfError::ReadOnly),
        (raw(3, regs::FRAME_COUNTER, 0, 0), TfError::ReadOnly),
        (raw(3, regs::DMA_DIRECTION, 2, 0), TfError::ReadOnly),
        (raw(5, regs::CONTROL, 0, 1 << 8), TfError::ReadOnly),
        (raw(4, regs::STATUS, 0, 0), TfError::ReadOnly),
        (raw(3, regs::SCRATCH, 1 << 32, 0), TfError::BadValue),
        (
            raw(3, regs::FRAME_FORMAT, u64::from(format::RGB24) + 1, 0),
            TfError::BadValue,
        ),
        (raw(3, regs::FRAME_WIDTH, 1919, 0), TfError::BadValue),
        (raw(2, regs::DMA_CARD_ADDR, 64 << 20, 0), TfError::BadValue),
        (raw(3, regs::SCRATCH, 1, 1), TfError::Reserved),
        (raw(4, regs::SCRATCH, 1, 0), TfError::Reserved),
        (raw(6, 0, 0, 0), TfError::NotSupported),
        (raw(7, 1, 0, 0), TfError::NotSupported),
        (raw(8, 1, 0, 0), TfError::NotSupported),
    ];
    for (bad, expected) in cases {
        for position in [0usize, 3, 63] {
            let mut c = card();
            let mut tf = TaskFile::new();
            for _ in 0..position {
                tf.set_register(regs::SCRATCH, 0x1234);
            }
            tf.push_raw(bad);
            tf.get_register(regs::ID);
            let before = c.registers().clone();
            let res = run(&mut c, &tf);
            assert_eq!(
                (res.error, res.index as usize),
                (expected, position),
                "{bad:?}"
            );
            assert_eq!(
                c.registers().peek(regs::SCRATCH),
                before.peek(regs::SCRATCH)
            );
            // The card keeps working afterwards.
            let mut ok = TaskFile::new();
            ok.get_register(regs::ID);
            assert_eq!(run(&mut c, &ok).error, TfError::Ok);
        }
    }
}

#[test]
fn nonzero_command_flags_are_reserved() {
    let mut c = card();
    let mut cmd = raw(1, regs::ID, 0, 0);
    cmd.flags = 1.into();
    let mut tf = TaskFile::new();
    tf.push_raw(cmd);
    assert_eq!(run(&mut c, &tf).error, TfError::Reserved);
}

#[test]
fn header_errors() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    tf.get_register(regs::ID);
    let good = tf.to_bytes();

    let mut short_count = good.clone();
    short_count[4] = 1;
    c.execute(&mut short_count, &mut c.interrupt_controller(), 0);
    let res = TaskFileResult::parse(&short_count).expect("parse");
    assert_eq!((res.error, res.index), (TfError::BadCount, 0));

    let mut zero = good[..16].to_vec();
    zero[4] = 0;
    c.execute(&mut zero, &mut c.interrupt_controller(), 0);
    assert_eq!(
        TaskFileResult::parse(&zero).expect("parse").error,
        TfError::BadCount
    );

    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    c.execute(&mut huge, &mut c.interrupt_controller(), 0);
    assert_eq!(
        TaskFileResult::parse(&huge).expect("parse").error,
        TfError::BadCount
    );

    let mut flags = good.clone();
    flags[8] = 1;
    c.execute(&mut flags, &mut c.interrupt_controller(), 0);
    assert_eq!(
        TaskFileResult::parse(&flags).expect("parse").error,
        TfError::Reserved
    );

    let mut tiny = vec![1u8, 2, 3];
    let outcome = c.execute(&mut tiny, &mut c.interrupt_controller(), 0);
    assert_eq!(outcome.error, TfError::BadCount);
    assert_eq!(tiny, vec![1, 2, 3]);
}

#[test]
fn counters_count_requests_and_commands() {
    let mut c = card();
    let mut tf = TaskFile::new();
    for _ in 0..63 {
        tf.set_register(regs::SCRATCH, 1);
    }
    let requests = tf.get_register(regs::REQUEST_COUNT);
    let res = run(&mut c, &tf);
    assert_eq!(res.value(requests), Some(1));
    assert_eq!(c.request_count(), 1);
    assert_eq!(c.command_count(), 64);
    let mut tf = TaskFile::new();
    let commands = tf.get_register(regs::COMMAND_COUNT);
    let requests = tf.get_register(regs::REQUEST_COUNT);
    let res = run(&mut c, &tf);
    assert_eq!(res.value(commands), Some(64));
    assert_eq!(res.value(requests), Some(2));
}

#[test]
fn device_time_advances_from_reset() {
    let mut c = card();
    c.reset(5_000);
    let mut tf = TaskFile::new();
    let t = tf.get_address(regs::DEVICE_TIME_NS);
    let mut bytes = tf.to_bytes();
    c.execute(&mut bytes, &mut c.interrupt_controller(), 12_000);
    let res = TaskFileResult::parse(&bytes).expect("parse");
    assert_eq!(res.value(t), Some(7_000));
}

fn any_command() -> impl Strategy<Value = Command> {
    let reg = prop_oneof![
        prop::sample::select(regs::REGISTERS.iter().map(|r| r.offset).collect::<Vec<_>>()),
        any::<u16>(),
    ];
    let small = prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from), any::<u64>()];
    (
        0u16..10,
        reg,
        prop_oneof![Just(0u32), any::<u32>()],
        small.clone(),
        small,
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(|(op, reg, flags, value, mask, length)| Command {
            op: op.into(),
            reg: reg.into(),
            flags: flags.into(),
            value: value.into(),
            mask: mask.into(),
            length: length.into(),
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut c = card();
        let mut buf = bytes.clone();
        let outcome = c.execute(&mut buf, &mut c.interrupt_controller(), 0);
        prop_assert_eq!(buf.len(), bytes.len());
        if outcome.error != TfError::Ok {
            prop_assert_eq!(outcome.executed, 0);
        }
    }

    #[test]
    fn arbitrary_commands_are_all_or_nothing(cmds in prop::collection::vec(any_command(), 1..40)) {
        let mut c = card();
        let before = c.registers().clone();
        let mut tf = TaskFile::new();
        for cmd in &cmds {
            tf.push_raw(*cmd);
        }
        let res = run(&mut c, &tf);
        if res.error == TfError::Ok {
            prop_assert_eq!(res.index as usize, cmds.len());
        } else {
            prop_assert!((res.index as usize) < cmds.len());
            // Apart from the request counter and clock, nothing changed.
            let mut after = c.registers().clone();
            after.store(regs::REQUEST_COUNT, 0);
            after.store(regs::DEVICE_TIME_NS, 0);
            let mut expected = before.clone();
            expected.store(regs::REQUEST_COUNT, 0);
            expected.store(regs::DEVICE_TIME_NS, 0);
            prop_assert_eq!(after, expected);
        }
    }

    #[test]
    fn writes_never_touch_read_only_bits(value in any::<u32>(), mask in any::<u32>()) {
        // REQUEST_COUNT is the card's own counter: it moves on every request.
        for desc in regs::REGISTERS
            .iter()
            .filter(|r| r.width == xxcapture_abi::Width::W32 && r.offset != regs::REQUEST_COUNT)
        {
            let mut c = card();
            let before = c.registers().peek(desc.offset);
            let mut tf = TaskFile::new();
            tf.set_to_register(desc.offset, value, mask);
            let res = run(&mut c, &tf);
            let after = c.registers().peek(desc.offset);
            let changed = before ^ after;
            if desc.access == xxcapture_abi::Access::ReadWrite {
                prop_assert_eq!(changed & !desc.writable, 0, "{}", desc.name);
            }
            if res.error != TfError::Ok {
                prop_assert_eq!(changed, 0);
            }
        }
    }

    #[test]
    fn scratch_round_trips(value in any::<u32>(), wide in any::<u64>()) {
        let mut c = card();
        let mut tf = TaskFile::new();
        tf.set_register(regs::SCRATCH, value);
        tf.set_address(regs::SCRATCH64, wide);
        let a = tf.get_register(regs::SCRATCH);
        let b = tf.get_address(regs::SCRATCH64);
        let res = run(&mut c, &tf);
        prop_assert_eq!(res.value(a), Some(u64::from(value)));
        prop_assert_eq!(res.value(b), Some(wide));
    }
}

#[test]
fn echo_of_unchanged_fields() {
    let mut c = card();
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::SCRATCH, 0xabcd, 0xff);
    let bytes_in = tf.to_bytes();
    let mut bytes = bytes_in.clone();
    c.execute(&mut bytes, &mut c.interrupt_controller(), 0);
    assert_eq!(&bytes[16..], &bytes_in[16..]);
    assert_eq!(tf.commands()[0].as_bytes(), &bytes[16..48]);
}
