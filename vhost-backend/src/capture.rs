//! The capture thread: renders frames into the ring in card RAM at the
//! session's frame rate and keeps the status block current.
//!
//! One thread per capture session. The backend starts it when a task file
//! commits CONTROL.CAPTURE 0 -> 1 and stops it (signal, then join) when
//! capture is stopped, the device is reset or the daemon exits. The thread
//! never takes the card lock: it reports progress through atomics that the
//! backend copies into FRAME_COUNTER / DROPPED_FRAMES before each request.
//!
//! Pacing: frame period `1 s / fps` on the monotonic clock, frame k of the
//! schedule due at the end of its period, `start + (k + 1) * period`, as a
//! sensor delivers a frame once it has been exposed and read out. A frame is
//! rendered when it is due: none arrives before one period has passed, so a
//! reader that polls right after starting capture finds the same (nothing)
//! every time.
//! A thread that falls behind by less than [`STALL_ABSORBED`] catches up by
//! rendering the late frames back to back: that lateness is the host
//! descheduling the emulator, which a real card (whose clock never stops)
//! absorbs in its on-board FIFO. Behind by more, the periods missed are
//! skipped and counted as dropped (frame numbers stay consecutive: the frame
//! after a drop gets the next number, its timestamp shows the gap).
//! `fps == 0` runs free: frames back to back, nothing is ever dropped, and
//! the card never overwrites a frame the reader has not released through
//! RING_RELEASE (frame n waits until n < released + ring_slots): free-running
//! capture goes as fast as the reader takes frames, instead of burning a host
//! core on frames nobody reads and starving the guest's vCPU of it.
//!
//! Events: each ring frame raises FRAME_DONE, each dropped frame period
//! OVERFLOW ([`Events::raise`], which also delivers what is due).
//!
//! Streaming (CONTROL.STREAM at start, SPEC §11): each frame goes into the
//! oldest buffer held on the stream queue instead of a ring slot; the
//! buffer's completion is the notification (FRAME_DONE only latches). With
//! no buffer a paced frame is dropped (OVERFLOW); free-running capture
//! sleeps until a buffer arrives (or it is stopped).

use std::io;

/// Lateness of the capture thread that is made up by rendering late frames
/// back to back instead of dropping them (see the module documentation).
pub const STALL_ABSORBED: Duration = Duration::from_millis(250);

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, warn};
use xxcapture_abi::{irq, TfError};
use xxcapture_model::{CaptureSession, FileSource, TestPattern, VideoSource};

/// When frame period `tick` of a capture started at `start` ends: its frame
/// is due then.
fn due(start: Instant, period: Duration, tick: u32) -> Instant {
    start + period * tick.saturating_add(1)
}

use crate::card_ram::{filling, full, CardRam, SlotUpdate};
use crate::events::Events;
use crate::faults::{FaultKind, Fired, Unit};
use crate::queue::MemorySlot;
use crate::stream::{write_frame, Outcome, StreamBuffers};
use crate::trace::What;

/// Where the capture thread reports: event records, the stream queue's
/// buffers, and the guest memory they live in.
#[derive(Clone)]
pub struct CaptureIo {
    pub events: Arc<Events>,
    pub stream: Arc<StreamBuffers>,
    pub mem: Arc<MemorySlot>,
}

impl CaptureIo {
    /// `count` occurrences of `cause` for frame `frame_number` at device
    /// time `now_ns`, delivered if due.
    fn raise(&self, cause: u32, frame_number: u64, count: u32, now_ns: u64) {
        let mem = self.mem.get();
        self.events
            .raise_many(cause, frame_number, count, now_ns, mem.as_deref());
    }
}

/// Flips the last byte of a rendered frame: its stamp's CRC no longer
/// matches (an injected corrupt frame).
fn corrupt(frame: &mut [u8]) {
    if let Some(last) = frame.last_mut() {
        *last ^= 0xff;
    }
}

/// Device time: nanoseconds since the card's epoch, on the daemon's clock.
#[derive(Clone, Copy, Debug)]
pub struct DeviceClock {
    /// The daemon's time zero.
    pub origin: Instant,
    /// The card's epoch (`Card::epoch_ns`) on the daemon's clock.
    pub card_epoch_ns: u64,
}

impl DeviceClock {
    pub fn now_ns(&self) -> u64 {
        let since_origin = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        since_origin.saturating_sub(self.card_epoch_ns)
    }
}

/// Progress of one session, shared with the backend.
#[derive(Debug, Default)]
pub struct Progress {
    pub frames: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Default)]
struct StopSignal {
    stopped: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl StopSignal {
    fn stop(&self) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.stopped.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Wakes waiters (a new RING_RELEASE value).
    fn notify(&self) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.cv.notify_all();
    }

