//! `xxcap-test selftest`: the card and driver contract, checked end to end from
//! guest user space. One line per check; a summary line the harness parses.

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use nix::errno::Errno;
use xxcapture::abi::{caps, control, format, regs, Command as Cmd, TaskFile, TfError};

use crate::selftest_dma;
use xxcapture::{Access, Card, Error, FrameFormat, PixelFormat};
use xxcapture_results::{Record, SelftestSummary};

nix::ioctl_none!(unknown_ioctl, b'x', 0x7f);

type Check = Result<String, String>;

struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn record(&mut self, name: &str, outcome: Check) {
        match outcome {
            Ok(detail) => {
                self.passed += 1;
                println!("selftest: ok   {name}: {detail}");
            }
            Err(why) => {
                self.failed += 1;
                println!("selftest: FAIL {name}: {why}");
            }
        }
    }
}

fn err(e: Error) -> String {
    e.to_string()
}

fn expect_errno(result: xxcapture::Result<()>, want: Errno, what: &str) -> Result<(), String> {
    match result {
        Ok(()) => Err(format!("{what}: succeeded, expected {want}")),
        Err(e) if e.errno() == Some(want) => Ok(()),
        Err(e) => Err(format!("{what}: got `{e}`, expected {want}")),
    }
}

pub fn run(device: &str) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    report.record("exclusive-open", exclusive_open(device, &card));
    report.record("identity", identity(&card));
    report.record("nop-ioctl", card.nop().map(|()| "ok".into()).map_err(err));
    report.record("scratch", scratch(&card));
    report.record("set-to-register", set_to_register(&card));
    report.record("frame-format", frame_format(&card));
    report.record("batch-64-is-one-request", batch_is_one_request(&card));
    report.record("batch-4096", max_batch(&card));
    let capabilities = card.info().capabilities;
    for (name, build, mut code, index) in invalid_cases() {
        // A card with DMA validates the transfer instead (zero length);
        // a card that captures accepts the CAPTURE bit (checked below).
        if name == "dma-not-supported" && capabilities & caps::DMA != 0 {
            code = TfError::DmaRange;
        }
        if name == "device-checked-capture" && capabilities & caps::CAPTURE != 0 {
            continue;
        }
        let outcome = invalid_task_file(&card, build, code, index);
        report.record(&format!("invalid-{name}"), outcome);
    }
    if capabilities & caps::CAPTURE != 0 {
        report.record("busy-while-capturing", busy_while_capturing(&card));
    }
    report.record("transactional", transactional(&card));
    report.record("ioctl-contract", ioctl_contract(&card));
    if card.info().capabilities & (caps::DMA | caps::CARD_RAM_SHM) == caps::DMA | caps::CARD_RAM_SHM
    {
        report.record("dma-roundtrip", selftest_dma::roundtrip(&card));
        report.record("dma-bad-transfers", selftest_dma::bad_transfers(&card));
        report.record("dma-nonblocking", selftest_dma::nonblocking(&card));
        report.record("mmap-observer", selftest_dma::observer_mappings(device));
        report.record("dma-pins-released", selftest_dma::pins_released(&card));
        report.record("exec-hybrid", selftest_dma::exec_hybrid(&card));
    } else {
        println!("selftest: skip DMA and card-RAM checks: the card does not offer them");
    }
    report.record("still-working", scratch(&card));
    println!(
        "selftest: {} passed, {} failed",
        report.passed, report.failed
    );
    Record::Selftest(SelftestSummary {
        passed: report.passed,
        failed: report.failed,
    })
    .print();
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn exclusive_open(device: &str, _held: &Card) -> Check {
    match Card::open(device, Access::Control) {
        Ok(_) => return Err("a second controlling open succeeded".into()),
        Err(e) if e.errno() == Some(Errno::EBUSY) => {}
        Err(e) => return Err(format!("second controlling open: {e}, expected EBUSY")),
    }
    let observer = Card::open(device, Access::Observe).map_err(err)?;
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    let mut bytes = tf.to_bytes();
    expect_errno(
        observer.execute_raw(&mut bytes),
        Errno::EBADF,
        "observer EXEC",
    )?;
    Ok("second controlling open EBUSY, observer open ok, observer EXEC EBADF".into())
}

