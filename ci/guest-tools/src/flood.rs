//! `xxcap-test completion-flood`: an open's record queue overflows with
//! device events while its task files and capture buffers are outstanding,
//! and every completion still arrives. The driver keeps a place in the
//! queue for each request from its ioctl until `read()` returns its
//! completion, so only device events may be dropped (and counted by LOST
//! records); this checks that from user space, and the ENOSPC that comes
//! from those places: 64 completed task files unread block the 65th SUBMIT
//! until one record is read.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use xxcapture::abi::{control, dma_dir, format, ioctl, regs, source, QueueBuffer, TaskFile};
use xxcapture::{Access, Card, Cause, Causes, Error, Event};
use xxcapture_results::{CompletionFlood, Record};

const DEPTH_PARAM: &str = "/sys/module/xxcapture/parameters/event_queue_depth";
/// A wait for the records of one round.
const WAIT: Duration = Duration::from_secs(10);
/// Task files one open may have submitted without reading their records.
const MAX_SUBMITTED: usize = 64;

#[derive(clap::Args)]
pub struct FloodArgs {
    /// The open's device-event depth during the flood (event_queue_depth).
    #[arg(long, default_value_t = 16)]
    depth: u32,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Task files submitted per round, each raising --raises TEST records
    /// and moving 16 KiB from card RAM into a buffer of its own.
    #[arg(long, default_value_t = 16)]
    task_files: usize,
    #[arg(long, default_value_t = 128)]
    raises: u32,
    /// Capture buffers queued per round (320x240 YUYV frames at 60 fps).
    #[arg(long, default_value_t = 8)]
    buffers: usize,
    /// How long the records pile up unread each round.
    #[arg(long, default_value_t = 300)]
    unread_ms: u64,
}

/// Sets event_queue_depth for the opens made while it lives; puts the old
/// value back when dropped.
struct DepthGuard {
    old: String,
}

