//! `xxcap-test fault-loop`: the driver's reaction to a fault the host armed
//! in xxcapd, the same way many times in one boot.
//!
//! `--kind dma-error` expects `xxcapd --fault dma-error@N,every=2,times=20` with N
//! at most 4: DMA transfers until the first injected error, then
//! transfers that alternate, one working, one failing with the task-file
//! error DMA_FAULT at its index (nothing moved, the buffer untouched),
//! `--iterations` errors in all; then a transfer reads back what the last
//! working one wrote. FAULTS_INJECTED must have grown by the errors seen
//! and `pinned_pages` be 0.
//!
//! `--kind stuck` expects `xxcapd --fault stuck@N,every=2,times=20` with N at most
//! 16 requests after the driver loaded: with `timeout_ms` at 300, register
//! reads until the first fails `ETIMEDOUT`, then reads that alternate, one
//! answered, one never answered (`ETIMEDOUT`), `--iterations` stuck ones in
//! all, then one more that works; the driver's `timeouts` count grows by
//! the stuck ones.

use std::process::ExitCode;

use clap::Args;
use nix::errno::Errno;
use xxcapture::abi::{dma_dir, regs, TaskFile, TfError};
use xxcapture::{Access, Card, Error};

/// The driver's request time limit, lowered while requests get stuck.
const TIMEOUT_PARAM: &str = "/sys/module/xxcapture/parameters/timeout_ms";
const STUCK_TIMEOUT_MS: u32 = 300;

#[derive(Args)]
pub struct FaultLoopArgs {
    /// The fault the host armed: dma-error or stuck.
    #[arg(long)]
    kind: String,
    /// Times the fault must be seen, each followed by a working operation.
    #[arg(long, default_value_t = 20)]
    iterations: u32,
}

fn err(e: Error) -> String {
    e.to_string()
}

/// One 4 KiB transfer to card RAM and back; the task-file error.
fn dma_round(card: &Card, seed: u8) -> Result<(TfError, u32), String> {
    let data = vec![seed; 4096];
    let mut tf = TaskFile::new();
    tf.dma(true, dma_dir::TO_CARD, data.as_ptr() as u64, 0, 4096);
    let res = card.execute(&tf).map_err(err)?;
    Ok((res.error, res.index))
}

fn dma_error(card: &Card, iterations: u32) -> Result<String, String> {
    let before = card.read_register(regs::FAULTS_INJECTED).map_err(err)?;
    // Find the first injected error (the fault counts transfers from boot).
    let mut seed = 1u8;
    let mut found = false;
    for _ in 0..4 {
        let (e, _) = dma_round(card, seed)?;
        seed = seed.wrapping_add(1);
        if e == TfError::DmaFault {
            found = true;
            break;
        }
        if e != TfError::Ok {
            return Err(format!("transfer before the first fault failed {e:?}"));
        }
    }
    if !found {
        return Err("no injected DMA error in the first 4 transfers".into());
    }
    let mut seen = 1u32;
    // After it, transfers alternate: one works, the next is injected.
    for i in 1..iterations {
        let (ok, _) = dma_round(card, seed)?;
        if ok != TfError::Ok {
            return Err(format!(
                "iteration {i}: the transfer after a fault failed {ok:?}"
            ));
        }
        let mut back = vec![0u8; 4096];
        let mut tf = TaskFile::new();
        tf.dma(true, dma_dir::FROM_CARD, back.as_mut_ptr() as u64, 0, 4096);
        let res = card.execute(&tf).map_err(err)?;
        if (res.error, res.index) != (TfError::DmaFault, 0) {
            return Err(format!(
                "iteration {i}: expected DMA_FAULT at 0, got {:?} at {}",
                res.error, res.index
            ));
        }
        if back.iter().any(|&b| b != 0) {
            return Err(format!(
                "iteration {i}: a faulted transfer wrote the buffer"
            ));
        }
        seen += 1;
        seed = seed.wrapping_add(1);
    }
    // The next transfer works and reads what the last working one wrote.
    let last = seed.wrapping_sub(1);
    let mut back = vec![0u8; 4096];
    let mut tf = TaskFile::new();
    tf.dma(true, dma_dir::FROM_CARD, back.as_mut_ptr() as u64, 0, 4096);
    let res = card.execute(&tf).map_err(err)?;
    if res.error != TfError::Ok || back.iter().any(|&b| b != last) {
        return Err(format!(
            "read back after the faults: {:?}, data intact {}",
            res.error,
            back.iter().all(|&b| b == last)
        ));
    }
    let after = card.read_register(regs::FAULTS_INJECTED).map_err(err)?;
    let pinned = card.sysfs_attribute("pinned_pages").map_err(err)?;
    if after.wrapping_sub(before) != seen {
        return Err(format!(
            "FAULTS_INJECTED went {before} -> {after}, {seen} errors seen"
        ));
    }
    if pinned != "0" {
        return Err(format!("pinned_pages = {pinned}"));
    }
    Ok(format!(
        "fault-loop dma-error: {seen} injected errors, each DMA_FAULT at index 0 with nothing moved, each followed by a working transfer; FAULTS_INJECTED {before} -> {after}; pinned_pages 0"
    ))
}