fn identity(card: &Card) -> Check {
    let info = card.info();
    let (magic, version, caps, ram) = card.identity_from_registers().map_err(err)?;
    if magic != xxcapture::abi::MAGIC
        || version != info.abi_version
        || caps != info.capabilities
        || ram != info.card_ram_size
    {
        return Err(format!(
            "config space (abi {:#x} caps {:#x} ram {}) != registers (magic {magic:#x} abi {version:#x} caps {caps:#x} ram {ram})",
            info.abi_version, info.capabilities, info.card_ram_size
        ));
    }
    Ok(format!(
        "config space and task file agree ({} MiB RAM)",
        ram >> 20
    ))
}

fn scratch(card: &Card) -> Check {
    for value in [0u32, 0xffff_ffff, 0xa5a5_5a5a, 0x1234_5678] {
        card.write_register(regs::SCRATCH, value).map_err(err)?;
        let back = card.read_register(regs::SCRATCH).map_err(err)?;
        if back != value {
            return Err(format!("SCRATCH wrote {value:#x}, read {back:#x}"));
        }
    }
    let wide = regs::find(regs::SCRATCH64).ok_or("no SCRATCH64")?;
    card.write(wide, 0xfedc_ba98_7654_3210).map_err(err)?;
    let back = card.read(wide).map_err(err)?;
    if back != 0xfedc_ba98_7654_3210 {
        return Err(format!("SCRATCH64 read {back:#x}"));
    }
    Ok("32- and 64-bit round trips".into())
}

fn set_to_register(card: &Card) -> Check {
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 0xff00_ff00);
    tf.set_to_register(regs::SCRATCH, 0xffff_ffff, 0x0000_00f0);
    tf.set_to_register(regs::SCRATCH, 0, 0xf000_0000);
    let out = tf.get_register(regs::SCRATCH);
    let res = card.run(&tf).map_err(err)?;
    match res.value(out) {
        Some(0x0f00_fff0) => Ok("masked bits only".into()),
        other => Err(format!("SCRATCH = {other:x?}, expected 0x0f00fff0")),
    }
}

fn frame_format(card: &Card) -> Check {
    let want = FrameFormat {
        pixel_format: PixelFormat::Nv12,
        width: 1920,
        height: 1080,
        fps: 60,
    };
    card.set_frame_format(want).map_err(err)?;
    let got = card.frame_format().map_err(err)?;
    if got != want {
        return Err(format!("set {want:?}, read {got:?}"));
    }
    // A bad size leaves the whole format untouched.
    let bad = FrameFormat {
        pixel_format: PixelFormat::Yuyv,
        width: 1921,
        ..want
    };
    match card.set_frame_format(bad) {
        Err(Error::Command {
            index: 1,
            code: TfError::BadValue,
        }) => {}
        other => return Err(format!("odd width: {other:?}")),
    }
    if card.frame_format().map_err(err)? != want {
        return Err("a refused format changed the card".into());
    }
    Ok("set, read back, bad width refused atomically".into())
}

fn sysfs_counter(card: &Card, name: &str) -> Result<u64, String> {
    let text = card.sysfs_attribute(name).map_err(err)?;
    text.parse()
        .map_err(|_| format!("sysfs {name} = {text:?} is not a number"))
}

