//! `xxcap-test fuzz-driver`: random and adversarial use of the driver from
//! several processes and threads at once (ioctls with garbage numbers,
//! sizes and pointers, malformed and hostile task files, odd mmaps, reads
//! and polls, buffers queued and abandoned, opens closed mid-flight).
//! `xxcap-test canary-test`: hostile task files cannot move data into memory
//! their caller does not own.
//!
//! Both are run from the guest's test steps; afterwards the kernel log must
//! be clean and the card must still capture correctly.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use xxcapture::abi::{
    dma_dir, ioctl, regs, Command as Cmd, Op, QueueBuffer, Submit, Subscribe, TaskFile,
    MMAP_OFFSET_STATUS, REGISTERS,
};
use xxcapture::{Access, Card, Error};
use xxcapture_results::{FuzzSummary, Record};

#[derive(clap::Args)]
pub struct FuzzArgs {
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Processes (each runs --threads threads).
    #[arg(long, default_value_t = 3)]
    processes: u32,
    #[arg(long, default_value_t = 3)]
    threads: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Internal: run as one worker process.
    #[arg(long, hide = true)]
    worker: bool,
}

/// Results by operation and outcome ("exec:EINVAL", "mmap:ok", ...).
type Tally = BTreeMap<String, u64>;

/// Memory that DMA from the card may overwrite: the only place hostile
/// task files in this process point "from card" transfers at, so that the
/// fuzzer does not corrupt itself.
const SCRATCH: usize = 1 << 20;

struct Worker {
    rng: SmallRng,
    device: String,
    files: Vec<File>,
    scratch: Vec<u8>,
    tally: Tally,
}

fn errno_name(e: nix::errno::Errno) -> String {
    format!("{e:?}")
}

impl Worker {
    fn count(&mut self, op: &str, res: nix::Result<i32>) {
        let key = match res {
            Ok(_) => format!("{op}:ok"),
            Err(e) => format!("{op}:{}", errno_name(e)),
        };
        *self.tally.entry(key).or_default() += 1;
    }