    /// Waits for a notification or `timeout`; true if stopped.
    fn wait_notified(&self, timeout: Duration) -> bool {
        let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_stopped() {
            return true;
        }
        drop(
            self.cv
                .wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.is_stopped()
    }

    /// Sleeps until `deadline`; true if stopped meanwhile.
    fn sleep_until(&self, deadline: Instant) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_stopped() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .cv
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The file video source, shared by successive sessions (one at a time).
pub type SharedFile = Arc<Mutex<FileSource>>;

/// A running capture thread. Dropping it stops and joins the thread.
pub struct CaptureThread {
    generation: u64,
    stream: bool,
    io: CaptureIo,
    progress: Arc<Progress>,
    stop: Arc<StopSignal>,
    released: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CaptureThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureThread")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl CaptureThread {
    /// Writes the session into the status block and starts rendering.
    pub fn start(
        session: CaptureSession,
        ram: Arc<CardRam>,
        file: Option<SharedFile>,
        clock: DeviceClock,
        io: CaptureIo,
    ) -> io::Result<CaptureThread> {
        ram.status().begin(&session, clock.now_ns());
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(StopSignal::default());
        let released = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            released: Arc::clone(&released),
            session,
            ram,
            file,
            clock,
            progress: Arc::clone(&progress),
            stop: Arc::clone(&stop),
            io: io.clone(),
        };
        let handle = thread::Builder::new()
            .name(format!("capture-{}", session.generation))
            .spawn(move || worker.run())?;
        Ok(CaptureThread {
            generation: session.generation,
            stream: session.stream,
            io,
            progress,
            stop,
            released,
            handle: Some(handle),
        })
    }

    /// The reader's RING_RELEASE: frames below it may be overwritten.
    pub fn set_released(&self, frames: u64) {
        if self.released.swap(frames, Ordering::AcqRel) != frames {
            self.stop.notify();
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the session streams into queued buffers.
    pub fn is_streaming(&self) -> bool {
        self.stream
    }

    /// Frames completed and frame periods dropped so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.progress.frames.load(Ordering::Acquire),
            self.progress.dropped.load(Ordering::Acquire),
        )
    }

    /// Stops the thread and waits for it: at most one frame's rendering.
    pub fn stop(mut self) -> (u64, u64) {
        self.halt();
        self.progress()
    }

    fn halt(&mut self) {
        self.stop.stop();
        // A free-running stream may be waiting for a buffer.
        self.io.stream.wake();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                warn!("capture thread {} panicked", self.generation);
            }
        }
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Worker {
    released: Arc<AtomicU64>,
    session: CaptureSession,
    ram: Arc<CardRam>,
    file: Option<SharedFile>,
    clock: DeviceClock,
    progress: Arc<Progress>,
    stop: Arc<StopSignal>,
    io: CaptureIo,
}

impl Worker {
    fn run(self) {
        let g = self.session.geometry;
        debug!(
            "capture {} started: {} {}x{} at {} fps, {} slots of {} bytes",
            self.session.generation,
            g.format,
            g.width,
            g.height,
            self.session.fps,
            self.session.ring.ring_slots,
            self.session.ring.slot_size
        );
        if self.session.uses_file() {
            match &self.file {
                Some(file) => {
                    let mut source = file.lock().unwrap_or_else(PoisonError::into_inner);
                    self.frames(&mut *source);
                }
                None => warn!("capture from a file source, but xxcapd has none"),
            }
        } else {
            match TestPattern::new(g.format, g.width, g.height) {
                Ok(mut pattern) => self.frames(&mut pattern),
                Err(e) => warn!("capture: {e}"),
            }
        }
        self.ram.status().end(self.clock.now_ns());
        debug!(
            "capture {} stopped after {} frames ({} dropped)",
            self.session.generation,
            self.progress.frames.load(Ordering::Relaxed),
            self.progress.dropped.load(Ordering::Relaxed)
        );
    }

    /// Counts one frame period for the armed faults.
    fn frame_faults(&self) -> Fired {
        let faults = self.io.events.faults();
        if faults.is_live() {
            faults.tick(Unit::Frame, self.clock.now_ns())
        } else {
            Fired::NONE
        }
    }

    /// Traces frame `frame`'s `result` (`--trace`).
    fn trace_frame(&self, frame: u64, result: &str, now_ns: u64) {
        if let Some(tracer) = self.io.events.tracer() {
            tracer.emit(
                now_ns,
                What::Frame {
                    frame,
                    result: result.to_owned(),
                },
            );
        }
    }

