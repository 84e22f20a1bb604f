//! Registered buffers: the scatter-gather tables the driver handed the
//! card once (REGISTER_BUFFER), which DMA_BUFFER commands name by id and
//! offset (SPEC §12).
//!
//! The guest is untrusted: a table is checked whole before the card holds
//! it (entries non-empty, inside guest RAM, summing to the declared
//! length), the card holds at most [`registered::MAX_BUFFERS`] tables and
//! [`registered::MAX_TOTAL_ENTRIES`] entries, and every command's range is
//! checked against the table. The entries of a range are checked against
//! guest memory once more when the data moves ([`crate::card_ram`]). The
//! card forgets every table at reset and disconnect.

use std::collections::HashMap;

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xxcapture_abi::{registered, vq_status, SgEntry};
use xxcapture_model::{DmaDirection, DmaFault, DmaPort, RegisteredTable};

/// Why a REGISTER_BUFFER or UNREGISTER_BUFFER was refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("buffer id {0} is outside 1..={max}", max = registered::MAX_BUFFERS)]
    BadId(u32),
    #[error("buffer id {0} is already registered")]
    InUse(u32),
    #[error("buffer id {0} is not registered")]
    Unknown(u32),
    #[error("the entries sum to {sum} bytes, the buffer says {length}")]
    LengthMismatch { sum: u64, length: u64 },
    #[error("scatter-gather entry {0} lies outside guest memory")]
    EntryOutOfBounds(u32),
    #[error(
        "the card holds {held} buffers with {entries} entries: no room for {more} more entries"
    )]
    Full {
        held: usize,
        entries: u64,
        more: u64,
    },
    #[error("this card has no registered buffers")]
    Unsupported,
}

impl RegisterError {
    /// The transport status reported for this error: a request the card
    /// has no room for is a device error, anything else a bad request.
    pub fn status(self) -> u32 {
        match self {
            RegisterError::Full { .. } | RegisterError::Unsupported => vq_status::DEVICE_ERROR,
            _ => vq_status::BAD_REQUEST,
        }
    }
}

/// The tables one card holds, by id, each with its owner tag (the open
/// it belongs to, SPEC §15).
#[derive(Debug, Default)]
pub struct RegisteredBuffers {
    tables: HashMap<u32, (u32, RegisteredTable)>,
    /// Entries of all tables together.
    entries: u64,
}

impl RegisteredBuffers {
    /// Holds `entries` (already checked non-empty with `reserved` 0, and at
    /// most `MAX_SG_ENTRIES` of them) as buffer `id` of `length` bytes,
    /// belonging to `owner`.
    pub fn register(
        &mut self,
        id: u32,
        owner: u32,
        length: u64,
        entries: Vec<SgEntry>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RegisterError> {
        if id == 0 || id > registered::MAX_BUFFERS {
            return Err(RegisterError::BadId(id));
        }
        if self.tables.contains_key(&id) {
            return Err(RegisterError::InUse(id));
        }
        let mut sum = 0u64;
        for (index, e) in entries.iter().enumerate() {
            let len = e.len.get();
            if !mem.check_range(GuestAddress(e.addr.get()), len as usize) {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                return Err(RegisterError::EntryOutOfBounds(index));
            }
            sum = sum.saturating_add(u64::from(len));
        }
        if sum != length || length == 0 {
            return Err(RegisterError::LengthMismatch { sum, length });
        }
        let more = entries.len() as u64;
        if self.tables.len() >= registered::MAX_BUFFERS as usize
            || self.entries.saturating_add(more) > registered::MAX_TOTAL_ENTRIES
        {
            return Err(RegisterError::Full {
                held: self.tables.len(),
                entries: self.entries,
                more,
            });
        }
        self.entries += more;
        self.tables
            .insert(id, (owner, RegisteredTable::new(entries)));
        Ok(())
    }

    /// Forgets buffer `id`.
    pub fn unregister(&mut self, id: u32) -> Result<(), RegisterError> {
        let (_, table) = self.tables.remove(&id).ok_or(RegisterError::Unknown(id))?;
        self.entries -= table.entry_count() as u64;
        Ok(())
    }

    /// Forgets every buffer (device reset, disconnect).
    pub fn clear(&mut self) {
        self.tables.clear();
        self.entries = 0;
    }

    /// Buffers held.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Entries held over all buffers.
    pub fn entry_count(&self) -> u64 {
        self.entries
    }

    /// The owner tag of buffer `id`, if the card holds it.
    pub fn owner(&self, id: u32) -> Option<u32> {
        self.tables.get(&id).map(|(owner, _)| *owner)
    }

    /// The entries of `[offset, offset + length)` of buffer `id`.
    pub fn range(&self, id: u32, offset: u64, length: u64) -> Result<Vec<SgEntry>, DmaFault> {
        self.range_of(id, None, offset, length)
    }

    /// As [`Self::range`], for a task file that may name only the buffers
    /// of `owner` (`Some`: the submission ring's): another owner's buffer
    /// faults as an unknown one does.
    pub fn range_of(
        &self,
        id: u32,
        owner: Option<u32>,
        offset: u64,
        length: u64,
    ) -> Result<Vec<SgEntry>, DmaFault> {
        let table = self
            .tables
            .get(&id)
            .filter(|(held_by, _)| owner.is_none_or(|o| o == *held_by))
            .map(|(_, table)| table)
            .ok_or(DmaFault::UnknownBuffer { id })?;
        table.range(offset, length).ok_or(DmaFault::OutsideBuffer {
            id,
            offset,
            length,
            size: table.length(),
        })
    }
}

/// A DMA port that answers DMA_BUFFER commands from the card's tables and
/// moves data through `inner`.
pub struct RegisteredPort<'a> {
    pub inner: &'a mut dyn DmaPort,
    pub buffers: &'a RegisteredBuffers,
    /// `Some`: only this owner's buffers resolve (a ring task file).
    pub owner: Option<u32>,
}

impl DmaPort for RegisteredPort<'_> {
    fn transfer(
        &mut self,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> Result<(), DmaFault> {
        self.inner.transfer(direction, card_offset, sg)
    }

    fn registered_entries(
        &self,
        id: u32,
        offset: u64,
        length: u64,
    ) -> Result<Vec<SgEntry>, DmaFault> {
        self.buffers.range_of(id, self.owner, offset, length)
    }
}

#[cfg(test)]
mod tests;
