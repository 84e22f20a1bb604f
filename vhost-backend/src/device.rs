//! The Double X card as the daemon runs it: the card model, card RAM, the
//! capture thread, event delivery, held stream buffers, the shared-memory
//! mapping and the daemon's counters, without the vhost-user protocol
//! ([`crate::vhu_xxcap`] plugs this into it).
//!
//! Threads and locks. The frontend thread (vhost-user messages) and the vring
//! worker (queue events) share an [`XxcapDevice`]; each capture session has
//! its own thread ([`crate::capture`]). The locks, in the order they may be
//! taken:
//!
//! 1. `batch`: held for a whole command-queue batch, ATTACH included, so
//!    that [`XxcapDevice::quiesce`] can wait for the batch in flight;
//! 2. `card`: the model; held for a batch except while an ATTACH talks to
//!    QEMU (or a RING_SETUP joins an SQ poller), by the SQ poller while it
//!    consumes ring entries, and by the frontend thread to reset the card
//!    or read config space, so a reset waits for the requests in flight;
//! 3. `ring`: the SQ side of the rings ([`crate::ring::SqState`]), taken
//!    under `card` to consume entries, set up or tear down, and alone by
//!    the SQ poller for its flags and statistics;
//! 4. `capture`: the capture thread's slot, taken under `card`; or
//!    `registered` (the registered buffers' tables), taken under `card`
//!    (and `ring`) and held through a task file's execution;
//! 5. `events` (then the event vring; the CQ writer lives under it), or
//!    `stream` (then the stream vring), never both at once;
//! 6. the card RAM bus lock, a leaf.
//!
//! The SQ poller thread ([`crate::ring`]) never waits for anything while
//! it holds a lock, and sleeps with none held; it is stopped under `card`
//! (a later look finds the ring's generation changed and consumes
//! nothing) and joined only after `card` was released, since it may be
//! waiting for `card` then.
//!
//! `mapper` is taken alone, briefly. The capture thread takes only the bus,
//! events and stream locks, each briefly, never the card lock, so joining it
//! under the card lock cannot deadlock; the event and stream vrings are used
//! from it too (vring locks are per vring). SHMEM_MAP goes out from the
//! vring worker with the card lock released (`Batch::attach`): QEMU answers
//! it from its main loop, which may itself be waiting for this daemon to
//! answer a frontend message that needs the card lock (GET_VRING_BASE at
//! reset).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::{
    caps, regs, ring_setup, sq_flags, status, RingSetupReq, SgEntry, TfError, CONFIG_SIZE,
    RING_SQ_ENTRIES, SHM_ID_CARD_RAM,
};
use xxcapture_model::{CaptureSession, Card, DmaDirection, DmaFault, DmaPort, FileSource, Outcome};

use crate::capture::{CaptureIo, CaptureThread, DeviceClock, SharedFile};
use crate::card_ram::{CardRam, GuestDma};
use crate::clock::Clock;
use crate::events::Events;
use crate::faults::{FaultKind, Faults, Unit};
use crate::queue::{DeviceQueue, MemorySlot};
use crate::registered::{RegisterError, RegisteredBuffers, RegisteredPort};
use crate::request::Device;
use crate::ring::{self, Drain, PollShared, Poller, RingError, RingStats, SqState};
use crate::stream::{HeldBuffer, StreamBuffers};
use crate::trace::{Tracer, What};

/// How long FLUSH_BUFFERS waits for the buffer the capture thread is
/// filling (one frame copy; generous for a loaded host).
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Where SHMEM_MAP requests go: the vhost-user backend channel, or a fake in
/// tests.
pub trait ShmemMapper: Send + Sync {
    /// Maps the whole of `ram` (card RAM and status page) writable at offset
    /// 0 of shared-memory region 0.
    fn map(&self, ram: &CardRam) -> io::Result<()>;
    /// Removes that mapping.
    fn unmap(&self, ram: &CardRam) -> io::Result<()>;
}

/// What the daemon counts over its lifetime (card resets do not clear these).
#[derive(Debug, Default)]
pub struct Counters {
    /// Command-queue chains completed, whatever their status.
    pub requests: AtomicU64,
    /// Chains answered BAD_REQUEST or completed with length 0.
    pub bad_requests: AtomicU64,
    /// Chains answered UNSUPPORTED.
    pub unsupported: AtomicU64,
    /// SET_CONFIG messages (accepted and ignored).
    pub config_writes: AtomicU64,
    /// Card resets caused by the device being stopped or reset.
    pub resets: AtomicU64,
    /// ATTACH requests answered OK.
    pub attaches: AtomicU64,
    /// ATTACH requests answered DEVICE_ERROR.
    pub attach_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "requests={} bad_requests={} unsupported={} config_writes={} resets={} attaches={} attach_failures={}",
            get(&self.requests),
            get(&self.bad_requests),
            get(&self.unsupported),
            get(&self.config_writes),
            get(&self.resets),
            get(&self.attaches),
            get(&self.attach_failures),
        )
    }
}