    /// An injected drop of the frame period that would produce `frame`:
    /// counted as dropped, with an OVERFLOW record.
    fn drop_frame(&self, frame: u64, dropped: &mut u64) {
        *dropped += 1;
        self.progress.dropped.store(*dropped, Ordering::Release);
        let now_ns = self.clock.now_ns();
        self.trace_frame(frame, "dropped", now_ns);
        self.io.raise(irq::OVERFLOW, frame, 1, now_ns);
    }

    fn frames(&self, source: &mut dyn VideoSource) {
        if self.session.stream {
            self.stream_frames(source);
        } else {
            self.ring_frames(source);
        }
    }

    fn period(&self) -> Option<Duration> {
        match self.session.fps {
            0 => None,
            fps => Some(Duration::from_nanos(1_000_000_000 / u64::from(fps))),
        }
    }

    /// Whole periods that passed since frame `tick` fell due, once the
    /// thread is more than [`STALL_ABSORBED`] late: counted as dropped
    /// (DROPPED_FRAMES, one OVERFLOW each, carrying the number the next
    /// frame gets). Returns the next tick.
    fn skip_missed(
        &self,
        start: Instant,
        p: Duration,
        tick: u32,
        frame: u64,
        dropped: &mut u64,
    ) -> u32 {
        let late = Instant::now().saturating_duration_since(due(start, p, tick));
        if late < STALL_ABSORBED {
            return tick;
        }
        let missed = u32::try_from(late.as_nanos() / p.as_nanos()).unwrap_or(u32::MAX);
        if missed > 0 {
            *dropped += u64::from(missed);
            self.progress.dropped.store(*dropped, Ordering::Release);
            self.io
                .raise(irq::OVERFLOW, frame, missed, self.clock.now_ns());
        }
        tick.saturating_add(missed)
    }

    fn ring_frames(&self, source: &mut dyn VideoSource) {
        let ring = self.session.ring;
        let frame_size = source.frame_size();
        let period = self.period();
        let start = Instant::now();
        // Index of the next frame period in the schedule.
        let mut tick: u32 = 0;
        let (mut frame, mut dropped, mut errors) = (0u64, 0u64, 0u64);
        let slots = u64::from(ring.ring_slots);
        while !self.stop.is_stopped() {
            if let Some(p) = period {
                if self.stop.sleep_until(due(start, p, tick)) {
                    break;
                }
            } else if frame >= self.released.load(Ordering::Acquire) + slots {
                // Free-running: the slot still holds an unreleased frame.
                if self.stop.wait_notified(Duration::from_millis(50)) {
                    break;
                }
                continue;
            }
            let fired = self.frame_faults();
            if fired.has(FaultKind::DropFrames) {
                self.drop_frame(frame, &mut dropped);
                self.ram.status().slot(&SlotUpdate {
                    slot: usize::MAX,
                    info: Default::default(),
                    frame_counter: frame,
                    dropped,
                    errors,
                    device_time_ns: self.clock.now_ns(),
                });
                match period {
                    Some(p) => {
                        tick =
                            self.skip_missed(start, p, tick.saturating_add(1), frame, &mut dropped)
                    }
                    None => thread::yield_now(),
                }
                continue;
            }
            let bad = fired.has(FaultKind::CorruptFrame);
            let slot = ring.slot_index(frame);
            self.ram.status().slot(&SlotUpdate {
                slot,
                info: filling(frame),
                frame_counter: frame,
                dropped,
                errors,
                device_time_ns: self.clock.now_ns(),
            });
            let rendered = self
                .ram
                .with_slot(ring.slot_offset(frame), frame_size, |buf| {
                    let rendered = source.render(frame, buf);
                    if bad {
                        corrupt(buf);
                    }
                    rendered
                });
            let now_ns = self.clock.now_ns();
            match rendered {
                Some(Ok(_stamp)) => {
                    frame += 1;
                    self.ram.status().slot(&SlotUpdate {
                        slot,
                        info: full(frame - 1, now_ns, ring.frame_size),
                        frame_counter: frame,
                        dropped,
                        errors,
                        device_time_ns: now_ns,
                    });
                    self.progress.frames.store(frame, Ordering::Release);
                    self.trace_frame(frame - 1, if bad { "corrupt" } else { "done" }, now_ns);
                    self.io.raise(irq::FRAME_DONE, frame - 1, 1, now_ns);
                }
                failed => {
                    self.trace_frame(frame, "failed", now_ns);
                    errors += 1;
                    self.progress.errors.store(errors, Ordering::Release);
                    if errors == 1 || errors.is_power_of_two() {
                        match failed {
                            Some(Err(e)) => warn!("capture: frame {frame}: {e}"),
                            _ => warn!("capture: frame {frame} does not fit card RAM"),
                        }
                    }
                    self.ram.status().slot(&SlotUpdate {
                        slot,
                        info: Default::default(),
                        frame_counter: frame,
                        dropped,
                        errors,
                        device_time_ns: now_ns,
                    });
                    if period.is_none()
                        && self
                            .stop
                            .sleep_until(Instant::now() + Duration::from_millis(10))
                    {
                        break;
                    }
                }
            }
            match period {
                // Whole periods that passed while rendering are lost.
                Some(p) => {
                    tick = self.skip_missed(start, p, tick.saturating_add(1), frame, &mut dropped)
                }
                // Let the other threads (DMA, the guest's vCPUs) in.
                None => thread::yield_now(),
            }
        }
    }

