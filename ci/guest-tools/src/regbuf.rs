//! `xxcap-test regbuf-test`: registered buffers keep the guarantees of the
//! raw-address DMA path. Data round-trips through a buffer registered in
//! the middle of canary bytes, which stay untouched; ranges past the buffer,
//! ids of another open and ids used after unregistering are refused; the
//! limits hold; a killed process leaves nothing pinned.
//! `xxcap-test regbuf-hold` is the process that gets killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use xxcapture::abi::{dma_dir, TaskFile, TfError, MAX_REGISTERED_PER_OPEN, MAX_REGISTERED_SIZE};
use xxcapture::{Access, Card, Error};

const CANARY: u8 = 0xc5;

#[derive(clap::Args)]
pub struct RegbufArgs {}

#[derive(clap::Args)]
pub struct HoldArgs {
    /// Buffers to register before waiting to be killed.
    #[arg(long, default_value_t = 4)]
    buffers: usize,
    /// Bytes of each.
    #[arg(long, default_value_t = 4 << 20)]
    size: usize,
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        println!("regbuf-test: ok: {what}");
        Ok(())
    } else {
        println!("regbuf-test: FAILED: {what}");
        Err(Error::Protocol)
    }
}

/// The task file's error, if it failed with a command error.
fn tf_error(result: Result<xxcapture::TaskFileResult, Error>) -> Option<TfError> {
    match result {
        Err(Error::Command { code, .. }) => Some(code),
        Ok(r) => Some(r.error),
        Err(_) => None,
    }
}

fn dma_buffer(
    card: &Card,
    dir: u16,
    id: u32,
    offset: u64,
    card_offset: u64,
    len: u64,
) -> Option<TfError> {
    let mut tf = TaskFile::new();
    tf.dma_buffer(dir, id, offset, card_offset, len);
    tf_error(card.run(&tf))
}

pub(crate) fn pinned(card: &Card) -> Result<u64, Error> {
    Ok(card
        .sysfs_attribute("pinned_pages")?
        .trim()
        .parse()
        .unwrap_or(u64::MAX))
}

pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// Round trip through a buffer registered in the middle of canaries, at
/// an unaligned address; refused ranges move nothing.
fn round_trip(card: &Card) -> Result<u32, Error> {
    const GUARD: usize = 8192 + 100;
    const LEN: usize = 300_000;
    let mut region = vec![CANARY; GUARD + LEN + GUARD];
    let addr = region.as_mut_ptr() as u64 + GUARD as u64;
    let id = card.register_raw(addr, LEN as u64)?;
    let data = pattern(LEN, 7);
    card.write_blocks(0x1000, &data)?;
    // Card RAM -> registered buffer, in two pieces, then back out elsewhere.
    let half = (LEN / 2) as u64;
    let e1 = dma_buffer(card, dma_dir::FROM_CARD, id, 0, 0x1000, half);
    let e2 = dma_buffer(
        card,
        dma_dir::FROM_CARD,
        id,
        half,
        0x1000 + half,
        LEN as u64 - half,
    );
    check(
        e1 == Some(TfError::Ok) && e2 == Some(TfError::Ok),
        "DMA into a registered buffer",
    )?;
    check(
        region[GUARD..GUARD + LEN] == data[..],
        "data arrived in the registered buffer",
    )?;
    let e = dma_buffer(card, dma_dir::TO_CARD, id, 0, 0x10_0000, LEN as u64);
    check(e == Some(TfError::Ok), "DMA out of a registered buffer")?;
    let mut back = vec![0u8; LEN];
    card.read_blocks(0x10_0000, &mut back)?;
    check(back == data, "data round-trips through card RAM")?;
    // Past the end, overflowing: DMA_FAULT, nothing written.
    for (offset, len) in [(0, LEN as u64 + 1), (LEN as u64 - 10, 11), (u64::MAX, 2)] {
        let e = dma_buffer(card, dma_dir::FROM_CARD, id, offset, 0, len);
        check(
            e == Some(TfError::DmaFault),
            &format!("range {offset}+{len} refused: {e:?}"),
        )?;
    }
    check(
        region[..GUARD].iter().all(|&b| b == CANARY)
            && region[GUARD + LEN..].iter().all(|&b| b == CANARY),
        "canaries around the buffer untouched",
    )?;
    Ok(id)
}