    fn fd(&mut self) -> Option<i32> {
        if self.files.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.files.len());
        Some(self.files[i].as_raw_fd())
    }

    /// A user address: mostly valid scratch memory, sometimes garbage.
    fn address(&mut self, len: usize) -> u64 {
        match self.rng.random_range(0..8) {
            0 => 0,
            1 => 0xffff_8880_0000_0000 + self.rng.random_range(0..1u64 << 30), // kernel
            2 => 0x10_0000 + self.rng.random_range(0..1u64 << 24),             // "physical"
            3 => u64::MAX - self.rng.random_range(0..4096u64),
            4 => 0x7fff_0000_0000 + self.rng.random_range(0..1u64 << 32), // unmapped
            _ => {
                let max = SCRATCH.saturating_sub(len.min(SCRATCH)) as u64;
                self.scratch.as_mut_ptr() as u64 + self.rng.random_range(0..=max)
            }
        }
    }

    fn random_command(&mut self) -> Cmd {
        let reg = if self.rng.random_bool(0.8) {
            REGISTERS[self.rng.random_range(0..REGISTERS.len())].offset
        } else {
            self.rng.random()
        };
        let op = if self.rng.random_bool(0.9) {
            self.rng.random_range(0..8u16)
        } else {
            self.rng.random()
        };
        let mut cmd = match Op::from_raw(op) {
            Some(Op::DmaTransferBlock | Op::DmaTransferNonBlock) => {
                let len = match self.rng.random_range(0..4) {
                    0 => self.rng.random_range(1..=SCRATCH as u64),
                    1 => self.rng.random(),
                    2 => 0,
                    _ => self.rng.random_range(1..=8192),
                };
                // The direction stays "to card" unless the target is
                // scratch memory or invalid (never this process's heap).
                let addr = self.address(len as usize);
                let dir = if self.rng.random_bool(0.5) {
                    dma_dir::TO_CARD
                } else {
                    dma_dir::FROM_CARD
                };
                let offset = if self.rng.random_bool(0.8) {
                    self.rng.random_range(0..64u64 << 20)
                } else {
                    self.rng.random()
                };
                Cmd::raw(op, dir, addr, offset, len)
            }
            _ => Cmd::raw(
                op,
                reg,
                if self.rng.random_bool(0.5) {
                    self.rng.random_range(0..4096)
                } else {
                    self.rng.random()
                },
                if self.rng.random_bool(0.8) {
                    0
                } else {
                    self.rng.random()
                },
                if self.rng.random_bool(0.95) {
                    0
                } else {
                    self.rng.random()
                },
            ),
        };
        if self.rng.random_bool(0.03) {
            cmd.flags = self.rng.random::<u32>().into();
        }
        cmd
    }

    fn task_file(&mut self) -> Vec<u8> {
        let n = match self.rng.random_range(0..10) {
            0 => 0,
            1 => self.rng.random_range(1..=4097),
            _ => self.rng.random_range(1..=8),
        };
        let mut tf = TaskFile::new();
        for _ in 0..n {
            let cmd = self.random_command();
            tf.push_raw(cmd);
        }
        let mut bytes = tf.to_bytes();
        // Sometimes lie about the count or corrupt the header.
        if self.rng.random_bool(0.1) && bytes.len() >= 16 {
            let at = self.rng.random_range(0..16);
            bytes[at] = self.rng.random();
        }
        if self.rng.random_bool(0.05) {
            bytes.truncate(self.rng.random_range(0..=bytes.len()));
        }
        bytes
    }

    fn step(&mut self) {
        // Keep 0-3 opens, some controlling.
        if self.files.is_empty() || self.rng.random_bool(0.02) {
            let write = self.rng.random_bool(0.5);
            match OpenOptions::new()
                .read(true)
                .write(write)
                .open(&self.device)
            {
                Ok(f) if self.files.len() < 3 => {
                    self.files.push(f);
                    self.count("open", Ok(0));
                }
                Ok(_) => {}
                Err(e) => self.count(
                    "open",
                    Err(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
                ),
            }
            return;
        }
        if self.rng.random_bool(0.01) {
            let i = self.rng.random_range(0..self.files.len());
            // Closing with requests, buffers and mappings outstanding.
            drop(self.files.swap_remove(i));
            self.count("close", Ok(0));
            return;
        }
        let Some(fd) = self.fd() else { return };
        match self.rng.random_range(0..100) {
            0..=29 => {
                let mut bytes = self.task_file();
                let size = if self.rng.random_bool(0.95) {
                    bytes.len() as u32
                } else {
                    self.rng.random()
                };
                // Our own buffer with a size clamped to it, or another
                // address (scratch room for a maximal task file, or
                // invalid) with any size.
                let own = self.rng.random_bool(0.97);
                let (ptr, size) = if own {
                    (bytes.as_mut_ptr() as u64, size.min(bytes.len() as u32))
                } else {
                    (self.address(xxcapture::abi::MAX_TASK_FILE_SIZE), size)
                };
                let flags: u32 = if self.rng.random_bool(0.9) {
                    0
                } else {
                    self.rng.random_range(0..4)
                };
                let mut exec = xxcapture::abi::Exec {
                    task_file: ptr.into(),
                    size: size.into(),
                    flags: flags.into(),
                };
                // SAFETY: the driver reads and writes at most `size` bytes at
                // `ptr`: our own buffer (size clamped to it) or an address the
                // kernel checks with copy_from_user and refuses.
                let res = unsafe { raw_ioctl(fd, ioctl::EXEC as u64, &mut exec as *mut _ as u64) };
                self.count("exec", res);
            }
            30..=44 => {
                let bytes = self.task_file();
                let mut submit = Submit {
                    task_file: (bytes.as_ptr() as u64).into(),
                    size: (bytes.len() as u32).into(),
                    flags: if self.rng.random_bool(0.95) { 0 } else { 1 }.into(),
                    refcon: self.rng.random::<u64>().into(),
                    request_id: 0.into(),
                };
                // SAFETY: as for EXEC; DMA targets are scratch or invalid.
                let res =
                    unsafe { raw_ioctl(fd, ioctl::SUBMIT as u64, &mut submit as *mut _ as u64) };
                self.count("submit", res);
            }
            45..=54 => {
                let len = match self.rng.random_range(0..4) {
                    0 => 0,
                    1 => self.rng.random(),
                    _ => self.rng.random_range(1..=SCRATCH as u64),
                };
                let mut q = QueueBuffer {
                    addr: self.address(len as usize).into(),
                    length: len.into(),
                    refcon: 0.into(),
                    request_id: 0.into(),
                    flags: if self.rng.random_bool(0.95) { 0 } else { 1 }.into(),
                    reserved: 0.into(),
                };
                // SAFETY: the buffer is scratch memory or invalid.
                let res =
                    unsafe { raw_ioctl(fd, ioctl::QUEUE_BUFFER as u64, &mut q as *mut _ as u64) };
                self.count("queue-buffer", res);
            }
            55..=57 => {
                // SAFETY: no argument.
                let res = unsafe { raw_ioctl(fd, ioctl::FLUSH_BUFFERS as u64, 0) };
                self.count("flush", res);
            }
            58..=62 => {
                let mut s = Subscribe {
                    mask: self.rng.random::<u32>().into(),
                    flags: if self.rng.random_bool(0.9) { 0 } else { 1 }.into(),
                };
                // SAFETY: a live struct of the encoded size.
                let res =
                    unsafe { raw_ioctl(fd, ioctl::SUBSCRIBE as u64, &mut s as *mut _ as u64) };
                self.count("subscribe", res);
            }
            63..=70 => {
                // Random ioctl numbers of our type and others, garbage args.
                let nr: u64 = self.rng.random_range(0..16);
                let dir: u64 = self.rng.random_range(0..4);
                let size: u64 = self.rng.random_range(0..256);
                let ty: u64 = if self.rng.random_bool(0.8) {
                    u64::from(b'x')
                } else {
                    self.rng.random_range(0..256)
                };
                let req = (dir << 30) | (size << 16) | (ty << 8) | nr;
                let arg = self.address(256);
                // SAFETY: the kernel copies at most `size` (< 256) bytes
                // to or from `arg`, which is scratch memory or invalid.
                let res = unsafe { raw_ioctl(fd, req, arg) };
                self.count("ioctl-random", res);
            }
            71..=80 => {
                let len = match self.rng.random_range(0..3) {
                    0 => 0,
                    1 => self.rng.random_range(1..64),
                    _ => 64 * self.rng.random_range(1..64),
                };
                let mut buf = vec![0u8; len];
                let flags = nix::fcntl::OFlag::O_NONBLOCK;
                let _ = nix::fcntl::fcntl(
                    // SAFETY: fd belongs to a File in self.files.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                    nix::fcntl::FcntlArg::F_SETFL(flags),
                );
                // SAFETY: as above.
                let res =
                    nix::unistd::read(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, &mut buf);
                self.count("read", res.map(|n| n as i32));
                let mut fds = [nix::poll::PollFd::new(
                    // SAFETY: as above.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                    nix::poll::PollFlags::POLLIN,
                )];
                let res = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
                self.count("poll", res);
            }
            81..=92 => self.mmap_games(fd),
            _ => {
                // Valid traffic keeps the card busy underneath.
                let mut tf = TaskFile::new();
                tf.get_register(regs::FRAME_COUNTER);
                if self.rng.random_bool(0.3) {
                    tf.set_to_register(
                        regs::CONTROL,
                        if self.rng.random_bool(0.5) { 2 } else { 0 },
                        2,
                    );
                }
                let mut bytes = tf.to_bytes();
                let mut exec = xxcapture::abi::Exec {
                    task_file: (bytes.as_mut_ptr() as u64).into(),
                    size: (bytes.len() as u32).into(),
                    flags: 0.into(),
                };
                // SAFETY: our own buffer of exactly `size` bytes.
                let res = unsafe { raw_ioctl(fd, ioctl::EXEC as u64, &mut exec as *mut _ as u64) };
                self.count("exec-valid", res);
            }
        }
    }

    fn mmap_games(&mut self, fd: i32) {
        use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
        let offset = match self.rng.random_range(0..6) {
            0 => MMAP_OFFSET_STATUS as i64,
            1 => self.rng.random_range(0..1i64 << 27) & !0xfff,
            2 => self.rng.random::<i64>() & !0xfff,
            3 => 1 << 40 | 4096,
            _ => 0,
        };
        let len = match self.rng.random_range(0..4) {
            0 => 4096,
            1 => self.rng.random_range(1..1usize << 28),
            _ => self.rng.random_range(1..64) * 4096,
        };
        let prot = match self.rng.random_range(0..3) {
            0 => ProtFlags::PROT_READ,
            1 => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            _ => ProtFlags::PROT_WRITE,
        };
        let Some(nz) = std::num::NonZeroUsize::new(len) else {
            return;
        };
        // SAFETY: fd is open; the mapping is only touched below within its
        // length, and unmapped before return.
        let res = unsafe {
            mmap(
                None,
                nz,
                prot,
                MapFlags::MAP_SHARED,
                std::os::fd::BorrowedFd::borrow_raw(fd),
                offset,
            )
        };
        match res {
            Ok(ptr) => {
                self.count("mmap", Ok(0));
                let base = ptr.as_ptr() as *mut u8;
                let pages = len.div_ceil(4096).min(16);
                // Offset and length were accepted: reads must work or
                // SIGBUS cleanly... so only touch the first page, which the
                // driver promised by accepting the mapping.
                if prot.contains(ProtFlags::PROT_READ) {
                    // SAFETY: inside the mapping.
                    std::hint::black_box(unsafe { std::ptr::read_volatile(base) });
                }
                // Partial munmap of a live mapping, then the pieces left
                // (never the hole again: another thread may map there).
                if pages > 2 {
                    // SAFETY: the second page lies inside the mapping.
                    let _ = unsafe {
                        munmap(
                            std::ptr::NonNull::new_unchecked(base.add(4096).cast()),
                            4096,
                        )
                    };
                    // SAFETY: the first page and everything after the hole
                    // are still ours.
                    let _ = unsafe { munmap(ptr, 4096) };
                    let rest = len.next_multiple_of(4096) - 8192;
                    // SAFETY: as above.
                    let _ = unsafe {
                        munmap(
                            std::ptr::NonNull::new_unchecked(base.add(8192).cast()),
                            rest,
                        )
                    };
                } else {
                    // SAFETY: the whole mapping, untouched so far.
                    let _ = unsafe { munmap(ptr, len) };
                }
            }
            Err(e) => self.count("mmap", Err(e)),
        }
    }
}

