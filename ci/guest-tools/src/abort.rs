//! `xxcap-test abort-test`: the rest of the Double X card's user-client
//! design, end to end. ABORT of one held capture buffer and of everything
//! an open has outstanding (each cancelled request completes once, with
//! CANCELLED, and nothing stays pinned; ids that are not the open's are
//! refused), ABORT of a task file queued behind a large DMA, a
//! DMA_TRANSFER_NONBLOCK refused in a synchronous EXEC but run when
//! submitted, STATUS.DMA_BUSY seen by another open during large transfers,
//! and STATUS.DMA_ERROR latched by a DMA the card refused until DMA_RESET.
//! Prints `ok <check>: ...` or `FAIL <check>: ...` per check.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use xxcapture::abi::{control, dma_dir, ioctl, regs, status, QueueBuffer};
use xxcapture::{Access, Card, Causes, Error, Event, TaskFile, TfError};

type Check = Result<String, String>;
/// One named check of the card.
type CheckFn = fn(&Card, &str) -> Check;

fn err(e: Error) -> String {
    e.to_string()
}

pub fn run(device: &str) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    card.subscribe(Causes::empty())?;
    let checks: [(&str, CheckFn); 5] = [
        ("abort-buffers", abort_buffers),
        ("abort-task-files", abort_task_files),
        ("nonblock-in-exec", nonblock_in_exec),
        ("dma-busy", dma_busy),
        ("dma-error", dma_error),
    ];
    let mut ok = true;
    for (name, check) in checks {
        match check(&card, device) {
            Ok(detail) => println!("ok {name}: {detail}"),
            Err(detail) => {
                ok = false;
                println!("FAIL {name}: {detail}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn pinned_pages(card: &Card) -> Result<u64, String> {
    let raw = card.sysfs_attribute("pinned_pages").map_err(err)?;
    raw.trim()
        .parse()
        .map_err(|e| format!("pinned_pages {raw:?}: {e}"))
}

/// Waits up to `timeout` for the completions of `ids`; a second completion
/// of one id, or one of an id not asked for, is an error.
fn completions(card: &Card, ids: &[u64], timeout: Duration) -> Result<HashMap<u64, Event>, String> {
    let deadline = Instant::now() + timeout;
    let mut got: HashMap<u64, Event> = HashMap::new();
    let mut batch = Vec::new();
    while got.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "completions of {ids:?} not all back in {timeout:?}: got {:?}",
                got.keys().collect::<Vec<_>>()
            ));
        }
        batch.clear();
        card.wait_events(&mut batch, 16, Some(left)).map_err(err)?;
        for e in batch.iter().filter(|e| e.completion) {
            if !ids.contains(&e.request_id) {
                return Err(format!(
                    "completion of request {} nobody awaits",
                    e.request_id
                ));
            }
            if got.insert(e.request_id, *e).is_some() {
                return Err(format!("request {} completed twice", e.request_id));
            }
        }
    }
    Ok(got)
}

/// No completion arrives within `wait`.
fn quiet(card: &Card, wait: Duration) -> Result<(), String> {
    let mut batch = Vec::new();
    match card.wait_events(&mut batch, 16, Some(wait)).map_err(err)? {
        0 => Ok(()),
        _ => Err(format!("unexpected records: {batch:?}")),
    }
}

/// # Safety
/// `buffer` stays allocated and untouched until its completion was read.
unsafe fn queue_buffer(card: &Card, buffer: &mut [u8]) -> Result<u64, String> {
    let mut arg = QueueBuffer {
        addr: (buffer.as_mut_ptr() as u64).into(),
        length: (buffer.len() as u64).into(),
        ..QueueBuffer::default()
    };
    // SAFETY: `arg` is a live QueueBuffer, the size the ioctl number
    // encodes; the buffer's lifetime is the caller's promise.
    let ret = unsafe {
        nix::libc::ioctl(
            card.as_raw_fd(),
            ioctl::QUEUE_BUFFER as nix::libc::c_ulong,
            &mut arg as *mut QueueBuffer,
        )
    };
    Errno::result(ret).map_err(|e| format!("QUEUE_BUFFER: {e}"))?;
    Ok(arg.request_id.get())
}

fn expect_errno(what: &str, got: xxcapture::Result<()>, want: Errno) -> Result<(), String> {
    match got {
        Err(e) if e.errno() == Some(want) => Ok(()),
        other => Err(format!("{what}: {other:?}, expected {want}")),
    }
}

