//! `xxcap-test bench-crossings` and `xxcap-test bench-config-space`: what
//! each way of reaching the card costs, per operation, measured in the
//! guest (the Double X card's design question of choosing a boundary
//! crossing method, answered with numbers).
//!
//! Every measurement is printed as a `cross: method=NAME` line for people
//! and as a [`Crossing`] result record, which the harness (`cargo xxvm
//! bench`) turns into the crossings table, its JSON and the plot. Each
//! measurement runs in short rounds (about 2 ms each, so that some fall
//! between the host's preemptions of the vCPU) and reports the fastest
//! round (`per_op_us`, `per_cmd_us`) and the median one (`median_op_us`):
//! on a shared host running TCG, other load only ever adds time, so the
//! fastest round is the estimate of the cost itself. The whole list is
//! measured in several passes (`pass`), so a burst of load does not hit
//! one method only.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapOptions};
use xxcapture::abi::{
    exec_flags, regs, TfError, CMD_SIZE, MAGIC, MMAP_OFFSET_STATUS, STATUS_BLOCK_SIZE,
    STATUS_MAGIC, TF_HEADER_SIZE,
};
use xxcapture::measure::{cpu_time, GuestCpu};
use xxcapture::{Access, Card, Error, RingOptions, TaskFile};
use xxcapture_results::{Crossing, Record, Unavailable};

use crate::selftest_dma::{set_exec_wait, EXEC_WAIT};

#[derive(clap::Args)]
pub struct CrossingsArgs {
    /// Time spent on each measurement in each pass, in milliseconds.
    #[arg(long, default_value_t = 250)]
    budget_ms: u64,
    /// Passes over the whole list of measurements.
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// Target length of one timed round, in microseconds.
    #[arg(long, default_value_t = 2000)]
    round_us: u64,
}

/// How long to measure: rounds of about `round`, for `budget` in all.
#[derive(Clone, Copy)]
struct Plan {
    round: Duration,
    budget: Duration,
}

const MIN_ROUNDS: usize = 5;
const MAX_ROUNDS: usize = 2000;

/// Task-file lengths measured: powers of two up to the card's maximum.
const BATCH_SIZES: [u32; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Task-file lengths whose completion (interrupt, polled, hybrid) is compared.
const COMPLETION_SIZES: [u32; 2] = [1, 256];

/// Fastest and median round of a measurement, in µs per operation, and
/// the guest CPU it took per operation (when measured).
struct Timing {
    ops: u64,
    median_us: f64,
    min_us: f64,
    thread_cpu_us: Option<f64>,
    guest_busy_us: Option<f64>,
    /// Wall time per operation over the same span as the CPU figures.
    mean_us: Option<f64>,
}

/// Runs `op` in rounds of `reps` operations until `plan.budget` is spent
/// (at least `MIN_ROUNDS` rounds); `reps` comes from timing one operation
/// after a warm-up one, so that a round lasts about `plan.round`.
fn measure<E>(plan: Plan, mut op: impl FnMut() -> Result<(), E>) -> Result<Timing, E> {
    op()?;
    let started = Instant::now();
    op()?;
    let one = started.elapsed().max(Duration::from_nanos(1));
    let reps = (plan.round.as_nanos() / one.as_nanos()).clamp(1, 100_000) as u32;
    measure_fixed(reps, MAX_ROUNDS, Some(plan.budget), &mut op)
}

/// Rounds of exactly `reps` operations: `rounds` of them, or fewer once
/// `budget` is spent (after `MIN_ROUNDS`).
fn measure_fixed<E>(
    reps: u32,
    rounds: usize,
    budget: Option<Duration>,
    mut op: impl FnMut() -> Result<(), E>,
) -> Result<Timing, E> {
    let reps = reps.max(1);
    let mut per_op: Vec<f64> = Vec::new();
    let started = Instant::now();
    while per_op.len() < rounds.max(1) {
        let round = Instant::now();
        for _ in 0..reps {
            op()?;
        }
        per_op.push(round.elapsed().as_secs_f64() * 1e6 / f64::from(reps));
        if budget.is_some_and(|b| started.elapsed() >= b) && per_op.len() >= MIN_ROUNDS {
            break;
        }
    }
    per_op.sort_by(f64::total_cmp);
    Ok(Timing {
        ops: u64::from(reps) * per_op.len() as u64,
        median_us: per_op[per_op.len() / 2],
        min_us: per_op[0],
        thread_cpu_us: None,
        guest_busy_us: None,
        mean_us: None,
    })
}

/// As [`measure`], with the guest CPU per operation over all of it
/// (warm-up included): this thread's own and the whole guest's busy time.
fn measure_cpu<E>(plan: Plan, op: impl FnMut() -> Result<(), E>) -> Result<Timing, E> {
    let (thread0, guest0) = (cpu_time(), GuestCpu::now());
    let started = Instant::now();
    let mut t = measure(plan, op)?;
    let wall = started.elapsed();
    let (thread1, guest1) = (cpu_time(), GuestCpu::now());
    // The two warm-up operations of measure() ran too.
    let ops = (t.ops + 2) as f64;
    t.thread_cpu_us = thread0
        .zip(thread1)
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6 / ops);
    t.mean_us = Some(wall.as_secs_f64() * 1e6 / ops);
    t.guest_busy_us = guest0
        .zip(guest1)
        .map(|(a, b)| b.busy_since(&a) * 1e6 / ops);
    Ok(t)
}

