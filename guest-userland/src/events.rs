//! Interrupts as event records: the Double X design's "asynchronous notification".
//!
//! User space never takes an interrupt. The driver turns each one into a
//! 64-byte record and queues it for the open that wants it; a thread of the
//! application waits in `poll`/`read` and takes many records per crossing.
//! Completions of the application's own requests (submitted task files,
//! queued capture buffers) arrive the same way, carrying its reference value
//! (the Double X design's refcon).
//!
//! # What can be lost
//!
//! A completion is never lost: each submitted task file and each queued
//! capture buffer holds a place in its open's queue from the ioctl until
//! `read()` has returned its completion record, so however many device
//! events are waiting, the completion finds room. (That is also why
//! `SUBMIT` and `QUEUE_BUFFER` fail with ENOSPC while too many completions
//! are unread: read them.) Device events (FRAME_DONE of the capture engine,
//! TEST, OVERFLOW, ...) beyond an open's `event_queue_depth` are dropped;
//! a [`Cause::Lost`] record then stands where they were, its `count`
//! saying how many. It counts device events only, and completions queued
//! meanwhile may come before it.
//!
//! So a wait for a completion that runs out means the card has not
//! finished the request (or the backend is gone), not that its record was
//! lost: every wait of this library takes a timeout, and its
//! [`Error::Timeout`] names what it waited for.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use xxcapture_abi::{event, irq, regs, Event as RawEvent, Submit, Subscribe, TaskFile, TfError};
use zerocopy::FromBytes;
#[cfg(test)]
use zerocopy::IntoBytes;

use crate::card::Card;
use crate::error::{Error, Result};
use crate::sys;

bitflags::bitflags! {
    /// Interrupt causes, as INT_MASK and SUBSCRIBE take them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Causes: u32 {
        const FRAME_DONE = irq::FRAME_DONE;
        const DMA_DONE = irq::DMA_DONE;
        const DMA_ERROR = irq::DMA_ERROR;
        const OVERFLOW = irq::OVERFLOW;
        const TEST = irq::TEST;
    }
}

/// What a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    FrameDone,
    DmaDone,
    DmaError,
    Overflow,
    Test,
    /// `count` device events were lost because a queue was full (the
    /// open's, or the card's backlog). Completions are never lost.
    Lost,
}

impl Cause {
    fn from_raw(raw: u32) -> Option<Cause> {
        Some(match raw {
            irq::FRAME_DONE => Cause::FrameDone,
            irq::DMA_DONE => Cause::DmaDone,
            irq::DMA_ERROR => Cause::DmaError,
            irq::OVERFLOW => Cause::Overflow,
            irq::TEST => Cause::Test,
            event::LOST => Cause::Lost,
            _ => return None,
        })
    }
}

/// One event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub cause: Cause,
    /// Completions: the request's task-file error code (0 = OK).
    pub status: u32,
    /// Device events: the device's event number since reset.
    pub sequence: u64,
    pub frame_number: u64,
    /// Completions: the id `submit` or `queue_buffer` returned.
    pub request_id: u64,
    /// Completions: the caller's reference value.
    pub refcon: u64,
    /// Device clock when the cause occurred.
    pub device_time_ns: u64,
    /// Guest CLOCK_MONOTONIC when the driver took the record.
    pub guest_time_ns: u64,
    /// Lost: device events lost; FRAME_DONE of a buffer: bytes; task files: the
    /// out count (failing command index).
    pub count: u32,
    /// Made by the driver from the completion of one of this open's requests.
    pub completion: bool,
}

impl Event {
    pub(crate) fn from_raw(raw: &RawEvent) -> Result<Event> {
        Ok(Event {
            cause: Cause::from_raw(raw.cause.get()).ok_or(Error::Protocol)?,
            status: raw.status.get(),
            sequence: raw.sequence.get(),
            frame_number: raw.frame_number.get(),
            request_id: raw.request_id.get(),
            refcon: raw.refcon.get(),
            device_time_ns: raw.device_time_ns.get(),
            guest_time_ns: raw.guest_time_ns.get(),
            count: raw.count.get(),
            completion: raw.flags.get() & event::FLAG_COMPLETION != 0,
        })
    }