/// The Double X card and everything the daemon keeps for it. Lock order and
/// which thread takes what: see the module documentation.
pub struct XxcapDevice {
    /// The card model. Held for the whole of a command-queue batch, so that
    /// a reset (which takes it) waits for requests in flight to complete, as
    /// the vhost-user-backend documentation asks of `stop_vring`.
    card: Mutex<Card>,
    /// Guest memory, shared with the capture thread.
    mem: Arc<MemorySlot>,
    /// The interrupt controller and the event queue.
    events: Arc<Events>,
    /// Capture buffers held from the stream queue.
    stream: Arc<StreamBuffers>,
    /// The card's epoch on the daemon clock (`Card::epoch_ns`), for threads
    /// that need device time without the card lock.
    card_epoch_ns: AtomicU64,
    /// Set while the device is stopped: the first command-queue event after
    /// the next start resets the card once more, so that DEVICE_TIME_NS
    /// counts from the start rather than from the stop.
    rebase_on_start: AtomicBool,
    counters: Arc<Counters>,
    /// Where device time comes from.
    clock: Clock,
    capabilities: u32,
    /// Card RAM and the status block (the memfd of shared-memory region 0).
    ram: Arc<CardRam>,
    /// The file video source (`--source-file`), if any.
    file: Option<SharedFile>,
    /// The backend-request channel, once the frontend sent it.
    mapper: Mutex<Option<Arc<dyn ShmemMapper>>>,
    /// Region 0 is mapped (since the last device stop/reset).
    mapped: AtomicBool,
    /// The running capture session's thread.
    capture: Mutex<Option<CaptureThread>>,
    /// Set by [`XxcapDevice::quiesce`]: take no more requests.
    quiescing: AtomicBool,
    /// Held for a whole command-queue batch, ATTACH included (unlike the
    /// card lock), so that `quiesce` can wait for the batch in flight.
    /// Lock order: `batch` -> `card`.
    batch: Mutex<()>,
    /// The registered buffers' tables (SPEC §12). Taken under `card`, a
    /// leaf like the bus lock.
    registered: Mutex<RegisteredBuffers>,
    /// The SQ side of the submission ring (SPEC §15). Lock order: `card`
    /// -> `ring` -> `registered` -> `events`.
    ring: Mutex<SqState>,
    /// What the rings counted since the daemon started.
    ring_stats: Arc<RingStats>,
    /// This device, for the SQ poller thread (which must not keep it
    /// alive).
    this: Weak<XxcapDevice>,
}

/// Which path a task file came by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The command queue; `asynchronous`: XXCAP_VQ_FLAG_ASYNC.
    Queue { asynchronous: bool },
    /// The submission ring of `owner`.
    Ring { owner: u32 },
}

impl Drop for XxcapDevice {
    fn drop(&mut self) {
        // The poller holds only a weak reference: it ends at its next look.
        let sq = self.ring.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(poller) = sq.poller.take() {
            poller.shared.stop();
        }
    }
}

impl XxcapDevice {
    /// The device for `card`; `file` is the file video source (its geometry
    /// must be the card's `file_source`). Creates card RAM (a memfd of the
    /// card's RAM size plus the status page, plus the ring area with
    /// `CAP_RING`).
    pub fn new(card: Card, file: Option<FileSource>, clock: Clock) -> io::Result<Arc<Self>> {
        let with_ring = card.capabilities() & caps::RING != 0;
        let ram = Arc::new(CardRam::with_ring(card.config().card_ram_size, with_ring)?);
        let events = Arc::new(Events::new(card.interrupt_controller())?);
        Ok(Arc::new_cyclic(|this| XxcapDevice {
            capabilities: card.capabilities(),
            card_epoch_ns: AtomicU64::new(card.epoch_ns()),
            card: Mutex::new(card),
            mem: Arc::new(MemorySlot::default()),
            events,
            stream: Arc::new(StreamBuffers::default()),
            rebase_on_start: AtomicBool::new(true),
            counters: Arc::new(Counters::default()),
            clock,
            ram,
            file: file.map(|f| Arc::new(Mutex::new(f))),
            mapper: Mutex::new(None),
            mapped: AtomicBool::new(false),
            capture: Mutex::new(None),
            quiescing: AtomicBool::new(false),
            batch: Mutex::new(()),
            registered: Mutex::new(RegisteredBuffers::default()),
            ring: Mutex::new(SqState::default()),
            ring_stats: Arc::default(),
            this: this.clone(),
        }))
    }

    /// Stops taking requests off the command queue and waits until every
    /// request already taken has been completed (written, marked used, the
    /// guest notified). Called on SIGTERM before the connection to QEMU is
    /// closed, so that no request the card executed loses its completion:
    /// QEMU stops relaying the device's notifications once the backend has
    /// gone. Requests still on the queue stay there, never executed; the
    /// driver fails them when the card is removed. Capture buffers the card
    /// holds go back CANCELLED the same way (the one being filled first
    /// completes).
    pub fn quiesce(&self) {
        self.quiescing.store(true, Ordering::Release);
        drop(self.batch.lock().unwrap_or_else(PoisonError::into_inner));
        // No ring entry runs from now on either.
        let poller = self.ring_teardown_locked(&mut self.card());
        if let Some(poller) = poller {
            poller.join();
        }
        let mem = self.mem.get();
        if !self
            .stream
            .flush(mem.as_deref(), self.device_now(), FLUSH_LIMIT)
        {
            warn!("quiesce: the stream buffer being filled did not come back in {FLUSH_LIMIT:?}");
        }
    }

    /// Card RAM and the status block.
    pub fn card_ram(&self) -> Arc<CardRam> {
        Arc::clone(&self.ram)
    }

    /// The card's capability bits (`caps`).
    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// Uses `mapper` for SHMEM_MAP (the frontend's backend channel arrives
    /// through `set_backend_req_fd`; tests plug in a fake).
    pub fn set_mapper(&self, mapper: Arc<dyn ShmemMapper>) {
        *self.mapper.lock().unwrap_or_else(PoisonError::into_inner) = Some(mapper);
    }

