//! Selftest checks of card RAM, DMA and mmap, run when the card has them.

use std::num::NonZeroUsize;

use nix::errno::Errno;
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use xxcapture::abi::{dma_dir, regs, TaskFile, TfError};
use xxcapture::{Card, Error};

type Check = Result<String, String>;

fn err(e: Error) -> String {
    e.to_string()
}

/// Deterministic, position-dependent bytes, so a shifted copy is caught.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn roundtrip(card: &Card) -> Check {
    let ram_size = card.info().card_ram_size as usize;
    let mut ram = card.map_card_ram().map_err(err)?;
    let cases: Vec<(usize, usize)> = vec![
        (0, 1),
        (1, 3),
        (4093, 4096),
        (4096, 4097),
        (12_345, 65_541),
        (1 << 20, (1 << 20) + 13),
        (ram_size - 7, 7),
        (0, ram_size),
    ];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        // An unaligned user buffer spanning many pages.
        let mut backing = pattern(i as u64 + 1, len + 1);
        let data = &mut backing[1..];
        let moved = card.write_blocks(offset as u64, data).map_err(err)?;
        if moved != len as u64 {
            return Err(format!("write {len} at {offset}: moved {moved}"));
        }
        if ram.as_slice()[offset..offset + len] != data[..] {
            return Err(format!("write {len} at {offset}: mapped card RAM differs"));
        }
        let mut back = vec![0u8; len + 2];
        let moved = card
            .read_blocks(offset as u64, &mut back[1..=len])
            .map_err(err)?;
        if moved != len as u64 || back[1..=len] != data[..] {
            return Err(format!(
                "read {len} at {offset}: data differs (moved {moved})"
            ));
        }
        if back[0] != 0 || back[len + 1] != 0 {
            return Err(format!("read {len} at {offset}: wrote outside the buffer"));
        }
    }
    // Writes through the mapping are seen by DMA.
    let probe = pattern(99, 4099);
    ram.as_mut_slice()[777..777 + probe.len()].copy_from_slice(&probe);
    let mut back = vec![0u8; probe.len()];
    card.read_blocks(777, &mut back).map_err(err)?;
    if back != probe {
        return Err("mmap write not seen by DMA read".into());
    }
    Ok(format!(
        "{} transfers from 1 byte to {} MiB, unaligned, byte-exact by DMA and mmap",
        cases.len(),
        ram_size >> 20
    ))
}

fn tf_error(card: &Card, tf: &TaskFile) -> Result<(TfError, u32), String> {
    let res = card.execute(tf).map_err(err)?;
    Ok((res.error, res.index))
}

