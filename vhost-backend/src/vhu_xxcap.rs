//! The vhost-user backend of the Double X card: the only module that knows the
//! vhost-user protocol.
//!
//! QEMU's `vhost-user-test-device-pci` forwards everything to us: features,
//! config space, the three virtqueues and the shared-memory region. Queue 0
//! carries task files, ATTACH and FLUSH_BUFFERS requests (see
//! [`crate::request`]); queue 1 takes the event records
//! ([`crate::events`]); queue 2 holds capture buffers ([`crate::stream`]).
//! A fourth epoll source of the vring worker, the coalescing timer
//! ([`TIMER_EVENT`]), delivers records whose time limit passed.
//!
//! Threads and locks. The frontend thread (vhost-user messages) and the vring
//! worker (queue events) share the backend; each capture session has its own
//! thread ([`crate::capture`]). Lock order: `card` -> `capture` -> `events`
//! -> the event vring; `stream` -> the stream vring (never together with
//! `events`); the card RAM bus lock is a leaf. The capture thread takes only
//! the bus, events and stream locks, each briefly, never the card lock, so
//! joining it under the card lock cannot deadlock. The event and stream
//! vrings are used from the capture thread too (vring locks are per vring). SHMEM_MAP goes out from the vring
//! worker with the card lock released ([`Batch::attach`]): QEMU answers it
//! from its main loop, which may itself be waiting for this daemon to answer
//! a frontend message that needs the card lock (GET_VRING_BASE at reset).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use xxcapture_abi::{caps, queue, regs, SgEntry, CONFIG_SIZE, SHM_ID_CARD_RAM};
use xxcapture_model::{CaptureSession, Card, FileSource, Outcome};

use crate::capture::{CaptureIo, CaptureThread, DeviceClock, SharedFile};
use crate::card_ram::{CardRam, GuestDma};
use crate::events::Events;
use crate::queue::{DeviceQueue, MemorySlot};
use crate::request::{process_chain, process_stream_chain, Device, Disposition, StreamChain};
use crate::stream::StreamBuffers;

/// Guest memory as the vhost-user library hands it to us.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Largest virtqueue the backend accepts (QEMU's `vq_size` must not exceed it).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// The vring worker's epoll id for the coalescing timer: above the queues
/// and the library's own exit event (ids `0..=queue::COUNT`).
pub const TIMER_EVENT: u16 = queue::COUNT + 1;

/// How long FLUSH_BUFFERS waits for the buffer the capture thread is
/// filling (one frame copy; generous for a loaded host).
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The vhost-user vring as the event and stream code sees it.
struct VringQueue(VringRwLock);

