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
use crate::request::{process_chain, Device, Disposition};
use crate::stream::{process_stream_chain, StreamBuffers, StreamChain};

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
mod tests;

#[cfg(test)]
mod io_tests;