/// Sets the driver's policy for EXEC without POLL while it lives, and puts
/// the previous one back when dropped.
struct ExecWait {
    old: String,
}

impl ExecWait {
    fn set(&self, policy: &str) -> Result<(), String> {
        set_exec_wait(policy).map(drop)
    }
}

impl Drop for ExecWait {
    fn drop(&mut self) {
        if let Err(e) = set_exec_wait(&self.old) {
            eprintln!("cross: {e}");
        }
    }
}

/// What sets a measurement apart from the others of its method.
#[derive(Clone, Copy, Default)]
struct Tags {
    pass: Option<u32>,
    validated: Option<u32>,
    value: Option<u32>,
    bar: Option<u8>,
}

/// One line for people and one result record for the harness.
fn report(method: &str, commands: u32, t: &Timing, tags: &Tags) {
    let c = Crossing {
        method: method.to_string(),
        commands,
        ops: t.ops,
        per_op_us: t.min_us,
        per_cmd_us: t.min_us / f64::from(commands.max(1)),
        median_op_us: t.median_us,
        pass: tags.pass,
        validated: tags.validated,
        value: tags.value,
        bar: tags.bar,
        thread_cpu_us: t.thread_cpu_us,
        guest_busy_us: t.guest_busy_us,
    };
    let mut extra = String::new();
    if let Some(v) = c.validated {
        extra += &format!(" validated={v}");
    }
    if let (Some(v), Some(b)) = (c.value, c.bar) {
        extra += &format!(" value={v:#010x} bar={b}");
    }
    if let (Some(cpu), Some(busy), Some(wall)) = (c.thread_cpu_us, c.guest_busy_us, t.mean_us) {
        extra += &format!(" thread_cpu_us={cpu:.2} guest_busy_us={busy:.2} mean_wall_us={wall:.2}");
    }
    if let Some(p) = c.pass {
        extra += &format!(" pass={p}");
    }
    println!(
        "cross: method={method} commands={commands} ops={} per_op_us={:.4} per_cmd_us={:.5} median_op_us={:.4}{extra}",
        c.ops, c.per_op_us, c.per_cmd_us, c.median_op_us,
    );
    Record::Crossing(c).print();
}

