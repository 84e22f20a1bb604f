//! Streaming capture buffers: the requests the driver queues on the stream
//! queue (queue 2, SPEC §11), held in FIFO order until a frame fills them or
//! they are cancelled.
//!
//! The vring worker parses and holds buffers ([`StreamBuffers::hold`]); the
//! capture thread takes the oldest ([`StreamBuffers::take`]), writes its
//! frame into the buffer's scatter-gather entries ([`write_frame`]) and
//! completes it ([`StreamBuffers::complete`]). Capture stop, FLUSH_BUFFERS
//! and reset return what is held with CANCELLED ([`StreamBuffers::cancel_all`],
//! [`StreamBuffers::flush`]).
//!
//! Every guest address is checked against guest memory before a byte is
//! written, and nothing is written outside the entries the driver gave.
//! The lock is taken briefly and never across a frame copy: lock order
//! stream -> the stream vring; it is never held together with the events
//! lock.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xxcapture_abi::{vq_status, SgEntry, StreamResult, TfError};
use zerocopy::IntoBytes;

use crate::queue::DeviceQueue;

/// Bytes of the result the device writes into a stream request.
pub const RESULT_SIZE: usize = size_of::<StreamResult>();

/// A capture buffer the device holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBuffer {
    /// Head of its descriptor chain.
    pub head: u16,
    /// The driver's tag (tracing).
    pub tag: u64,
    /// Where the frame goes, in order.
    pub sg: Vec<SgEntry>,
    /// Sum of the entries' lengths.
    pub capacity: u64,
    /// The writable part of the chain (guest address, length): the result
    /// goes at its start.
    pub result: Vec<(u64, u32)>,
}

/// How a held buffer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub error: TfError,
    pub frame_number: u64,
    pub device_time_ns: u64,
    pub bytes: u32,
}

impl Outcome {
    pub fn cancelled(device_time_ns: u64) -> Self {
        Outcome {
            error: TfError::Cancelled,
            frame_number: 0,
            device_time_ns,
            bytes: 0,
        }
    }

    fn result(&self) -> StreamResult {
        StreamResult {
            status: vq_status::OK.into(),
            error: (self.error as u32).into(),
            frame_number: self.frame_number.into(),
            device_time_ns: self.device_time_ns.into(),
            bytes: self.bytes.into(),
            reserved: 0.into(),
        }
    }
}

/// Counts since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub held: u64,
    pub filled: u64,
    pub cancelled: u64,
    pub too_small: u64,
    pub faulted: u64,
}

struct State {
    queue: Option<Arc<dyn DeviceQueue>>,
    held: VecDeque<HeldBuffer>,
    /// The capture thread took a buffer and has not completed it yet.
    in_flight: bool,
    stats: StreamStats,
}

/// The buffers queued on the stream queue.
pub struct StreamBuffers {
    state: Mutex<State>,
    /// Signalled when a buffer is held, one completes, or a waiter must
    /// look at its stop flag.
    cv: Condvar,
}

impl Default for StreamBuffers {
    fn default() -> Self {
        StreamBuffers {
            state: Mutex::new(State {
                queue: None,
                held: VecDeque::new(),
                in_flight: false,
                stats: StreamStats::default(),
            }),
            cv: Condvar::new(),
        }
    }
}

/// Writes `frame` from the start of the buffer `sg`, entry after entry.
/// Every entry is checked against guest memory first: `DmaFault` (nothing
/// written) when one is not inside it, `DmaRange` when the entries hold
/// fewer bytes than the frame.
pub fn write_frame(mem: &GuestMemoryMmap, sg: &[SgEntry], frame: &[u8]) -> Result<(), TfError> {
    let capacity: u64 = sg.iter().map(|e| u64::from(e.len.get())).sum();
    if capacity < frame.len() as u64 {
        return Err(TfError::DmaRange);
    }
    let mut need = frame.len();
    for e in sg {
        if need == 0 {
            break;
        }
        let n = need.min(e.len.get() as usize);
        if !mem.check_range(GuestAddress(e.addr.get()), n) {
            return Err(TfError::DmaFault);
        }
        need -= n;
    }
    let mut at = 0usize;
    for e in sg {
        if at == frame.len() {
            break;
        }
        let n = (frame.len() - at).min(e.len.get() as usize);
        mem.write_slice(&frame[at..at + n], GuestAddress(e.addr.get()))
            .map_err(|_| TfError::DmaFault)?;
        at += n;
    }
    Ok(())
}

