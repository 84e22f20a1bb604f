//! Registered buffers: memory the driver pins and describes to the card
//! once, which DMA then names by id and offset instead of by address, so a
//! transfer costs no pinning and no scatter-gather table.
//!
//! [`Card::register_buffer`] allocates page-aligned memory and registers
//! it; the [`RegisteredBuffer`] handle unregisters it when dropped.
//! [`Card::read_blocks`] and [`Card::write_blocks`] use the registered path
//! by themselves whenever the slice they are given lies inside a buffer
//! this handle registered (and the raw-address path otherwise).

use std::os::fd::AsRawFd;

use memmap2::{MmapMut, MmapOptions};
use xxcapture_abi::{caps, RegisterBuffer};

use crate::card::Card;
use crate::error::{Error, Result};
use crate::sys;

/// One registration this handle made: where, how long, which id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    pub addr: u64,
    pub len: u64,
    pub id: u32,
}

/// Memory registered with the card for DMA by id; unregistered (and
/// unpinned by the driver) when dropped.
pub struct RegisteredBuffer<'c> {
    card: &'c Card,
    map: MmapMut,
    id: u32,
}

impl RegisteredBuffer<'_> {
    /// The id DMA_BUFFER commands of this open name the buffer by.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// DMA of `len` bytes from card RAM at `card_offset` into this buffer
    /// at `offset`; returns bytes moved.
    pub fn read_from_card(&mut self, offset: u64, card_offset: u64, len: u64) -> Result<u64> {
        self.card.dma_registered(
            xxcapture_abi::dma_dir::FROM_CARD,
            self.id,
            offset,
            card_offset,
            len,
        )
    }

    /// DMA of `len` bytes from this buffer at `offset` into card RAM at
    /// `card_offset`; returns bytes moved.
    pub fn write_to_card(&self, offset: u64, card_offset: u64, len: u64) -> Result<u64> {
        self.card.dma_registered(
            xxcapture_abi::dma_dir::TO_CARD,
            self.id,
            offset,
            card_offset,
            len,
        )
    }
}

impl Drop for RegisteredBuffer<'_> {
    fn drop(&mut self) {
        // Unregistered before the memory goes; a failure (card gone) leaves
        // the driver to release it at close.
        let _ = self.card.unregister_raw(self.id);
    }
}

impl Card {
    /// Allocates `len` bytes of page-aligned memory and registers it.
    /// Limits: `abi::MAX_REGISTERED_PER_OPEN` buffers per open,
    /// `abi::MAX_REGISTERED_SIZE` bytes each.
    pub fn register_buffer(&self, len: usize) -> Result<RegisteredBuffer<'_>> {
        let mut map = MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(|source| Error::Map {
                what: "a buffer to register",
                source,
            })?;
        let id = self.register_raw(map.as_mut_ptr() as u64, len as u64)?;
        Ok(RegisteredBuffer {
            card: self,
            map,
            id,
        })
    }

    /// Registers `len` bytes of this process's memory at `addr` and returns
    /// the id. Low level, for tools and tests: the memory should stay mapped
    /// until [`Card::unregister_raw`] (the driver keeps the pages it pinned
    /// whatever happens to the mapping), and read/write_blocks use it for
    /// slices inside it.
    pub fn register_raw(&self, addr: u64, len: u64) -> Result<u32> {
        if self.info().capabilities & caps::DMA == 0 {
            return Err(Error::Unsupported("DMA"));
        }
        let mut arg = RegisterBuffer {
            addr: addr.into(),
            length: len.into(),
            ..RegisterBuffer::default()
        };
        // SAFETY: the fd is open and `arg` is a repr(C) struct of exactly
        // the size encoded in the ioctl number; the driver only pins the
        // pages `addr` names (it checks they are this process's).
        unsafe { sys::xxcap_register_buffer(self.as_raw_fd(), &mut arg) }.map_err(|source| {
            Error::Ioctl {
                call: "REGISTER_BUFFER",
                source,
            }
        })?;
        let id = arg.id.get();
        self.registrations().push(Registration { addr, len, id });
        Ok(id)
    }

    /// Unregisters buffer `id` of this open.
    pub fn unregister_raw(&self, id: u32) -> Result<()> {
        self.registrations().retain(|r| r.id != id);
        // SAFETY: the fd is open; the argument is a u32 the driver reads.
        unsafe { sys::xxcap_unregister_buffer(self.as_raw_fd(), &id) }.map_err(|source| {
            Error::Ioctl {
                call: "UNREGISTER_BUFFER",
                source,
            }
        })?;
        Ok(())
    }

    /// The registered buffer of this handle holding `[addr, addr + len)`,
    /// as (id, offset in it).
    pub(crate) fn registered_at(&self, addr: u64, len: u64) -> Option<(u32, u64)> {
        let end = addr.checked_add(len)?;
        self.registrations()
            .iter()
            .find(|r| addr >= r.addr && end <= r.addr + r.len)
            .map(|r| (r.id, addr - r.addr))
    }
}