impl DeviceQueue for VringQueue {
    fn pop<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
    ) -> io::Result<Option<DescriptorChain<&'m GuestMemoryMmap>>> {
        let mut vring = self.0.get_mut();
        let mut chains = vring
            .get_queue_mut()
            .iter(mem)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(chains.next())
    }

    fn add_used(&self, head: u16, len: u32) -> io::Result<()> {
        self.0
            .add_used(head, len)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn notify(&self) -> io::Result<()> {
        let needed = self
            .0
            .needs_notification()
            .map_err(|e| io::Error::other(e.to_string()))?;
        if needed {
            self.0.signal_used_queue()?;
        }
        Ok(())
    }

    fn enable_notification(&self) -> io::Result<bool> {
        self.0
            .enable_notification()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn disable_notification(&self) -> io::Result<()> {
        self.0
            .disable_notification()
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Virtio features always offered to the driver.
pub const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Offered unless disabled (`xxcapd --no-event-idx`).
pub const EVENT_IDX_FEATURE: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// vhost-user protocol features offered to the frontend by a card with
/// capabilities `capabilities`: card RAM as shared memory needs the backend
/// channel (BACKEND_REQ) and SHMEM.
pub fn protocol_features(capabilities: u32) -> VhostUserProtocolFeatures {
    let base = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK;
    if capabilities & caps::CARD_RAM_SHM != 0 {
        base | VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::SHMEM
    } else {
        base
    }
}

/// Where SHMEM_MAP requests go: the vhost-user backend channel, or a fake in
/// tests.
pub trait ShmemMapper: Send + Sync {
    /// Maps the whole of `ram` (card RAM and status page) writable at offset
    /// 0 of shared-memory region 0.
    fn map(&self, ram: &CardRam) -> io::Result<()>;
    /// Removes that mapping.
    fn unmap(&self, ram: &CardRam) -> io::Result<()>;
}

fn region_request(ram: &CardRam, flags: VhostUserMMapFlags) -> VhostUserMMap {
    VhostUserMMap {
        shmid: SHM_ID_CARD_RAM,
        padding: [0; 7],
        fd_offset: 0,
        shm_offset: 0,
        len: ram.region_size(),
        flags: flags.bits(),
    }
}

impl ShmemMapper for Backend {
    fn map(&self, ram: &CardRam) -> io::Result<()> {
        let req = region_request(ram, VhostUserMMapFlags::WRITABLE);
        self.shmem_map(&req, ram.file()).map(|_| ())
    }

    fn unmap(&self, ram: &CardRam) -> io::Result<()> {
        let req = region_request(ram, VhostUserMMapFlags::empty());
        self.shmem_unmap(&req).map(|_| ())
    }
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
    fn bump(counter: &AtomicU64) {
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

/// The Double X card behind a vhost-user socket.
pub struct XxcapBackend {
    /// The card model. Held for the whole of a command-queue batch, so that
    /// `stop_vring` (which takes it to reset the card) waits for requests in
    /// flight to complete, as the vhost-user-backend documentation asks.
    card: Mutex<Card>,
    /// Guest memory, shared with the capture thread.
    mem: Arc<MemorySlot>,
    /// The interrupt controller and the event queue.
    events: Arc<Events>,
    /// Capture buffers held from the stream queue.
    stream: Arc<StreamBuffers>,
    /// The event and stream vrings were handed to `events` / `stream`.
    queues_bound: AtomicBool,
    /// The card's epoch on the daemon clock (`Card::epoch_ns`), for threads
    /// that need device time without the card lock.
    card_epoch_ns: AtomicU64,
    features: u64,
    event_idx: AtomicBool,
    /// Set while the device is stopped: the first command-queue event after
    /// the next start resets the card once more, so that DEVICE_TIME_NS
    /// counts from the start rather than from the stop.
    rebase_on_start: AtomicBool,
    counters: Arc<Counters>,
    epoch: Instant,
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
    /// Set by [`XxcapBackend::quiesce`]: take no more requests.
    quiescing: AtomicBool,
    /// Held for a whole command-queue batch, ATTACH included (unlike the
    /// card lock), so that `quiesce` can wait for the batch in flight.
    /// Lock order: `batch` -> `card`.
    batch: Mutex<()>,
}

impl XxcapBackend {
    /// A backend for `card`; `event_idx` says whether VIRTIO_RING_F_EVENT_IDX
    /// is offered; `file` is the file video source (its geometry must be the
    /// card's `file_source`). Creates card RAM (a memfd of the card's RAM
    /// size plus the status page).
    pub fn new(card: Card, event_idx: bool, file: Option<FileSource>) -> io::Result<Self> {
        let features = if event_idx {
            BASE_FEATURES | EVENT_IDX_FEATURE
        } else {
            BASE_FEATURES
        };
        let ram = Arc::new(CardRam::new(card.config().card_ram_size)?);
        let events = Arc::new(Events::new(card.interrupt_controller())?);
        Ok(XxcapBackend {
            capabilities: card.capabilities(),
            card_epoch_ns: AtomicU64::new(card.epoch_ns()),
            card: Mutex::new(card),
            mem: Arc::new(MemorySlot::default()),
            events,
            stream: Arc::new(StreamBuffers::default()),
            queues_bound: AtomicBool::new(false),
            features,
            event_idx: AtomicBool::new(false),
            rebase_on_start: AtomicBool::new(true),
            counters: Arc::new(Counters::default()),
            epoch: Instant::now(),
            ram,
            file: file.map(|f| Arc::new(Mutex::new(f))),
            mapper: Mutex::new(None),
            mapped: AtomicBool::new(false),
            capture: Mutex::new(None),
            quiescing: AtomicBool::new(false),
            batch: Mutex::new(()),
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

    /// Uses `mapper` for SHMEM_MAP (the frontend's backend channel arrives
    /// through `set_backend_req_fd`; tests plug in a fake).
    pub fn set_mapper(&self, mapper: Arc<dyn ShmemMapper>) {
        *self.mapper.lock().unwrap_or_else(PoisonError::into_inner) = Some(mapper);
    }

    /// The coalescing timer, to register in the vring worker's epoll as
    /// [`TIMER_EVENT`].
    pub fn timer_fd(&self) -> RawFd {
        self.events.timer_fd()
    }

    /// Event delivery (statistics for the exit log; tests).
    pub fn events(&self) -> Arc<Events> {
        Arc::clone(&self.events)
    }

    /// Device time now: DEVICE_TIME_NS.
    fn device_now(&self) -> u64 {
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

    /// Gives the event and stream code their vrings, once: the vrings live
    /// as long as the daemon, but only `handle_event` sees them.
    fn bind_queues(&self, vrings: &[VringRwLock]) {
        if self.queues_bound.load(Ordering::Acquire) {
            return;
        }
        let (Some(event), Some(stream)) = (
            vrings.get(usize::from(queue::EVENT)),
            vrings.get(usize::from(queue::STREAM)),
        ) else {
            return;
        };
        self.events.set_queue(Arc::new(VringQueue(event.clone())));
        self.stream.set_queue(Arc::new(VringQueue(stream.clone())));
        self.queues_bound.store(true, Ordering::Release);
    }

    /// Stops capture (daemon shutdown). Returns at most one frame later.
    pub fn shutdown(&self) {
        if let Some(thread) = self.capture_slot().take() {
            let generation = thread.generation();
            let (frames, dropped) = thread.stop();
            info!("capture {generation} stopped at exit: {frames} frames, {dropped} dropped");
        }
    }

    fn capture_slot(&self) -> MutexGuard<'_, Option<CaptureThread>> {
        self.capture.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the capture thread's progress into the card's registers.
    fn sync_progress(&self, card: &mut Card) {
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
                origin: self.epoch,
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
    ) -> Outcome {
        self.sync_progress(card);
        let mut port = GuestDma {
            ram: &self.ram,
            mem,
        };
        let outcome = {
            let mut events = self.events.lock();
            card.execute_dma(task_file, sg, &mut port, &mut events.irq, self.now_ns())
        };
        self.reconcile_capture(card);
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

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Monotonic nanoseconds since the daemon started.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The card; a poisoned lock is taken over (the model never panics, and a
    /// panicking request must not wedge the device).
    fn card(&self) -> MutexGuard<'_, Card> {
        self.card.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Power-on state: capture stops, the card resets, the status block is
    /// re-initialised and region 0 counts as unmapped (QEMU drops mappings
    /// at device reset). Card RAM keeps its contents.
    fn reset_card(&self, why: &str) {
        let mut card = self.card();
        if let Some(thread) = self.capture_slot().take() {
            thread.stop();
        }
        // The queue is being torn down: returned (or not) as vhost-user
        // still allows; the driver reclaims what it does not get back.
        self.cancel_stream_buffers();
        self.reset_model(&mut card);
        self.ram.status().init();
        self.mapped.store(false, Ordering::Release);
        Counters::bump(&self.counters.resets);
        info!("card reset ({why})");
    }

    /// Processes the command queue until it is empty, re-checking after
    /// re-enabling notifications when EVENT_IDX is negotiated.
    fn process_command_queue(&self, vring: &VringRwLock) {
        let Some(atomic) = self.mem.atomic() else {
            warn!("command queue kicked before guest memory was set");
            return;
        };
        let _batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        if self.quiescing.load(Ordering::Acquire) {
            debug!("command queue kicked while quiescing: left alone");
            return;
        }
        let mut batch = Batch {
            backend: self,
            card: Some(self.card()),
        };
        if self.rebase_on_start.swap(false, Ordering::AcqRel) {
            // Nothing can change the card while the device is stopped, so
            // this only moves time zero to the start (not counted).
            self.reset_model(batch.card());
            debug!("device started");
        }
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    warn!("command queue: cannot disable notifications: {e}");
                }
            }
            let drained = self.drain_command_queue(vring, &atomic, &mut batch);
            // A broken avail ring would make enable_notification report
            // "more chains" forever: give up on this kick instead of
            // spinning with the card locked (found by fuzzing).
            if !event_idx || drained == Drained::RingBroken {
                break;
            }
            match vring.enable_notification() {
                // More chains arrived while notifications were off.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!("command queue: cannot enable notifications: {e}");
                    break;
                }
            }
        }
    }

    fn drain_command_queue(
        &self,
        vring: &VringRwLock,
        atomic: &GuestMemory,
        batch: &mut Batch<'_>,
    ) -> Drained {
        let mem = atomic.memory();
        loop {
            if self.quiescing.load(Ordering::Acquire) {
                debug!("quiescing: no more requests taken");
                return Drained::Empty;
            }
            // Hold the vring lock only to pop: the frontend thread needs it too.
            let chain = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
                Ok(mut chains) => chains.next(),
                Err(e) => {
                    // An avail index more than a queue ahead, or a queue
                    // not set up: the driver broke the ring. Its requests
                    // stay unanswered until it resets the device.
                    error!("command queue unusable: {e}");
                    return Drained::RingBroken;
                }
            };
            let Some(chain) = chain else {
                return Drained::Empty;
            };
            let head = chain.head_index();
            let completion = process_chain(batch, &chain);
            Counters::bump(&self.counters.requests);
            match completion.disposition {
                Disposition::Executed(outcome) => {
                    trace!("request {head}: {outcome:?}, {} bytes", completion.used_len)
                }
                Disposition::Attached(Ok(())) => {
                    Counters::bump(&self.counters.attaches);
                    debug!("request {head}: ATTACH done");
                }
                Disposition::Attached(Err(e)) => {
                    Counters::bump(&self.counters.attach_failures);
                    warn!("request {head}: ATTACH failed: {e}");
                }
                Disposition::Flushed(Ok(())) => debug!("request {head}: FLUSH_BUFFERS done"),
                Disposition::Flushed(Err(e)) => warn!("request {head}: FLUSH_BUFFERS: {e}"),
                Disposition::Rejected(e) => {
                    if e.status() == xxcapture_abi::vq_status::UNSUPPORTED {
                        Counters::bump(&self.counters.unsupported);
                    } else {
                        Counters::bump(&self.counters.bad_requests);
                    }
                    debug!("request {head} rejected: {e}");
                }
                Disposition::Dropped(e) => {
                    Counters::bump(&self.counters.bad_requests);
                    debug!("request {head} dropped: {e}");
                }
            }
            // Records the request raised go out before its completion, so
            // the driver has them when the request returns.
            self.events.deliver(self.device_now(), Some(&mem));
            if let Err(e) = vring.add_used(head, completion.used_len) {
                error!("command queue: add_used({head}) failed: {e}");
                return Drained::RingBroken;
            }
            match vring.needs_notification() {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(e) = vring.signal_used_queue() {
                        error!("command queue: cannot signal the guest: {e}");
                    }
                }
                Err(e) => error!("command queue: cannot read the used event: {e}"),
            }
        }
    }
}

impl XxcapBackend {
    /// Holds the capture buffers the driver queued; answers malformed ones.
    fn process_stream_queue(&self, vring: &VringRwLock) {
        let Some(mem) = self.mem.get() else {
            warn!("stream queue kicked before guest memory was set");
            return;
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let vring = VringQueue(vring.clone());
        let mut answered = false;
        let mut broken = false;
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    warn!("stream queue: cannot disable notifications: {e}");
                }
            }
            loop {
                let chain = match vring.pop(&mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(e) => {
                        // A broken ring would report "more chains" forever:
                        // leave it until the driver resets the device.
                        error!("stream queue unusable: {e}");
                        broken = true;
                        break;
                    }
                };
                let head = chain.head_index();
                match process_stream_chain(&chain, self.device_now()) {
                    StreamChain::Hold(buffer) => {
                        trace!("stream buffer {head}: {} bytes held", buffer.capacity);
                        self.stream.hold(buffer);
                    }
                    StreamChain::Done(completion) => {
                        Counters::bump(&self.counters.bad_requests);
                        debug!("stream buffer {head} refused: {:?}", completion.disposition);
                        if let Err(e) = vring.add_used(head, completion.used_len) {
                            error!("stream queue: add_used({head}) failed: {e}");
                        }
                        answered = true;
                    }
                }
            }
            if !event_idx || broken {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!("stream queue: cannot enable notifications: {e}");
                    break;
                }
            }
        }
        if answered {
            if let Err(e) = vring.notify() {
                error!("stream queue: cannot signal the guest: {e}");
            }
        }
    }
}

/// How draining the command queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// No chain is available.
    Empty,
    /// The driver's ring cannot be used (bad avail index or descriptor).
    RingBroken,
}

/// The card as one command-queue batch sees it: locked for the batch, except
/// while an ATTACH talks to QEMU.
struct Batch<'a> {
    backend: &'a XxcapBackend,
    card: Option<MutexGuard<'a, Card>>,
}