fn unavailable(method: &str, why: &str) {
    println!("cross: method={method} unavailable: {why}");
    Record::CrossingUnavailable(Unavailable {
        method: method.to_string(),
        reason: why.to_string(),
    })
    .print();
}

/// The sysfs directory of the first PCI device with this vendor:device.
pub(crate) fn find_pci(vendor: u32, device: u32) -> Option<PathBuf> {
    let read_hex = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
    };
    std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            read_hex(p.join("vendor")) == Some(vendor) && read_hex(p.join("device")) == Some(device)
        })
}

/// The BAR holding QEMU's virtio-pci modern capabilities: the 16 KiB one.
fn caps_bar(dev: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dev.join("resource")).ok()?;
    text.lines().enumerate().find_map(|(i, line)| {
        let mut f = line
            .split_whitespace()
            .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
        let (start, end) = (f.next()??, f.next()??);
        (end > start && end - start + 1 == 0x4000).then_some(i as u32)
    })
}

/// A device BAR mapped from user space through its sysfs resource file
/// (uncached: O_SYNC), as a user-space driver would reach it.
struct Bar {
    map: Mmap,
}

impl Bar {
    fn map(dev: &Path, bar: u32, len: usize) -> std::io::Result<Bar> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_SYNC)
            .open(dev.join(format!("resource{bar}")))?;
        // SAFETY: a device BAR mapped through its sysfs resource file; it is
        // only read, with volatile 32-bit loads inside the mapped length.
        let map = unsafe { MmapOptions::new().len(len).map(&file) }?;
        Ok(Bar { map })
    }

    /// One 32-bit read of the device (one MMIO access).
    fn read32(&self, offset: usize) -> Option<u32> {
        if !offset.is_multiple_of(4) || offset + 4 > self.map.len() {
            return None;
        }
        // SAFETY: in bounds and 4-byte aligned (checked above; the mapping
        // is page-aligned); volatile because each load is a device access.
        Some(unsafe { std::ptr::read_volatile(self.map.as_ptr().add(offset) as *const u32) })
    }
}

/// Times 32-bit reads of one BAR offset, checking every value read (and
/// making no other access, so that a tracer can count them exactly).
/// `timing` runs the measurement given the read operation.
fn bar_reads(
    bar: &Bar,
    offset: usize,
    expect: impl Fn(u32) -> bool,
    timing: impl FnOnce(&mut dyn FnMut() -> Result<(), String>) -> Result<Timing, String>,
) -> Result<Timing, String> {
    let mut bad = 0u32;
    let mut last = 0u32;
    let t = timing(&mut || {
        last = bar
            .read32(offset)
            .ok_or_else(|| format!("offset {offset:#x} outside the mapping"))?;
        bad += u32::from(!expect(last));
        Ok(())
    })?;
    if bad == 0 {
        Ok(t)
    } else {
        Err(format!(
            "{bad} of {} reads at {offset:#x} returned a wrong value (last {last:#010x})",
            t.ops
        ))
    }
}

/// A task file of `commands` SCRATCH writes, as bytes ready for EXEC.
fn scratch_writes(commands: u32) -> Vec<u8> {
    let mut tf = TaskFile::new();
    for i in 0..commands {
        tf.set_register(regs::SCRATCH, i);
    }
    tf.to_bytes()
}

/// The executed task file's outcome: its header's error and index.
fn header(bytes: &[u8]) -> Result<(TfError, u32), Error> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(Error::Protocol)
    };
    let error = TfError::from_raw(word(0)?).ok_or(Error::Protocol)?;
    Ok((error, word(4)?))
}

/// Executes prebuilt task-file bytes; a command error is a failure here.
fn exec_ok(card: &Card, bytes: &mut [u8], flags: u32) -> Result<(), Error> {
    card.execute_raw_with(bytes, bytes.len(), flags)?;
    match header(bytes)? {
        (TfError::Ok, _) => Ok(()),
        (code, index) => Err(Error::Command { index, code }),
    }
}