pub fn run(device: &str, _args: RegbufArgs) -> Result<ExitCode, Error> {
    {
        let card = Card::open(device, Access::Control)?;
        let id = round_trip(&card)?;
        // The library's own buffer: read/write_blocks go by id.
        let mut buf = card.register_buffer(1 << 20)?;
        let data = pattern(1 << 20, 3);
        card.write_blocks(0, &data)?;
        card.read_blocks(0, buf.as_mut_slice())?;
        check(
            buf.as_slice() == &data[..],
            "read_blocks into a registered buffer",
        )?;
        buf.as_mut_slice().fill(0x42);
        card.write_blocks(0x20_0000, buf.as_slice())?;
        let mut back = vec![0u8; 1 << 20];
        card.read_blocks(0x20_0000, &mut back)?;
        check(
            back.iter().all(|&b| b == 0x42),
            "write_blocks from a registered buffer",
        )?;
        drop(buf);

        // After UNREGISTER the id is refused, and a second UNREGISTER too.
        card.unregister_raw(id)?;
        let e = dma_buffer(&card, dma_dir::FROM_CARD, id, 0, 0, 1);
        check(
            e == Some(TfError::DmaFault),
            &format!("use after unregister refused: {e:?}"),
        )?;
        let again = card.unregister_raw(id).err().and_then(|e| e.errno());
        check(again == Some(Errno::EINVAL), "second unregister: EINVAL")?;

        // Limits and bad arguments.
        let mut region = vec![0u8; 4096 * (MAX_REGISTERED_PER_OPEN as usize + 1)];
        let base = region.as_mut_ptr() as u64;
        let mut ids = Vec::new();
        for i in 0..u64::from(MAX_REGISTERED_PER_OPEN) {
            ids.push(card.register_raw(base + i * 4096, 4096)?);
        }
        let over = card
            .register_raw(base + u64::from(MAX_REGISTERED_PER_OPEN) * 4096, 4096)
            .err()
            .and_then(|e| e.errno());
        check(
            over == Some(Errno::ENOSPC),
            &format!("buffer {} of one open: ENOSPC", ids.len() + 1),
        )?;
        for id in ids {
            card.unregister_raw(id)?;
        }
        let zero = card.register_raw(base, 0).err().and_then(|e| e.errno());
        check(zero == Some(Errno::EINVAL), "empty buffer: EINVAL")?;
        let big = card
            .register_raw(base, MAX_REGISTERED_SIZE + 1)
            .err()
            .and_then(|e| e.errno());
        check(big == Some(Errno::E2BIG), "buffer above the limit: E2BIG")?;
        let wild = card
            .register_raw(0x1000, 4096)
            .err()
            .and_then(|e| e.errno());
        check(wild == Some(Errno::EFAULT), "unmapped memory: EFAULT")?;
        // The kernel's own memory is not the caller's.
        let kernel = card
            .register_raw(0xffff_8000_0000_0000, 4096)
            .err()
            .and_then(|e| e.errno());
        check(kernel == Some(Errno::EFAULT), "kernel address: EFAULT")?;
        drop(region);

        // Another open: an id registered (and still held) by this one is
        // not usable by an observer, and is gone for the next controlling
        // open once this one closes.
        let mut held = vec![CANARY; 8192];
        let held_id = card.register_raw(held.as_mut_ptr() as u64, 8192)?;
        let observer = Card::open(device, Access::Observe)?;
        let e = dma_buffer(&observer, dma_dir::FROM_CARD, held_id, 0, 0, 1);
        check(e.is_none(), "an observer cannot run DMA")?;
        drop(observer);
        drop(card);
        check(held.iter().all(|&b| b == CANARY), "held buffer untouched")?;
        let other = Card::open(device, Access::Control)?;
        let mut mine = vec![0u8; 4096];
        let mine_id = other.register_raw(mine.as_mut_ptr() as u64, 4096)?;
        for id in [held_id, mine_id + 1, mine_id.wrapping_sub(1), 0, u32::MAX] {
            if id == mine_id {
                continue;
            }
            let e = dma_buffer(&other, dma_dir::FROM_CARD, id, 0, 0, 1);
            check(
                e == Some(TfError::DmaFault),
                &format!("another open's id {id} refused: {e:?}"),
            )?;
        }
        check(
            held.iter().all(|&b| b == CANARY),
            "held buffer still untouched",
        )?;
        drop(other);
    }

    // A killed process leaves nothing pinned.
    let observer = Card::open(device, Access::Observe)?;
    let before = pinned(&observer)?;
    check(
        before == 0,
        &format!("nothing pinned before the kill test ({before})"),
    )?;
    let exe = std::env::current_exe().map_err(|source| Error::Map {
        what: "current_exe",
        source,
    })?;
    let mut child = Command::new(exe)
        .args(["--device", device, "regbuf-hold"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Map {
            what: "regbuf-hold",
            source,
        })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let held = pinned(&observer)?;
    let _ = child.kill();
    let _ = child.wait();
    check(
        line.starts_with("ready") && held >= 4 * 1024,
        &format!("holder pinned {held} pages ({})", line.trim()),
    )?;
    let started = Instant::now();
    let mut left = pinned(&observer)?;
    while left != 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        left = pinned(&observer)?;
    }
    check(
        left == 0,
        &format!("killed holder left {left} pages pinned"),
    )?;
    println!("regbuf-test: passed");
    Ok(ExitCode::SUCCESS)
}

/// Registers buffers, DMAs into them, says "ready" and waits to be killed.
pub fn hold(device: &str, args: HoldArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let mut bufs = Vec::new();
    for _ in 0..args.buffers {
        let mut b = card.register_buffer(args.size)?;
        b.read_from_card(
            0,
            0,
            args.size.min(card.info().card_ram_size as usize) as u64,
        )?;
        bufs.push(b);
    }
    println!("ready {} buffers", bufs.len());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