impl DepthGuard {
    fn set(depth: u32) -> Result<DepthGuard, Error> {
        let sysfs = |source| Error::Sysfs {
            path: DEPTH_PARAM.into(),
            source,
        };
        let old = std::fs::read_to_string(DEPTH_PARAM).map_err(sysfs)?;
        std::fs::write(DEPTH_PARAM, depth.to_string()).map_err(sysfs)?;
        Ok(DepthGuard {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(DEPTH_PARAM, &self.old) {
            eprintln!(
                "completion-flood: cannot restore event_queue_depth {}: {e}",
                self.old
            );
        }
    }
}

fn sysfs_u64(card: &Card, name: &str) -> Option<u64> {
    card.sysfs_attribute(name).ok()?.parse().ok()
}

fn ioctl_err(call: &'static str) -> impl Fn(nix::Error) -> Error {
    move |source| Error::Ioctl { call, source }
}

/// QUEUE_BUFFER of `buffer`; returns the request id.
///
/// # Safety
/// The card writes `buffer` until its completion record has been read:
/// the caller keeps it allocated and untouched until then.
unsafe fn queue_buffer(card: &Card, buffer: &mut [u8], refcon: u64) -> Result<u64, Error> {
    let mut arg = QueueBuffer {
        addr: (buffer.as_mut_ptr() as u64).into(),
        length: (buffer.len() as u64).into(),
        refcon: refcon.into(),
        request_id: 0.into(),
        flags: 0.into(),
        reserved: 0.into(),
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
    nix::errno::Errno::result(ret).map_err(ioctl_err("QUEUE_BUFFER"))?;
    Ok(arg.request_id.get())
}

/// What the records of the run said so far.
#[derive(Default)]
struct Tally {
    /// Submitted task files and queued buffers not completed yet.
    task_files: HashSet<u64>,
    buffers: HashSet<u64>,
    task_files_completed: u64,
    task_file_errors: u64,
    task_file_strays: u64,
    buffers_returned: u64,
    buffer_strays: u64,
    frames: u64,
    received: u64,
    lost: u64,
}

impl Tally {
    fn take(&mut self, ev: &Event) {
        match ev.cause {
            Cause::FrameDone if ev.completion => {
                if self.buffers.remove(&ev.request_id) {
                    self.buffers_returned += 1;
                    self.frames += u64::from(ev.error().is_none());
                } else {
                    self.buffer_strays += 1;
                }
            }
            Cause::DmaDone | Cause::DmaError if ev.completion => {
                if self.task_files.remove(&ev.request_id) {
                    self.task_files_completed += 1;
                    self.task_file_errors += u64::from(ev.error().is_some());
                } else {
                    self.task_file_strays += 1;
                }
            }
            Cause::Test => self.received += 1,
            Cause::Lost => self.lost += u64::from(ev.count),
            _ => {}
        }
    }

    /// Reads records until every outstanding request has completed and
    /// `raised` TEST records are accounted for (received or lost).
    fn drain(&mut self, card: &Card, raised: u64, buf: &mut Vec<Event>) -> Result<(), Error> {
        while !self.task_files.is_empty()
            || !self.buffers.is_empty()
            || self.received + self.lost < raised
        {
            buf.clear();
            if card.wait_events(buf, 256, Some(WAIT))? == 0 {
                return Err(Error::timeout(
                    format!(
                        "completions of {} task files and {} capture buffers, and {} of {raised} TEST records",
                        self.task_files.len(),
                        self.buffers.len(),
                        raised.saturating_sub(self.received + self.lost)
                    ),
                    WAIT,
                ));
            }
            for ev in buf.iter() {
                self.take(ev);
            }
        }
        Ok(())
    }
}

fn set_capture(card: &Card, on: bool) -> Result<(), Error> {
    let mut tf = TaskFile::new();
    let bits = control::CAPTURE | control::STREAM;
    tf.set_to_register(regs::CONTROL, if on { bits } else { 0 }, bits);
    card.run(&tf).map(drop)
}

/// 64 completed task files unread: the 65th SUBMIT is refused with ENOSPC,
/// and accepted once one record has been read. Returns both answers.
fn enospc_check(card: &Card, buf: &mut Vec<Event>) -> Result<(bool, bool), Error> {
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    let before = sysfs_u64(card, "completions").unwrap_or(0);
    for _ in 0..MAX_SUBMITTED {
        // SAFETY: no DMA command in the task file.
        unsafe { card.submit(&tf, 0)? };
    }
    // The records are queued once the driver counted the completions.
    let deadline = Instant::now() + WAIT;
    while sysfs_u64(card, "completions").unwrap_or(0) < before + MAX_SUBMITTED as u64 {
        if Instant::now() >= deadline {
            return Err(Error::timeout(
                format!("completion of {MAX_SUBMITTED} task files (sysfs completions)"),
                WAIT,
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: as above.
    let refused = matches!(
        unsafe { card.submit(&tf, 0) },
        Err(Error::Ioctl {
            source: nix::errno::Errno::ENOSPC,
            ..
        })
    );
    let mut unread = MAX_SUBMITTED + usize::from(!refused);
    buf.clear();
    unread -= card.read_events(buf, 1)?;
    // SAFETY: as above.
    let accepted = unsafe { card.submit(&tf, 0) }.is_ok();
    unread += usize::from(accepted);
    while unread > 0 {
        buf.clear();
        if card.wait_events(buf, 256, Some(WAIT))? == 0 {
            return Err(Error::timeout(
                format!("completions of the last {unread} task files"),
                WAIT,
            ));
        }
        unread = unread.saturating_sub(buf.iter().filter(|e| e.completion).count());
    }
    Ok((refused, accepted))
}

pub fn run(device: &str, args: FloodArgs) -> Result<ExitCode, Error> {
    let guard = DepthGuard::set(args.depth)?;
    let card = Card::open(device, Access::Control)?;
    // The open has its depth: later opens get the old one again.
    drop(guard);
    card.subscribe(Causes::TEST)?;
    card.enable_interrupts(Causes::TEST, 1, 0)?;
    let dropped_before = sysfs_u64(&card, "events_dropped").unwrap_or(0);
    let card_lost_before = card.read_register(regs::EVENTS_LOST)?;

    let (width, height) = (320u32, 240u32);
    let mut setup = TaskFile::new();
    setup.set_to_register(regs::CONTROL, 0, control::CAPTURE | control::STREAM);
    setup.set_register(regs::FRAME_FORMAT, format::YUYV);
    setup.set_register(regs::FRAME_WIDTH, width);
    setup.set_register(regs::FRAME_HEIGHT, height);
    setup.set_register(regs::FRAME_RATE, 60);
    setup.set_register(regs::FRAME_SOURCE, source::TEST_PATTERN);
    card.run(&setup)?;
    let frame_size = (width * height * 2) as usize;
    let dma_size = 16usize << 10;

    let mut raise = TaskFile::new();
    for _ in 0..args.raises {
        raise.set_register(regs::INT_RAISE, xxcapture::abi::irq::TEST);
    }
    let mut tally = Tally::default();
    let mut buf = Vec::new();
    // Buffers live until the end of the run: each is handed back by its
    // completion record, which drain() reads before the next round.
    let mut frames: Vec<Vec<u8>> = (0..args.buffers).map(|_| vec![0u8; frame_size]).collect();
    let mut dma: Vec<Vec<u8>> = (0..args.task_files).map(|_| vec![0u8; dma_size]).collect();
    let (mut submitted, mut queued, mut raised) = (0u64, 0u64, 0u64);
    let mut max_pinned = 0u64;
    for round in 0..args.rounds {
        for (i, buffer) in frames.iter_mut().enumerate() {
            // SAFETY: the buffer stays allocated and untouched until
            // drain() has read its completion.
            let id = unsafe { queue_buffer(&card, buffer, i as u64)? };
            tally.buffers.insert(id);
            queued += 1;
        }
        if round == 0 {
            set_capture(&card, true)?;
        }
        for (i, buffer) in dma.iter_mut().enumerate() {
            let mut tf = raise.clone();
            tf.dma(
                false,
                dma_dir::FROM_CARD,
                buffer.as_mut_ptr() as u64,
                (i * dma_size) as u64,
                dma_size as u64,
            );
            // SAFETY: as for the capture buffers.
            let id = unsafe { card.submit(&tf, i as u64)? };
            tally.task_files.insert(id);
            submitted += 1;
            raised += u64::from(args.raises);
        }
        max_pinned = max_pinned.max(sysfs_u64(&card, "pinned_pages").unwrap_or(0));
        // Nobody reads: the device events overflow the open's queue while
        // the completions pile up in the places kept for them.
        std::thread::sleep(Duration::from_millis(args.unread_ms));
        tally.drain(&card, raised, &mut buf)?;
        println!(
            "completion-flood: round {}: {} task files and {} buffers back, TEST {} received + {} lost of {raised}",
            round + 1,
            tally.task_files_completed,
            tally.buffers_returned,
            tally.received,
            tally.lost
        );
    }
    set_capture(&card, false)?;
    let (enospc, accepted) = enospc_check(&card, &mut buf)?;

    // Pins go when the requests finish; every record has been read.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pinned = sysfs_u64(&card, "pinned_pages");
    while pinned != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        pinned = sysfs_u64(&card, "pinned_pages");
    }
    let r = CompletionFlood {
        depth: u64::from(args.depth),
        rounds: args.rounds,
        task_files_submitted: submitted,
        task_files_completed: tally.task_files_completed,
        task_file_errors: tally.task_file_errors,
        task_file_strays: tally.task_file_strays,
        buffers_queued: queued,
        buffers_returned: tally.buffers_returned,
        buffer_strays: tally.buffer_strays,
        frames: tally.frames,
        raised,
        received: tally.received,
        lost: tally.lost,
        events_dropped_delta: sysfs_u64(&card, "events_dropped")
            .unwrap_or(0)
            .saturating_sub(dropped_before),
        card_events_lost_delta: u64::from(
            card.read_register(regs::EVENTS_LOST)?
                .wrapping_sub(card_lost_before),
        ),
        pinned_pages_after: pinned,
        enospc_with_64_unread: enospc,
        submit_after_one_read: accepted,
    };
    println!(
        "completion-flood: depth {}: task files {} submitted, {} completed ({} failed, {} strays); buffers {} queued, {} returned ({} frames, {} strays); TEST raised {}, received {}, lost {}; events_dropped +{}, card EVENTS_LOST +{}; pinned pages {} (at most {max_pinned} while in flight); ENOSPC with 64 unread: {}, SUBMIT after one read: {}",
        r.depth,
        r.task_files_submitted,
        r.task_files_completed,
        r.task_file_errors,
        r.task_file_strays,
        r.buffers_queued,
        r.buffers_returned,
        r.frames,
        r.buffer_strays,
        r.raised,
        r.received,
        r.lost,
        r.events_dropped_delta,
        r.card_events_lost_delta,
        r.pinned_pages_after.map_or("n/a".into(), |p| p.to_string()),
        r.enospc_with_64_unread,
        r.submit_after_one_read,
    );
    let ok = r.task_files_completed == r.task_files_submitted
        && r.task_file_errors == 0
        && r.task_file_strays == 0
        && r.buffers_returned == r.buffers_queued
        && r.buffer_strays == 0
        && r.received + r.lost == r.raised
        && r.events_dropped_delta > 0
        && r.pinned_pages_after == Some(0)
        && r.enospc_with_64_unread
        && r.submit_after_one_read;
    Record::CompletionFlood(r).print();
    card.enable_interrupts(Causes::empty(), 1, 0)?;
    // The buffers were handed back by their completions.
    drop((frames, dma));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
