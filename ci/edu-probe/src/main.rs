//! `edu-probe`: makes an exact, known number of MMIO reads of QEMU's `edu`
//! device from guest user space, between two crossings-plugin markers.
//!
//! It finds edu in sysfs (vendor 0x1234, device 0x11e8), maps the first page
//! of BAR0 through `/sys/bus/pci/devices/<dev>/resource0` (O_RDWR|O_SYNC, so
//! the mapping is uncached), then:
//!
//! 1. writes the start marker `0x5843_0000 | start_tag` to offset 0x04,
//! 2. makes `reads` 32-bit volatile reads of offset 0x00 (identification),
//! 3. writes the end marker `0x5843_0000 | end_tag` to offset 0x04,
//!
//! and prints what it did. Between the markers it touches edu's BAR only
//! with those reads, so the plugin must count exactly `reads` edu reads and
//! no edu write there. Offset 0x04 is edu's liveness register (it stores
//! the bitwise NOT of the value); writing it has no other effect.
//!
//! Usage: `edu-probe [--reads N] [--start-tag T] [--end-tag T] [--device BDF]`

use std::fs::{self, OpenOptions};
use std::num::NonZeroUsize;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

const EDU_VENDOR: u32 = 0x1234;
const EDU_DEVICE: u32 = 0x11e8;
const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
/// Must match `MARKER_MAGIC` in ci/crossings-plugin/src/counters.rs.
const MARKER_MAGIC: u32 = 0x5843_0000;
const MAP_LEN: usize = 4096;

struct Args {
    reads: u64,
    start_tag: u16,
    end_tag: u16,
    device: Option<String>,
}

fn parse_num(flag: &str, value: Option<String>) -> Result<u64, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|e| format!("{flag} {v}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        reads: 1000,
        start_tag: 1,
        end_tag: 2,
        device: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--reads" => args.reads = parse_num(&flag, it.next())?,
            "--start-tag" | "--end-tag" => {
                let tag = u16::try_from(parse_num(&flag, it.next())?)
                    .map_err(|_| format!("{flag}: tags are 16-bit"))?;
                if flag == "--start-tag" {
                    args.start_tag = tag;
                } else {
                    args.end_tag = tag;
                }
            }
            "--device" => args.device = Some(it.next().ok_or("--device needs a BDF")?),
            "-h" | "--help" => {
                return Err(
                    "usage: edu-probe [--reads N] [--start-tag T] [--end-tag T] [--device BDF]"
                        .into(),
                )
            }
            _ => return Err(format!("unknown argument {flag} (see --help)")),
        }
    }
    Ok(args)
}

fn read_hex(path: PathBuf) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// The sysfs folder of the first edu device (or the named one).
fn find_edu(device: Option<&str>) -> Result<PathBuf, String> {
    let root = PathBuf::from("/sys/bus/pci/devices");
    if let Some(bdf) = device {
        return Ok(root.join(bdf));
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(&root)
        .map_err(|e| format!("{}: {e} (is sysfs mounted?)", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .find(|dir| {
            read_hex(dir.join("vendor")) == Some(EDU_VENDOR)
                && read_hex(dir.join("device")) == Some(EDU_DEVICE)
        })
        .ok_or_else(|| {
            "no edu device (1234:11e8) on the PCI bus: start QEMU with -device edu".into()
        })
}

/// The first page of BAR0, mapped uncached. All volatile accesses go
/// through it; it is unmapped on drop.
struct Bar {
    base: NonNull<u32>,
}

impl Bar {
    fn map(dev: &std::path::Path) -> Result<Bar, String> {
        let path = dev.join("resource0");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_SYNC.bits())
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let len = NonZeroUsize::new(MAP_LEN).ok_or("zero map length")?;
        // SAFETY: a fresh shared mapping of a device file at no fixed
        // address aliases no Rust object; it outlives `file` (mmap keeps its
        // own reference) and lives until `Bar` is dropped.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| format!("mmap {}: {e}", path.display()))?;
        Ok(Bar { base: ptr.cast() })
    }

    fn read(&self, offset: usize) -> u32 {
        debug_assert!(offset.is_multiple_of(4) && offset < MAP_LEN);
        // SAFETY: `offset` is 4-aligned inside the mapped page; a volatile
        // 32-bit load compiles to one 4-byte MMIO read, as edu requires.
        unsafe { self.base.as_ptr().add(offset / 4).read_volatile() }
    }

    fn write(&self, offset: usize, value: u32) {
        debug_assert!(offset.is_multiple_of(4) && offset < MAP_LEN);
        // SAFETY: as in `read`, one 4-byte MMIO write.
        unsafe { self.base.as_ptr().add(offset / 4).write_volatile(value) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`, no longer used.
        let _ = unsafe { munmap(self.base.cast(), MAP_LEN) };
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let dev = find_edu(args.device.as_deref())?;
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = Bar::map(&dev)?;
    let id = bar.read(REG_ID);
    println!("edu-probe: device {name} id={id:#010x} (edu answers 0x010000ed)");

    bar.write(REG_LIVENESS, MARKER_MAGIC | u32::from(args.start_tag));
    let started = Instant::now();
    let mut mismatches = 0u64;
    for _ in 0..args.reads {
        if bar.read(REG_ID) != id {
            mismatches += 1;
        }
    }
    let elapsed = started.elapsed();
    bar.write(REG_LIVENESS, MARKER_MAGIC | u32::from(args.end_tag));

    let per_read = elapsed.as_secs_f64() * 1e6 / args.reads.max(1) as f64;
    println!(
        "edu-probe: markers start={:#010x} end={:#010x}",
        MARKER_MAGIC | u32::from(args.start_tag),
        MARKER_MAGIC | u32::from(args.end_tag)
    );
    println!(
        "edu-probe: reads={} offset={REG_ID:#x} width=4 mismatches={mismatches} elapsed_us={} per_read_us={per_read:.2}",
        args.reads,
        elapsed.as_micros()
    );
    if mismatches != 0 {
        return Err(format!("{mismatches} reads differed from {id:#010x}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edu-probe: error: {e}");
            ExitCode::FAILURE
        }
    }
}
