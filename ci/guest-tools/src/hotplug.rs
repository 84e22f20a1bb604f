//! `xxcap-test hotplug`: one long-running program across card removals.
//!
//! Each round it finds the card through sysfs, then uses it every way at
//! once: the controlling open streams verified frames into its own buffers
//! (`QUEUE_BUFFER`), a second thread runs DMA task files (`EXEC`) on the
//! same open, an observer open waits in a blocking `read()`, and card RAM
//! and the status block stay mapped. Once `--frames` frames are verified it
//! says so (`XXCAP-HOTPLUG round R streaming`) and goes on until the host
//! removes the card; then every one of those must fail with `ENODEV`, the
//! uevent monitor must report the removal, and, once everything is closed
//! and unmapped and the driver's `remove()` has returned (the card's
//! virtio device is gone from sysfs), every page pinned must be unpinned
//! and the card's node and sysfs folder gone (`released`). It then waits
//! for the monitor to report a card added and starts the next round on
//! it. The last round ends after its verified frames (`done`).
//!
//! Lines: `XXCAP-HOTPLUG round R streaming card=DEV verified=N`,
//! `... round R failed what=W kind=ERRNO`, `... round R removed DEV`,
//! `... round R released pins acquired=A released=B node=gone|present`,
//! `... round R added DEV`, `XXCAP-HOTPLUG done rounds=R`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use nix::errno::Errno;
use xxcapture::abi::{dma_dir, frame, TaskFile};
use xxcapture::{Access, Card, CardChange, Error, FrameFormat, Monitor, PixelFormat};

#[derive(Args)]
pub struct HotplugArgs {
    /// Removals to live through (the program ends after a verified capture
    /// on the card added after the last one).
    #[arg(long, default_value_t = 3)]
    removals: u32,
    /// Frames to verify on each card before saying it streams.
    #[arg(long, default_value_t = 30)]
    frames: u32,
    /// Seconds to wait for the host to remove or add the card.
    #[arg(long, default_value_t = 120)]
    wait: u64,
}

/// How a call failed: the errno's name, or the whole error.
fn kind(e: &Error) -> String {
    match e.errno() {
        Some(errno) => format!("{errno:?}"),
        None => format!("other({e})"),
    }
}

fn say(text: &str) {
    println!("XXCAP-HOTPLUG {text}");
}

/// `nr_foll_pin_acquired` and `nr_foll_pin_released` of /proc/vmstat:
/// every page pinned with FOLL_PIN, by anyone, and every one let go.
fn pins() -> Result<(u64, u64), String> {
    // Folds the per-CPU deltas into the totals first.
    std::fs::write("/proc/sys/vm/stat_refresh", "1").map_err(|e| format!("stat_refresh: {e}"))?;
    let text = std::fs::read_to_string("/proc/vmstat").map_err(|e| format!("/proc/vmstat: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/vmstat"))
    };
    Ok((
        field("nr_foll_pin_acquired ")?,
        field("nr_foll_pin_released ")?,
    ))
}

/// The card's virtio device in sysfs (the parent of its class device).
/// Its folder goes only after the driver's `remove()` has returned, while
/// the card's node and class device go (with their `remove` uevent) at
/// the start of `remove()`.
fn virtio_device(dev: &Path) -> Result<PathBuf, String> {
    let name = dev
        .file_name()
        .ok_or_else(|| format!("{}: no node name", dev.display()))?;
    let link = Path::new("/sys/class/xxcapture").join(name).join("device");
    std::fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))
}