/// Capture buffers queued while capture is stopped stay held by the card
/// until a frame or a cancel returns them: ABORT must return them.
fn abort_buffers(card: &Card, device: &str) -> Check {
    card.write_register(regs::CONTROL, control::ENABLE)
        .map_err(err)?;
    let before = pinned_pages(card)?;
    let mut a = vec![0u8; 640 * 480 * 2];
    let mut b = vec![0u8; 640 * 480 * 2];
    // SAFETY: both live to the end of this function, past their completions.
    let (id_a, id_b) = unsafe { (queue_buffer(card, &mut a)?, queue_buffer(card, &mut b)?) };
    let held = pinned_pages(card)?;
    if held <= before {
        return Err(format!(
            "pinned_pages {before} -> {held} with two buffers queued"
        ));
    }
    quiet(card, Duration::from_millis(200)).map_err(|e| format!("buffers not held: {e}"))?;

    // Another open's ids are not this one's to cancel: an observer cannot
    // abort at all, and an id this open does not own is ENOENT.
    let observer = Card::open(device, Access::Observe).map_err(err)?;
    expect_errno("observer ABORT", observer.abort(id_a), Errno::EBADF)?;
    expect_errno(
        "ABORT of a foreign id",
        card.abort(id_b + 1000),
        Errno::ENOENT,
    )?;

    card.abort(id_a).map_err(err)?;
    let done = completions(card, &[id_a], Duration::from_secs(5))?;
    if done[&id_a].status != TfError::Cancelled as u32 {
        return Err(format!("aborted buffer completed {:?}", done[&id_a]));
    }
    // The other buffer is untouched.
    quiet(card, Duration::from_millis(200)).map_err(|e| format!("after ABORT of one: {e}"))?;
    expect_errno(
        "second ABORT of the same id",
        card.abort(id_a),
        Errno::ENOENT,
    )?;

    card.abort_all().map_err(err)?;
    let done = completions(card, &[id_b], Duration::from_secs(5))?;
    if done[&id_b].status != TfError::Cancelled as u32 {
        return Err(format!("ABORT all: buffer completed {:?}", done[&id_b]));
    }
    card.abort_all().map_err(err)?;
    let after = pinned_pages(card)?;
    if after != before {
        return Err(format!("pinned_pages {before} -> {held} -> {after}"));
    }
    if a.iter().chain(b.iter()).any(|&x| x != 0) {
        return Err("a cancelled buffer was written".into());
    }
    Ok(format!(
        "two held buffers cancelled (one by id, one by ABORT all), pinned_pages {before} -> {held} -> {after}; observer EBADF, foreign and completed ids ENOENT"
    ))
}

/// A small task file queued behind a large DMA is cancelled while the
/// large one copies (or, if the card got to it first, completes OK): each
/// completes exactly once, and nothing stays pinned.
fn abort_task_files(card: &Card, _device: &str) -> Check {
    let ram = card.info().card_ram_size;
    let big_len = ram.min(32 << 20) as usize;
    let mut big = vec![0u8; big_len];
    let mut small = vec![0u8; 4096];
    let before = pinned_pages(card)?;
    let (mut cancelled, mut ran) = (0, 0);
    for round in 0..10 {
        let mut large = TaskFile::new();
        large.dma(
            false,
            dma_dir::FROM_CARD,
            big.as_mut_ptr() as u64,
            0,
            big_len as u64,
        );
        let mut tail = TaskFile::new();
        tail.dma(
            false,
            dma_dir::FROM_CARD,
            small.as_mut_ptr() as u64,
            0,
            4096,
        );
        // SAFETY: both buffers outlive the completions read below and are
        // not touched until then.
        let (first, second) = unsafe {
            (
                card.submit(&large, round).map_err(err)?,
                card.submit(&tail, round).map_err(err)?,
            )
        };
        let asked = if round % 2 == 0 {
            card.abort(second)
        } else {
            card.abort_all()
        };
        match asked {
            Ok(()) => {}
            // It completed before the ABORT: no longer outstanding.
            Err(e) if e.errno() == Some(Errno::ENOENT) => {}
            Err(e) => return Err(format!("ABORT: {e}")),
        }
        let done = completions(card, &[first, second], Duration::from_secs(10))?;
        let (s1, s2) = (done[&first].status, done[&second].status);
        // ABORT all may also catch the large one if the card had not
        // started it.
        let ok_or_cancelled = |s| s == TfError::Ok as u32 || s == TfError::Cancelled as u32;
        if !ok_or_cancelled(s1) || !ok_or_cancelled(s2) {
            return Err(format!("round {round}: completions {s1} and {s2}"));
        }
        if s2 == TfError::Cancelled as u32 {
            cancelled += 1;
        } else {
            ran += 1;
        }
    }
    let after = pinned_pages(card)?;
    if after != before {
        return Err(format!("pinned_pages {before} -> {after}"));
    }
    Ok(format!(
        "task file behind a {} MiB DMA: cancelled {cancelled} of 10 ({ran} ran first), pinned_pages {before} -> {after}",
        big_len >> 20
    ))
}