/// The cost of the driver's own work on a task file of `commands`, without
/// the card: the command at `bad` has an unknown op, so the driver copies
/// the task file in, validates commands up to `bad`, refuses it and copies
/// the header back; nothing reaches the card.
fn rejected(card: &Card, commands: u32, bad: u32, plan: Plan, pass: u32) -> Result<(), Error> {
    let mut bytes = scratch_writes(commands);
    let op_at = TF_HEADER_SIZE + bad as usize * CMD_SIZE;
    bytes[op_at..op_at + 2].copy_from_slice(&0xffffu16.to_le_bytes());
    let pristine: Vec<u8> = bytes[..TF_HEADER_SIZE].to_vec();
    let t = measure(plan, || {
        // The driver wrote the failing index into the header: restore it.
        bytes[..TF_HEADER_SIZE].copy_from_slice(&pristine);
        card.execute_raw(&mut bytes)?;
        match header(&bytes)? {
            (TfError::BadOp, index) if index == bad => Ok(()),
            (code, index) => Err(Error::Command { index, code }),
        }
    })?;
    report(
        "task-file-rejected",
        commands,
        &t,
        &Tags {
            pass: Some(pass),
            validated: Some(bad + 1),
            ..Tags::default()
        },
    );
    Ok(())
}

/// The status page mapped from the card, to time a single field read.
fn map_status_page(card: &Card) -> Result<Mmap, Error> {
    // SAFETY: read-only shared mapping of the card's status page; only its
    // first word is read, with volatile loads, within the mapped length.
    unsafe {
        MmapOptions::new()
            .len(STATUS_BLOCK_SIZE)
            .offset(MMAP_OFFSET_STATUS)
            .map(card.as_raw_fd())
    }
    .map_err(|source| Error::Map {
        what: "status block",
        source,
    })
}

