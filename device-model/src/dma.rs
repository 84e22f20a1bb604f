//! The card's DMA engine, as the model sees it: which scatter-gather entries
//! a DMA command uses, and the [`DmaPort`] through which the data moves.
//!
//! The model validates DMA commands (direction, card-RAM range, the
//! scatter-gather entries they name) and decides the register effects; the
//! bytes themselves move through a [`DmaPort`] that the backend implements
//! over card RAM and guest memory. The model knows neither: a unit test
//! plugs in a fake.

use thiserror::Error;
use xxcapture_abi::{dma_dir, SgEntry};

/// Direction of a DMA transfer (the `reg` field of a DMA command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// From the caller's buffer (guest memory) into card RAM.
    ToCard,
    /// From card RAM into the caller's buffer.
    FromCard,
}

impl DmaDirection {
    pub fn from_raw(raw: u16) -> Option<DmaDirection> {
        match raw {
            dma_dir::TO_CARD => Some(DmaDirection::ToCard),
            dma_dir::FROM_CARD => Some(DmaDirection::FromCard),
            _ => None,
        }
    }

    pub fn raw(self) -> u16 {
        match self {
            DmaDirection::ToCard => dma_dir::TO_CARD,
            DmaDirection::FromCard => dma_dir::FROM_CARD,
        }
    }
}

/// A DMA transfer touched (or would have touched) memory the caller does not
/// own: reported as `TfError::DmaFault`.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DmaFault {
    /// The command's first entry index is not below the request's entry count.
    #[error("first scatter-gather entry {first} is past the {count} entries of the request")]
    FirstEntryOutOfRange { first: u64, count: usize },
    /// The entries from the first one run out before `length` bytes.
    #[error("scatter-gather entries end before the transfer length")]
    EntriesRunOut,
    /// The entries do not sum exactly to the transfer length.
    #[error("scatter-gather entries overshoot the transfer length")]
    LengthMismatch,
    /// An entry lies (partly) outside guest memory.
    #[error("scatter-gather entry {index} lies outside guest memory")]
    OutsideGuestMemory { index: usize },
    /// A DMA_BUFFER command names a buffer the card does not hold.
    #[error("no registered buffer {id}")]
    UnknownBuffer { id: u32 },
    /// A DMA_BUFFER command's range runs past the end of its buffer.
    #[error("bytes {offset}+{length} lie outside registered buffer {id} of {size} bytes")]
    OutsideBuffer {
        id: u32,
        offset: u64,
        length: u64,
        size: u64,
    },
    /// The port cannot move data at all (no guest memory, no card RAM).
    #[error("the DMA engine has no memory to move data with")]
    Unavailable,
    /// The backend injected an error into this transfer (fault injection,
    /// armed by whoever runs the backend); nothing moved.
    #[error("injected DMA error")]
    Injected,
}

/// Moves DMA data for the card.
pub trait DmaPort {
    /// Copies between the guest buffers `sg` (in order; their lengths sum to
    /// the transfer length, which is at least 1) and card RAM from
    /// `card_offset` (the card already checked that the whole transfer lies
    /// inside card RAM).
    ///
    /// The guest is untrusted: an implementation must check every entry
    /// before moving anything and answer [`DmaFault::OutsideGuestMemory`]
    /// rather than touch memory outside the entries. It must never panic.
    fn transfer(
        &mut self,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> Result<(), DmaFault>;

    /// The entries covering `length` bytes (at least 1) from `offset` of
    /// the registered buffer `id`: the table the card holds, cut to the
    /// range. A port without registered buffers answers
    /// [`DmaFault::UnknownBuffer`].
    fn registered_entries(
        &self,
        id: u32,
        _offset: u64,
        _length: u64,
    ) -> Result<Vec<SgEntry>, DmaFault> {
        Err(DmaFault::UnknownBuffer { id })
    }
}

/// A port with no memory behind it: every transfer faults. Used by
/// [`crate::Card::execute`], which takes no scatter-gather table.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDma;

impl DmaPort for NoDma {
    fn transfer(&mut self, _: DmaDirection, _: u64, _: &[SgEntry]) -> Result<(), DmaFault> {
        Err(DmaFault::Unavailable)
    }
}

/// The entries a DMA command uses: from index `first`, consecutive entries
/// whose lengths sum exactly to `length`. `length` must be at least 1.
pub fn command_entries(sg: &[SgEntry], first: u64, length: u64) -> Result<&[SgEntry], DmaFault> {
    let start = usize::try_from(first)
        .ok()
        .filter(|&i| i < sg.len())
        .ok_or(DmaFault::FirstEntryOutOfRange {
            first,
            count: sg.len(),
        })?;
    let mut sum = 0u64;
    for (n, entry) in sg[start..].iter().enumerate() {
        sum = sum.saturating_add(u64::from(entry.len.get()));
        if sum == length {
            return Ok(&sg[start..start + n + 1]);
        }
        if sum > length {
            return Err(DmaFault::LengthMismatch);
        }
    }
    Err(DmaFault::EntriesRunOut)
}

/// The scatter-gather table of a registered buffer as the card holds it,
/// with each entry's offset in the buffer, so that a DMA_BUFFER command's
/// range is found by binary search rather than by walking the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisteredTable {
    entries: Vec<SgEntry>,
    /// `starts[i]`: offset in the buffer of `entries[i]`.
    starts: Vec<u64>,
    length: u64,
}