/// DMA_TRANSFER_NONBLOCK cannot run in a synchronous EXEC (its caller
/// waits): BAD_OP at that command, nothing moved; submitted, it runs.
fn nonblock_in_exec(card: &Card, _device: &str) -> Check {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut back = vec![0u8; 10_000];
    let mut tf = TaskFile::new();
    tf.dma(true, dma_dir::TO_CARD, data.as_ptr() as u64, 5000, 10_000);
    tf.dma(
        false,
        dma_dir::FROM_CARD,
        back.as_mut_ptr() as u64,
        5000,
        10_000,
    );
    match card.run(&tf) {
        Err(Error::Command {
            index: 1,
            code: TfError::BadOp,
        }) => {}
        other => return Err(format!("synchronous EXEC: {other:?}, expected BAD_OP at 1")),
    }
    if back.iter().any(|&b| b != 0) {
        return Err("a refused task file moved data".into());
    }
    // SAFETY: `data` and `back` outlive the completion read below.
    let id = unsafe { card.submit(&tf, 9) }.map_err(err)?;
    let done = completions(card, &[id], Duration::from_secs(10))?;
    if done[&id].status != TfError::Ok as u32 || back != data {
        return Err(format!("submitted: {:?}", done[&id]));
    }
    Ok("EXEC refused BAD_OP at the non-blocking command, nothing moved; SUBMIT ran it".into())
}

/// Another open watching the status block sees DMA_BUSY while large
/// transfers run, and not once they are over.
fn dma_busy(card: &Card, device: &str) -> Check {
    let observer = Card::open(device, Access::Observe).map_err(err)?;
    let view = observer.map_status().map_err(err)?;
    let len = card.info().card_ram_size.min(32 << 20) as usize;
    let mut buf = vec![0u8; len];
    let (done, seen) = (AtomicBool::new(false), AtomicBool::new(false));
    let mut transfers = 0;
    let mut reads = 0u64;
    let result: Result<(), String> = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) && !seen.load(Ordering::Acquire) {
                if let Ok(block) = view.snapshot() {
                    if block.status.get() & status::DMA_BUSY != 0 {
                        seen.store(true, Ordering::Release);
                    }
                }
                n += 1;
            }
            n
        });
        let mut tf = TaskFile::new();
        tf.dma(
            true,
            dma_dir::FROM_CARD,
            buf.as_mut_ptr() as u64,
            0,
            len as u64,
        );
        let mut outcome = Ok(());
        while transfers < 100 && !seen.load(Ordering::Acquire) {
            if let Err(e) = card.run(&tf) {
                outcome = Err(err(e));
                break;
            }
            transfers += 1;
        }
        done.store(true, Ordering::Release);
        reads = watcher.join().unwrap_or(0);
        outcome
    });
    result?;
    if !seen.load(Ordering::Acquire) {
        return Err(format!(
            "DMA_BUSY never seen in {reads} status reads during {transfers} transfers of {} MiB",
            len >> 20
        ));
    }
    let after = view.snapshot().map_err(err)?.status.get();
    if after & status::DMA_BUSY != 0 {
        return Err(format!(
            "DMA_BUSY still set after the transfers: {after:#x}"
        ));
    }
    Ok(format!(
        "seen after {transfers} transfers of {} MiB ({reads} status reads), clear after",
        len >> 20
    ))
}

/// A DMA the card refuses latches DMA_ERROR in STATUS (and the status
/// block) through later good transfers, until CONTROL.DMA_RESET.
fn dma_error(card: &Card, device: &str) -> Check {
    let observer = Card::open(device, Access::Observe).map_err(err)?;
    let view = observer.map_status().map_err(err)?;
    let block_error = || -> Result<bool, String> {
        Ok(view.snapshot().map_err(err)?.status.get() & status::DMA_ERROR != 0)
    };
    let reg_error = || -> Result<bool, String> {
        Ok(card.read_register(regs::STATUS).map_err(err)? & status::DMA_ERROR != 0)
    };
    let reset = || {
        card.write_register(regs::CONTROL, control::ENABLE | control::DMA_RESET)
            .map_err(err)
    };
    reset()?;
    if reg_error()? || block_error()? {
        return Err("DMA_ERROR set after DMA_RESET".into());
    }
    let ram = card.info().card_ram_size;
    let mut buf = vec![0u8; 8192];
    let mut past = TaskFile::new();
    past.dma(
        true,
        dma_dir::FROM_CARD,
        buf.as_mut_ptr() as u64,
        ram - 4096,
        8192,
    );
    match card.run(&past) {
        Err(Error::Command {
            index: 0,
            code: TfError::DmaRange,
        }) => {}
        other => {
            return Err(format!(
                "DMA past card RAM: {other:?}, expected DMA_RANGE at 0"
            ))
        }
    }
    if !reg_error()? || !block_error()? {
        return Err("DMA_ERROR not set by a refused DMA".into());
    }
    let mut good = TaskFile::new();
    good.dma(true, dma_dir::FROM_CARD, buf.as_mut_ptr() as u64, 0, 8192);
    card.run(&good).map_err(err)?;
    if !reg_error()? || !block_error()? {
        return Err("DMA_ERROR cleared by a good transfer".into());
    }
    reset()?;
    if reg_error()? || block_error()? {
        return Err("DMA_ERROR survived DMA_RESET".into());
    }
    Ok("set by a DMA past card RAM (register and status block), kept through a good transfer, cleared by DMA_RESET".into())
}
