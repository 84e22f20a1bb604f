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
//!
//! `--kind events` expects, counted from the daemon's start with no event
//! record before it, `irq-lost@3,every=6,times=20`,
//! `irq-dup@4,every=6,times=20` and `irq-storm=K@6,every=6,times=20`:
//! rounds of one task file raising 6 TEST records, each round delivering
//! the records of sequence s, s+1, s+3, s+4, s+5 (s = EVENT_COUNT before
//! the round: the third record lost, its number used; the fourth written
//! twice by the card, passed on once by the driver, which counts the copy
//! in `events_repeated`; a storm of notifications with the sixth), no LOST
//! record, EVENTS_LOST unchanged, and the next round working.
//!
//! `--kind frames` expects `corrupt-frame@3,every=10,times=20` and
//! `drop-frames@6..7,every=10,times=40`, counted from the first capture of
//! the boot: a free-running ring capture (flow-controlled by its reader,
//! so the card drops nothing by itself) whose frames come in windows of 8
//! consecutive numbers: frame 8w+2 fails verification (`Corrupt`), the
//! others verify, and two OVERFLOW records carry frame 8w+5 (the frame
//! after the drops); the status block and DROPPED_FRAMES count the drops.
//!
//! `--kind dma-latency` expects `dma-latency=50ms@1..20` counted from the
//! first DMA transfer of the boot: 20 transfers that work and each take at
//! least 50 ms, then one that reads back what the last one wrote.
//!
//! `--kind` takes a comma-separated list, checked in order in one process.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nix::errno::Errno;
use xxcapture::abi::frame::{self, FrameError, Stamp};
use xxcapture::abi::{dma_dir, irq, regs, TaskFile, TfError};
use xxcapture::{Access, CaptureMode, Card, Cause, Causes, Error, Event, FrameFormat, PixelFormat};

/// The driver's request time limit, lowered while requests get stuck.
const TIMEOUT_PARAM: &str = "/sys/module/xxcapture/parameters/timeout_ms";
const STUCK_TIMEOUT_MS: u32 = 300;