/// A register-only request: Ok(true) answered, Ok(false) timed out.
fn answered(card: &Card) -> Result<bool, String> {
    let mut tf = TaskFile::new();
    tf.get_register(regs::SCRATCH);
    match card.execute(&tf) {
        Ok(res) if res.error == TfError::Ok => Ok(true),
        Ok(res) => Err(format!("a read failed {:?}", res.error)),
        Err(e) if e.errno() == Some(Errno::ETIMEDOUT) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

fn stuck(card: &Card, iterations: u32) -> Result<String, String> {
    std::fs::write(TIMEOUT_PARAM, format!("{STUCK_TIMEOUT_MS}\n"))
        .map_err(|e| format!("{TIMEOUT_PARAM}: {e}"))?;
    let timeouts = |c: &Card| -> Result<u64, String> {
        c.sysfs_attribute("timeouts")
            .map_err(err)?
            .parse::<u64>()
            .map_err(|e| e.to_string())
    };
    let before = timeouts(card)?;
    let mut found = false;
    for _ in 0..16 {
        if !answered(card)? {
            found = true;
            break;
        }
    }
    if !found {
        return Err("no request got stuck in the first 16".into());
    }
    let mut seen = 1u32;
    for i in 1..iterations {
        if !answered(card)? {
            return Err(format!(
                "iteration {i}: the request after a stuck one timed out"
            ));
        }
        if answered(card)? {
            return Err(format!("iteration {i}: the stuck request was answered"));
        }
        seen += 1;
    }
    if !answered(card)? {
        return Err("the request after the last stuck one timed out".into());
    }
    let after = timeouts(card)?;
    std::fs::write(TIMEOUT_PARAM, "5000\n").map_err(|e| format!("{TIMEOUT_PARAM}: {e}"))?;
    if after - before != u64::from(seen) {
        return Err(format!("timeouts went {before} -> {after}, {seen} seen"));
    }
    Ok(format!(
        "fault-loop stuck: {seen} requests never answered, each ETIMEDOUT after {STUCK_TIMEOUT_MS} ms and followed by one that works; timeouts {before} -> {after}"
    ))
}

pub fn run(device: &str, args: FaultLoopArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let checked = match args.kind.as_str() {
        "dma-error" => dma_error(&card, args.iterations),
        "stuck" => stuck(&card, args.iterations),
        other => Err(format!("unknown fault kind {other:?} (dma-error, stuck)")),
    };
    match checked {
        Ok(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            println!("fault-loop {}: FAILED: {why}", args.kind);
            Ok(ExitCode::FAILURE)
        }
    }
}