pub fn run(device: &str, args: CrossingsArgs) -> Result<ExitCode, Error> {
    let plan = Plan {
        round: Duration::from_micros(args.round_us.max(1)),
        budget: Duration::from_millis(args.budget_ms.max(1)),
    };
    let card = Card::open(device, Access::Control)?;
    let status = card.map_status();
    let page = map_status_page(&card);
    let edu = find_pci(0x1234, 0x11e8).map(|dev| Bar::map(&dev, 0, 4096));
    let poll = match exec_ok(&card, &mut scratch_writes(1), exec_flags::POLL) {
        Ok(()) => true,
        Err(e) if e.errno() == Some(nix::errno::Errno::EINVAL) => false,
        Err(e) => return Err(e),
    };
    // The batch curve is interrupt-driven whatever the driver's default;
    // hybrid completion is measured on its own. Restored when done.
    let exec_wait = match set_exec_wait("interrupt") {
        Ok(old) => Some(ExecWait { old }),
        Err(e) => {
            unavailable("task-file-hybrid", &e);
            None
        }
    };
    // The shared rings on the same open, with the card's SQ poller.
    let mut ring = card.setup_ring(RingOptions {
        sqpoll: true,
        sq_idle: Duration::ZERO,
    });
    let ring_files: Vec<TaskFile> = COMPLETION_SIZES
        .iter()
        .map(|&n| {
            let mut tf = TaskFile::new();
            for i in 0..n {
                tf.set_register(regs::SCRATCH, i);
            }
            tf
        })
        .collect();
    let mut long = TaskFile::new();
    for i in 0..4096 {
        long.set_register(regs::SCRATCH, i);
    }
    println!(
        "cross: passes={} budget_ms={} round_us={} statistic=fastest-round",
        args.passes, args.budget_ms, args.round_us
    );
    for pass in 1..=args.passes.max(1) {
        let tag = Tags {
            pass: Some(pass),
            ..Tags::default()
        };
        let t = measure(plan, || card.nop())?;
        report("ioctl-nop", 1, &t, &tag);

        let t = measure(plan, || card.sysfs_attribute("requests").map(drop))?;
        report("sysfs-read", 1, &t, &tag);

        match &status {
            Ok(view) => {
                let t = measure(plan, || view.snapshot().map(drop))?;
                report("status-snapshot-mmap", 1, &t, &tag);
            }
            Err(e) => unavailable("status-snapshot-mmap", &e.to_string()),
        }
        match &page {
            Ok(page) => {
                let mut bad = 0u32;
                let t = measure(plan, || {
                    // SAFETY: offset 0 of a page-sized, page-aligned mapping.
                    let magic = unsafe { std::ptr::read_volatile(page.as_ptr() as *const u32) };
                    bad += u32::from(magic != STATUS_MAGIC);
                    Ok::<(), Error>(())
                })?;
                if bad == 0 {
                    report("status-field-mmap", 1, &t, &tag);
                } else {
                    unavailable("status-field-mmap", "status page magic wrong");
                }
            }
            Err(e) => unavailable("status-field-mmap", &e.to_string()),
        }

        // The batch curve: prebuilt task files, one EXEC each (the crossing
        // itself; building the task file is the caller's, measured below).
        for commands in BATCH_SIZES {
            let mut bytes = scratch_writes(commands);
            let t = measure_cpu(plan, || exec_ok(&card, &mut bytes, 0))?;
            report("task-file", commands, &t, &tag);
        }

        // Completion by polling instead of the interrupt (ABI 2.0
        // EXEC_POLL), and the driver's hybrid (spin, then sleep).
        for commands in COMPLETION_SIZES {
            let mut bytes = scratch_writes(commands);
            if poll {
                let t = measure_cpu(plan, || exec_ok(&card, &mut bytes, exec_flags::POLL))?;
                report("task-file-poll", commands, &t, &tag);
            } else {
                unavailable("task-file-poll", "driver lacks EXEC_POLL");
            }
            if let Some(w) = &exec_wait {
                let hybrid = w
                    .set("hybrid")
                    .map(|()| measure_cpu(plan, || exec_ok(&card, &mut bytes, 0)));
                w.set("interrupt").map_err(|e| Error::Sysfs {
                    path: PathBuf::from(EXEC_WAIT),
                    source: std::io::Error::other(e),
                })?;
                match hybrid {
                    Ok(t) => report("task-file-hybrid", commands, &t?, &tag),
                    Err(e) => unavailable("task-file-hybrid", &e),
                }
            }
        }

        // The same task files by the rings: no system call while the
        // card's poller and this thread spin.
        for (commands, tf) in COMPLETION_SIZES.iter().zip(&ring_files) {
            match ring.as_mut() {
                Ok(ring) => {
                    let t = measure_cpu(plan, || {
                        let r = ring.run(tf, Duration::from_millis(5))?;
                        match r.error {
                            TfError::Ok => Ok(()),
                            code => Err(Error::Command {
                                index: r.index,
                                code,
                            }),
                        }
                    })?;
                    report("task-file-ring", *commands, &t, &tag);
                }
                Err(e) => unavailable("task-file-ring", &e.to_string()),
            }
        }

        // Where the time of a long task file goes: the driver's copy and
        // validation (refused task files never reach the card), the
        // library's build and parse, and the rest (card round trip, copy
        // back).
        rejected(&card, 1, 0, plan, pass)?;
        rejected(&card, 4096, 0, plan, pass)?;
        rejected(&card, 4096, 4095, plan, pass)?;
        let t = measure(plan, || card.run(&long).map(drop))?;
        report("task-file-library", 4096, &t, &tag);
        let t = measure(plan, || {
            std::hint::black_box(long.to_bytes());
            Ok::<(), Error>(())
        })?;
        report("task-file-build", 4096, &t, &tag);

        // QEMU's in-process edu device, for comparison, if present: its
        // identification register reads 0x010000ed.
        match &edu {
            Some(Ok(bar)) => {
                match bar_reads(bar, 0, |v| v & 0xff == 0xed, |op| measure(plan, op)) {
                    Ok(t) => report("edu-register", 1, &t, &tag),
                    Err(e) => unavailable("edu-register", &e),
                }
            }
            Some(Err(e)) => unavailable("edu-register", &e.to_string()),
            None => unavailable("edu-register", "no -device edu"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ConfigSpaceArgs {
    /// Exactly this many reads, in `--rounds` rounds (for counting them
    /// with the tracer); default: rounds of about 2 ms for `--budget-ms`.
    #[arg(long)]
    iterations: Option<u32>,
    /// Rounds of a fixed `--iterations` measurement.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Time spent measuring, in milliseconds.
    #[arg(long, default_value_t = 750)]
    budget_ms: u64,
    /// Leave the card unbound from virtio-pci afterwards (no rebind).
    #[arg(long)]
    keep_unbound: bool,
}

const VIRTIO_PCI: &str = "/sys/bus/pci/drivers/virtio-pci";

/// The PCI driver bound to `dev`, if any.
fn bound_driver(dev: &Path) -> Option<String> {
    std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn sysfs_write(path: &str, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Sysfs {
        path: PathBuf::from(path),
        source,
    })
}

/// One register through device config space, from user space: the card
/// is unbound from virtio-pci (which holds its BARs exclusively), its
/// virtio capabilities BAR is mapped through sysfs, and the magic word at
/// 0x2000 (device config, offset 0) is read; each read is one exit to QEMU
/// and one GET_CONFIG round trip to xxcapd. The card is bound again
/// afterwards, so /dev/xxcapture0 comes back (probed anew).
pub fn config_space(args: ConfigSpaceArgs) -> Result<ExitCode, Error> {
    let Some(dev) = find_pci(0x1af4, 0x1040 + xxcapture::abi::VIRTIO_ID) else {
        unavailable("config-space-register", "no xxcapture card on the PCI bus");
        return Ok(ExitCode::FAILURE);
    };
    let Some(bar) = caps_bar(&dev) else {
        unavailable("config-space-register", "no 16 KiB virtio capabilities BAR");
        return Ok(ExitCode::FAILURE);
    };
    let bdf = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let was_bound = bound_driver(&dev).as_deref() == Some("virtio-pci");
    if was_bound {
        // Frees the BAR (virtio-pci holds it busy, so sysfs refuses to map
        // it); removes the xxcapture device with it.
        sysfs_write(&format!("{VIRTIO_PCI}/unbind"), &bdf)?;
    }
    let plan = Plan {
        round: Duration::from_millis(2),
        budget: Duration::from_millis(args.budget_ms.max(1)),
    };
    let rounds = args.rounds.max(1);
    let result = Bar::map(&dev, bar, 0x3000)
        .map_err(|e| format!("map resource{bar}: {e}"))
        .and_then(|b| {
            bar_reads(
                &b,
                0x2000,
                |v| v == MAGIC,
                |op| match args.iterations {
                    Some(n) => measure_fixed((n / rounds).max(1), rounds as usize, None, op),
                    None => measure(plan, op),
                },
            )
        });
    let code = match &result {
        Ok(t) => {
            report(
                "config-space-register",
                1,
                t,
                &Tags {
                    value: Some(MAGIC),
                    bar: u8::try_from(bar).ok(),
                    ..Tags::default()
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            unavailable("config-space-register", e);
            ExitCode::FAILURE
        }
    };
    if was_bound && !args.keep_unbound {
        sysfs_write(&format!("{VIRTIO_PCI}/bind"), &bdf)?;
        let node = Path::new("/dev/xxcapture0");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let back = File::open(node).is_ok();
        println!(
            "config-space: card {} again",
            if back {
                "bound and /dev/xxcapture0 present"
            } else {
                "NOT back"
            }
        );
        if !back {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(code)
}
