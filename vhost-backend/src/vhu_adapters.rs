//! vhost-user types adapted to what the device code expects: a vring as a
//! [`DeviceQueue`] for the event and stream code, and the backend channel
//! as the [`ShmemMapper`] that maps card RAM into the guest.

use std::io;

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::SHM_ID_CARD_RAM;

use crate::card_ram::CardRam;
use crate::device::ShmemMapper;
use crate::queue::DeviceQueue;

/// The vhost-user vring as the event and stream code sees it.
pub(crate) struct VringQueue(pub(crate) VringRwLock);

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

    fn interrupt(&self) -> io::Result<()> {
        self.0.signal_used_queue()
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