impl Batch<'_> {
    fn card(&mut self) -> &mut Card {
        let backend = self.backend;
        self.card.get_or_insert_with(|| backend.card())
    }
}

impl Device for Batch<'_> {
    fn execute(&mut self, task_file: &mut [u8], sg: &[SgEntry], mem: &GuestMemoryMmap) -> Outcome {
        let backend = self.backend;
        backend.execute_locked(self.card(), task_file, sg, mem)
    }

    fn attach(&mut self) -> Result<(), String> {
        self.card = None;
        self.backend.attach()
    }

    fn flush_buffers(&mut self) -> Result<(), String> {
        let backend = self.backend;
        let mem = backend.mem.get();
        if backend
            .stream
            .flush(mem.as_deref(), backend.device_now(), FLUSH_LIMIT)
        {
            Ok(())
        } else {
            Err(format!(
                "the buffer being filled did not come back within {FLUSH_LIMIT:?}"
            ))
        }
    }

    fn device_time_ns(&self) -> u64 {
        self.backend.device_now()
    }
}

impl VhostUserBackend for XxcapBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(queue::COUNT)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        debug!("driver acked features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features(self.capabilities)
    }

    /// One region: card RAM plus the status page.
    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        if self.capabilities & caps::CARD_RAM_SHM == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this card has no shared card RAM",
            ));
        }
        Ok(VhostUserShMemConfig::new(1, &[self.ram.bar_size()]))
    }

    /// Stores the backend channel; SHMEM_MAP goes out on it at ATTACH (never
    /// from here: QEMU would deadlock waiting for its own reply).
    fn set_backend_req_fd(&self, backend: Backend) {
        debug!("backend channel received");
        self.set_mapper(Arc::new(backend));
    }

    /// Only reached if a frontend sends VHOST_USER_RESET_DEVICE, which QEMU's
    /// generic vhost-user device never does; see `stop_vring` for the hook
    /// that actually resets the card.
    fn reset_device(&self) {
        self.reset_card("RESET_DEVICE");
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.card().config_space();
        let start = usize::try_from(offset)
            .unwrap_or(CONFIG_SIZE)
            .min(CONFIG_SIZE);
        let len = usize::try_from(size).unwrap_or(CONFIG_SIZE);
        let end = start.saturating_add(len).min(CONFIG_SIZE);
        if end - start != len {
            // The library turns a short answer into an error reply.
            debug!("GET_CONFIG offset={offset} size={size} clipped to {start}..{end}");
        }
        space[start..end].to_vec()
    }

    /// Config space is read-only identity. QEMU answers every guest write with
    /// a SET_CONFIG of its whole (possibly stale) copy, so writes are counted
    /// and ignored; they never change state.
    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        Counters::bump(&self.counters.config_writes);
        debug!(
            "ignoring SET_CONFIG offset={offset} size={} (config space is read-only)",
            buf.len()
        );
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        debug!("guest memory table updated");
        self.mem.set(mem);
        Ok(())
    }

    /// Reset hook. vhost-user-backend 0.24 calls this for GET_VRING_BASE,
    /// which QEMU sends for every queue whenever it stops the device: guest
    /// device reset (status 0), driver unload or reload, and also VM stop.
    /// QEMU's generic vhost-user device never sends RESET_DEVICE, and the
    /// start of a device has no dedicated callback, so the command queue's
    /// stop is the one reliable "the device is going away" event. Resetting
    /// here (not on the next start) means the guest's probe, which reads
    /// config space before DRIVER_OK, already sees the power-on card.
    /// Taking the card lock also waits for a batch in flight to finish.
    /// When the device starts again, the library calls `handle_event` for
    /// each vring as it is enabled, even without a kick; the first such call
    /// for the command queue re-bases the card's clock (`rebase_on_start`).
    /// Cost: pausing the VM (`stop`/`cont`) resets the card too.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        debug!("vring {queue_index} stopped");
        if queue_index == u32::from(queue::COMMAND) {
            self.reset_card("command queue stopped");
            self.rebase_on_start.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The vring worker's exit event. Without one, dropping the daemon hangs:
    /// vhost-user-backend 0.24 joins its worker threads on drop and can only
    /// stop them through this event.
    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                error!("cannot create the exit event of vring worker {thread_index}: {e}");
                None
            }
        }
    }

    /// Never returns an error: an error ends the vring worker thread, and the
    /// device would hang. Guest mistakes are answered on the queue instead.
    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!("unexpected event set {evset:?} for event {device_event}");
            return Ok(());
        }
        self.bind_queues(vrings);
        match device_event {
            queue::COMMAND => match vrings.get(usize::from(queue::COMMAND)) {
                Some(vring) => self.process_command_queue(vring),
                None => error!("command vring missing"),
            },
            // New event buffers: the backlog may go out now.
            queue::EVENT => {
                trace!("event queue kick");
                let mem = self.mem.get();
                self.events.deliver(self.device_now(), mem.as_deref());
            }
            queue::STREAM => match vrings.get(usize::from(queue::STREAM)) {
                Some(vring) => self.process_stream_queue(vring),
                None => error!("stream vring missing"),
            },
            TIMER_EVENT => {
                self.events.timer_fired();
                let mem = self.mem.get();
                self.events.deliver(self.device_now(), mem.as_deref());
            }
            other => warn!("unexpected device event {other}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use xxcapture_abi::{regs, req_type, Command, Op, TaskFileHeader, VqRequest, VqStatus};
    use xxcapture_model::CardConfig;
    use zerocopy::{FromBytes, IntoBytes};

    fn backend() -> XxcapBackend {
        XxcapBackend::new(Card::new(CardConfig::default()).expect("card"), true, None)
            .expect("backend")
    }

    #[test]
    fn offers_the_documented_features() {
        let b = backend();
        assert_eq!(b.num_queues(), 3);
        assert_eq!(b.max_queue_size(), 1024);
        for bit in [32, 28, 29, 30] {
            assert_ne!(b.features() & (1 << bit), 0, "feature bit {bit}");
        }
        let no_idx =
            XxcapBackend::new(Card::new(CardConfig::default()).expect("card"), false, None)
                .expect("backend");
        assert_eq!(no_idx.features() & (1 << 29), 0);
        let p = b.protocol_features();
        assert!(p.contains(VhostUserProtocolFeatures::CONFIG));
        assert!(p.contains(VhostUserProtocolFeatures::MQ));
        assert!(p.contains(VhostUserProtocolFeatures::REPLY_ACK));
        assert!(!p.contains(VhostUserProtocolFeatures::BACKEND_REQ));
    }

    #[test]
    fn config_reads_are_clipped_and_never_panic() {
        let b = backend();
        let all = b.get_config(0, 96);
        assert_eq!(&all[..4], b"XXCP");
        assert_eq!(b.get_config(4, 8), all[4..12].to_vec());
        assert_eq!(b.get_config(90, 16), all[90..].to_vec());
        assert!(b.get_config(96, 4).is_empty());
        assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
        assert_eq!(b.get_config(0, u32::MAX), all);
        assert!(b.get_config(10, 0).is_empty());
    }

    #[test]
    fn config_writes_are_counted_and_ignored() {
        let b = backend();
        let before = b.get_config(0, 96);
        b.set_config(0, &[0xff; 96]).expect("accepted");
        b.set_config(200, &[]).expect("accepted");
        assert_eq!(b.get_config(0, 96), before);
        assert_eq!(b.counters.config_writes.load(Ordering::Relaxed), 2);
    }

    /// A vring set up as QEMU would, over a mock queue at `base`.
    fn vring(atomic: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> VringRwLock {
        let vring = VringRwLock::new(atomic.clone(), 1024).expect("vring");
        vring.set_queue_size(16);
        vring
            .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
            .expect("queue info");
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vring
    }

    fn put_request(mem: &GuestMemoryMmap, at: u64) -> usize {
        let header = VqRequest {
            req_type: req_type::EXEC_TASK_FILE.into(),
            ..VqRequest::default()
        };
        let tf = TaskFileHeader {
            count: 1.into(),
            ..TaskFileHeader::default()
        };
        let cmd = Command {
            op: (Op::GetRegister as u16).into(),
            reg: regs::REQUEST_COUNT.into(),
            ..Command::default()
        };
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(tf.as_bytes());
        bytes.extend_from_slice(cmd.as_bytes());
        mem.write_slice(&bytes, GuestAddress(at)).expect("write");
        bytes.len()
    }

    /// Posts one request on `vq` and returns where its result goes.
    fn post(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16) -> u64 {
        let src = 0x10_0000 + u64::from(slot) * 0x1000;
        let out = 0x20_0000 + u64::from(slot) * 0x1000;
        let len = put_request(mem, src) as u32;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(src, len, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(
                out,
                len - 24 + 16,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.build_desc_chain(&descs).expect("chain");
        out
    }

    /// Posts at descriptor index `slot * 2` without resetting the avail ring.
    fn post_more(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        slot: u16,
    ) -> u64 {
        let src = 0x10_0000 + u64::from(slot) * 0x1000;
        let out = 0x20_0000 + u64::from(slot) * 0x1000;
        let len = put_request(mem, src) as u32;
        let next = slot * 2 + 1;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                src,
                len,
                virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                next,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                out,
                len - 24 + 16,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, slot * 2).expect("chain");
        out
    }

    fn result(mem: &GuestMemoryMmap, out: u64) -> (u64, u32) {
        let mut raw = [0u8; 64];
        mem.read_slice(&mut raw, GuestAddress(out)).expect("read");
        let cmd = Command::read_from_bytes(&raw[16..48]).expect("cmd");
        let status = VqStatus::read_from_bytes(&raw[48..]).expect("status");
        (cmd.value.get(), status.status.get())
    }

    fn used_idx(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
        mem.read_obj::<u16>(vq.used_addr().unchecked_add(2))
            .expect("used idx")
    }

    use vm_memory::Address;

    #[test]
    fn kick_executes_requests_and_stop_resets_the_card() {
        for event_idx in [false, true] {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
            let atomic = GuestMemoryAtomic::new(mem.clone());
            let cmd_q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
            let evt_q = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
            let b = backend();
            b.update_memory(atomic.clone()).expect("memory");
            b.set_event_idx(event_idx);
            let str_q = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
            let vrings = [
                vring(&atomic, &cmd_q),
                vring(&atomic, &evt_q),
                vring(&atomic, &str_q),
            ];
            for v in &vrings {
                v.set_queue_event_idx(event_idx);
            }

            let out0 = post(&mem, &cmd_q, 0);
            let out1 = post_more(&mem, &cmd_q, 1);
            b.handle_event(0, EventSet::IN, &vrings, 0)
                .expect("handled");
            assert_eq!(used_idx(&mem, &cmd_q), 2);
            // REQUEST_COUNT counts the request itself.
            assert_eq!(result(&mem, out0), (1, 0));
            assert_eq!(result(&mem, out1), (2, 0));

            // Event-queue buffers are left alone.
            post(&mem, &evt_q, 3);
            b.handle_event(1, EventSet::IN, &vrings, 0)
                .expect("handled");
            assert_eq!(used_idx(&mem, &evt_q), 0);
            assert_eq!(vrings[1].queue_next_avail(), 0);

            // Stopping the command queue resets the card.
            b.stop_vring(1).expect("stop");
            assert_eq!(b.card().request_count(), 2);
            b.stop_vring(0).expect("stop");
            assert_eq!(b.card().request_count(), 0);
            assert!(b.rebase_on_start.load(Ordering::Relaxed));
            let out2 = post_more(&mem, &cmd_q, 2);
            b.handle_event(0, EventSet::IN, &vrings, 0)
                .expect("handled");
            assert!(!b.rebase_on_start.load(Ordering::Relaxed));
            assert_eq!(result(&mem, out2), (1, 0));
            assert_eq!(b.counters.requests.load(Ordering::Relaxed), 3);
            assert_eq!(b.counters.resets.load(Ordering::Relaxed), 1);
        }
    }

    // ---- ATTACH, DMA and capture through the queue ----------------------

    use std::sync::atomic::AtomicU32;
    use std::time::Duration;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    use xxcapture_abi::frame::{verify, PixelFormat};
    use xxcapture_abi::{
        control, slot_state, status, vq_status, TaskFile, TaskFileResult, TfError,
    };
    use xxcapture_model::CAPTURE_CARD_CAPS;

    /// Records SHMEM_MAP requests; can be told to refuse.
    #[derive(Default)]
    struct FakeMapper {
        maps: AtomicU32,
        unmaps: AtomicU32,
        refuse: AtomicBool,
    }

    impl ShmemMapper for FakeMapper {
        fn map(&self, ram: &CardRam) -> io::Result<()> {
            assert_eq!(ram.region_size(), (4 << 20) + 4096);
            assert_eq!(ram.file().metadata()?.len(), ram.region_size());
            if self.refuse.load(Ordering::Relaxed) {
                return Err(io::Error::other("refused"));
            }
            self.maps.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn unmap(&self, _ram: &CardRam) -> io::Result<()> {
            self.unmaps.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn capture_backend() -> XxcapBackend {
        let config = CardConfig {
            card_ram_size: 4 << 20,
            capabilities: CAPTURE_CARD_CAPS,
            ..CardConfig::default()
        };
        XxcapBackend::new(Card::new(config).expect("card"), false, None).expect("backend")
    }

    /// A guest with a command queue driven through `handle_event`.
    struct Guest {
        mem: GuestMemoryMmap,
        vrings: [VringRwLock; 3],
        next: u16,
    }

    impl Guest {
        fn new(
            vq: &MockSplitQueue<'_, GuestMemoryMmap>,
            evt: &MockSplitQueue<'_, GuestMemoryMmap>,
            str_q: &MockSplitQueue<'_, GuestMemoryMmap>,
            mem: &GuestMemoryMmap,
            b: &XxcapBackend,
        ) -> Guest {
            let atomic = GuestMemoryAtomic::new(mem.clone());
            b.update_memory(atomic.clone()).expect("memory");
            Guest {
                mem: mem.clone(),
                vrings: [
                    vring(&atomic, vq),
                    vring(&atomic, evt),
                    vring(&atomic, str_q),
                ],
                next: 0,
            }
        }

        /// Posts `bytes` with `wlen` writable bytes, kicks, returns the
        /// writable area's contents.
        fn request(
            &mut self,
            vq: &MockSplitQueue<'_, GuestMemoryMmap>,
            b: &XxcapBackend,
            bytes: &[u8],
            wlen: u32,
        ) -> Vec<u8> {
            let slot = self.next % 8;
            self.next += 1;
            let src = 0x10_0000 + u64::from(slot) * 0x1000;
            let out = 0x20_0000 + u64::from(slot) * 0x1000;
            self.mem
                .write_slice(bytes, GuestAddress(src))
                .expect("write");
            let descs = [
                RawDescriptor::from(SplitDescriptor::new(
                    src,
                    bytes.len() as u32,
                    VRING_DESC_F_NEXT as u16,
                    slot * 2 + 1,
                )),
                RawDescriptor::from(SplitDescriptor::new(
                    out,
                    wlen,
                    VRING_DESC_F_WRITE as u16,
                    0,
                )),
            ];
            vq.add_desc_chains(&descs, slot * 2).expect("chain");
            b.handle_event(0, EventSet::IN, &self.vrings, 0)
                .expect("handled");
            let mut raw = vec![0u8; wlen as usize];
            self.mem
                .read_slice(&mut raw, GuestAddress(out))
                .expect("read");
            raw
        }

        fn attach(&mut self, vq: &MockSplitQueue<'_, GuestMemoryMmap>, b: &XxcapBackend) -> u32 {
            let req = VqRequest {
                req_type: req_type::ATTACH.into(),
                ..VqRequest::default()
            };
            let raw = self.request(vq, b, req.as_bytes(), 16);
            VqStatus::read_from_bytes(&raw)
                .expect("status")
                .status
                .get()
        }

        fn exec(
            &mut self,
            vq: &MockSplitQueue<'_, GuestMemoryMmap>,
            b: &XxcapBackend,
            tf: &TaskFile,
        ) -> TaskFileResult {
            let req = VqRequest {
                req_type: req_type::EXEC_TASK_FILE.into(),
                ..VqRequest::default()
            };
            let body = tf.to_bytes();
            let mut bytes = req.as_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let raw = self.request(vq, b, &bytes, (body.len() + 16) as u32);
            let st = VqStatus::read_from_bytes(&raw[body.len()..]).expect("status");
            assert_eq!(st.status.get(), vq_status::OK);
            TaskFileResult::parse(&raw[..body.len()]).expect("result")
        }
    }

    #[test]
    fn attach_maps_once_per_reset_and_reports_failures() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let b = capture_backend();
        assert!(b
            .protocol_features()
            .contains(VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ));
        let config = b.get_shmem_config().expect("shmem config");
        // A PCI BAR: the next power of two above card RAM + status page.
        assert_eq!((config.nregions, config.memory_sizes[0]), (1, 8 << 20));
        let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
        // No backend channel yet: DEVICE_ERROR.
        assert_eq!(g.attach(&vq, &b), vq_status::DEVICE_ERROR);
        let mapper = Arc::new(FakeMapper::default());
        b.set_mapper(mapper.clone());
        assert_eq!(g.attach(&vq, &b), vq_status::OK);
        assert_eq!(g.attach(&vq, &b), vq_status::OK);
        assert_eq!(mapper.maps.load(Ordering::Relaxed), 1, "mapped once");
        // A reset drops the mapping: the next ATTACH maps again.
        b.stop_vring(0).expect("stop");
        assert_eq!(g.attach(&vq, &b), vq_status::OK);
        assert_eq!(mapper.maps.load(Ordering::Relaxed), 2);
        // A refused map (after a retry with unmap) is DEVICE_ERROR.
        b.stop_vring(0).expect("stop");
        mapper.refuse.store(true, Ordering::Relaxed);
        assert_eq!(g.attach(&vq, &b), vq_status::DEVICE_ERROR);
        assert_eq!(mapper.unmaps.load(Ordering::Relaxed), 1);
        assert_eq!(b.counters.attaches.load(Ordering::Relaxed), 3);
        assert_eq!(b.counters.attach_failures.load(Ordering::Relaxed), 2);
        // A card without CARD_RAM_SHM offers no shared memory.
        let plain = backend();
        assert!(plain.get_shmem_config().is_err());
    }

    fn start_capture(tf: &mut TaskFile) {
        tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
    }

    fn stop_capture(tf: &mut TaskFile) {
        tf.set_to_register(regs::CONTROL, 0, control::CAPTURE);
    }

    /// Waits until the status block shows `frames` completed frames.
    fn wait_frames(b: &XxcapBackend, frames: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sb = b.ram.read_status().expect("consistent status");
            if sb.frame_counter.get() >= frames {
                return;
            }
            assert!(Instant::now() < deadline, "no progress: {sb:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn capture_fills_the_ring_with_verifiable_frames() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let b = capture_backend();
        let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
        let mut tf = TaskFile::new();
        tf.set_register(regs::FRAME_FORMAT, xxcapture_abi::format::NV12);
        tf.set_register(regs::FRAME_RATE, 0);
        start_capture(&mut tf);
        let slots = tf.get_register(regs::RING_SLOTS);
        let res = g.exec(&vq, &b, &tf);
        assert_eq!(res.error, TfError::Ok);
        let ring_slots = res.value(slots).expect("slots");
        // 640x480 NV12 = 460800 bytes = 112.5 pages -> 113 pages; 4 MiB / that.
        assert_eq!(ring_slots, (4u64 << 20) / (113 * 4096));
        // Free-running waits for its reader: one ring, then nothing more
        // until frames are released.
        wait_frames(&b, ring_slots);
        std::thread::sleep(Duration::from_millis(100));
        let sb = b.ram.read_status().expect("consistent status");
        assert_eq!(
            sb.frame_counter.get(),
            ring_slots,
            "overwrote unreleased frames"
        );
        let mut tf = TaskFile::new();
        tf.set_register(regs::RING_RELEASE, (ring_slots + 3) as u32);
        assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
        wait_frames(&b, 2 * ring_slots + 3);
        // Registers follow the capture thread.
        let mut tf = TaskFile::new();
        let counter = tf.get_register(regs::FRAME_COUNTER);
        let res = g.exec(&vq, &b, &tf);
        assert!(res.value(counter).expect("counter") >= 2 * ring_slots + 3);
        // Formats are busy while capturing.
        let mut tf = TaskFile::new();
        tf.set_register(regs::FRAME_WIDTH, 800);
        assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Busy);

        let mut tf = TaskFile::new();
        stop_capture(&mut tf);
        assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
        let sb = b.ram.read_status().expect("status");
        assert_eq!(sb.status.get(), status::READY);
        assert_eq!(u64::from(sb.ring_slots.get()), ring_slots);
        assert_eq!(sb.slot_size.get(), 113 * 4096);
        assert_eq!(sb.frame_size.get(), 460_800);
        assert_eq!(
            (sb.format.get(), sb.width.get(), sb.height.get()),
            (2, 640, 480)
        );
        let frames = sb.frame_counter.get();
        assert_eq!(sb.dropped.get(), 0, "free-running never drops");
        // FRAME_COUNTER holds the final count.
        let mut tf = TaskFile::new();
        let counter = tf.get_register(regs::FRAME_COUNTER);
        assert_eq!(
            g.exec(&vq, &b, &tf).value(counter),
            Some(frames & 0xffff_ffff)
        );
        // Every slot holds the newest frame of its residue class, verified.
        let mut seen = 0;
        for (index, slot) in sb.slots.iter().enumerate().take(ring_slots as usize) {
            assert_eq!(slot.state.get(), slot_state::FULL, "slot {index}");
            let n = slot.frame_number.get();
            assert_eq!(n % ring_slots, index as u64);
            assert!(
                n < frames && n + ring_slots >= frames,
                "slot {index} holds stale frame {n} of {frames}"
            );
            let bytes = b
                .ram
                .read(u64::from(sb.slot_size.get()) * index as u64, 460_800)
                .expect("slot");
            let stamp = verify(&bytes, PixelFormat::Nv12, 640, 480).expect("verified frame");
            assert_eq!(stamp.frame_number, n);
            assert!(slot.timestamp_ns.get() <= sb.device_time_ns.get());
            seen += 1;
        }
        assert_eq!(seen, ring_slots);
    }

    #[test]
    fn paced_capture_keeps_to_the_frame_rate() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let b = capture_backend();
        let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
        let mut tf = TaskFile::new();
        tf.set_register(regs::FRAME_RATE, 50);
        start_capture(&mut tf);
        let started = Instant::now();
        assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
        wait_frames(&b, 5);
        std::thread::sleep(Duration::from_millis(100));
        let mut tf = TaskFile::new();
        stop_capture(&mut tf);
        g.exec(&vq, &b, &tf);
        let elapsed = started.elapsed().as_secs_f64();
        let sb = b.ram.read_status().expect("status");
        let (frames, dropped) = (sb.frame_counter.get(), sb.dropped.get());
        // Never ahead of the schedule (frame 0 is due at once).
        assert!(
            (frames + dropped) as f64 <= elapsed * 50.0 + 1.0,
            "{frames} frames + {dropped} dropped in {elapsed} s"
        );
        assert!(frames >= 5);
        assert_eq!(sb.fps.get(), 50);
    }

    /// Holds ATTACH inside SHMEM_MAP until released: a request in flight.
    #[derive(Default)]
    struct BlockingMapper {
        entered: AtomicBool,
        released: Mutex<bool>,
        wake: std::sync::Condvar,
    }

    impl ShmemMapper for BlockingMapper {
        fn map(&self, _ram: &CardRam) -> io::Result<()> {
            self.entered.store(true, Ordering::Release);
            let mut released = self.released.lock().expect("lock");
            while !*released {
                released = self.wake.wait(released).expect("wait");
            }
            Ok(())
        }

        fn unmap(&self, _ram: &CardRam) -> io::Result<()> {
            Ok(())
        }
    }

    impl BlockingMapper {
        fn release(&self) {
            *self.released.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.wake.notify_all();
        }
    }

    /// Releases the mapper however the test ends, so a failing assertion
    /// cannot leave the worker blocked and the test hanging.
    struct Release<'a>(&'a BlockingMapper);

    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    /// SIGTERM's first step: the request being executed is completed (used
    /// and notified) before `quiesce` returns, and nothing more is taken.
    #[test]
    fn quiesce_completes_the_request_in_flight_and_takes_no_more() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let b = capture_backend();
        let mapper = Arc::new(BlockingMapper::default());
        b.set_mapper(mapper.clone());
        let guest = Guest::new(&vq, &evt, &strq, &mem, &b);

        // Two requests on the queue, one kick: ATTACH (which will block in
        // SHMEM_MAP), then a task file.
        let attach = VqRequest {
            req_type: req_type::ATTACH.into(),
            ..VqRequest::default()
        };
        mem.write_slice(attach.as_bytes(), GuestAddress(0x10_0000))
            .expect("write");
        let len = put_request(&mem, 0x10_1000) as u32;
        let status_len = std::mem::size_of::<VqStatus>() as u32;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                0x10_0000,
                attach.as_bytes().len() as u32,
                VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0x20_0000,
                status_len,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0x10_1000,
                len,
                VRING_DESC_F_NEXT as u16,
                3,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0x20_1000,
                len - 24 + status_len,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, 0).expect("chains");

        let quiesced = AtomicBool::new(false);
        std::thread::scope(|s| {
            let _release = Release(&mapper);
            let worker = s.spawn(|| b.handle_event(0, EventSet::IN, &guest.vrings, 0));
            let started = Instant::now();
            while !mapper.entered.load(Ordering::Acquire) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "ATTACH never ran"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let quiescer = s.spawn(|| {
                b.quiesce();
                quiesced.store(true, Ordering::Release);
            });
            // quiesce waits for the request in flight.
            std::thread::sleep(Duration::from_millis(50));
            assert!(!quiesced.load(Ordering::Acquire));
            assert_eq!(used_idx(&mem, &vq), 0);
            mapper.release();
            quiescer.join().expect("quiescer");
            // By then the ATTACH is completed, and the task file not taken.
            assert_eq!(used_idx(&mem, &vq), 1);
            assert_eq!(guest.vrings[0].queue_next_avail(), 1);
            worker.join().expect("worker").expect("handled");
        });
        let mut st = [0u8; 4];
        mem.read_slice(&mut st, GuestAddress(0x20_0000))
            .expect("read");
        assert_eq!(u32::from_le_bytes(st), vq_status::OK);
        // Later kicks take nothing either.
        b.handle_event(0, EventSet::IN, &guest.vrings, 0)
            .expect("handled");
        assert_eq!(guest.vrings[0].queue_next_avail(), 1);
        assert_eq!(used_idx(&mem, &vq), 1);
        assert_eq!(b.counters.requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reset_and_shutdown_stop_capture_without_hanging() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
        let b = capture_backend();
        let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
        for fps in [0, 1] {
            let mut tf = TaskFile::new();
            tf.set_register(regs::FRAME_RATE, fps);
            start_capture(&mut tf);
            assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
            wait_frames(&b, 1);
            // A device reset stops the thread (even mid-way through a 1 s
            // frame period) and re-initialises the status block.
            let t = Instant::now();
            b.stop_vring(0).expect("stop");
            assert!(t.elapsed() < Duration::from_secs(5));
            assert!(b.capture_slot().is_none());
            let sb = b.ram.read_status().expect("status");
            assert_eq!(
                (sb.status.get(), sb.frame_counter.get()),
                (status::READY, 0)
            );
            assert!(b.card().capture_session().is_none());
        }
        // Daemon shutdown while capturing.
        let mut tf = TaskFile::new();
        start_capture(&mut tf);
        assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
        wait_frames(&b, 1);
        let t = Instant::now();
        b.shutdown();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(b.capture_slot().is_none());
        assert_eq!(
            b.ram.read_status().expect("status").status.get(),
            status::READY
        );
    }

    /// Found by fuzzing (fuzz/regressions/backend/): with EVENT_IDX, an
    /// avail index more than a queue ahead made `enable_notification`
    /// report new chains forever, and the kick spun with the card locked.
    #[test]
    fn broken_avail_index_ends_the_kick_instead_of_spinning() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let cmd_q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let b = Arc::new(backend());
        b.update_memory(atomic.clone()).expect("memory");
        b.set_event_idx(true);
        cmd_q.avail().idx().store(1000);
        let vrings = vec![vring(&atomic, &cmd_q)];
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let handled = b.handle_event(0, EventSet::IN, &vrings, 0);
                let _ = tx.send(handled.is_ok());
            })
        };
        let handled = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the kick returned");
        assert!(handled);
        worker.join().expect("worker");
        assert_eq!(b.counters.requests.load(Ordering::Relaxed), 0);
        assert_eq!(used_idx(&mem, &cmd_q), 0);
        // The card is not left locked: the frontend can still reset it.
        b.stop_vring(0).expect("stop");
    }
}

#[cfg(test)]
mod io_tests;