/// Waits until `path` is gone, at most `wait`.
fn wait_gone(path: &Path, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    while path.exists() {
        if Instant::now() >= deadline {
            return Err(format!("{} still there after {wait:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The first card sysfs lists.
fn present_card() -> Result<Option<PathBuf>, String> {
    let cards = xxcapture::cards().map_err(|e| e.to_string())?;
    Ok(cards.into_iter().next().map(|c| c.dev_path))
}

/// Records how one user of the card failed, and says it.
fn fail(failures: &mut Vec<(&'static str, String)>, what: &'static str, how: String) {
    say(&format!(
        "round {} failed what={what} kind={how}",
        ROUND.load(Ordering::Relaxed)
    ));
    failures.push((what, how));
}

/// The round under way, for `fail`'s lines.
static ROUND: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Streams until the card goes; returns how each user failed.
fn use_until_removed(
    dev: &Path,
    round: u32,
    frames: u32,
    last: bool,
) -> Result<Vec<(&'static str, String)>, String> {
    ROUND.store(round, Ordering::Relaxed);
    let card = Card::open(dev, Access::Control).map_err(|e| e.to_string())?;
    let observer = Card::open(dev, Access::Observe).map_err(|e| e.to_string())?;
    let ram = card.map_card_ram().map_err(|e| e.to_string())?;
    let status = card.map_status().map_err(|e| e.to_string())?;
    status.snapshot().map_err(|e| e.to_string())?;
    let fmt = FrameFormat {
        pixel_format: PixelFormat::Yuyv,
        width: 640,
        height: 480,
        fps: 0,
    };
    let dma_len = 1usize << 20;
    let dma_offset = card
        .info()
        .card_ram_size
        .checked_sub(dma_len as u64)
        .ok_or("card RAM smaller than 1 MiB")?;
    let stop = AtomicBool::new(false);
    let mut failures = Vec::new();
    std::thread::scope(|s| -> Result<(), String> {
        // A blocking read() on the observer: only removal ends it (so not
        // on the last card, which stays).
        let waiter = (!last).then(|| {
            s.spawn(|| {
                let mut out = Vec::new();
                loop {
                    if let Err(e) = observer.wait_events(&mut out, 16, None) {
                        return kind(&e);
                    }
                    out.clear();
                }
            })
        });
        // DMA task files in flight on the controlling open.
        let dma = s.spawn(|| {
            let mut buf = vec![0x5au8; dma_len];
            let mut n = 0u64;
            // Until the card goes (or, on the last card, until told).
            while !(last && stop.load(Ordering::Relaxed)) {
                let dir = if n.is_multiple_of(2) {
                    dma_dir::TO_CARD
                } else {
                    dma_dir::FROM_CARD
                };
                let mut tf = TaskFile::new();
                tf.dma(
                    true,
                    dir,
                    buf.as_mut_ptr() as u64,
                    dma_offset,
                    dma_len as u64,
                );
                match card.execute(&tf) {
                    Ok(r) if r.error == xxcapture::TfError::Ok => n += 1,
                    Ok(r) => return format!("task-file-error({:?})", r.error),
                    Err(e) => return kind(&e),
                }
            }
            "stopped".to_string()
        });
        let streamed = (|| -> Result<(), (&'static str, String)> {
            let mut stream = card
                .start_stream(fmt, false, 4)
                .map_err(|e| ("start-stream", kind(&e)))?;
            let mut verified = 0u32;
            loop {
                let f = stream
                    .next_frame(Duration::from_secs(10))
                    .map_err(|e| ("stream", kind(&e)))?;
                frame::verify(f.data(), fmt.pixel_format, fmt.width, fmt.height)
                    .map_err(|e| ("verify", format!("corrupt frame {}: {e}", f.number)))?;
                verified += 1;
                if verified == frames {
                    say(&format!(
                        "round {round} streaming card={} verified={verified}",
                        dev.display()
                    ));
                    if last {
                        return Ok(());
                    }
                }
                stream
                    .requeue(f)
                    .map_err(|e| ("stream-requeue", kind(&e)))?;
            }
        })();
        stop.store(true, Ordering::Relaxed);
        if let Err((what, how)) = streamed {
            // Said at once: if the card is still there, the host needs to
            // see why nothing goes on.
            fail(&mut failures, what, how);
        }
        let dma = dma.join().map_err(|_| "DMA thread panicked")?;
        if !last || dma != "stopped" {
            fail(&mut failures, "dma", dma);
        }
        if let Some(waiter) = waiter {
            let how = waiter.join().map_err(|_| "reader panicked")?;
            fail(&mut failures, "observer-read", how);
        }
        Ok(())
    })?;
    if last {
        // The card stays: its users ended well (or failed) on their own.
        return Ok(failures);
    }
    // Further calls on the files still open fail the same way.
    let how = card.nop().err().map_or("ok".into(), |e| kind(&e));
    fail(&mut failures, "nop", how);
    let how = observer.nop().err().map_or("ok".into(), |e| kind(&e));
    fail(&mut failures, "observer-nop", how);
    // The mappings are revoked by remove() (which may still be on its way
    // when the calls above already fail): from then on they read as
    // zeroes, no SIGBUS, and the status block without its magic is a card
    // reset to the library.
    let revoked_by = Instant::now() + Duration::from_secs(5);
    let how = loop {
        let how = match status.snapshot() {
            Err(Error::CardReset) => "CardReset".to_string(),
            Err(e) => kind(&e),
            Ok(_) => "ok".into(),
        };
        if how != "ok" || Instant::now() >= revoked_by {
            break how;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if how != "CardReset" {
        fail(&mut failures, "status-after-removal", how);
    }
    if ram.as_slice().iter().step_by(4096).any(|&b| b != 0) {
        fail(&mut failures, "ram-after-removal", "nonzero".into());
    }
    drop(ram);
    drop(status);
    Ok(failures)
}

pub fn run(args: HotplugArgs) -> Result<ExitCode, String> {
    let wait = Duration::from_secs(args.wait);
    // Listening before listing: nothing is missed in between.
    let mut monitor = Monitor::new().map_err(|e| e.to_string())?;
    let mut dev = present_card()?.ok_or("no card present")?;
    let mut ok = true;
    for round in 1..=args.removals + 1 {
        let last = round == args.removals + 1;
        let virtio = virtio_device(&dev)?;
        let failures = use_until_removed(&dev, round, args.frames, last)?;
        for (_, how) in &failures {
            ok &= !last && how == &format!("{:?}", Errno::ENODEV);
        }
        if last {
            say(&format!("done rounds={round} ok={ok}"));
            break;
        }
        // The monitor saw the card go (possibly before the calls failed).
        let mut removed = None;
        monitor
            .watch(Some(wait), |change| match change {
                CardChange::Removed(card) if card.dev_path == dev => {
                    removed = Some(card.dev_path.clone());
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            })
            .map_err(|e| e.to_string())?;
        let removed = removed.ok_or_else(|| format!("round {round}: no removal reported"))?;
        say(&format!("round {round} removed {}", removed.display()));
        // Everything of the old card is closed now. The removal uevent
        // comes from the start of the driver's remove(); its promise that
        // every page pinned for the card is let go holds once remove()
        // has returned (the card's requests and queued capture buffers
        // are reclaimed after the node goes), which the virtio device's
        // folder going tells.
        wait_gone(&virtio, wait).map_err(|e| format!("round {round}: {e}"))?;
        let (acquired, released) = pins()?;
        let node = if dev.exists() { "present" } else { "gone" };
        say(&format!(
            "round {round} released pins acquired={acquired} released={released} node={node} cards={}",
            xxcapture::cards().map_err(|e| e.to_string())?.len()
        ));
        ok &= acquired == released && node == "gone";
        let mut added = None;
        monitor
            .watch(Some(wait), |change| match change {
                CardChange::Added(card) => {
                    added = Some(card.dev_path.clone());
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            })
            .map_err(|e| e.to_string())?;
        dev = added.ok_or_else(|| format!("round {round}: no card added"))?;
        say(&format!("round {round} added {}", dev.display()));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
