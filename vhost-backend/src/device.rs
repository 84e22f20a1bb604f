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
//!    QEMU, and by the frontend thread to reset the card or read config
//!    space, so a reset waits for the requests in flight;
//! 3. `capture`: the capture thread's slot, taken under `card`; or
//!    `registered` (the registered buffers' tables), taken under `card`
//!    and held through a task file's execution;
//! 4. `events` (then the event vring), or `stream` (then the stream vring),
//!    never both at once;
//! 5. the card RAM bus lock, a leaf.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, error, info, warn};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::{caps, regs, status, SgEntry, CONFIG_SIZE, SHM_ID_CARD_RAM};
use xxcapture_model::{CaptureSession, Card, DmaDirection, DmaFault, DmaPort, FileSource, Outcome};

use crate::capture::{CaptureIo, CaptureThread, DeviceClock, SharedFile};
use crate::card_ram::{CardRam, GuestDma};
use crate::clock::Clock;
use crate::events::Events;
use crate::faults::{FaultKind, Faults, Unit};
use crate::queue::{DeviceQueue, MemorySlot};
use crate::registered::{RegisterError, RegisteredBuffers, RegisteredPort};
use crate::request::Device;
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
}

impl XxcapDevice {
    /// The device for `card`; `file` is the file video source (its geometry
    /// must be the card's `file_source`). Creates card RAM (a memfd of the
    /// card's RAM size plus the status page).
    pub fn new(card: Card, file: Option<FileSource>, clock: Clock) -> io::Result<Self> {
        let ram = Arc::new(CardRam::new(card.config().card_ram_size)?);
        let events = Arc::new(Events::new(card.interrupt_controller())?);
        Ok(XxcapDevice {
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
        })
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
        asynchronous: bool,
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
            self.execute_watched(
                card,
                task_file,
                sg,
                asynchronous,
                &mut guest,
                &registered,
                before,
            )
        } else {
            let mut port = RegisteredPort {
                inner: &mut guest,
                buffers: &registered,
            };
            let mut events = self.events.lock();
            card.execute_request(
                task_file,
                sg,
                &mut port,
                &mut events.irq,
                self.now_ns(),
                asynchronous,
            )
        };
        drop(registered);
        // The status block shows DMA_ERROR as the card latched it.
        self.ram
            .status()
            .set_dma_error(card.status() & status::DMA_ERROR != 0);
        self.reconcile_capture(card);
        outcome
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
        asynchronous: bool,
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
        };
        let outcome = {
            let mut events = self.events.lock();
            card.execute_request(
                task_file,
                sg,
                &mut port,
                &mut events.irq,
                self.now_ns(),
                asynchronous,
            )
        };
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
        device.execute_locked(self.card(), task_file, sg, mem, asynchronous)
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
        length: u64,
        entries: Vec<SgEntry>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RegisterError> {
        // Under the card lock, as every request.
        self.card();
        self.device.registered().register(id, length, entries, mem)
    }

    fn unregister_buffer(&mut self, id: u32) -> Result<(), RegisterError> {
        self.card();
        self.device.registered().unregister(id)
    }
}