/// Writes `bytes` across the writable segments; false if they do not hold
/// it or lie outside guest memory (then nothing is written).
pub fn write_segments(mem: &GuestMemoryMmap, segments: &[(u64, u32)], bytes: &[u8]) -> bool {
    let mut need = bytes.len();
    let mut plan = Vec::new();
    for &(addr, len) in segments {
        if need == 0 {
            break;
        }
        let n = need.min(len as usize);
        if !mem.check_range(GuestAddress(addr), n) {
            return false;
        }
        plan.push((addr, n));
        need -= n;
    }
    if need > 0 {
        return false;
    }
    let mut at = 0;
    for (addr, n) in plan {
        if mem
            .write_slice(&bytes[at..at + n], GuestAddress(addr))
            .is_err()
        {
            return false;
        }
        at += n;
    }
    true
}

impl StreamBuffers {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stream queue (once the transport has it).
    pub fn set_queue(&self, queue: Arc<dyn DeviceQueue>) {
        self.lock().queue = Some(queue);
    }

    pub fn has_queue(&self) -> bool {
        self.lock().queue.is_some()
    }

    /// Holds a buffer (after the oldest ones) and wakes a waiting capture.
    pub fn hold(&self, buffer: HeldBuffer) {
        let mut st = self.lock();
        st.held.push_back(buffer);
        st.stats.held += 1;
        self.cv.notify_all();
    }

    /// Buffers held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    pub fn stats(&self) -> StreamStats {
        self.lock().stats
    }

    /// The oldest held buffer, for the capture thread, which must hand it
    /// back through [`Self::complete`].
    pub fn take(&self) -> Option<HeldBuffer> {
        let mut st = self.lock();
        let buffer = st.held.pop_front()?;
        st.in_flight = true;
        Some(buffer)
    }

    /// Blocks until a buffer is held (true) or `stopped()` holds (false).
    /// Whoever makes `stopped()` true calls [`Self::wake`] afterwards.
    pub fn wait_for_buffer(&self, stopped: &dyn Fn() -> bool) -> bool {
        let mut st = self.lock();
        loop {
            if stopped() {
                return false;
            }
            if !st.held.is_empty() {
                return true;
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wakes waiters so that they look at their stop flag.
    pub fn wake(&self) {
        let _st = self.lock();
        self.cv.notify_all();
    }

    /// Returns `buffer` to the driver with `outcome`, and notifies it.
    pub fn complete(&self, buffer: HeldBuffer, outcome: Outcome, mem: Option<&GuestMemoryMmap>) {
        let mut st = self.lock();
        st.in_flight = false;
        match outcome.error {
            TfError::Ok => st.stats.filled += 1,
            TfError::DmaRange => st.stats.too_small += 1,
            TfError::Cancelled => st.stats.cancelled += 1,
            _ => st.stats.faulted += 1,
        }
        if let Some(queue) = st.queue.clone() {
            Self::give_back(&*queue, &buffer, &outcome, mem);
            if let Err(e) = queue.notify() {
                warn!("stream queue: cannot notify the driver: {e}");
            }
        }
        self.cv.notify_all();
    }

    fn give_back(
        queue: &dyn DeviceQueue,
        buffer: &HeldBuffer,
        outcome: &Outcome,
        mem: Option<&GuestMemoryMmap>,
    ) {
        let result = outcome.result();
        let written = mem.is_some_and(|m| write_segments(m, &buffer.result, result.as_bytes()));
        let used = if written { RESULT_SIZE as u32 } else { 0 };
        if !written {
            warn!("stream buffer {}: result not writable", buffer.head);
        }
        if let Err(e) = queue.add_used(buffer.head, used) {
            warn!("stream queue: add_used({}) failed: {e}", buffer.head);
        }
    }

    /// Returns every held buffer with CANCELLED (one notification).
    /// Returns how many.
    pub fn cancel_all(&self, mem: Option<&GuestMemoryMmap>, device_time_ns: u64) -> usize {
        let mut st = self.lock();
        let held: Vec<HeldBuffer> = st.held.drain(..).collect();
        st.stats.cancelled += held.len() as u64;
        if let Some(queue) = st.queue.clone() {
            let outcome = Outcome::cancelled(device_time_ns);
            for buffer in &held {
                Self::give_back(&*queue, buffer, &outcome, mem);
            }
            if !held.is_empty() {
                if let Err(e) = queue.notify() {
                    warn!("stream queue: cannot notify the driver: {e}");
                }
            }
        }
        if !held.is_empty() {
            debug!("{} stream buffers cancelled", held.len());
        }
        self.cv.notify_all();
        held.len()
    }

    /// FLUSH_BUFFERS: cancels what is held, then waits (at most `limit`)
    /// for a buffer the capture thread is filling. False on timeout.
    pub fn flush(
        &self,
        mem: Option<&GuestMemoryMmap>,
        device_time_ns: u64,
        limit: Duration,
    ) -> bool {
        self.cancel_all(mem, device_time_ns);
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        while st.in_flight {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests;