    /// The request's outcome, for completions: `None` when it succeeded.
    pub fn error(&self) -> Option<TfError> {
        match self.status {
            0 => None,
            code => Some(TfError::from_raw(code).unwrap_or(TfError::Device)),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `Event::guest_time_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Records fetched per `read()` at most.
const READ_BATCH: usize = 256;

impl Card {
    /// Chooses the causes this open receives as records; returns the old
    /// choice. Completions of this open's own requests always arrive.
    pub fn subscribe(&self, causes: Causes) -> Result<Causes> {
        let mut arg = Subscribe {
            mask: causes.bits().into(),
            flags: 0.into(),
        };
        // SAFETY: `arg` is a live repr(C) struct of the size the ioctl
        // number encodes.
        unsafe { sys::xxcap_subscribe(self.as_raw_fd(), &mut arg) }.map_err(|source| {
            Error::Ioctl {
                call: "SUBSCRIBE",
                source,
            }
        })?;
        Ok(Causes::from_bits_truncate(arg.mask.get()))
    }

    /// Enables `causes` on the card (INT_MASK) and sets coalescing: records
    /// are delivered after `count` of them or after `usec` microseconds,
    /// whichever comes first (0 and 1 mean each; usec 0 means no limit).
    pub fn enable_interrupts(&self, causes: Causes, count: u32, usec: u32) -> Result<()> {
        let mut tf = TaskFile::new();
        tf.set_register(regs::INT_COALESCE_COUNT, count);
        tf.set_register(regs::INT_COALESCE_USEC, usec);
        tf.set_register(regs::INT_MASK, causes.bits());
        self.run(&tf).map(drop)
    }

    /// Waits up to `timeout` (`None`: forever) for records and appends what
    /// one `read()` returns, at most `max`. Returns how many were appended:
    /// 0 only when the timeout passed.
    pub fn wait_events(
        &self,
        out: &mut Vec<Event>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        if let Some(timeout) = timeout {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
                match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(0) if Instant::now() >= deadline => return Ok(0),
                    Ok(0) => continue,
                    Ok(_) => {
                        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                        if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
                            && !revents.contains(PollFlags::POLLIN)
                        {
                            return Err(Error::Ioctl {
                                call: "poll",
                                source: nix::errno::Errno::ENODEV,
                            });
                        }
                        break;
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(source) => {
                        return Err(Error::Ioctl {
                            call: "poll",
                            source,
                        })
                    }
                }
            }
        }
        self.read_events(out, max)
    }

    /// One blocking `read()` of up to `max` records, appended to `out`.
    /// Returns EINTR as an error when a signal interrupts the wait.
    pub fn read_events(&self, out: &mut Vec<Event>, max: usize) -> Result<usize> {
        let n = max.clamp(1, READ_BATCH);
        // On the stack: this runs once per wake-up of every event reader.
        let mut raw = [0u8; READ_BATCH * event::SIZE];
        let got = nix::unistd::read(&self.file, &mut raw[..n * event::SIZE]).map_err(|source| {
            Error::Ioctl {
                call: "read",
                source,
            }
        })?;
        parse_records_into(&raw[..got], out)
    }

    /// Blocking iterator over records, fetched in batches.
    pub fn events(&self) -> Events<'_> {
        Events {
            card: self,
            batch: Vec::new(),
            next: 0,
        }
    }

    /// Starts `task_file` without waiting for it; returns the request id
    /// its completion record (DMA_DONE or DMA_ERROR) carries with `refcon`.
    /// GET results are not returned by asynchronous task files.
    ///
    /// # Safety
    /// DMA commands in `task_file` name buffers by address. The driver pins
    /// them until the device is done, but the caller must keep each buffer
    /// allocated and not otherwise accessed until the completion arrives
    /// ([`AsyncDma`] does that bookkeeping safely).
    pub unsafe fn submit(&self, task_file: &TaskFile, refcon: u64) -> Result<u64> {
        let bytes = task_file.to_bytes();
        self.submit_raw(&bytes, refcon)
    }

    /// Cancels the request `id` of this open (a [`Card::submit`] task file
    /// or a queued capture buffer) if the card has not started it: its one
    /// completion record then says CANCELLED (`TfError::Cancelled`), and
    /// its pages are unpinned. One the card already started completes
    /// with its own result. Returns when the card has answered; the record
    /// follows through [`Card::read_events`]. An id that is not one of this
    /// open's outstanding requests (completed, or another open's) is
    /// `ENOENT`.
    pub fn abort(&self, id: u64) -> Result<()> {
        self.abort_raw(id, 0)
    }

    /// [`Card::abort`] of every request this open has outstanding (none is
    /// fine).
    pub fn abort_all(&self) -> Result<()> {
        self.abort_raw(0, xxcapture_abi::abort_flags::ALL)
    }

    fn abort_raw(&self, id: u64, flags: u32) -> Result<()> {
        let arg = xxcapture_abi::Abort {
            request_id: id.into(),
            flags: flags.into(),
            reserved: 0.into(),
        };
        // SAFETY: `arg` lives for the call; the driver only reads it.
        unsafe { sys::xxcap_abort(self.as_raw_fd(), &arg) }.map_err(|source| Error::Ioctl {
            call: "ABORT",
            source,
        })?;
        Ok(())
    }

    /// SUBMIT of raw bytes (tests of malformed input). Same contract as
    /// [`Card::submit`].
    ///
    /// # Safety
    /// As [`Card::submit`].
    pub unsafe fn submit_raw(&self, bytes: &[u8], refcon: u64) -> Result<u64> {
        let mut arg = Submit {
            task_file: (bytes.as_ptr() as u64).into(),
            size: u32::try_from(bytes.len()).unwrap_or(u32::MAX).into(),
            flags: 0.into(),
            refcon: refcon.into(),
            request_id: 0.into(),
        };
        // SAFETY: `arg` points at `bytes`, which lives for the call (the
        // driver copies the task file in before returning).
        unsafe { sys::xxcap_submit(self.as_raw_fd(), &mut arg) }.map_err(|source| {
            Error::Ioctl {
                call: "SUBMIT",
                source,
            }
        })?;
        Ok(arg.request_id.get())
    }
}

/// See [`Card::events`]. Ends with an error when the card goes away.
pub struct Events<'c> {
    card: &'c Card,
    batch: Vec<Event>,
    next: usize,
}

impl Iterator for Events<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        if self.next == self.batch.len() {
            self.batch.clear();
            self.next = 0;
            loop {
                match self.card.read_events(&mut self.batch, READ_BATCH) {
                    Ok(_) => break,
                    Err(Error::Ioctl {
                        source: nix::errno::Errno::EINTR,
                        ..
                    }) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        let event = self.batch.get(self.next).copied()?;
        self.next += 1;
        Some(Ok(event))
    }
}

/// The outcome of an asynchronous DMA.
#[derive(Debug)]
pub struct Completion {
    pub request_id: u64,
    pub refcon: u64,
    /// `None` on success.
    pub error: Option<TfError>,
    pub device_time_ns: u64,
    pub guest_time_ns: u64,
    /// The buffer, handed back: for a transfer from the card it holds the
    /// data.
    pub buffer: Vec<u8>,
}

type Callback = Box<dyn FnOnce(Completion)>;

struct Pending {
    buffer: Vec<u8>,
    callback: Option<Callback>,
}

/// Asynchronous DMA with owned buffers: the Double X `DMATransferNonBlock` with
/// an `IOAsyncCallback` and refcon. Each transfer takes its buffer by value
/// and gives it back in its [`Completion`], so no buffer can be freed or
/// touched while the card may still write it. Completions come either to a
/// callback ([`AsyncDma::dma_with_callback`]) or from [`AsyncDma::poll`]
/// and [`AsyncDma::wait_for`].
///
/// Records that are not completions of this queue's requests are kept and
/// handed out by [`AsyncDma::take_other_events`]. Every transfer's
/// completion arrives (the driver never drops one); LOST records count
/// device events only ([`AsyncDma::lost_events`]).
pub struct AsyncDma<'c> {
    card: &'c Card,
    pending: std::collections::HashMap<u64, Pending>,
    ready: std::collections::VecDeque<Completion>,
    other: Vec<Event>,
    scratch: Vec<Event>,
    lost_events: u64,
}

/// Direction of a transfer, seen from the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToCard,
    FromCard,
}

impl<'c> AsyncDma<'c> {
    pub fn new(card: &'c Card) -> Self {
        AsyncDma {
            card,
            pending: Default::default(),
            ready: Default::default(),
            other: Vec::new(),
            scratch: Vec::new(),
            lost_events: 0,
        }
    }

    /// Device events the driver dropped for this open so far, as LOST
    /// records counted them (completions are never among them).
    pub fn lost_events(&self) -> u64 {
        self.lost_events
    }

    /// Transfers not completed yet.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    fn start(
        &mut self,
        direction: Direction,
        mut buffer: Vec<u8>,
        card_offset: u64,
        refcon: u64,
        callback: Option<Callback>,
    ) -> Result<u64> {
        let dir = match direction {
            Direction::ToCard => xxcapture_abi::dma_dir::TO_CARD,
            Direction::FromCard => xxcapture_abi::dma_dir::FROM_CARD,
        };
        let mut tf = TaskFile::new();
        tf.dma(
            false,
            dir,
            buffer.as_mut_ptr() as u64,
            card_offset,
            buffer.len() as u64,
        );
        // SAFETY: the buffer moves into `pending` below and stays there,
        // untouched, until its completion record arrives (or, if it never
        // does, until Drop leaks it).
        let id = unsafe { self.card.submit(&tf, refcon)? };
        self.pending.insert(id, Pending { buffer, callback });
        Ok(id)
    }

    /// Starts a transfer; its completion comes from `poll`/`wait_for`.
    pub fn dma(
        &mut self,
        direction: Direction,
        buffer: Vec<u8>,
        card_offset: u64,
        refcon: u64,
    ) -> Result<u64> {
        self.start(direction, buffer, card_offset, refcon, None)
    }

    /// Starts a transfer whose completion runs `callback` (from inside
    /// `poll` or `wait_for`, on the caller's thread).
    pub fn dma_with_callback(
        &mut self,
        direction: Direction,
        buffer: Vec<u8>,
        card_offset: u64,
        refcon: u64,
        callback: impl FnOnce(Completion) + 'static,
    ) -> Result<u64> {
        self.start(
            direction,
            buffer,
            card_offset,
            refcon,
            Some(Box::new(callback)),
        )
    }

    /// Takes available records (waiting up to `timeout` for the first),
    /// runs callbacks, and returns completions without callback.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Vec<Completion>> {
        if self.ready.is_empty() {
            self.pump(timeout)?;
        }
        Ok(self.ready.drain(..).collect())
    }

    /// Waits for one request (the synchronous model over the asynchronous
    /// path). Other completions stay queued for `poll`. Running out of
    /// `timeout` is an [`Error::Timeout`] naming the request.
    pub fn wait_for(&mut self, request_id: u64, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.ready.iter().position(|c| c.request_id == request_id) {
                if let Some(done) = self.ready.remove(at) {
                    return Ok(done);
                }
            }
            if !self.pending.contains_key(&request_id) {
                return Err(Error::UnknownRequest(request_id));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::timeout(
                    format!("completion of request {request_id}"),
                    timeout,
                ));
            }
            self.pump(Some(left))?;
        }
    }

    /// Records that were not completions of this queue's transfers.
    pub fn take_other_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.other)
    }

    fn pump(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.scratch.clear();
        let mut batch = std::mem::take(&mut self.scratch);
        let got = self.card.wait_events(&mut batch, READ_BATCH, timeout);
        for ev in batch.drain(..) {
            if ev.cause == Cause::Lost {
                self.lost_events += u64::from(ev.count);
            }
            let mine = ev.completion
                && matches!(ev.cause, Cause::DmaDone | Cause::DmaError)
                && self.pending.contains_key(&ev.request_id);
            if !mine {
                self.other.push(ev);
                continue;
            }
            let Some(p) = self.pending.remove(&ev.request_id) else {
                continue;
            };
            let done = Completion {
                request_id: ev.request_id,
                refcon: ev.refcon,
                error: ev.error(),
                device_time_ns: ev.device_time_ns,
                guest_time_ns: ev.guest_time_ns,
                buffer: p.buffer,
            };
            match p.callback {
                Some(cb) => cb(done),
                None => self.ready.push_back(done),
            }
        }
        self.scratch = batch;
        got.map(drop)
    }
}

impl Drop for AsyncDma<'_> {
    fn drop(&mut self) {
        // The card may still write into outstanding buffers: wait a while for
        // them, and leak whatever is still pending rather than free memory
        // a device could write.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pending.is_empty() && Instant::now() < deadline {
            if self.pump(Some(Duration::from_millis(100))).is_err() {
                break;
            }
        }
        for (_, p) in self.pending.drain() {
            std::mem::forget(p.buffer);
        }
    }
}

/// Appends the whole records in `bytes` to `out`; returns how many.
fn parse_records_into(bytes: &[u8], out: &mut Vec<Event>) -> Result<usize> {
    if !bytes.len().is_multiple_of(event::SIZE) {
        return Err(Error::Protocol);
    }
    out.reserve(bytes.len() / event::SIZE);
    for chunk in bytes.chunks_exact(event::SIZE) {
        let raw = RawEvent::read_from_bytes(chunk).map_err(|_| Error::Protocol)?;
        out.push(Event::from_raw(&raw)?);
    }
    Ok(bytes.len() / event::SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_records(bytes: &[u8]) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        parse_records_into(bytes, &mut out).map(|_| out)
    }

    #[test]
    fn records_parse_with_their_flags() {
        let raw = RawEvent {
            cause: irq::DMA_ERROR.into(),
            status: (TfError::DmaRange as u32).into(),
            request_id: 7.into(),
            refcon: 42.into(),
            count: 1.into(),
            flags: event::FLAG_COMPLETION.into(),
            ..Default::default()
        };
        let parsed = parse_records(raw.as_bytes()).expect("parse");
        assert_eq!(parsed.len(), 1);
        let ev = parsed[0];
        assert_eq!(ev.cause, Cause::DmaError);
        assert_eq!(ev.error(), Some(TfError::DmaRange));
        assert!(ev.completion);
        assert_eq!((ev.request_id, ev.refcon), (7, 42));
    }

    #[test]
    fn unknown_causes_are_protocol_errors() {
        let raw = RawEvent {
            cause: 1u32.wrapping_shl(20).into(),
            ..Default::default()
        };
        assert!(matches!(
            parse_records(raw.as_bytes()),
            Err(Error::Protocol)
        ));
    }

    #[test]
    fn lost_records_are_their_own_cause() {
        let raw = RawEvent {
            cause: event::LOST.into(),
            count: 12.into(),
            ..Default::default()
        };
        let parsed = parse_records(raw.as_bytes()).expect("parse");
        assert_eq!(parsed[0].cause, Cause::Lost);
        assert_eq!(parsed[0].count, 12);
    }
}