#[derive(Args)]
pub struct FaultLoopArgs {
    /// The faults the host armed: dma-error, stuck, events, frames or
    /// dma-latency, or several of them separated by commas.
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

fn register(card: &Card, offset: u16) -> Result<u32, String> {
    card.read_register(offset).map_err(err)
}

fn sysfs_count(card: &Card, name: &str) -> Result<u64, String> {
    card.sysfs_attribute(name)
        .map_err(err)?
        .parse::<u64>()
        .map_err(|e| format!("{name}: {e}"))
}

fn no_pins(card: &Card) -> Result<(), String> {
    match card.sysfs_attribute("pinned_pages").map_err(err)?.as_str() {
        "0" => Ok(()),
        n => Err(format!("pinned_pages = {n}")),
    }
}

/// TEST records one `events` round raises.
const ROUND: u64 = 6;
/// What user space receives of a round with the faults armed: sequence
/// numbers relative to the round's first (the third lost; the fourth,
/// written twice, received once).
const ROUND_SEEN: [u64; 5] = [0, 1, 3, 4, 5];

/// One round: raises `ROUND` TEST records in one task file and collects
/// what arrives within 5 s, up to `expect` records, as "cause sequence".
fn round(card: &Card, raise: &TaskFile, expect: usize) -> Result<Vec<String>, String> {
    let res = card.execute(raise).map_err(err)?;
    if res.error != TfError::Ok {
        return Err(format!("the raise failed {:?}", res.error));
    }
    let mut got: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < expect {
        let left = deadline.saturating_duration_since(Instant::now());
        if card.wait_events(&mut got, 256, Some(left)).map_err(err)? == 0 {
            break;
        }
    }
    Ok(got
        .iter()
        .map(|e| format!("{:?} {}", e.cause, e.sequence))
        .collect())
}

fn events(card: &Card, iterations: u32) -> Result<String, String> {
    card.subscribe(Causes::TEST).map_err(err)?;
    card.enable_interrupts(Causes::TEST, 1, 0).map_err(err)?;
    let before = register(card, regs::FAULTS_INJECTED)?;
    let lost_before = register(card, regs::EVENTS_LOST)?;
    let repeated_before = sysfs_count(card, "events_repeated")?;
    let mut raise = TaskFile::new();
    for _ in 0..ROUND {
        raise.set_register(regs::INT_RAISE, irq::TEST);
    }
    let mut slowest = Duration::ZERO;
    for i in 0..iterations {
        let s = u64::from(register(card, regs::EVENT_COUNT)?);
        let started = Instant::now();
        let seen = round(card, &raise, ROUND_SEEN.len()).map_err(|e| format!("round {i}: {e}"))?;
        slowest = slowest.max(started.elapsed());
        let want: Vec<String> = ROUND_SEEN
            .iter()
            .map(|d| format!("Test {}", s + d))
            .collect();
        if seen != want {
            return Err(format!("round {i}: records {seen:?}, expected {want:?}"));
        }
        let after = u64::from(register(card, regs::EVENT_COUNT)?);
        if after != s + ROUND {
            return Err(format!(
                "round {i}: EVENT_COUNT went {s} -> {after}, {ROUND} records raised"
            ));
        }
    }
    // Nothing comes late: no second copy, no LOST record.
    let mut late: Vec<Event> = Vec::new();
    if card
        .wait_events(&mut late, 256, Some(Duration::from_millis(200)))
        .map_err(err)?
        != 0
    {
        return Err(format!("records after the last round: {late:?}"));
    }
    // The faults are spent: the next round arrives whole, once.
    let s = u64::from(register(card, regs::EVENT_COUNT)?);
    let seen = round(card, &raise, ROUND as usize + 1).map_err(|e| format!("last round: {e}"))?;
    let want: Vec<String> = (0..ROUND).map(|d| format!("Test {}", s + d)).collect();
    if seen != want {
        return Err(format!(
            "the round after the faults: records {seen:?}, expected {want:?}"
        ));
    }
    let after = register(card, regs::FAULTS_INJECTED)?;
    let lost_after = register(card, regs::EVENTS_LOST)?;
    let repeated_after = sysfs_count(card, "events_repeated")?;
    card.enable_interrupts(Causes::empty(), 0, 0).map_err(err)?;
    card.subscribe(Causes::empty()).map_err(err)?;
    if after.wrapping_sub(before) != 3 * iterations {
        return Err(format!(
            "FAULTS_INJECTED went {before} -> {after}, {} faults expected",
            3 * iterations
        ));
    }
    if lost_after != lost_before {
        return Err(format!("EVENTS_LOST went {lost_before} -> {lost_after}"));
    }
    if repeated_after - repeated_before != u64::from(iterations) {
        return Err(format!(
            "events_repeated went {repeated_before} -> {repeated_after}, {iterations} copies written"
        ));
    }
    no_pins(card)?;
    Ok(format!(
        "fault-loop events: {iterations} rounds of {ROUND} TEST records, each received as sequence s, s+1, s+3, s+4, s+5 (one record lost, one written twice and received once, a notification storm with the last), no LOST record; slowest round {} ms; then a round received whole; EVENT_COUNT counts the lost records, EVENTS_LOST {lost_before} -> {lost_after}, events_repeated {repeated_before} -> {repeated_after}; FAULTS_INJECTED {before} -> {after}; pinned_pages 0",
        slowest.as_millis()
    ))
}

/// Frames one `frames` window delivers (10 frame periods, 2 dropped).
const WINDOW_FRAMES: u64 = 8;
/// The corrupt frame's place in its window.
const CORRUPT_AT: u64 = 2;
/// The place of the frame after the window's drops, which their OVERFLOW
/// records name.
const AFTER_DROPS: u64 = 5;
const DROPS_PER_WINDOW: u64 = 2;

fn take_overflows(card: &Card, out: &mut Vec<Event>, wait: Duration) -> Result<usize, String> {
    card.wait_events(out, 256, Some(wait)).map_err(err)
}

fn frames(card: &Card, iterations: u32) -> Result<String, String> {
    let windows = u64::from(iterations);
    card.subscribe(Causes::OVERFLOW).map_err(err)?;
    card.enable_interrupts(Causes::OVERFLOW, 1, 0)
        .map_err(err)?;
    let before = register(card, regs::FAULTS_INJECTED)?;
    let format = FrameFormat {
        pixel_format: PixelFormat::Yuyv,
        width: 320,
        height: 240,
        fps: 0,
    };
    let mut capture = card
        .start_capture(format, false, CaptureMode::Mapped)
        .map_err(err)?;
    let mut records: Vec<Event> = Vec::new();
    for w in 0..windows {
        for k in 0..WINDOW_FRAMES {
            let n = w * WINDOW_FRAMES + k;
            let f = capture
                .next_frame(Duration::from_secs(10))
                .map_err(|e| format!("frame {n}: {e}"))?;
            if f.number != n {
                return Err(format!("expected frame {n}, got {}", f.number));
            }
            let verdict = frame::verify(&f.data, format.pixel_format, format.width, format.height);
            let stamped = Stamp::read(&f.data).map(|s| s.frame_number);
            match (k == CORRUPT_AT, verdict) {
                (false, Ok(s)) if s.frame_number == n => {}
                (true, Err(FrameError::Corrupt { .. })) if stamped == Ok(n) => {}
                (_, v) => {
                    return Err(format!(
                        "frame {n} (window {w}, place {k}): verify {v:?}, stamp {stamped:?}"
                    ))
                }
            }
        }
        take_overflows(card, &mut records, Duration::ZERO)?;
    }
    let status = capture.status().map_err(err)?;
    let dropped_register = register(card, regs::DROPPED_FRAMES)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (records.len() as u64) < DROPS_PER_WINDOW * windows {
        let left = deadline.saturating_duration_since(Instant::now());
        if take_overflows(card, &mut records, left)? == 0 {
            break;
        }
    }
    capture.stop().map_err(err)?;
    let after = register(card, regs::FAULTS_INJECTED)?;
    card.enable_interrupts(Causes::empty(), 0, 0).map_err(err)?;
    card.subscribe(Causes::empty()).map_err(err)?;
    let got: Vec<String> = records
        .iter()
        .map(|e| format!("{:?} {}", e.cause, e.frame_number))
        .collect();
    let want: Vec<String> = (0..DROPS_PER_WINDOW * windows)
        .map(|j| {
            format!(
                "Overflow {}",
                j / DROPS_PER_WINDOW * WINDOW_FRAMES + AFTER_DROPS
            )
        })
        .collect();
    if got != want {
        return Err(format!("records {got:?}, expected {want:?}"));
    }
    let drops = DROPS_PER_WINDOW * windows;
    if status.dropped.get() != drops || u64::from(dropped_register) != drops {
        return Err(format!(
            "status block dropped {}, DROPPED_FRAMES {dropped_register}, {drops} drops injected",
            status.dropped.get()
        ));
    }
    if status.errors.get() != 0 {
        return Err(format!("status block errors {}", status.errors.get()));
    }
    if status.frame_counter.get() < WINDOW_FRAMES * windows {
        return Err(format!(
            "status block frame_counter {} below the {} frames read",
            status.frame_counter.get(),
            WINDOW_FRAMES * windows
        ));
    }
    let expected = u32::try_from(windows * (1 + DROPS_PER_WINDOW)).unwrap_or(u32::MAX);
    if after.wrapping_sub(before) != expected {
        return Err(format!(
            "FAULTS_INJECTED went {before} -> {after}, {expected} faults expected"
        ));
    }
    if cause_count(&records, Cause::Lost) != 0 {
        return Err("a LOST record".into());
    }
    no_pins(card)?;
    Ok(format!(
        "fault-loop frames: {windows} windows of {WINDOW_FRAMES} consecutive frames from a free-running ring capture, in each frame 8w+2 corrupt (verify: Corrupt, stamp intact) and the others verified, two OVERFLOW records naming frame 8w+5; status block dropped {} errors 0, DROPPED_FRAMES {dropped_register}; FAULTS_INJECTED {before} -> {after}; pinned_pages 0",
        status.dropped.get()
    ))
}

fn cause_count(records: &[Event], cause: Cause) -> usize {
    records.iter().filter(|e| e.cause == cause).count()
}

/// The DMA latency `--kind dma-latency` expects xxcapd to inject.
const LATENCY: Duration = Duration::from_millis(50);

fn dma_latency(card: &Card, iterations: u32) -> Result<String, String> {
    let before = register(card, regs::FAULTS_INJECTED)?;
    let mut seed = 0x40u8;
    let (mut fastest, mut slowest) = (Duration::MAX, Duration::ZERO);
    for i in 0..iterations {
        let started = Instant::now();
        let (e, _) = dma_round(card, seed)?;
        let took = started.elapsed();
        if e != TfError::Ok {
            return Err(format!("transfer {i} failed {e:?}"));
        }
        if took < LATENCY {
            return Err(format!(
                "transfer {i} took {took:?}, less than the injected {LATENCY:?}"
            ));
        }
        fastest = fastest.min(took);
        slowest = slowest.max(took);
        seed = seed.wrapping_add(1);
    }
    // Past the window: a transfer that reads back what the last one wrote.
    let last = seed.wrapping_sub(1);
    let mut back = vec![0u8; 4096];
    let mut tf = TaskFile::new();
    tf.dma(true, dma_dir::FROM_CARD, back.as_mut_ptr() as u64, 0, 4096);
    let started = Instant::now();
    let res = card.execute(&tf).map_err(err)?;
    let next = started.elapsed();
    if res.error != TfError::Ok || back.iter().any(|&b| b != last) {
        return Err(format!(
            "read back after the delays: {:?}, data intact {}",
            res.error,
            back.iter().all(|&b| b == last)
        ));
    }
    let after = register(card, regs::FAULTS_INJECTED)?;
    if after.wrapping_sub(before) != iterations {
        return Err(format!(
            "FAULTS_INJECTED went {before} -> {after}, {iterations} delays expected"
        ));
    }
    no_pins(card)?;
    Ok(format!(
        "fault-loop dma-latency: {iterations} transfers each OK in {} to {} ms (injected {} ms), then one OK in {} ms reading back the last; FAULTS_INJECTED {before} -> {after}; pinned_pages 0",
        fastest.as_millis(),
        slowest.as_millis(),
        LATENCY.as_millis(),
        next.as_millis()
    ))
}

pub fn run(device: &str, args: FaultLoopArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let mut failed = false;
    for kind in args.kind.split(',') {
        let checked = match kind {
            "dma-error" => dma_error(&card, args.iterations),
            "stuck" => stuck(&card, args.iterations),
            "events" => events(&card, args.iterations),
            "frames" => frames(&card, args.iterations),
            "dma-latency" => dma_latency(&card, args.iterations),
            other => Err(format!(
                "unknown fault kind {other:?} (dma-error, stuck, events, frames, dma-latency)"
            )),
        };
        match checked {
            Ok(line) => println!("{line}"),
            Err(why) => {
                println!("fault-loop {kind}: FAILED: {why}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