fn batch_is_one_request(card: &Card) -> Check {
    let before_device = card.read_register(regs::REQUEST_COUNT).map_err(err)?;
    let before_driver = sysfs_counter(card, "requests")?;
    let before_commands = sysfs_counter(card, "commands")?;
    let mut tf = TaskFile::new();
    for i in 0..63 {
        tf.set_register(regs::SCRATCH, i);
    }
    let at = tf.get_register(regs::REQUEST_COUNT);
    let res = card.run(&tf).map_err(err)?;
    let device = res.value(at).ok_or("no REQUEST_COUNT output")?;
    let driver = sysfs_counter(card, "requests")? - before_driver;
    let commands = sysfs_counter(card, "commands")? - before_commands;
    let device_delta = device.wrapping_sub(u64::from(before_device));
    if device_delta != 1 || driver != 1 || commands != 64 {
        return Err(format!(
            "64 commands cost {device_delta} device request(s), {driver} driver request(s), {commands} commands"
        ));
    }
    Ok("64 commands = 1 request (device REQUEST_COUNT and driver sysfs both +1)".into())
}

fn max_batch(card: &Card) -> Check {
    let mut tf = TaskFile::new();
    for i in 0..4095u32 {
        tf.set_register(regs::SCRATCH, i.wrapping_mul(2_654_435_761));
    }
    let at = tf.get_register(regs::SCRATCH);
    let res = card.run(&tf).map_err(err)?;
    let want = u64::from(4094u32.wrapping_mul(2_654_435_761));
    if res.value(at) != Some(want) {
        return Err(format!(
            "last SCRATCH {:x?}, expected {want:#x}",
            res.value(at)
        ));
    }
    let mut too_many = TaskFile::new();
    for _ in 0..4097 {
        too_many.get_register(regs::ID);
    }
    match card.execute(&too_many) {
        Err(Error::TooManyCommands(4097)) => {}
        other => return Err(format!("4097 commands: {other:?}")),
    }
    Ok("4096 commands in one task file".into())
}

fn raw(op: u16, reg: u16, value: u64, mask: u64) -> Cmd {
    Cmd::raw(op, reg, value, mask, 0)
}

type Builder = fn(&mut TaskFile);

/// Each case: a valid prefix of `index` commands, then the bad one, then a
/// valid command; expected code and failing index. The last two are caught
/// only by the card (they depend on its register state), the rest by the
/// driver first.
fn invalid_cases() -> Vec<(&'static str, Builder, TfError, u32)> {
    vec![
        (
            "unknown-op",
            |tf| {
                tf.push_raw(raw(99, regs::SCRATCH, 0, 0));
            },
            TfError::BadOp,
            0,
        ),
        (
            "unknown-register",
            |tf| {
                tf.get_register(regs::ID);
                tf.push_raw(raw(1, 0x002, 0, 0));
            },
            TfError::BadRegister,
            1,
        ),
        (
            "wrong-width",
            |tf| {
                tf.get_register(regs::ID);
                tf.get_register(regs::ID);
                tf.push_raw(raw(1, regs::SCRATCH64, 0, 0));
            },
            TfError::BadRegister,
            2,
        ),
        (
            "read-only-register",
            |tf| {
                tf.set_register(regs::SCRATCH, 1);
                tf.set_register(regs::ID, 0);
            },
            TfError::ReadOnly,
            1,
        ),
        (
            "read-only-bits",
            |tf| {
                tf.set_to_register(regs::CONTROL, 0xffff_ffff, 0x100);
            },
            TfError::ReadOnly,
            0,
        ),
        (
            "bad-value",
            |tf| {
                tf.set_register(regs::FRAME_FORMAT, format::YUYV);
                tf.set_register(regs::FRAME_FORMAT, 77);
            },
            TfError::BadValue,
            1,
        ),
        (
            "reserved-field",
            |tf| {
                let mut cmd = raw(1, regs::ID, 0, 0);
                cmd.flags = 4.into();
                tf.push_raw(cmd);
            },
            TfError::Reserved,
            0,
        ),
        (
            "dma-not-supported",
            |tf| {
                tf.get_register(regs::ID);
                tf.push_raw(raw(6, 1, 0, 0));
            },
            TfError::NotSupported,
            1,
        ),
        (
            "device-checked-value",
            |tf| {
                tf.set_register(regs::SCRATCH, 0x5555);
                tf.clear_register(regs::FRAME_WIDTH);
            },
            TfError::BadValue,
            1,
        ),
        (
            "device-checked-capture",
            |tf| {
                tf.set_register(regs::SCRATCH, 0x5555);
                tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
            },
            TfError::NotSupported,
            1,
        ),
    ]
}

