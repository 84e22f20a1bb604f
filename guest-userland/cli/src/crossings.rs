//! `xxcap bench-crossings`: what each way of reaching the card costs, per
//! operation, measured in the guest (the seed's "Choosing a Boundary
//! Crossing Method", answered with numbers).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use memmap2::MmapOptions;
use xxcapture::abi::regs;
use xxcapture::{Access, Card, Error, TaskFile};

#[derive(clap::Args)]
pub struct CrossingsArgs {
    /// Repetitions of each single operation.
    #[arg(long, default_value_t = 2000)]
    iterations: u32,
}

fn report(method: &str, ops: u64, commands_per_op: u64, seconds: f64) {
    let per_op = seconds * 1e6 / ops.max(1) as f64;
    println!(
        "cross: method={method} ops={ops} per_op_us={per_op:.3} per_cmd_us={:.4}",
        per_op / commands_per_op.max(1) as f64
    );
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

/// Times `iterations` 32-bit reads of `offset` in BAR `bar` of a PCI device,
/// mapped from user space through sysfs (uncached, O_SYNC).
fn bar_reads(dev: &Path, bar: u32, offset: usize, iterations: u32) -> Option<f64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_SYNC)
        .open(dev.join(format!("resource{bar}")))
        .ok()?;
    // SAFETY: a device BAR mapped through its sysfs resource file; only
    // read with volatile loads below, within the mapped length.
    let map = unsafe { MmapOptions::new().len(offset + 4096).map(&file) }.ok()?;
    let ptr = map.as_ptr().wrapping_add(offset) as *const u32;
    let started = Instant::now();
    for _ in 0..iterations {
        // SAFETY: `ptr` is inside the mapping and 4-byte aligned (offset is
        // a multiple of 4 and the mapping is page-aligned).
        std::hint::black_box(unsafe { std::ptr::read_volatile(ptr) });
    }
    Some(started.elapsed().as_secs_f64())
}

pub fn run(device: &str, args: CrossingsArgs) -> Result<ExitCode, Error> {
    let n = args.iterations;
    let card = Card::open(device, Access::Control)?;

    let started = Instant::now();
    for _ in 0..n {
        card.nop()?;
    }
    report("ioctl-nop", n.into(), 1, started.elapsed().as_secs_f64());

    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(card.sysfs_attribute("requests")?);
    }
    report("sysfs-read", n.into(), 1, started.elapsed().as_secs_f64());

    if let Ok(status) = card.map_status() {
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(status.snapshot()?);
        }
        report("status-mmap", n.into(), 1, started.elapsed().as_secs_f64());
    }

    for commands in [1u32, 16, 256, 4096] {
        let mut tf = TaskFile::new();
        for i in 0..commands {
            tf.set_register(regs::SCRATCH, i);
        }
        let reps = (n / commands.max(1)).clamp(20, n);
        let started = Instant::now();
        for _ in 0..reps {
            card.run(&tf)?;
        }
        report(
            &format!("task-file-{commands}"),
            reps.into(),
            commands.into(),
            started.elapsed().as_secs_f64(),
        );
    }

    // One register through device config space: QEMU's virtio-pci modern
    // capabilities BAR (16 KiB) holds it at 0x2000; each read is one
    // GET_CONFIG round trip to xxcapd.
    match find_pci(0x1af4, 0x1040 + xxcapture::abi::VIRTIO_ID).and_then(|dev| {
        let bar = caps_bar(&dev)?;
        bar_reads(&dev, bar, 0x2000, n / 4)
    }) {
        Some(secs) => report("config-space-register", (n / 4).into(), 1, secs),
        None => println!("cross: method=config-space-register unavailable"),
    }
    // QEMU's in-process edu device, for comparison, if present.
    match find_pci(0x1234, 0x11e8).and_then(|dev| bar_reads(&dev, 0, 0, n)) {
        Some(secs) => report("edu-register", n.into(), 1, secs),
        None => println!("cross: method=edu-register unavailable (no -device edu)"),
    }
    Ok(ExitCode::SUCCESS)
}