    /// Streaming: frame N into the oldest held buffer.
    fn stream_frames(&self, source: &mut dyn VideoSource) {
        let frame_size = source.frame_size();
        let mut staging = vec![0u8; frame_size];
        let period = self.period();
        let start = Instant::now();
        let mut tick: u32 = 0;
        let (mut frame, mut dropped, mut errors) = (0u64, 0u64, 0u64);
        let stopped = || self.stop.is_stopped();
        while !stopped() {
            match period {
                Some(p) => {
                    if self.stop.sleep_until(due(start, p, tick)) {
                        break;
                    }
                }
                None => {
                    // Free-running waits for a buffer, asleep.
                    if !self.io.stream.wait_for_buffer(&stopped) {
                        break;
                    }
                }
            }
            let fired = self.frame_faults();
            if fired.has(FaultKind::DropFrames) {
                self.drop_frame(frame, &mut dropped);
                match period {
                    Some(p) => {
                        tick =
                            self.skip_missed(start, p, tick.saturating_add(1), frame, &mut dropped)
                    }
                    None => thread::yield_now(),
                }
                continue;
            }
            let bad = fired.has(FaultKind::CorruptFrame);
            let delivered = match self.io.stream.take() {
                // Flushed between the wait and the take.
                None if period.is_none() => continue,
                None => Err(TfError::DmaRange),
                Some(buffer) if buffer.capacity < frame_size as u64 => {
                    let now_ns = self.clock.now_ns();
                    let outcome = Outcome {
                        error: TfError::DmaRange,
                        frame_number: frame,
                        device_time_ns: now_ns,
                        bytes: 0,
                    };
                    let mem = self.io.mem.get();
                    self.io.stream.complete(buffer, outcome, mem.as_deref());
                    Err(TfError::DmaRange)
                }
                Some(buffer) => {
                    let written = match source.render(frame, &mut staging) {
                        Ok(_stamp) => {
                            if bad {
                                corrupt(&mut staging);
                            }
                            let mem = self.io.mem.get();
                            match mem.as_deref() {
                                Some(m) => write_frame(m, &buffer.sg, &staging),
                                None => Err(TfError::DmaFault),
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            self.progress.errors.store(errors, Ordering::Release);
                            if errors == 1 || errors.is_power_of_two() {
                                warn!("capture: frame {frame}: {e}");
                            }
                            Err(TfError::Device)
                        }
                    };
                    let now_ns = self.clock.now_ns();
                    let outcome = Outcome {
                        error: written.err().unwrap_or(TfError::Ok),
                        frame_number: frame,
                        device_time_ns: now_ns,
                        bytes: if written.is_ok() {
                            u32::try_from(frame_size).unwrap_or(u32::MAX)
                        } else {
                            0
                        },
                    };
                    let mem = self.io.mem.get();
                    self.io.stream.complete(buffer, outcome, mem.as_deref());
                    written
                }
            };
            let now_ns = self.clock.now_ns();
            match delivered {
                Ok(()) => {
                    self.trace_frame(frame, if bad { "corrupt" } else { "done" }, now_ns);
                    frame += 1;
                    self.progress.frames.store(frame, Ordering::Release);
                    // The buffer's completion is the notification.
                    self.io.events.latch(irq::FRAME_DONE);
                }
                Err(_) => {
                    // No buffer, too small, or unwritable: the frame is lost.
                    self.trace_frame(frame, "dropped", now_ns);
                    dropped += 1;
                    self.progress.dropped.store(dropped, Ordering::Release);
                    self.io.raise(irq::OVERFLOW, frame, 1, now_ns);
                }
            }
            self.ram.status().slot(&SlotUpdate {
                slot: usize::MAX,
                info: Default::default(),
                frame_counter: frame,
                dropped,
                errors,
                device_time_ns: now_ns,
            });
            match period {
                Some(p) => {
                    tick = self.skip_missed(start, p, tick.saturating_add(1), frame, &mut dropped)
                }
                None => thread::yield_now(),
            }
        }
    }
}