fn invalid_task_file(card: &Card, build: Builder, code: TfError, index: u32) -> Check {
    card.write_register(regs::SCRATCH, 0xc0de).map_err(err)?;
    let mut tf = TaskFile::new();
    build(&mut tf);
    tf.get_register(regs::ID);
    let res = card.execute(&tf).map_err(err)?;
    if (res.error, res.index) != (code, index) {
        return Err(format!(
            "got {:?} at {}, expected {code:?} at {index}",
            res.error, res.index
        ));
    }
    let scratch = card.read_register(regs::SCRATCH).map_err(err)?;
    if scratch != 0xc0de {
        return Err(format!("failed task file changed SCRATCH to {scratch:#x}"));
    }
    Ok(format!("{code:?} at index {index}, nothing applied"))
}

fn busy_while_capturing(card: &Card) -> Check {
    let mut start = TaskFile::new();
    start.set_register(regs::FRAME_RATE, 30);
    start.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
    card.run(&start).map_err(err)?;
    let mut change = TaskFile::new();
    change.get_register(regs::FRAME_COUNTER);
    change.set_register(regs::FRAME_WIDTH, 1280);
    let res = card.execute(&change).map_err(err);
    card.stop_capture().map_err(err)?;
    let res = res?;
    if (res.error, res.index) != (TfError::Busy, 1) {
        return Err(format!(
            "format change while capturing: {:?} at {}",
            res.error, res.index
        ));
    }
    Ok("format change while capturing refused with BUSY".into())
}

fn transactional(card: &Card) -> Check {
    // Bad header count: the buffer holds two commands, the header claims three.
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    tf.get_register(regs::ID);
    let mut bytes = tf.to_bytes();
    bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
    card.execute_raw(&mut bytes).map_err(err)?;
    let error = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let index = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if (error, index) != (TfError::BadCount as u32, 0) {
        return Err(format!("count mismatch: error {error} index {index}"));
    }
    // Zero commands.
    let mut empty = TaskFile::new().to_bytes();
    card.execute_raw(&mut empty).map_err(err)?;
    let error = u32::from_le_bytes([empty[0], empty[1], empty[2], empty[3]]);
    if error != TfError::BadCount as u32 {
        return Err(format!("empty task file: error {error}"));
    }
    Ok("count mismatch and empty task file: BAD_COUNT at 0".into())
}

fn ioctl_contract(card: &Card) -> Check {
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    let mut bytes = tf.to_bytes();
    let len = bytes.len();
    expect_errno(
        // Bit 0 is XXCAP_EXEC_POLL since ABI 2.0: an undefined bit.
        card.execute_raw_with(&mut bytes, len, 1 << 31),
        Errno::EINVAL,
        "EXEC flags",
    )?;
    expect_errno(
        card.execute_raw_with(&mut bytes, 8, 0),
        Errno::EINVAL,
        "EXEC size 8",
    )?;
    expect_errno(
        card.execute_at_address(0x10, 48),
        Errno::EFAULT,
        "EXEC at 0x10",
    )?;
    expect_errno(
        card.execute_at_address(0, 16 + 4097 * 32),
        Errno::EINVAL,
        "EXEC oversize",
    )?;
    // SAFETY: an ioctl number the driver does not define; no argument.
    let unknown = unsafe { unknown_ioctl(card.as_raw_fd()) };
    if unknown != Err(Errno::ENOTTY) {
        return Err(format!("unknown ioctl: {unknown:?}, expected ENOTTY"));
    }
    Ok("EINVAL for flags/size, EFAULT for a bad pointer, ENOTTY for unknown".into())
}