pub fn bad_transfers(card: &Card) -> Check {
    let ram_size = card.info().card_ram_size;
    let mut ram = card.map_card_ram().map_err(err)?;
    // Canary: a known pattern over the first 64 KiB and last 64 KiB.
    let canary = pattern(7, 65_536);
    ram.as_mut_slice()[..65_536].copy_from_slice(&canary);
    let tail = (ram_size - 65_536) as usize;
    ram.as_mut_slice()[tail..].copy_from_slice(&canary);

    let mut buf = vec![0u8; 64];
    let addr = buf.as_mut_ptr() as u64;
    let cases: Vec<(&str, TaskFile, TfError)> = vec![
        (
            "past card RAM",
            one(dma_dir::TO_CARD, addr, ram_size - 10, 20),
            TfError::DmaRange,
        ),
        (
            "zero length",
            one(dma_dir::TO_CARD, addr, 0, 0),
            TfError::DmaRange,
        ),
        (
            "offset overflow",
            one(dma_dir::FROM_CARD, addr, u64::MAX - 3, 8),
            TfError::DmaRange,
        ),
        ("bad direction", one(2, addr, 0, 8), TfError::BadValue),
    ];
    for (name, tf, want) in cases {
        let got = tf_error(card, &tf)?;
        if got != (want, 0) {
            return Err(format!("{name}: got {got:?}, expected {want:?} at 0"));
        }
    }
    // Addresses that are not the caller's.
    match card.execute(&one(dma_dir::TO_CARD, 0x1000, 0, 64)) {
        Err(e) if e.errno() == Some(Errno::EFAULT) => {}
        other => return Err(format!("unmapped user address: {other:?}, expected EFAULT")),
    }
    let page = NonZeroUsize::new(4096).ok_or("page size")?;
    // SAFETY: a fresh anonymous read-only page, unmapped below; never
    // dereferenced here, only handed to the driver, which must refuse to
    // write it.
    let ro = unsafe { mmap_anonymous(None, page, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE) }
        .map_err(|e| format!("mmap: {e}"))?;
    let ro_result = card.execute(&one(dma_dir::FROM_CARD, ro.as_ptr() as u64, 0, 4096));
    // SAFETY: `ro` came from mmap_anonymous above with this length.
    unsafe { munmap(ro, 4096) }.map_err(|e| format!("munmap: {e}"))?;
    match ro_result {
        Err(e) if e.errno() == Some(Errno::EFAULT) => {}
        other => {
            return Err(format!(
                "read-only buffer for a from-card transfer: {other:?}, expected EFAULT"
            ))
        }
    }
    if buf.iter().any(|&b| b != 0) {
        return Err("a refused transfer wrote the user buffer".into());
    }
    if ram.as_slice()[..65_536] != canary[..] || ram.as_slice()[tail..] != canary[..] {
        return Err("a refused transfer changed card RAM".into());
    }
    Ok("DMA_RANGE past RAM/zero/overflow, BAD_VALUE direction, EFAULT for foreign and read-only buffers; canaries intact".into())
}

fn one(direction: u16, addr: u64, offset: u64, len: u64) -> TaskFile {
    let mut tf = TaskFile::new();
    tf.dma(true, direction, addr, offset, len);
    tf
}

pub fn nonblocking(card: &Card) -> Check {
    let data = pattern(3, 10_000);
    let mut tf = TaskFile::new();
    tf.dma(false, dma_dir::TO_CARD, data.as_ptr() as u64, 5000, 10_000);
    let mut back = vec![0u8; 10_000];
    tf.dma(
        false,
        dma_dir::FROM_CARD,
        back.as_mut_ptr() as u64,
        5000,
        10_000,
    );
    // A synchronous EXEC waits for its result: it cannot also not wait.
    match card.run(&tf) {
        Err(xxcapture::Error::Command {
            index: 0,
            code: TfError::BadOp,
        }) => {}
        other => {
            return Err(format!(
                "EXEC with non-blocking DMA: {other:?}, expected BAD_OP at 0"
            ))
        }
    }
    if back.iter().any(|&b| b != 0) {
        return Err("a refused non-blocking transfer moved data".into());
    }
    // Submitted, the caller does not wait: both run, in order.
    // SAFETY: `data` and `back` outlive the completion awaited below.
    let id = unsafe { card.submit(&tf, 0) }.map_err(err)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut records = Vec::new();
    let done = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("submitted non-blocking transfers never completed".into());
        }
        records.clear();
        card.wait_events(&mut records, 16, Some(left))
            .map_err(err)?;
        if let Some(e) = records.iter().find(|e| e.completion && e.request_id == id) {
            break *e;
        }
    };
    if done.status != TfError::Ok as u32 || back != data {
        return Err(format!("submitted non-blocking round trip: {done:?}"));
    }
    Ok("refused in a synchronous EXEC (BAD_OP, nothing moved); two submitted non-blocking transfers round-trip".into())
}

pub fn observer_mappings(device: &str) -> Check {
    let observer = Card::open(device, xxcapture::Access::Observe).map_err(err)?;
    let status = observer.map_status().map_err(err)?;
    let block = status.snapshot().map_err(err)?;
    match observer.map_card_ram() {
        Err(e) if e.errno() == Some(Errno::EACCES) => {}
        other => {
            return Err(format!(
                "observer writable card-RAM map: {:?}, expected EACCES",
                other.map(|_| ())
            ))
        }
    }
    Ok(format!(
        "status block readable (magic ok, {} frames), observer cannot map card RAM writable",
        block.frame_counter.get()
    ))
}

