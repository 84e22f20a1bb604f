//! Streaming capture into the application's own buffers.
//!
//! The application lends the card buffers; the driver pins them and queues
//! one request per buffer; the card writes each frame straight into the
//! oldest buffer and the driver reports it as a FRAME_DONE record. The guest
//! kernel never copies frame data, and a buffer costs one doorbell however
//! long the stream runs.
//!
//! Every lent buffer comes back with its own completion record (a frame,
//! or CANCELLED when capture stops or the stream is flushed): the driver
//! never drops a completion, however many device events overflow the
//! open's queue.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use xxcapture_abi::{caps, control, regs, source, QueueBuffer, TaskFile, TfError};

use crate::card::{Card, FrameFormat};
use crate::error::{Error, Result};
use crate::events::{monotonic_ns, Cause, Causes, Event};
use crate::sys;

/// A frame the card wrote into one of the stream's buffers. Give it back
/// with [`Stream::requeue`] (or drop it to shrink the pool).
#[derive(Debug)]
pub struct StreamFrame {
    pub number: u64,
    /// Device clock when the frame completed.
    pub device_time_ns: u64,
    /// Guest clock when the driver took the completion.
    pub guest_time_ns: u64,
    /// Guest clock when this process got the record.
    pub received_ns: u64,
    /// Buffer index, for the caller's bookkeeping.
    pub index: u64,
    /// The buffer; the frame is its first `len` bytes.
    buffer: Vec<u8>,
    len: usize,
}

impl StreamFrame {
    pub fn data(&self) -> &[u8] {
        &self.buffer[..self.len]
    }

    /// Driver-to-process latency: from the driver taking the completion to
    /// this process having it.
    pub fn wake_latency_ns(&self) -> u64 {
        self.received_ns.saturating_sub(self.guest_time_ns)
    }
}

/// Running totals of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub frames: u64,
    /// Frames the card dropped (OVERFLOW records, or DROPPED_FRAMES).
    pub dropped: u64,
    /// Device events the driver or card lost (counted by LOST records):
    /// OVERFLOW records, never a buffer's completion, which always arrives.
    pub lost_records: u64,
    /// Buffers returned with an error other than CANCELLED.
    pub buffer_errors: u64,
}

/// A running streaming capture. Stop it with [`Stream::stop`]; dropping it
/// stops capture too and waits for the card to hand every buffer back.
pub struct Stream<'c> {
    card: &'c Card,
    format: FrameFormat,
    frame_size: usize,
    /// Buffers lent to the card, by request id: (index, buffer).
    queued: std::collections::HashMap<u64, (u64, Vec<u8>)>,
    ready: VecDeque<StreamFrame>,
    batch: Vec<Event>,
    stats: StreamStats,
    stopped: bool,
    /// Every record received, in order, once [`Stream::keep_records`] was
    /// called.
    log: Option<Vec<Event>>,
    /// Per OVERFLOW record, the number the next frame got.
    overflows: Vec<u64>,
}

impl Card {
    /// Starts streaming capture with `buffers` buffers of one frame each.
    /// Records of OVERFLOW are subscribed to count drops.
    pub fn start_stream(
        &self,
        format: FrameFormat,
        file_source: bool,
        buffers: usize,
    ) -> Result<Stream<'_>> {
        if self.info().capabilities & caps::STREAMING == 0 {
            return Err(Error::Unsupported("streaming capture"));
        }
        let frame_size = format
            .pixel_format
            .frame_size(format.width, format.height)
            .ok_or_else(|| Error::BadFormat(format!("{}x{}", format.width, format.height)))?;
        let max = xxcapture_abi::MAX_QUEUED_BUFFERS as usize;
        if buffers == 0 || buffers > max {
            return Err(Error::BadFormat(format!(
                "{buffers} buffers (1 to {max} allowed)"
            )));
        }
        self.subscribe(Causes::OVERFLOW)?;
        // Stop any capture, select streaming and the format, in one task file.
        let mut tf = TaskFile::new();
        tf.set_to_register(regs::CONTROL, 0, control::CAPTURE);
        tf.set_register(regs::FRAME_FORMAT, format.pixel_format.code());
        tf.set_register(regs::FRAME_WIDTH, format.width);
        tf.set_register(regs::FRAME_HEIGHT, format.height);
        tf.set_register(regs::FRAME_RATE, format.fps);
        tf.set_register(
            regs::FRAME_SOURCE,
            if file_source {
                source::FILE
            } else {
                source::TEST_PATTERN
            },
        );
        tf.set_to_register(regs::CONTROL, control::STREAM, control::STREAM);
        tf.set_to_register(
            regs::INT_MASK,
            xxcapture_abi::irq::OVERFLOW,
            xxcapture_abi::irq::OVERFLOW,
        );
        self.run(&tf)?;
        let mut stream = Stream {
            card: self,
            format,
            frame_size,
            queued: Default::default(),
            ready: VecDeque::new(),
            batch: Vec::new(),
            stats: StreamStats::default(),
            stopped: false,
            log: None,
            overflows: Vec::new(),
        };
        // Buffers first, then start: the first frames find a buffer.
        for index in 0..buffers as u64 {
            stream.lend(index, vec![0u8; frame_size])?;
        }
        let mut start = TaskFile::new();
        start.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
        self.run(&start)?;
        Ok(stream)
    }
}

