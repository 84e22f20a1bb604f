//! The vhost-user backend of the Double X card: the only module that knows the
//! vhost-user protocol.
//!
//! QEMU's `vhost-user-test-device-pci` forwards everything to us: features,
//! config space and the two virtqueues. Queue 0 carries task files (see
//! [`crate::request`]); queue 1 will carry events and is left alone for now.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use log::{debug, error, info, trace, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use xxcapture_abi::{queue, CONFIG_SIZE};
use xxcapture_model::Card;

use crate::request::{process_chain, Disposition};

/// Guest memory as the vhost-user library hands it to us.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Largest virtqueue the backend accepts (QEMU's `vq_size` must not exceed it).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Virtio features always offered to the driver.
pub const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Offered unless disabled (`xxcapd --no-event-idx`).
pub const EVENT_IDX_FEATURE: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// vhost-user protocol features offered to the frontend.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
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
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "requests={} bad_requests={} unsupported={} config_writes={} resets={}",
            get(&self.requests),
            get(&self.bad_requests),
            get(&self.unsupported),
            get(&self.config_writes),
            get(&self.resets),
        )
    }
}

/// The Double X card behind a vhost-user socket.
pub struct XxcapBackend {
    /// The card model. Held for the whole of a command-queue batch, so that
    /// `stop_vring` (which takes it to reset the card) waits for requests in
    /// flight to complete, as the vhost-user-backend documentation asks.
    card: Mutex<Card>,
    mem: Mutex<Option<GuestMemory>>,
    features: u64,
    event_idx: AtomicBool,
    /// Set while the device is stopped: the first command-queue event after
    /// the next start resets the card once more, so that DEVICE_TIME_NS
    /// counts from the start rather than from the stop.
    rebase_on_start: AtomicBool,
    counters: Arc<Counters>,
    epoch: Instant,
}

impl XxcapBackend {
    /// A backend for `card`; `event_idx` says whether VIRTIO_RING_F_EVENT_IDX
    /// is offered.
    pub fn new(card: Card, event_idx: bool) -> Self {
        let features = if event_idx {
            BASE_FEATURES | EVENT_IDX_FEATURE
        } else {
            BASE_FEATURES
        };
        XxcapBackend {
            card: Mutex::new(card),
            mem: Mutex::new(None),
            features,
            event_idx: AtomicBool::new(false),
            rebase_on_start: AtomicBool::new(true),
            counters: Arc::new(Counters::default()),
            epoch: Instant::now(),
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

    fn reset_card(&self, why: &str) {
        let now = self.now_ns();
        self.card().reset(now);
        Counters::bump(&self.counters.resets);
        info!("card reset ({why})");
    }

    /// Processes the command queue until it is empty, re-checking after
    /// re-enabling notifications when EVENT_IDX is negotiated.
    fn process_command_queue(&self, vring: &VringRwLock) {
        let Some(atomic) = self
            .mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            warn!("command queue kicked before guest memory was set");
            return;
        };
        let mut card = self.card();
        if self.rebase_on_start.swap(false, Ordering::AcqRel) {
            // Nothing can change the card while the device is stopped, so
            // this only moves time zero to the start (not counted).
            card.reset(self.now_ns());
            debug!("device started");
        }
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    warn!("command queue: cannot disable notifications: {e}");
                }
            }
            self.drain_command_queue(vring, &atomic, &mut card);
            if !event_idx {
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

    fn drain_command_queue(&self, vring: &VringRwLock, atomic: &GuestMemory, card: &mut Card) {
        let mem = atomic.memory();
        loop {
            // Hold the vring lock only to pop: the frontend thread needs it too.
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let completion = process_chain(card, &chain, self.now_ns());
            Counters::bump(&self.counters.requests);
            match completion.disposition {
                Disposition::Executed(outcome) => {
                    trace!("request {head}: {outcome:?}, {} bytes", completion.used_len)
                }
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
            if let Err(e) = vring.add_used(head, completion.used_len) {
                error!("command queue: add_used({head}) failed: {e}");
                break;
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
        protocol_features()
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
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = Some(mem);
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
        match device_event {
            queue::COMMAND => match vrings.get(usize::from(queue::COMMAND)) {
                Some(vring) => self.process_command_queue(vring),
                None => error!("command vring missing"),
            },
            // Buffers posted for events stay queued until the card has events.
            queue::EVENT => trace!("event queue kick ignored"),
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
        XxcapBackend::new(Card::new(CardConfig::default()).expect("card"), true)
    }

    #[test]
    fn offers_the_documented_features() {
        let b = backend();
        assert_eq!(b.num_queues(), 2);
        assert_eq!(b.max_queue_size(), 1024);
        for bit in [32, 28, 29, 30] {
            assert_ne!(b.features() & (1 << bit), 0, "feature bit {bit}");
        }
        let no_idx = XxcapBackend::new(Card::new(CardConfig::default()).expect("card"), false);
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
                len - 16 + 8,
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
                len - 16 + 8,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, slot * 2).expect("chain");
        out
    }

    fn result(mem: &GuestMemoryMmap, out: u64) -> (u64, u32) {
        let mut raw = [0u8; 56];
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
            let vrings = [vring(&atomic, &cmd_q), vring(&atomic, &evt_q)];
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
}
