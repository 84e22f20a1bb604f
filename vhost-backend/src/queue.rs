//! What the event and stream queues need from the transport, and the guest
//! memory they write into.
//!
//! Event delivery ([`crate::events`]) and streaming ([`crate::stream`]) run
//! on several threads (the vring worker, the capture thread) and complete
//! buffers long after they were posted. They use a queue through
//! [`DeviceQueue`], which [`crate::vhu_xxcap`] implements over the
//! vhost-user vring (the only module that knows vhost-user), and tests
//! implement over a mock queue.

use std::io;
use std::sync::{Mutex, PoisonError};

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// A device-side virtqueue.
pub trait DeviceQueue: Send + Sync {
    /// The next chain the driver made available, if any; `Err` when the
    /// ring cannot be used (an avail index more than a queue ahead, a queue
    /// not set up): the caller must stop, not retry.
    fn pop<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
    ) -> io::Result<Option<DescriptorChain<&'m GuestMemoryMmap>>>;
    /// Returns chain `head` to the driver with `len` bytes written.
    fn add_used(&self, head: u16, len: u32) -> io::Result<()>;
    /// Sends a used-buffer notification if the driver wants one (EVENT_IDX
    /// or the NO_INTERRUPT flag may say it does not).
    fn notify(&self) -> io::Result<()>;
    /// Asks the driver to notify (kick) when it makes buffers available;
    /// true when some already are (they must be looked at, as no kick may
    /// come for them).
    fn enable_notification(&self) -> io::Result<bool>;
    /// Asks the driver not to kick while the device is processing anyway.
    fn disable_notification(&self) -> io::Result<()>;
    /// Sends a used-buffer notification whether or not the driver wants one
    /// (an injected interrupt storm).
    fn interrupt(&self) -> io::Result<()> {
        self.notify()
    }
}

/// Guest memory as the frontend last described it (SET_MEM_TABLE), shared
/// by every thread that touches guest buffers.
#[derive(Default)]
pub struct MemorySlot {
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
}

impl MemorySlot {
    pub fn set(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = Some(mem);
    }

    /// Forgets the memory (the frontend went away).
    pub fn clear(&self) {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The memory handle, if the frontend sent a table yet.
    pub fn atomic(&self) -> Option<GuestMemoryAtomic<GuestMemoryMmap>> {
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A snapshot of the current memory, if any.
    pub fn get(&self) -> Option<GuestMemoryLoadGuard<GuestMemoryMmap>> {
        self.atomic().map(|atomic| atomic.memory())
    }
}

#[cfg(test)]
pub(crate) mod mock {
    //! A [`DeviceQueue`] over virtio-queue's own `Queue`, laid out in guest
    //! memory by `MockSplitQueue`, that counts notifications.

    use std::sync::atomic::{AtomicU32, Ordering};

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Address, Bytes};

    use super::*;

    pub struct MockQueue {
        queue: Mutex<Queue>,
        mem: GuestMemoryMmap,
        pub notifications: AtomicU32,
    }

    impl MockQueue {
        pub fn new(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Self {
            let queue = vq.create_queue::<Queue>().expect("queue");
            MockQueue {
                queue: Mutex::new(queue),
                mem: mem.clone(),
                notifications: AtomicU32::new(0),
            }
        }

        pub fn notifications(&self) -> u32 {
            self.notifications.load(Ordering::Relaxed)
        }

        /// The used ring's entries so far: (head, len).
        pub fn used(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
            let base = vq.used_addr();
            let idx: u16 = self.mem.read_obj(base.unchecked_add(2)).expect("used idx");
            let size = self.queue.lock().expect("queue").size();
            (0..idx)
                .map(|i| {
                    let at = base.unchecked_add(4 + 8 * u64::from(i % size));
                    let id: u32 = self.mem.read_obj(at).expect("id");
                    let len: u32 = self.mem.read_obj(at.unchecked_add(4)).expect("len");
                    (id, len)
                })
                .collect()
        }
    }

    impl DeviceQueue for MockQueue {
        fn pop<'m>(
            &self,
            mem: &'m GuestMemoryMmap,
        ) -> io::Result<Option<DescriptorChain<&'m GuestMemoryMmap>>> {
            let mut q = self.queue.lock().expect("queue");
            let mut chains = q.iter(mem).map_err(|e| io::Error::other(e.to_string()))?;
            Ok(chains.next())
        }

        fn add_used(&self, head: u16, len: u32) -> io::Result<()> {
            let mut q = self.queue.lock().expect("queue");
            q.add_used(&self.mem, head, len)
                .map_err(|e| io::Error::other(e.to_string()))
        }

        fn notify(&self) -> io::Result<()> {
            self.notifications.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn enable_notification(&self) -> io::Result<bool> {
            let mut q = self.queue.lock().expect("queue");
            q.enable_notification(&self.mem)
                .map_err(|e| io::Error::other(e.to_string()))
        }

        fn disable_notification(&self) -> io::Result<()> {
            Ok(())
        }
    }
}