impl RegisteredTable {
    /// The table of `entries` (non-empty entries, checked by the caller).
    pub fn new(entries: Vec<SgEntry>) -> Self {
        let mut starts = Vec::with_capacity(entries.len());
        let mut length = 0u64;
        for e in &entries {
            starts.push(length);
            length = length.saturating_add(u64::from(e.len.get()));
        }
        RegisteredTable {
            entries,
            starts,
            length,
        }
    }

    /// Bytes the entries cover.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Entries held.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The entries covering `[offset, offset + length)` of the buffer, the
    /// first and last cut to the range. `None` when the range is empty or
    /// runs past the buffer.
    pub fn range(&self, offset: u64, length: u64) -> Option<Vec<SgEntry>> {
        let end = offset.checked_add(length)?;
        if length == 0 || end > self.length {
            return None;
        }
        // The last entry starting at or before `offset`.
        let first = self
            .starts
            .partition_point(|&s| s <= offset)
            .checked_sub(1)?;
        let mut out = Vec::new();
        let mut at = offset;
        for (e, &start) in self.entries[first..].iter().zip(&self.starts[first..]) {
            if at >= end {
                break;
            }
            let skip = at - start;
            let take = (u64::from(e.len.get()) - skip).min(end - at);
            // take <= e.len: fits u32.
            let len = u32::try_from(take).ok()?;
            out.push(SgEntry::new(e.addr.get().checked_add(skip)?, len));
            at += take;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, len: u32) -> SgEntry {
        SgEntry {
            addr: addr.into(),
            len: len.into(),
            reserved: 0.into(),
        }
    }

    #[test]
    fn entries_are_taken_until_the_length() {
        let sg = [e(0, 10), e(100, 20), e(200, 5), e(300, 7)];
        assert_eq!(command_entries(&sg, 0, 10), Ok(&sg[..1]));
        assert_eq!(command_entries(&sg, 0, 35), Ok(&sg[..3]));
        assert_eq!(command_entries(&sg, 1, 25), Ok(&sg[1..3]));
        assert_eq!(command_entries(&sg, 3, 7), Ok(&sg[3..]));
        assert_eq!(command_entries(&sg, 0, 12), Err(DmaFault::LengthMismatch));
        assert_eq!(command_entries(&sg, 2, 13), Err(DmaFault::EntriesRunOut));
        assert_eq!(
            command_entries(&sg, 4, 1),
            Err(DmaFault::FirstEntryOutOfRange { first: 4, count: 4 })
        );
        assert!(command_entries(&sg, u64::MAX, 1).is_err());
        assert!(command_entries(&[], 0, 1).is_err());
    }

    #[test]
    fn registered_ranges_cut_the_table() {
        let t = RegisteredTable::new(vec![e(0x1000, 100), e(0x5000, 50), e(0x9000, 10)]);
        assert_eq!(t.length(), 160);
        assert_eq!(
            t.range(0, 160),
            Some(vec![e(0x1000, 100), e(0x5000, 50), e(0x9000, 10)])
        );
        assert_eq!(t.range(10, 20), Some(vec![e(0x100a, 20)]));
        assert_eq!(t.range(90, 20), Some(vec![e(0x105a, 10), e(0x5000, 10)]));
        assert_eq!(t.range(100, 50), Some(vec![e(0x5000, 50)]));
        assert_eq!(t.range(149, 2), Some(vec![e(0x5031, 1), e(0x9000, 1)]));
        assert_eq!(t.range(159, 1), Some(vec![e(0x9009, 1)]));
        assert_eq!(t.range(0, 0), None);
        assert_eq!(t.range(159, 2), None);
        assert_eq!(t.range(160, 1), None);
        assert_eq!(t.range(u64::MAX, 2), None);
        assert_eq!(RegisteredTable::new(Vec::new()).range(0, 1), None);
    }
}