/// ioctl with a raw request number and argument.
///
/// # Safety
/// The kernel may read or write memory at `arg` per the request's encoding.
unsafe fn raw_ioctl(fd: i32, req: u64, arg: u64) -> nix::Result<i32> {
    // SAFETY: forwarded to the caller.
    let ret = unsafe { nix::libc::ioctl(fd, req as nix::libc::c_ulong, arg) };
    nix::errno::Errno::result(ret)
}

fn worker(device: &str, args: &FuzzArgs) -> Result<ExitCode, Error> {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let limit = Duration::from_secs_f64(args.seconds.max(0.0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..args.threads.max(1) {
        let tally = Arc::clone(&tally);
        let device = device.to_string();
        let seed = args.seed.wrapping_mul(1000).wrapping_add(u64::from(t));
        handles.push(std::thread::spawn(move || {
            let mut w = Worker {
                rng: SmallRng::seed_from_u64(seed),
                device,
                files: Vec::new(),
                scratch: vec![0u8; SCRATCH],
                tally: Tally::new(),
            };
            while started.elapsed() < limit {
                w.step();
            }
            // Close with whatever is outstanding.
            w.files.clear();
            // Queued buffers in `scratch` may be written until the driver
            // has them back: the close above flushed them; keep scratch
            // alive regardless (leak) so no late write hits freed memory.
            std::mem::forget(std::mem::take(&mut w.scratch));
            if let Ok(mut t) = tally.lock() {
                for (k, v) in w.tally {
                    *t.entry(k).or_default() += v;
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let t = tally.lock().map(|t| t.clone()).unwrap_or_default();
    let total: u64 = t.values().sum();
    let list: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "fuzz-worker seed={} ops={total} {}",
        args.seed,
        list.join(" ")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(device: &str, args: FuzzArgs) -> Result<ExitCode, Error> {
    if args.worker {
        return worker(device, &args);
    }
    let exe = std::env::current_exe().map_err(|source| Error::Open {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let mut children = Vec::new();
    for p in 0..args.processes.max(1) {
        let child = Command::new(&exe)
            .args(["--device", device, "fuzz-driver", "--worker"])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(["--seed", &(args.seed * 100 + u64::from(p)).to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| Error::Open {
                path: exe.clone(),
                source,
            })?;
        children.push(child);
    }
    let mut ops = 0u64;
    let mut ok = true;
    for child in children {
        match child.wait_with_output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                print!("{text}");
                ops += text
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("ops="))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                if !out.status.success() {
                    println!("fuzz-driver: a worker died: {}", out.status);
                    ok = false;
                }
            }
            Err(e) => {
                println!("fuzz-driver: lost a worker: {e}");
                ok = false;
            }
        }
    }
    // The card must still answer after all that.
    let card = Card::open(device, Access::Control)?;
    let id = card.read_register(regs::ID)?;
    println!(
        "fuzz-driver: {ops} operations from {} processes x {} threads in {:.0} s; card answers ID={id:#x}",
        args.processes, args.threads, args.seconds
    );
    Record::FuzzDriver(FuzzSummary {
        operations: ops,
        processes: args.processes,
        threads: args.threads,
        seconds: args.seconds,
        card_id: id,
    })
    .print();
    Ok(if ok && id == xxcapture::abi::MAGIC {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(clap::Args)]
pub struct CanaryArgs {
    /// Hostile task files to try.
    #[arg(long, default_value_t = 2000)]
    attempts: u32,
}

/// A child process fills memory with a pattern; this process aims hostile
/// DMA at everything it can name except its own buffer; the child checks
/// its pattern, and this process checks the guard bytes around its own
/// buffer.
pub fn canary_test(device: &str, args: CanaryArgs) -> Result<ExitCode, Error> {
    const GUARD: usize = 64 << 10;
    const BUF: usize = 256 << 10;
    const PATTERN: u8 = 0xA5;
    // The bystander: memory the DMA never names, full of canaries; after
    // the fork the child's copy is another process's memory.
    let mut bystander = vec![PATTERN; 32 << 20];
    let bystander_addr = bystander.as_ptr() as u64;
    // Own buffer with guard areas on both sides.
    let mut region = vec![PATTERN; GUARD + BUF + GUARD];
    let buf_addr = region.as_mut_ptr() as u64 + GUARD as u64;
    let card = Card::open(device, Access::Control)?;
    // Card RAM gets a known pattern first so moved data is visible.
    card.write_blocks(0, &vec![0x5Au8; BUF])?;
    // SAFETY: fork in a process that has no other threads yet; the child
    // only reads its own memory and exits.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // The child's copy of `bystander` is private memory no one may
            // write; check it for a while, then report.
            std::thread::sleep(Duration::from_secs(3));
            let intact = bystander.iter().all(|&b| b == PATTERN);
            std::process::exit(if intact { 0 } else { 3 });
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(source) => {
            return Err(Error::Ioctl {
                call: "fork",
                source,
            })
        }
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut refused, mut accepted) = (0u64, 0u64);
    let ram = card.info().card_ram_size;
    for _ in 0..args.attempts {
        // What each attempt aims at, and which way data may flow: data may
        // only ever come *from* the card into memory that is the caller's
        // own buffer; everything else must be refused. Reading (to the
        // card) from guard bytes is allowed, they are ours.
        let any_dir = |rng: &mut SmallRng| {
            if rng.random_bool(0.5) {
                dma_dir::FROM_CARD
            } else {
                dma_dir::TO_CARD
            }
        };
        let (addr, len, dir) = match rng.random_range(0..6) {
            // Kernel memory.
            0 => (
                0xffff_8880_0000_0000 + rng.random_range(0..1u64 << 30),
                4096,
                any_dir(&mut rng),
            ),
            // Below mmap_min_addr: never user memory, typical physical.
            1 => (rng.random_range(0x1000..0x8000u64), 4096, any_dir(&mut rng)),
            // Unmapped user space.
            2 => (
                0x7ff0_0000_0000 + rng.random_range(0..1u64 << 32),
                4096,
                any_dir(&mut rng),
            ),
            // Our buffer, spilling into the guard after it.
            3 => (
                buf_addr,
                BUF as u64 + rng.random_range(1..GUARD as u64),
                dma_dir::TO_CARD,
            ),
            // Starting in the guard before it.
            4 => (
                buf_addr - rng.random_range(1..GUARD as u64),
                4096,
                dma_dir::TO_CARD,
            ),
            // Inside our buffer: allowed, must stay inside.
            _ => {
                let len = rng.random_range(1..=BUF as u64);
                (
                    buf_addr + rng.random_range(0..=BUF as u64 - len),
                    len,
                    dma_dir::FROM_CARD,
                )
            }
        };
        let offset = if rng.random_bool(0.7) {
            rng.random_range(0..ram)
        } else {
            ram + rng.random_range(0..1u64 << 20)
        };
        let mut tf = TaskFile::new();
        tf.dma(true, dir, addr, offset.min(ram - 1), len);
        if rng.random_bool(0.2) {
            // Try to make the address register name guest memory.
            tf.set_address(regs::DMA_CARD_ADDR, rng.random());
        }
        match card.execute(&tf) {
            Ok(r) if r.error == xxcapture::TfError::Ok => accepted += 1,
            _ => refused += 1,
        }
    }
    let guards_intact = region[..GUARD].iter().all(|&b| b == PATTERN)
        && region[GUARD + BUF..].iter().all(|&b| b == PATTERN);
    let own_bystander_intact = bystander.iter().all(|&b| b == PATTERN);
    bystander.clear();
    let child_ok = matches!(
        nix::sys::wait::waitpid(child, None),
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
    );
    println!(
        "canary-test: {} hostile DMAs ({accepted} accepted within the caller's buffer or card RAM, {refused} refused); guard bytes around the buffer intact: {guards_intact}; this process's other memory intact: {own_bystander_intact}; another process's memory intact: {child_ok}; bystander at {bystander_addr:#x}",
        args.attempts
    );
    Ok(if guards_intact && own_bystander_intact && child_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