pub fn pins_released(card: &Card) -> Check {
    let pinned = card.sysfs_attribute("pinned_pages").map_err(err)?;
    if pinned != "0" {
        return Err(format!("pinned_pages = {pinned} after all transfers"));
    }
    Ok("pinned_pages back to 0".into())
}

/// The driver's policy for EXEC without `XXCAP_EXEC_POLL`.
pub const EXEC_WAIT: &str = "/sys/module/xxcapture/parameters/exec_wait";

/// Sets the driver's `exec_wait` policy; returns the one it replaced.
pub fn set_exec_wait(policy: &str) -> Result<String, String> {
    let old = std::fs::read_to_string(EXEC_WAIT)
        .map_err(|e| format!("{EXEC_WAIT}: {e}"))?
        .trim()
        .to_string();
    std::fs::write(EXEC_WAIT, policy).map_err(|e| format!("{EXEC_WAIT} := {policy}: {e}"))?;
    Ok(old)
}

/// The card's EXEC completion counters: caught by polling, woken by the
/// interrupt, spun for.
fn exec_counters(card: &Card) -> Result<[u64; 3], String> {
    let mut out = [0u64; 3];
    for (v, name) in out
        .iter_mut()
        .zip(["exec_polled", "exec_irq", "exec_spins"])
    {
        *v = card
            .sysfs_attribute(name)
            .map_err(err)?
            .parse()
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(out)
}

/// Hybrid completion: one-command task files are caught by polling (some
/// at least), DMA of megabytes never spins and is woken by the interrupt,
/// and every EXEC is counted exactly once.
pub fn exec_hybrid(card: &Card) -> Check {
    let old = set_exec_wait("hybrid")?;
    let outcome = exec_hybrid_counts(card);
    set_exec_wait(&old)?;
    outcome
}

fn exec_hybrid_counts(card: &Card) -> Check {
    const SHORT: u64 = 200;
    let before = exec_counters(card)?;
    for i in 0..SHORT / 2 {
        let value = 0x5a00_0000 | i as u32;
        card.write_register(regs::SCRATCH, value).map_err(err)?;
        let back = card.read_register(regs::SCRATCH).map_err(err)?;
        if back != value {
            return Err(format!("SCRATCH wrote {value:#x}, read {back:#x}"));
        }
    }
    let mid = exec_counters(card)?;
    let [polled, irq, spins] = [0, 1, 2].map(|i| mid[i] - before[i]);
    if polled + irq != SHORT {
        return Err(format!(
            "{SHORT} short EXECs counted {polled} polled + {irq} by interrupt"
        ));
    }
    if polled == 0 || spins == 0 {
        return Err(format!(
            "{SHORT} short EXECs: none caught by polling ({irq} by interrupt, {spins} spun)"
        ));
    }

    let len = (card.info().card_ram_size as usize / 4).min(8 << 20);
    let long = 4u64;
    let data = pattern(7, len);
    for _ in 0..long {
        let moved = card.write_blocks(0, &data).map_err(err)?;
        if moved != len as u64 {
            return Err(format!("write {len}: moved {moved}"));
        }
    }
    let after = exec_counters(card)?;
    let [lpolled, lirq, lspins] = [0, 1, 2].map(|i| after[i] - mid[i]);
    if lspins != 0 || lpolled != 0 || lirq != long {
        return Err(format!(
            "{long} DMA EXECs of {len} bytes: {lspins} spun, {lpolled} polled, {lirq} by interrupt (expected 0, 0, {long})"
        ));
    }
    Ok(format!(
        "{SHORT} one-command EXECs: {polled} caught by polling, {irq} by interrupt; {long} DMA EXECs of {} MiB: none spun",
        len >> 20
    ))
}
