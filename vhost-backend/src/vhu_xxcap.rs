//! The vhost-user face of the Double X card: the [`VhostUserBackend`]
//! implementation. The `vhu_*` modules are the only code that knows the
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
//! [`XxcapBackend`] answers the protocol's questions (features, queues,
//! config space) and forwards the rest to the [`XxcapDevice`] it holds:
//! queue events to the vring worker's code (`vhu_worker`), resets and SHMEM setup to the
//! device. Threads and lock order: see [`crate::device`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{debug, error, trace, warn};
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use xxcapture_abi::{caps, queue, CONFIG_SIZE};
use xxcapture_model::{Card, FileSource};

use crate::clock::Clock;
use crate::device::{Counters, XxcapDevice};
use crate::vhu_adapters::VringQueue;
use crate::vhu_worker::{process_command_queue, process_stream_queue};

/// Guest memory as the vhost-user library hands it to us.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Largest virtqueue the backend accepts (QEMU's `vq_size` must not exceed it).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// The vring worker's epoll id for the coalescing timer: above the queues
/// and the library's own exit event (ids `0..=queue::COUNT`).
pub const TIMER_EVENT: u16 = queue::COUNT + 1;

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

/// The Double X card behind a vhost-user socket.
pub struct XxcapBackend {
    device: Arc<XxcapDevice>,
    features: u64,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    event_idx: AtomicBool,
    /// The event and stream vrings were handed to the device.
    queues_bound: AtomicBool,
}

impl XxcapBackend {
    /// A backend for `card`; `event_idx` says whether VIRTIO_RING_F_EVENT_IDX
    /// is offered; `file` is the file video source (its geometry must be the
    /// card's `file_source`). Creates card RAM (a memfd of the card's RAM
    /// size plus the status page).
    pub fn new(card: Card, event_idx: bool, file: Option<FileSource>) -> io::Result<Self> {
        Self::with_clock(card, event_idx, file, Clock::host())
    }

    /// As [`Self::new`], with device time from `clock`.
    pub fn with_clock(
        card: Card,
        event_idx: bool,
        file: Option<FileSource>,
        clock: Clock,
    ) -> io::Result<Self> {
        let features = if event_idx {
            BASE_FEATURES | EVENT_IDX_FEATURE
        } else {
            BASE_FEATURES
        };
        Ok(XxcapBackend {
            device: XxcapDevice::new(card, file, clock)?,
            features,
            event_idx: AtomicBool::new(false),
            queues_bound: AtomicBool::new(false),
        })
    }

    /// The card and its state: quiesce, shutdown, counters, card RAM.
    pub fn device(&self) -> &XxcapDevice {
        &self.device
    }

    /// The frontend went away (its vrings with it): the card returns to its
    /// power-on state as at a device reset, forgets the connection's guest
    /// memory, backend channel and vrings, and waits for the next frontend.
    /// Card RAM keeps its contents unless `clear_card_ram`.
    pub fn disconnected(&self, clear_card_ram: bool) {
        self.queues_bound.store(false, Ordering::Release);
        self.event_idx.store(false, Ordering::Relaxed);
        self.device.disconnected(clear_card_ram);
    }

    fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Relaxed)
    }

    /// Gives the event and stream code their vrings, once per connection:
    /// the vrings live as long as the connection, but only `handle_event`
    /// sees them.
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
        self.device.set_queues(
            Arc::new(VringQueue(event.clone())),
            Arc::new(VringQueue(stream.clone())),
        );
        self.queues_bound.store(true, Ordering::Release);
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
        protocol_features(self.device.capabilities())
    }

    /// One region: card RAM plus the status page.
    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        if self.device.capabilities() & caps::CARD_RAM_SHM == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this card has no shared card RAM",
            ));
        }
        Ok(VhostUserShMemConfig::new(
            1,
            &[self.device.card_ram().bar_size()],
        ))
    }

    /// Stores the backend channel; SHMEM_MAP goes out on it at ATTACH (never
    /// from here: QEMU would deadlock waiting for its own reply).
    fn set_backend_req_fd(&self, backend: Backend) {
        debug!("backend channel received");
        self.device.set_mapper(Arc::new(backend));
    }

    /// Only reached if a frontend sends VHOST_USER_RESET_DEVICE, which QEMU's
    /// generic vhost-user device never does; see `stop_vring` for the hook
    /// that actually resets the card.
    fn reset_device(&self) {
        self.device.reset_card("RESET_DEVICE");
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.device.config_space();
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
        Counters::bump(&self.device.counters().config_writes);
        debug!(
            "ignoring SET_CONFIG offset={offset} size={} (config space is read-only)",
            buf.len()
        );
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        debug!("guest memory table updated");
        self.device.memory().set(mem);
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
            self.device.stopped();
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
            queue::COMMAND => {
                // Stream buffers made available before a request was are
                // held before it runs: a capture stop or FLUSH_BUFFERS must
                // return them too. The driver kicks the stream queue first,
                // but this thread may read the two kicks in either order.
                if let Some(stream) = vrings.get(usize::from(queue::STREAM)) {
                    let mem = self.device.memory().get();
                    if mem.is_some_and(|mem| has_available(stream, &mem)) {
                        process_stream_queue(&self.device, stream, self.event_idx());
                    }
                }
                match vrings.get(usize::from(queue::COMMAND)) {
                    Some(vring) => process_command_queue(&self.device, vring, self.event_idx()),
                    None => error!("command vring missing"),
                }
            }
            // New event buffers: the backlog may go out now.
            queue::EVENT => {
                trace!("event queue kick");
                let mem = self.device.memory().get();
                self.device.deliver_events(mem.as_deref());
            }
            queue::STREAM => match vrings.get(usize::from(queue::STREAM)) {
                Some(vring) => process_stream_queue(&self.device, vring, self.event_idx()),
                None => error!("stream vring missing"),
            },
            TIMER_EVENT => {
                let mem = self.device.memory().get();
                self.device.timer_fired(mem.as_deref());
            }
            other => warn!("unexpected device event {other}"),
        }
        Ok(())
    }
}

/// Whether `vring` is set up and holds chains the device has not taken
/// (read without touching the ring's notification state).
fn has_available(vring: &VringRwLock, mem: &GuestMemoryMmap) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    state.is_enabled()
        && queue.ready()
        && queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod io_tests;
