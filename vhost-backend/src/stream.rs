//! Streaming capture buffers: the requests the driver queues on the stream
//! queue (queue 2, SPEC §11), held in FIFO order until a frame fills them or
//! they are cancelled.
//!
//! The vring worker parses each stream-queue chain ([`process_stream_chain`]:
//! the same chain rules as the command queue's, see [`crate::request`]): a
//! good one is held ([`HeldBuffer`]) until the capture engine fills it; a
//! malformed one is answered at once with a [`StreamResult`] whose `status`
//! says why (at the START of the writable part, which holds exactly that
//! result), or used length 0 when fewer than 32 writable bytes exist.
//!
//! The vring worker holds the good buffers ([`StreamBuffers::hold`]); the
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
use std::io::{Read, Write};
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xxcapture_abi::{
    req_type, vq_status, SgEntry, StreamResult, TfError, VqRequest, MAX_SG_ENTRIES,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::queue::DeviceQueue;
use crate::request::{
    ChainError, Completion, Disposition, Layout, MIN_READABLE, REQUEST_HEADER_SIZE, SG_ENTRY_SIZE,
};

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

    /// ABORT: returns the held buffers whose tags are in `tags` with
    /// CANCELLED (one notification); the others stay held, in order. A
    /// buffer the capture thread took is no longer held: its frame
    /// completes it. Returns how many were cancelled.
    pub fn cancel_tags(
        &self,
        tags: &[u64],
        mem: Option<&GuestMemoryMmap>,
        device_time_ns: u64,
    ) -> usize {
        let mut st = self.lock();
        let (cancelled, kept): (Vec<HeldBuffer>, Vec<HeldBuffer>) =
            st.held.drain(..).partition(|b| tags.contains(&b.tag));
        st.held.extend(kept);
        st.stats.cancelled += cancelled.len() as u64;
        if let Some(queue) = st.queue.clone() {
            let outcome = Outcome::cancelled(device_time_ns);
            for buffer in &cancelled {
                Self::give_back(&*queue, buffer, &outcome, mem);
            }
            if !cancelled.is_empty() {
                if let Err(e) = queue.notify() {
                    warn!("stream queue: cannot notify the driver: {e}");
                }
            }
        }
        if !cancelled.is_empty() {
            debug!("{} stream buffers aborted", cancelled.len());
        }
        self.cv.notify_all();
        cancelled.len()
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

/// What became of one stream-queue chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamChain {
    /// A good capture buffer, to be held until a frame fills it.
    Hold(HeldBuffer),
    /// Refused: complete it at once with this.
    Done(Completion),
}

/// Parses one stream-queue chain (a STREAM_BUFFER request) against the
/// guest memory `mem`: a held buffer, or the answer to a malformed one.
pub fn process_stream_chain<M>(chain: &DescriptorChain<M>, device_time_ns: u64) -> StreamChain
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let layout = Layout::scan(chain.clone());
    if layout.writable < RESULT_SIZE as u64 {
        return StreamChain::Done(Completion::dropped(ChainError::NoStatusRoom(
            layout.writable,
        )));
    }
    let mem = chain.memory();
    let Ok(mut writer) = Writer::new(mem, chain.clone()) else {
        return StreamChain::Done(Completion::dropped(ChainError::WritableOutOfBounds));
    };
    match read_stream_request(mem, chain, &layout) {
        Ok((tag, sg)) => {
            let result = chain
                .clone()
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr().0, d.len()))
                .collect();
            let capacity = sg.iter().map(|e| u64::from(e.len.get())).sum();
            StreamChain::Hold(HeldBuffer {
                head: chain.head_index(),
                tag,
                sg,
                capacity,
                result,
            })
        }
        Err(error) => {
            let answer = StreamResult {
                status: error.status().into(),
                device_time_ns: device_time_ns.into(),
                ..StreamResult::default()
            };
            let completion = match writer.write_all(answer.as_bytes()) {
                Ok(()) => Completion {
                    used_len: RESULT_SIZE as u32,
                    disposition: Disposition::Rejected(error),
                },
                Err(_) => Completion::dropped(ChainError::WriteFailed),
            };
            StreamChain::Done(completion)
        }
    }
}

/// Reads and checks a stream request's readable part: the header, then
/// exactly `sg_count` entries, each non-empty, reserved 0, inside guest
/// memory. Returns the tag and the entries.
fn read_stream_request<M>(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
    layout: &Layout,
) -> Result<(u64, Vec<SgEntry>), ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if layout.misordered {
        return Err(ChainError::Misordered);
    }
    let most = (REQUEST_HEADER_SIZE + MAX_SG_ENTRIES as usize * SG_ENTRY_SIZE) as u64;
    if layout.readable > most {
        return Err(ChainError::TooLong(layout.readable));
    }
    if layout.readable < MIN_READABLE as u64 {
        return Err(ChainError::TooShort(layout.readable));
    }
    let mut reader =
        Reader::new(mem, chain.clone()).map_err(|_| ChainError::ReadableOutOfBounds)?;
    // Bounded by `most` above.
    let mut buf = vec![0u8; reader.available_bytes()];
    reader
        .read_exact(&mut buf)
        .map_err(|_| ChainError::ReadFailed)?;
    let (header, rest) = VqRequest::read_from_prefix(&buf).map_err(|_| ChainError::ReadFailed)?;
    let (req, flags) = (header.req_type.get(), header.flags.get());
    if req != req_type::STREAM_BUFFER || flags != 0 {
        return Err(ChainError::Unsupported {
            req_type: req,
            flags,
        });
    }
    if header.reserved.get() != 0 {
        return Err(ChainError::Reserved(header.reserved.get()));
    }
    let sg_count = header.sg_count.get();
    if sg_count == 0 || sg_count > MAX_SG_ENTRIES {
        return Err(ChainError::BadEntryCount(sg_count));
    }
    // sg_count <= 2^16: the product is small.
    if rest.len() != sg_count as usize * SG_ENTRY_SIZE {
        return Err(ChainError::BadStreamLength {
            readable: layout.readable,
            sg_count,
        });
    }
    let entries = <[SgEntry]>::ref_from_bytes(rest).map_err(|_| ChainError::ReadFailed)?;
    for (index, e) in entries.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if e.len.get() == 0 || e.reserved.get() != 0 {
            return Err(ChainError::BadEntry(index));
        }
        if !mem.check_range(GuestAddress(e.addr.get()), e.len.get() as usize) {
            return Err(ChainError::EntryOutOfBounds(index));
        }
    }
    Ok((header.tag.get(), entries.to_vec()))
}

#[cfg(test)]
mod tests;