impl Stream<'_> {
    pub fn format(&self) -> FrameFormat {
        self.format
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Bytes of one frame.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Asks the card to hand every lent buffer back now (as CANCELLED);
    /// they leave the pool. Frames already completed stay readable. A
    /// buffer not back within 5 s is a timeout error naming how many.
    pub fn flush(&mut self) -> Result<()> {
        // SAFETY: FLUSH_BUFFERS takes no argument.
        unsafe { sys::xxcap_flush_buffers(self.card.as_raw_fd()) }.map_err(|source| {
            Error::Ioctl {
                call: "FLUSH_BUFFERS",
                source,
            }
        })?;
        let wait = Duration::from_secs(5);
        let deadline = Instant::now() + wait;
        while !self.queued.is_empty() && Instant::now() < deadline {
            self.pump(Some(Duration::from_millis(100)))?;
        }
        match self.queued.len() {
            0 => Ok(()),
            n => Err(Error::timeout(format!("{n} flushed capture buffers"), wait)),
        }
    }

    /// Buffers currently lent to the card.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Frames the card completed that [`Stream::next_frame`] has not
    /// returned yet.
    pub fn completed(&self) -> usize {
        self.ready.len()
    }

    fn lend(&mut self, index: u64, mut buffer: Vec<u8>) -> Result<()> {
        let mut arg = QueueBuffer {
            addr: (buffer.as_mut_ptr() as u64).into(),
            length: (buffer.len() as u64).into(),
            refcon: index.into(),
            request_id: 0.into(),
            flags: 0.into(),
            reserved: 0.into(),
        };
        // SAFETY: the buffer moves into `self.queued` and is neither read,
        // written nor freed until its completion record hands it back (Drop
        // waits for that, and leaks buffers the card never returned).
        unsafe { sys::xxcap_queue_buffer(self.card.as_raw_fd(), &mut arg) }.map_err(|source| {
            Error::Ioctl {
                call: "QUEUE_BUFFER",
                source,
            }
        })?;
        self.queued.insert(arg.request_id.get(), (index, buffer));
        Ok(())
    }

    /// Frame periods the card dropped (OVERFLOW records received so far)
    /// before it produced frame `frame`.
    pub fn dropped_before(&self, frame: u64) -> u64 {
        self.overflows.iter().filter(|&&n| n <= frame).count() as u64
    }

    /// Keeps every record the stream receives from now on (buffer
    /// completions and device events, in the order the driver delivered
    /// them), for [`Stream::take_records`].
    pub fn keep_records(&mut self) {
        self.log.get_or_insert_with(Vec::new);
    }

    /// The records kept since [`Stream::keep_records`] or the last call.
    pub fn take_records(&mut self) -> Vec<Event> {
        self.log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Gives a frame's buffer back to the card.
    pub fn requeue(&mut self, frame: StreamFrame) -> Result<()> {
        self.lend(frame.index, frame.buffer)
    }

    /// Waits up to `timeout` for the next frame.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<StreamFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::timeout(
                    format!(
                        "a frame in one of {} queued capture buffers",
                        self.queued.len()
                    ),
                    timeout,
                ));
            }
            if self.queued.is_empty() {
                // Buffers come back without a frame when the stream is
                // flushed, or when the card is removed (the driver cancels
                // them before files fail): then the card's error is the
                // answer, not an empty pool.
                self.card.nop()?;
                return Err(Error::NoBuffers);
            }
            self.pump(Some(left))?;
        }
    }

    fn pump(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.batch.clear();
        let got = self.card.wait_events(&mut self.batch, 256, timeout);
        let now = monotonic_ns();
        // Taken and put back, so the batch's allocation is reused.
        let batch = std::mem::take(&mut self.batch);
        if let Some(log) = self.log.as_mut() {
            log.extend_from_slice(&batch);
        }
        for &ev in &batch {
            match ev.cause {
                Cause::Overflow if !ev.completion => {
                    self.stats.dropped += 1;
                    self.overflows.push(ev.frame_number);
                }
                Cause::Lost => self.stats.lost_records += u64::from(ev.count),
                Cause::FrameDone if ev.completion => {
                    let Some((index, buffer)) = self.queued.remove(&ev.request_id) else {
                        continue;
                    };
                    match ev.error() {
                        None => {
                            self.stats.frames += 1;
                            let len = usize::try_from(ev.count)
                                .unwrap_or(usize::MAX)
                                .min(buffer.len());
                            self.ready.push_back(StreamFrame {
                                number: ev.frame_number,
                                device_time_ns: ev.device_time_ns,
                                guest_time_ns: ev.guest_time_ns,
                                received_ns: now,
                                index,
                                buffer,
                                len,
                            });
                        }
                        Some(TfError::Cancelled) => {
                            // Back from a flush or stop: keep the buffer out
                            // of the card; `stop` collects it.
                            drop(buffer);
                        }
                        Some(_) => {
                            self.stats.buffer_errors += 1;
                            drop(buffer);
                        }
                    }
                }
                _ => {}
            }
        }
        self.batch = batch;
        got.map(drop)
    }

    /// Stops capture, waits for every lent buffer to come back, and returns
    /// the totals.
    pub fn stop(mut self) -> Result<StreamStats> {
        self.shutdown()?;
        Ok(self.stats)
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut tf = TaskFile::new();
        tf.set_to_register(regs::CONTROL, 0, control::CAPTURE | control::STREAM);
        let stop = self.card.run(&tf).map(drop);
        // Capture stop hands held buffers back CANCELLED; wait for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.queued.is_empty() && Instant::now() < deadline {
            if self.pump(Some(Duration::from_millis(100))).is_err() {
                break;
            }
        }
        let unreturned = self.queued.len();
        for (_, (_, buffer)) in self.queued.drain() {
            // The card may still write it: never free it.
            std::mem::forget(buffer);
        }
        stop?;
        if unreturned > 0 {
            return Err(Error::BuffersNotReturned(unreturned));
        }
        Ok(())
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