    /// The coalescing timer, to register in the vring worker's epoll as
    /// [`crate::vhu_xxcap::TIMER_EVENT`].
    pub fn timer_fd(&self) -> RawFd {
        self.events.timer_fd()
    }

    /// The card's armed faults (`--fault`, the control socket).
    pub fn faults(&self) -> Arc<Faults> {
        Arc::clone(self.events.faults())
    }

    /// Traces what the card does into `tracer` from now on (set once,
    /// before the first connection).
    pub fn set_tracer(&self, tracer: Arc<Tracer>) {
        self.events.set_tracer(tracer);
    }

    /// Event delivery (statistics for the exit log; tests).
    pub fn events(&self) -> Arc<Events> {
        Arc::clone(&self.events)
    }

    /// What the daemon counted so far.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Config space: the card's identity.
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        self.card().config_space()
    }

    /// Guest memory, as the frontend last set it.
    pub(crate) fn memory(&self) -> &MemorySlot {
        &self.mem
    }

    /// Device time now: DEVICE_TIME_NS.
    pub(crate) fn device_now(&self) -> u64 {
        self.now_ns()
            .saturating_sub(self.card_epoch_ns.load(Ordering::Acquire))
    }

    /// Resets the card and its interrupt controller at `now_ns`.
    fn reset_model(&self, card: &mut Card) {
        card.reset(self.now_ns());
        self.card_epoch_ns.store(card.epoch_ns(), Ordering::Release);
        self.events.reset();
    }

    fn capture_io(&self) -> CaptureIo {
        CaptureIo {
            events: Arc::clone(&self.events),
            stream: Arc::clone(&self.stream),
            mem: Arc::clone(&self.mem),
        }
    }

    /// Returns the held stream buffers (capture stop, reset).
    fn cancel_stream_buffers(&self) {
        let mem = self.mem.get();
        self.stream.cancel_all(mem.as_deref(), self.device_now());
    }

    /// Gives the event and stream code their queues.
    pub(crate) fn set_queues(&self, event: Arc<dyn DeviceQueue>, stream: Arc<dyn DeviceQueue>) {
        self.events.set_queue(event);
        self.stream.set_queue(stream);
    }

    /// Delivers the event records that are due into the event queue.
    pub(crate) fn deliver_events(&self, mem: Option<&GuestMemoryMmap>) {
        self.events.deliver(self.device_now(), mem);
    }

    /// The coalescing timer expired: records held for it become due, and
    /// are delivered. On virtual time the timer (which runs on the host's
    /// clock) stands for the deadline having passed: what was held until it
    /// goes out, with the timestamps it was raised with.
    pub(crate) fn timer_fired(&self, mem: Option<&GuestMemoryMmap>) {
        self.events.timer_fired();
        let now = self.device_now();
        let now = match self.clock.is_virtual() {
            true => now.max(self.events.armed_deadline().unwrap_or(0)),
            false => now,
        };
        self.events.deliver(now, mem);
    }

    /// Holds a capture buffer from the stream queue.
    pub(crate) fn hold_stream_buffer(&self, buffer: HeldBuffer) {
        self.stream.hold(buffer);
    }

    /// Capture buffers held from the stream queue.
    #[cfg(test)]
    pub(crate) fn stream_buffers(&self) -> &StreamBuffers {
        &self.stream
    }

    /// Stops capture (daemon shutdown). Returns at most one frame later.
    pub fn shutdown(&self) {
        if let Some(thread) = self.capture_slot().take() {
            let generation = thread.generation();
            let (frames, dropped) = thread.stop();
            info!("capture {generation} stopped at exit: {frames} frames, {dropped} dropped");
        }
    }

    pub(crate) fn capture_slot(&self) -> MutexGuard<'_, Option<CaptureThread>> {
        self.capture.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the capture thread's progress and the injected-fault count
    /// into the card's registers.
    fn sync_progress(&self, card: &mut Card) {
        card.set_faults_injected(self.events.faults().injected());
        if let Some(thread) = self.capture_slot().as_ref() {
            let (frames, dropped) = thread.progress();
            card.set_capture_progress(thread.generation(), frames, dropped);
        }
    }

    /// Starts or stops the capture thread to match the card's session, and
    /// hands the running one the reader's RING_RELEASE.
    fn reconcile_capture(&self, card: &mut Card) {
        let wanted = card.capture_session();
        let mut slot = self.capture_slot();
        let running = slot.as_ref().map(CaptureThread::generation);
        if running != wanted.map(|s| s.generation) {
            self.restart_capture(card, &mut slot, wanted);
        }
        if let Some(thread) = slot.as_ref() {
            thread.set_released(card.registers().peek(regs::RING_RELEASE));
        }
    }

    fn restart_capture(
        &self,
        card: &mut Card,
        slot: &mut Option<CaptureThread>,
        wanted: Option<CaptureSession>,
    ) {
        if let Some(thread) = slot.take() {
            let generation = thread.generation();
            let streaming = thread.is_streaming();
            let (frames, dropped) = thread.stop();
            card.set_capture_progress(generation, frames, dropped);
            if streaming {
                self.cancel_stream_buffers();
            }
        }
        if let Some(session) = wanted {
            let clock = DeviceClock {
                clock: self.clock.clone(),
                card_epoch_ns: card.epoch_ns(),
            };
            let io = self.capture_io();
            match CaptureThread::start(session, self.card_ram(), self.file.clone(), clock, io) {
                Ok(thread) => *slot = Some(thread),
                Err(e) => error!("cannot start the capture thread: {e}"),
            }
        }
    }

    /// Executes one task file with the card locked by the caller.
    fn execute_locked(
        &self,
        card: &mut Card,
        task_file: &mut [u8],
        sg: &[SgEntry],
        mem: &GuestMemoryMmap,
        path: Path,
    ) -> Outcome {
        let faults = self.events.faults();
        let tracer = self.events.tracer();
        // Registers before the request, for the trace: what the card
        // changed since the last request (capture progress included).
        let before: Vec<u64> = match tracer {
            Some(_) => regs::REGISTERS
                .iter()
                .map(|r| card.registers().peek(r.offset))
                .collect(),
            None => Vec::new(),
        };
        self.sync_progress(card);
        let mut guest = GuestDma {
            ram: &self.ram,
            mem,
        };
        let registered = self.registered();
        let outcome = if faults.is_live() || tracer.is_some() {
            self.execute_watched(card, task_file, sg, path, &mut guest, &registered, before)
        } else {
            let mut port = RegisteredPort {
                inner: &mut guest,
                buffers: &registered,
                owner: path.owner(),
            };
            self.run_model(card, task_file, sg, &mut port, path)
        };
        drop(registered);
        // The status block shows DMA_ERROR as the card latched it.
        self.ram
            .status()
            .set_dma_error(card.status() & status::DMA_ERROR != 0);
        self.reconcile_capture(card);
        outcome
    }

    /// Runs the model on one task file, with the controller locked and told
    /// which causes the completion ring takes.
    fn run_model(
        &self,
        card: &mut Card,
        task_file: &mut [u8],
        sg: &[SgEntry],
        port: &mut dyn DmaPort,
        path: Path,
    ) -> Outcome {
        let mut events = self.events.lock();
        events.refresh_divert();
        let now = self.now_ns();
        match path {
            Path::Queue { asynchronous } => {
                card.execute_request(task_file, sg, port, &mut events.irq, now, asynchronous)
            }
            Path::Ring { .. } => card.execute_ring(task_file, port, &mut events.irq, now),
        }
    }

    /// The registered buffers' tables.
    pub(crate) fn registered(&self) -> MutexGuard<'_, RegisteredBuffers> {
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Self::execute_locked`] with faults armed or tracing on: DMA
    /// transfers go through [`WatchedPort`]; the task file and the
    /// registers it changed are traced.
    // The arguments of Card::execute_request, and what the watch needs.
    #[allow(clippy::too_many_arguments)]
    fn execute_watched(
        &self,
        card: &mut Card,
        task_file: &mut [u8],
        sg: &[SgEntry],
        path: Path,
        port: &mut GuestDma<'_>,
        buffers: &RegisteredBuffers,
        before: Vec<u64>,
    ) -> Outcome {
        let tracer = self.events.tracer();
        let commands = task_file
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        let start = self.device_now();
        let mut watched = WatchedPort {
            inner: port,
            faults: self.events.faults(),
            tracer,
            device: self,
        };
        // Transfers into registered buffers go through the same watch.
        let mut port = RegisteredPort {
            inner: &mut watched,
            buffers,
            owner: path.owner(),
        };
        let outcome = self.run_model(card, task_file, sg, &mut port, path);
        if let Some(tracer) = tracer {
            let end = self.device_now();
            tracer.emit(
                start,
                What::TaskFile {
                    request: card.request_count(),
                    commands,
                    error: outcome.error.c_name().to_owned(),
                    index: outcome.index,
                    dur_ns: end.saturating_sub(start),
                },
            );
            for (desc, old) in regs::REGISTERS.iter().zip(before) {
                let new = card.registers().peek(desc.offset);
                // The clock moves with every request: not a change.
                if new != old && desc.offset != regs::DEVICE_TIME_NS {
                    tracer.emit(
                        end,
                        What::Register {
                            name: desc.name.to_owned(),
                            old,
                            new,
                        },
                    );
                }
            }
        }
        outcome
    }

    /// Maps region 0 unless mapped since the last reset. Called from the
    /// vring worker with the card lock released (see the module docs).
    fn attach(&self) -> Result<(), String> {
        if self.capabilities & caps::CARD_RAM_SHM == 0 {
            return Err("this card has no shared card RAM".into());
        }
        if self.mapped.load(Ordering::Acquire) {
            return Ok(());
        }
        let mapper = self
            .mapper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or("the frontend sent no backend channel (BACKEND_REQ)")?;
        let result = mapper.map(&self.ram).or_else(|first| {
            // A mapping may survive a stop we took for a reset (VM pause):
            // QEMU refuses overlapping maps, so drop it and map again.
            debug!("SHMEM_MAP failed ({first}); unmapping and retrying");
            mapper.unmap(&self.ram).and_then(|()| mapper.map(&self.ram))
        });
        match result {
            Ok(()) => {
                self.mapped.store(true, Ordering::Release);
                info!(
                    "card RAM mapped: shared-memory region {SHM_ID_CARD_RAM}, {} bytes",
                    self.ram.region_size()
                );
                Ok(())
            }
            Err(e) => Err(format!("SHMEM_MAP failed: {e}")),
        }
    }

    /// Nanoseconds since the daemon's time zero, on its clock.
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Where device time comes from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The card; a poisoned lock is taken over (the model never panics, and a
    /// panicking request must not wedge the device).
    pub(crate) fn card(&self) -> MutexGuard<'_, Card> {
        self.card.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Power-on state: capture stops, the card resets, the status block is
    /// re-initialised and region 0 counts as unmapped (QEMU drops mappings
    /// at device reset). Card RAM keeps its contents.
    pub(crate) fn reset_card(&self, why: &str) {
        let mut card = self.card();
        let poller = self.ring_teardown_locked(&mut card);
        if let Some(thread) = self.capture_slot().take() {
            thread.stop();
        }
        // The queue is being torn down: returned (or not) as vhost-user
        // still allows; the driver reclaims what it does not get back.
        self.cancel_stream_buffers();
        self.reset_model(&mut card);
        self.registered().clear();
        self.ram.status().init();
        self.mapped.store(false, Ordering::Release);
        Counters::bump(&self.counters.resets);
        drop(card);
        if let Some(poller) = poller {
            poller.join();
        }
        info!("card reset ({why})");
    }

    /// The device stopped (the command queue's vring stopped): reset the
    /// card now, and once more when it starts again ([`Self::begin_batch`]).
    pub(crate) fn stopped(&self) {
        self.reset_card("command queue stopped");
        self.rebase_on_start.store(true, Ordering::Release);
    }

    /// The frontend disconnected: reset as at a device stop, then forget
    /// the connection (guest memory, backend channel); with `clear_card_ram`
    /// card RAM reads as zero again. Capture buffers held from the stream
    /// queue are dropped with the memory they were in.
    pub fn disconnected(&self, clear_card_ram: bool) {
        self.mem.clear();
        self.reset_card("frontend disconnected");
        *self.mapper.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if clear_card_ram {
            match self.ram.clear() {
                Ok(()) => info!("card RAM cleared"),
                Err(e) => warn!("cannot clear card RAM: {e}"),
            }
        }
        self.rebase_on_start.store(true, Ordering::Release);
    }

    /// The next batch re-bases the card's clock.
    #[cfg(test)]
    pub(crate) fn rebase_pending(&self) -> bool {
        self.rebase_on_start.load(Ordering::Relaxed)
    }

    /// Requests are no longer taken ([`Self::quiesce`]).
    pub(crate) fn is_quiescing(&self) -> bool {
        self.quiescing.load(Ordering::Acquire)
    }

    /// Runs `f` on the card as one command-queue batch sees it (the
    /// [`Device`] that [`crate::request::process_chain`] drives): requests
    /// without a virtqueue, for harnesses and tests. `None` once quiescing.
    pub fn with_batch<R>(&self, f: impl FnOnce(&mut dyn Device) -> R) -> Option<R> {
        let mut batch = self.begin_batch()?;
        Some(f(&mut batch))
    }

    /// Starts a command-queue batch: `None` once quiescing. The first batch
    /// after a start moves the card's time zero to it.
    pub(crate) fn begin_batch(&self) -> Option<Batch<'_>> {
        let in_flight = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_quiescing() {
            debug!("command queue kicked while quiescing: left alone");
            return None;
        }
        let mut batch = Batch {
            card: Some(self.card()),
            device: self,
            _in_flight: in_flight,
        };
        if self.rebase_on_start.swap(false, Ordering::AcqRel) {
            // Nothing can change the card while the device is stopped, so
            // this only moves time zero to the start (not counted).
            self.reset_model(batch.card());
            debug!("device started");
        }
        Some(batch)
    }
}

/// The DMA port with faults armed or tracing on: counts each transfer for
/// the faults (`dma-error`, `dma-latency`) and traces it.
struct WatchedPort<'a, 'm> {
    inner: &'a mut GuestDma<'m>,
    faults: &'a Faults,
    tracer: Option<&'a Arc<Tracer>>,
    device: &'a XxcapDevice,
}

impl DmaPort for WatchedPort<'_, '_> {
    fn transfer(
        &mut self,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> Result<(), DmaFault> {
        let start = self.device.device_now();
        let fired = if self.faults.is_live() {
            self.faults.tick(Unit::DmaTransfer, start)
        } else {
            crate::faults::Fired::NONE
        };
        if fired.has(FaultKind::DmaLatency) {
            self.device.clock.spend(fired.latency);
        }
        let result = if fired.has(FaultKind::DmaError) {
            Err(DmaFault::Injected)
        } else {
            self.inner.transfer(direction, card_offset, sg)
        };
        if let Some(tracer) = self.tracer {
            let end = self.device.device_now();
            tracer.emit(
                start,
                What::Dma {
                    direction: match direction {
                        DmaDirection::ToCard => "to_card",
                        DmaDirection::FromCard => "from_card",
                    }
                    .to_owned(),
                    card_offset,
                    bytes: sg.iter().map(|e| u64::from(e.len.get())).sum(),
                    ok: result.is_ok(),
                    dur_ns: end.saturating_sub(start),
                },
            );
        }
        result
    }
}

/// The card as one command-queue batch sees it: locked for the batch, except
/// while an ATTACH talks to QEMU. Fields drop in order: the card lock, then
/// the batch lock.
pub(crate) struct Batch<'a> {
    card: Option<MutexGuard<'a, Card>>,
    device: &'a XxcapDevice,
    _in_flight: MutexGuard<'a, ()>,
}

impl Batch<'_> {
    fn card(&mut self) -> &mut Card {
        let device = self.device;
        self.card.get_or_insert_with(|| device.card())
    }
}

impl Device for Batch<'_> {
    fn execute(
        &mut self,
        task_file: &mut [u8],
        sg: &[SgEntry],
        mem: &GuestMemoryMmap,
        asynchronous: bool,
    ) -> Outcome {
        let device = self.device;
        device.execute_locked(
            self.card(),
            task_file,
            sg,
            mem,
            Path::Queue { asynchronous },
        )
    }

    fn abort_buffers(&mut self, tags: &[u64]) -> usize {
        let device = self.device;
        let mem = device.mem.get();
        device
            .stream
            .cancel_tags(tags, mem.as_deref(), device.device_now())
    }

    fn attach(&mut self) -> Result<(), String> {
        self.card = None;
        self.device.attach()
    }

    fn flush_buffers(&mut self) -> Result<(), String> {
        let device = self.device;
        let mem = device.mem.get();
        if device
            .stream
            .flush(mem.as_deref(), device.device_now(), FLUSH_LIMIT)
        {
            Ok(())
        } else {
            Err(format!(
                "the buffer being filled did not come back within {FLUSH_LIMIT:?}"
            ))
        }
    }

    fn device_time_ns(&self) -> u64 {
        self.device.device_now()
    }

    fn register_buffer(
        &mut self,
        id: u32,
        owner: u32,
        length: u64,
        entries: Vec<SgEntry>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RegisterError> {
        // Under the card lock, as every request.
        self.card();
        self.device
            .registered()
            .register(id, owner, length, entries, mem)
    }

    fn ring_setup(&mut self, req: RingSetupReq) -> Result<(), RingError> {
        let device = self.device;
        if device.capabilities & caps::RING == 0 {
            return Err(RingError::Unsupported("this card has no rings"));
        }
        // A refused setup leaves the ring as it was.
        if req.owner.get() != 0 {
            device.ring_setup_allowed(req)?;
        }
        // Any ring there was goes first; its poller is joined with the card
        // released (it may be waiting for the card lock).
        let old = device.ring_teardown_locked(self.card());
        if let Some(poller) = old {
            self.card = None;
            poller.join();
        }
        if req.owner.get() == 0 {
            // The area reads as zero after a teardown, whatever the
            // application wrote into it without a ring.
            if let Some(area) = device.ram.ring_area() {
                let _events = device.events.lock();
                area.zero();
            }
            return Ok(());
        }
        device.ring_setup_locked(self.card(), req)
    }

    fn ring_kick(&mut self, mem: &GuestMemoryMmap) -> Result<(), RingError> {
        let device = self.device;
        if device.capabilities & caps::RING == 0 {
            return Err(RingError::Unsupported("this card has no rings"));
        }
        device.ring_kick_locked(self.card(), mem);
        Ok(())
    }

    fn unregister_buffer(&mut self, id: u32) -> Result<(), RegisterError> {
        self.card();
        self.device.registered().unregister(id)
    }
}

impl Path {
    /// The owner whose registered buffers the task file may name (`None`:
    /// any, the command queue).
    fn owner(self) -> Option<u32> {
        match self {
            Path::Queue { .. } => None,
            Path::Ring { owner } => Some(owner),
        }
    }
}

/// The submission and completion rings (SPEC §15): setup, teardown, SQ
/// consumption and the SQ poller. See [`crate::ring`].
impl XxcapDevice {
    /// The SQ side of the ring.
    fn ring_sq(&self) -> MutexGuard<'_, SqState> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the rings counted (exit log, tests).
    pub fn ring_stats(&self) -> Arc<RingStats> {
        Arc::clone(&self.ring_stats)
    }

    /// Tears the ring down, with the card locked by the caller: no entry
    /// runs after this returns (a poller looking later finds a new
    /// generation), nothing is posted, the area is zeroed. Returns the
    /// stopped poller, which the caller joins once it released the card.
    fn ring_teardown_locked(&self, _card: &mut Card) -> Option<Poller> {
        let mut sq = self.ring_sq();
        if !sq.is_active() && sq.poller.is_none() {
            return None;
        }
        let poller = sq.poller.take();
        if let Some(p) = &poller {
            // Wakes it too (`kicked` is a leaf lock); joined by the caller.
            p.shared.stop();
        }
        let generation = sq.generation.wrapping_add(1);
        *sq = SqState {
            generation,
            ..SqState::default()
        };
        {
            let mut events = self.events.lock();
            events.ring.stop();
            events.irq.set_divert(0);
            events.route_diverted();
            if let Some(area) = self.ram.ring_area() {
                area.zero();
            }
        }
        drop(sq);
        debug!("ring torn down");
        poller
    }

    /// Sets up a ring for `req.owner` (nonzero) with the card locked by
    /// the caller and no ring set up.
    /// Why a RING_SETUP for a nonzero owner would be refused, if it would.
    fn ring_setup_allowed(&self, req: RingSetupReq) -> Result<(), RingError> {
        if self.ram.ring_area().is_none() {
            return Err(RingError::Unsupported("this card has no rings"));
        }
        if !self.mapped.load(Ordering::Acquire) {
            return Err(RingError::Device("region 0 is not mapped".into()));
        }
        if req.flags.get() & ring_setup::SQPOLL != 0 && self.clock.is_virtual() {
            return Err(RingError::Unsupported(
                "SQPOLL on virtual time (a polling thread would make time depend on the host)",
            ));
        }
        Ok(())
    }

    fn ring_setup_locked(&self, card: &mut Card, req: RingSetupReq) -> Result<(), RingError> {
        self.ring_setup_allowed(req)?;
        let Some(area) = self.ram.ring_area() else {
            return Err(RingError::Unsupported("this card has no rings"));
        };
        let flags = req.flags.get();
        let sqpoll = flags & ring_setup::SQPOLL != 0;
        let idle = ring::idle_time(req.sq_idle_us.get());
        let idle_us = if sqpoll {
            u32::try_from(idle.as_micros()).unwrap_or(u32::MAX)
        } else {
            0
        };
        let mut sq = self.ring_sq();
        let generation = sq.generation.wrapping_add(1);
        *sq = SqState {
            owner: req.owner.get(),
            generation,
            setup_flags: flags,
            ..SqState::default()
        };
        {
            let mut events = self.events.lock();
            area.zero();
            ring::init_header(&area, flags, idle_us);
            events
                .ring
                .start(Arc::clone(&self.ram), Arc::clone(&self.ring_stats));
        }
        if sqpoll {
            match self.start_poller(generation, idle) {
                Ok(poller) => sq.poller = Some(poller),
                Err(e) => {
                    drop(sq);
                    let _ = self.ring_teardown_locked(card);
                    return Err(RingError::Device(format!(
                        "cannot start the SQ poller thread: {e}"
                    )));
                }
            }
        }
        RingStats::add(&self.ring_stats.setups, 1);
        info!(
            "ring set up: owner {:#x}, flags {flags:#x}, idle {idle_us} us",
            req.owner.get()
        );
        Ok(())
    }

    /// RING_KICK with the card locked: wakes the poller (SQPOLL) or drains
    /// the SQ here. Without a ring: nothing.
    fn ring_kick_locked(&self, card: &mut Card, mem: &GuestMemoryMmap) {
        let shared = {
            let mut sq = self.ring_sq();
            if !sq.is_active() {
                return;
            }
            sq.kicks += 1;
            if let Some(area) = self.ram.ring_area() {
                area.store64(ring::field::KICKS, sq.kicks, Ordering::Relaxed);
            }
            RingStats::add(&self.ring_stats.kicks, 1);
            sq.poller.as_ref().map(|p| Arc::clone(&p.shared))
        };
        match shared {
            Some(shared) => shared.kick(),
            None => {
                self.ring_drain_locked(card, mem, None);
            }
        }
    }

    /// Consumes SQ entries with the card locked by the caller: up to the
    /// `sq_tail` it reads (and those that arrive meanwhile, at most
    /// [`ring::MAX_PER_DRAIN`]), each only while the CQ has room for its
    /// completion. `generation`: the poller's ring (nothing if it changed).
    fn ring_drain_locked(
        &self,
        card: &mut Card,
        mem: &GuestMemoryMmap,
        generation: Option<u64>,
    ) -> Drain {
        let mut drain = Drain::default();
        let mut sq = self.ring_sq();
        if !sq.is_active() || generation.is_some_and(|g| g != sq.generation) {
            return drain;
        }
        let Some(area) = self.ram.ring_area() else {
            return drain;
        };
        let owner = sq.owner;
        while drain.consumed < ring::MAX_PER_DRAIN {
            let tail = area.load(ring::field::SQ_TAIL, Ordering::Acquire);
            let pending = tail.wrapping_sub(sq.head);
            if pending == 0 {
                break;
            }
            if pending > RING_SQ_ENTRIES {
                RingStats::add(&self.ring_stats.bad_tails, 1);
                if !sq.bad_tail_logged {
                    sq.bad_tail_logged = true;
                    warn!(
                        "ring: sq_tail {tail} is {pending} entries past the card's head {}: waiting for a sane tail",
                        sq.head
                    );
                }
                break;
            }
            if !self.events.lock().ring.has_room() {
                drain.stalled = true;
                break;
            }
            let index = sq.head;
            let sqe = ring::read_sq_entry(&area, index);
            sq.head = index.wrapping_add(1);
            area.store(ring::field::SQ_HEAD, sq.head, Ordering::Release);
            sq.sqes += 1;
            area.store64(ring::field::SQES, sq.sqes, Ordering::Relaxed);
            RingStats::add(&self.ring_stats.sqes, 1);
            // On virtual time an entry's own time passes before it runs,
            // as a command-queue request's does.
            self.clock.request();
            let (error, count) = match ring::read_task_file(&area, &sqe) {
                Some(mut task_file) => {
                    let outcome =
                        self.execute_locked(card, &mut task_file, &[], mem, Path::Ring { owner });
                    ring::write_task_file(&area, &sqe, &task_file);
                    (outcome.error, outcome.index)
                }
                None => (TfError::BadCount, 0),
            };
            let now = self.device_now();
            let done = ring::completion(index, sqe.user_data.get(), error, count, now);
            let mut events = self.events.lock();
            events.ring.post_completion(&done);
            self.events.deliver_locked(&mut events, now, Some(mem));
            drain.consumed += 1;
        }
        drain
    }

    /// Starts the SQ poller of ring `generation`.
    fn start_poller(&self, generation: u64, idle: Duration) -> io::Result<Poller> {
        let shared = Arc::new(PollShared::default());
        let this = self.this.clone();
        let ram = Arc::clone(&self.ram);
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("xxcapd-sqpoll".into())
            .spawn(move || poll_loop(&this, &ram, &thread_shared, generation, idle))?;
        Ok(Poller { shared, handle })
    }

    /// One look of the poller: consumes what the SQ holds, with the card
    /// locked. `None` when the ring went away (the poller ends).
    fn poll_once(&self, generation: u64) -> Option<Drain> {
        let mut card = self.card();
        if self.ring_sq().generation != generation {
            return None;
        }
        // Without guest memory (a frontend going away) there is nothing to
        // run yet; the disconnect tears the ring down.
        let Some(mem) = self.mem.get() else {
            return Some(Drain::default());
        };
        Some(self.ring_drain_locked(&mut card, &mem, Some(generation)))
    }

    /// Sets or clears NEED_WAKEUP for ring `generation` and records the
    /// poller's statistics; false when the ring went away.
    fn poll_publish(&self, generation: u64, need_wakeup: bool, stats: (u64, u64, u64)) -> bool {
        let mut sq = self.ring_sq();
        if sq.generation != generation || !sq.is_active() {
            return false;
        }
        let Some(area) = self.ram.ring_area() else {
            return false;
        };
        let flags = if need_wakeup {
            sq_flags::NEED_WAKEUP
        } else {
            0
        };
        area.store(ring::field::SQ_FLAGS, flags, Ordering::Release);
        let (cpu, awake, sleeps) = stats;
        let s = &self.ring_stats;
        RingStats::add(&s.poll_cpu_ns, cpu.saturating_sub(sq.poll_cpu_ns));
        RingStats::add(&s.poll_awake_ns, awake.saturating_sub(sq.poll_awake_ns));
        RingStats::add(&s.poll_sleeps, sleeps.saturating_sub(sq.poll_sleeps));
        (sq.poll_cpu_ns, sq.poll_awake_ns, sq.poll_sleeps) = stats;
        area.store64(ring::field::POLL_CPU_NS, cpu, Ordering::Relaxed);
        area.store64(ring::field::POLL_AWAKE_NS, awake, Ordering::Relaxed);
        area.store64(ring::field::POLL_SLEEPS, sleeps, Ordering::Relaxed);
        true
    }
}

/// How often an awake poller publishes its statistics.
const POLL_STATS_EVERY: Duration = Duration::from_millis(10);

/// While entries wait but the CQ is full, the poller looks this often
/// (the application must consume completions first; no kick comes).
const POLL_STALL_WAIT: Duration = Duration::from_micros(50);

/// The SQ poller: spins on `sq_tail` while entries keep arriving, consumes
/// them, and after `idle` without one sets NEED_WAKEUP, looks once more
/// (a full barrier between) and sleeps until a RING_KICK. Every look at
/// the ring goes through [`XxcapDevice::poll_once`] /
/// [`XxcapDevice::poll_publish`], which check that the ring is still the
/// poller's; the thread keeps no lock while it spins or sleeps.
fn poll_loop(
    device: &Weak<XxcapDevice>,
    ram: &CardRam,
    shared: &PollShared,
    generation: u64,
    idle: Duration,
) {
    let cpu_start = ring::thread_cpu_ns();
    let mut awake_before = 0u64;
    let mut awake_since = Instant::now();
    let mut last_work = Instant::now();
    let mut last_stats = Instant::now();
    let mut sleeps = 0u64;
    // The sq_tail after which the last look found nothing to do.
    let mut done_at: Option<u32> = None;
    let elapsed_ns = |since: Instant| u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let Some(area) = ram.ring_area() else {
        return;
    };
    while !shared.stopping() {
        let tail = area.load(ring::field::SQ_TAIL, Ordering::Acquire);
        if done_at != Some(tail) {
            let Some(dev) = device.upgrade() else {
                return;
            };
            let Some(drain) = dev.poll_once(generation) else {
                return;
            };
            drop(dev);
            if drain.consumed > 0 || drain.stalled {
                last_work = Instant::now();
            }
            if drain.stalled {
                // Entries wait for CQ room, which needs no kick: look
                // again soon.
                std::thread::sleep(POLL_STALL_WAIT);
                continue;
            }
            // A tail the drain could not use (hostile) is looked at again
            // only once it changes.
            done_at = Some(tail);
        }
        let cpu = || ring::thread_cpu_ns().saturating_sub(cpu_start);
        if last_stats.elapsed() >= POLL_STATS_EVERY {
            last_stats = Instant::now();
            let awake = awake_before.saturating_add(elapsed_ns(awake_since));
            let Some(dev) = device.upgrade() else {
                return;
            };
            if !dev.poll_publish(generation, false, (cpu(), awake, sleeps)) {
                return;
            }
        }
        if last_work.elapsed() < idle {
            std::hint::spin_loop();
            continue;
        }
        // Idle: announce the sleep, then look once more.
        let Some(dev) = device.upgrade() else {
            return;
        };
        shared.clear_kick();
        let awake = awake_before.saturating_add(elapsed_ns(awake_since));
        if !dev.poll_publish(generation, true, (cpu(), awake, sleeps)) {
            return;
        }
        fence(Ordering::SeqCst);
        if Some(area.load(ring::field::SQ_TAIL, Ordering::Acquire)) != done_at {
            // An entry arrived meanwhile: stay awake.
            dev.poll_publish(generation, false, (cpu(), awake, sleeps));
            last_work = Instant::now();
            continue;
        }
        // Committed to sleep: `poll_sleeps` moves only now, so whoever
        // sees it move knows the poller takes nothing more until a kick.
        sleeps += 1;
        if !dev.poll_publish(generation, true, (cpu(), awake, sleeps)) {
            return;
        }
        drop(dev);
        awake_before = awake;
        shared.sleep();
        awake_since = Instant::now();
        last_work = Instant::now();
        let Some(dev) = device.upgrade() else {
            return;
        };
        if !dev.poll_publish(generation, false, (cpu(), awake_before, sleeps)) {
            return;
        }
        done_at = None;
    }
}
