//! Fuzzing entry points for the request handling of `xxcapd` (targets
//! `chain` and `backend`).
//!
//! Both entry points build descriptor chains from arbitrary bytes over mock
//! guest memory (virtio-queue's `MockSplitQueue`) with two regions and a
//! hole, filled with a canary pattern:
//!
//! - [`chain`]: one chain through [`process_chain`] with the real card, card
//!   RAM and DMA engine: malformed and misordered chains, wrong lengths,
//!   descriptors and scatter-gather entries outside guest memory, absurd
//!   `sg_count`s, indirect tables (also nested, truncated, looping);
//! - [`backend`]: the whole [`XxcapBackend`] driven through
//!   `VhostUserBackend` (queue kicks, config reads and writes, vring stops,
//!   corrupted ring indices, refused SHMEM_MAPs), interleaved.
//!
//! What they check: nothing panics; nothing is written into guest memory
//! outside the chain's device-writable buffers (and the DMA buffers its
//! scatter-gather table names); inside the writable part only the bytes the
//! used length covers change (only the status, for a refused chain); the
//! disposition agrees with an independent reading of the request (SPEC.md
//! §4, §9); card RAM changes only where TO_CARD transfers wrote; config
//! space stays the card's identity whatever is written to it.
//!
//! `expected()` knows every command-queue request type; STREAM_BUFFER is
//! `UNSUPPORTED` there (it belongs on the stream queue, which no target
//! drives yet).

use std::cell::RefCell;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arbitrary::{Result, Unstructured};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, QueueT, Reader};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use xxcapture_abi::{
    caps, queue, registered, req_type, ring_setup, vq_flags, vq_status, BufferDesc, Command, Op,
    RingSetupReq, SgEntry, VqRequest, CONFIG_SIZE, MAX_ABORT_TAGS, MAX_SG_ENTRIES,
    RING_MAX_SQ_IDLE_US, TF_HEADER_SIZE,
};
use xxcapture_model::{Card, CardConfig, Outcome, MIN_CARD_RAM};
use zerocopy::{FromBytes, IntoBytes};

use xxcapd::card_ram::{CardRam, GuestDma};
use xxcapd::device::ShmemMapper;
use xxcapd::registered::{RegisterError, RegisteredBuffers, RegisteredPort};
use xxcapd::request::{
    process_chain, Completion, Device, Disposition, MAX_READABLE, REQUEST_HEADER_SIZE,
    SG_ENTRY_SIZE, STATUS_SIZE,
};
use xxcapd::vhu_xxcap::XxcapBackend;

/// Guest memory: region A holds the queues (from 0) and most buffers,
/// region B lies past a hole.
const A_SIZE: u64 = 0x4_0000;
const B_START: u64 = 0x8_0000;
const B_SIZE: u64 = 0x1_0000;
/// Buffers are allocated from here on (above the queue structures).
const DATA_START: u64 = 0x2000;
const QUEUE_SIZE: u16 = 16;
/// The event and stream queues of [`backend`] live here.
const EVENT_QUEUE: u64 = 0x1000;
const STREAM_QUEUE: u64 = 0x1800;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn memory() -> GuestMemoryMmap {
    static CANARY: OnceLock<Vec<u8>> = OnceLock::new();
    let canary = CANARY.get_or_init(|| (0..B_START + B_SIZE).map(canary_byte).collect());
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), A_SIZE as usize),
        (GuestAddress(B_START), B_SIZE as usize),
    ]) else {
        panic!("cannot create mock guest memory");
    };
    for region in mem.iter() {
        let start = region.start_addr().0 as usize;
        let bytes = &canary[start..start + region.len() as usize];
        if mem.write_slice(bytes, region.start_addr()).is_err() {
            panic!("cannot fill mock guest memory");
        }
    }
    mem
}

fn canary_byte(addr: u64) -> u8 {
    (addr.wrapping_mul(0x9e37_79b1) >> 13) as u8 ^ 0xa5
}

/// A copy of all of guest memory: (start, bytes) per region.
fn snapshot(mem: &GuestMemoryMmap) -> Vec<(u64, Vec<u8>)> {
    mem.iter()
        .map(|region| {
            let mut bytes = vec![0u8; region.len() as usize];
            if mem.read_slice(&mut bytes, region.start_addr()).is_err() {
                panic!("cannot read mock guest memory");
            }
            (region.start_addr().0, bytes)
        })
        .collect()
}

/// Offsets (from `base`) of the bytes that differ between `old` and `new`.
/// Compares page by page first: byte loops are slow under coverage
/// instrumentation.
fn diff(base: u64, old: &[u8], new: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for (page, (a, b)) in old.chunks(4096).zip(new.chunks(4096)).enumerate() {
        if a != b {
            let at = base + (page * 4096) as u64;
            out.extend(
                a.iter()
                    .zip(b)
                    .enumerate()
                    .filter(|(_, (x, y))| x != y)
                    .map(|(i, _)| at + i as u64),
            );
        }
    }
    out
}

/// Addresses whose bytes differ from `before`.
fn changed(mem: &GuestMemoryMmap, before: &[(u64, Vec<u8>)]) -> Vec<u64> {
    let now = snapshot(mem);
    before
        .iter()
        .zip(&now)
        .flat_map(|((start, old), (_, new))| diff(*start, old, new))
        .collect()
}

/// Hands out non-overlapping buffers in region A.
struct Alloc {
    next: u64,
}

impl Alloc {
    fn new() -> Self {
        Alloc { next: DATA_START }
    }

    fn take(&mut self, len: u64) -> Option<u64> {
        let at = self.next;
        let end = at.checked_add(len)?;
        if end > A_SIZE {
            return None;
        }
        self.next = end.next_multiple_of(16);
        Some(at)
    }
}

/// An address for a buffer of `len` bytes: mostly a fresh one, sometimes
/// at an edge of guest memory, in the hole, past the end, or anywhere.
fn place(u: &mut Unstructured<'_>, alloc: &mut Alloc, len: u64) -> Result<u64> {
    if !u.ratio(1u8, 8)? {
        if let Some(at) = alloc.take(len) {
            return Ok(at);
        }
    }
    pick_addr(u, len)
}

fn pick_addr(u: &mut Unstructured<'_>, len: u64) -> Result<u64> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => A_SIZE.wrapping_sub(len),
        1 => A_SIZE.wrapping_sub(len).wrapping_add(1),
        2 => B_START + u.int_in_range(0..=B_SIZE - 1)?,
        3 => (B_START + B_SIZE).wrapping_sub(len),
        4 => A_SIZE + u.int_in_range(0..=B_START - A_SIZE)?,
        5 => B_START.wrapping_sub(u.int_in_range(1..=64)?),
        6 => u64::MAX - u.int_in_range(0..=0x1000u64)?,
        7 => u.arbitrary()?,
        8 => u.int_in_range(0..=A_SIZE)?,
        _ => B_START + B_SIZE - u.int_in_range(0..=64)?,
    })
}

/// A device-readable request: header, task file, scatter-gather table.
struct Payload {
    bytes: Vec<u8>,
}

/// A request of any type, mostly well-formed.
fn payload(u: &mut Unstructured<'_>, alloc: &mut Alloc) -> Result<Payload> {
    let kind = *u.choose(&[
        req_type::EXEC_TASK_FILE,
        req_type::EXEC_TASK_FILE,
        req_type::EXEC_TASK_FILE,
        req_type::EXEC_TASK_FILE,
        req_type::ATTACH,
        req_type::STREAM_BUFFER,
        req_type::FLUSH_BUFFERS,
        req_type::REGISTER_BUFFER,
        req_type::UNREGISTER_BUFFER,
        req_type::ABORT,
        req_type::RING_SETUP,
        req_type::RING_KICK,
        0,
    ])?;
    let kind = if u.ratio(1u8, 32)? {
        u.arbitrary()?
    } else {
        kind
    };
    let header_only = kind != req_type::EXEC_TASK_FILE && !u.ratio(1u8, 8)?;
    let entries =
        if header_only && kind != req_type::STREAM_BUFFER && kind != req_type::REGISTER_BUFFER {
            Vec::new()
        } else {
            sg_entries(u, alloc)?
        };
    let buffer_request = matches!(
        kind,
        req_type::REGISTER_BUFFER | req_type::UNREGISTER_BUFFER
    );
    let tf = if buffer_request {
        // The buffer's description: mostly the entries' own sum.
        let sum: u64 = entries.iter().map(|e| u64::from(e.len.get())).sum();
        let desc = BufferDesc {
            id: u.int_in_range(0..=3u32)?.into(),
            // REGISTER names a nonzero owner, UNREGISTER none: mostly.
            owner: if u.ratio(1u8, 16)? {
                u.arbitrary::<u32>()?
            } else if kind == req_type::REGISTER_BUFFER {
                1
            } else {
                0
            }
            .into(),
            length: if kind == req_type::UNREGISTER_BUFFER || u.ratio(1u8, 8)? {
                u.arbitrary::<u64>()? % 3
            } else {
                sum
            }
            .into(),
        };
        desc.as_bytes().to_vec()
    } else if kind == req_type::RING_SETUP && !u.ratio(1u8, 8)? {
        let setup = RingSetupReq {
            owner: u.int_in_range(0..=2u32)?.into(),
            flags: u.int_in_range(0..=2u32)?.into(),
            sq_idle_us: if u.ratio(1u8, 8)? {
                u.arbitrary::<u32>()?
            } else {
                u.int_in_range(0..=100u32)?
            }
            .into(),
            reserved: u.int_in_range(0..=1u32)?.into(),
        };
        setup.as_bytes().to_vec()
    } else if header_only {
        Vec::new()
    } else if u.ratio(1u8, 4)? {
        let len = u.int_in_range(0..=200usize)?;
        u.bytes(len)?.to_vec()
    } else {
        crate::model::grammar_task_file(u, &entries, MIN_CARD_RAM)?
    };
    let wild: u32 = u.arbitrary()?;
    let sg_count = if u.ratio(1u8, 8)? {
        *u.choose(&[
            0,
            entries.len() as u32 + 1,
            (entries.len() as u32).wrapping_sub(1),
            MAX_SG_ENTRIES,
            MAX_SG_ENTRIES + 1,
            wild,
        ])?
    } else {
        entries.len() as u32
    };
    let header = VqRequest {
        req_type: kind.into(),
        flags: if u.ratio(1u8, 16)? {
            u.arbitrary::<u32>()?
        } else {
            0
        }
        .into(),
        tag: u.arbitrary::<u64>()?.into(),
        sg_count: sg_count.into(),
        reserved: if u.ratio(1u8, 16)? {
            u.arbitrary::<u32>()?
        } else {
            0
        }
        .into(),
    };
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&tf);
    for e in &entries {
        bytes.extend_from_slice(e.as_bytes());
    }
    if u.ratio(1u8, 16)? {
        let len = u.int_in_range(0..=40usize)?;
        bytes.extend_from_slice(u.bytes(len)?);
    }
    Ok(Payload { bytes })
}

/// DMA buffers: mostly fresh ones in guest memory.
fn sg_entries(u: &mut Unstructured<'_>, alloc: &mut Alloc) -> Result<Vec<SgEntry>> {
    let n = u.int_in_range(0..=4usize)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len: u32 = match u.int_in_range(0..=4u8)? {
            0 => 0x1000,
            1 => u.int_in_range(1..=64)?,
            2 => 0,
            3 => u.arbitrary()?,
            _ => u.int_in_range(1..=0x3000)?,
        };
        let addr = place(u, alloc, u64::from(len))?;
        let mut e = SgEntry::new(addr, len);
        if u.ratio(1u8, 32)? {
            e.reserved = u.arbitrary::<u32>()?.into();
        }
        out.push(e);
    }
    Ok(out)
}

/// Splits `total` bytes into 1..=`max` non-empty pieces.
fn split(u: &mut Unstructured<'_>, total: u64, max: usize) -> Result<Vec<u64>> {
    let n = u.int_in_range(1..=max)?;
    let mut pieces = Vec::with_capacity(n);
    let mut left = total;
    for _ in 1..n {
        if left <= 1 {
            break;
        }
        let take = u.int_in_range(1..=left - 1)?;
        pieces.push(take);
        left -= take;
    }
    pieces.push(left);
    Ok(pieces)
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Lays `payload` out in guest memory, adds a writable part, and returns
/// the descriptors in chain order (flags without NEXT).
fn layout(
    u: &mut Unstructured<'_>,
    mem: &GuestMemoryMmap,
    alloc: &mut Alloc,
    payload: &Payload,
) -> Result<Vec<RawDescriptor>> {
    let mut descs = Vec::new();
    let bytes = &payload.bytes;
    if !u.ratio(1u8, 32)? {
        let mut at = 0usize;
        for piece in split(u, bytes.len() as u64, 4)? {
            let chunk = &bytes[at..at + piece as usize];
            at += piece as usize;
            let addr = place(u, alloc, piece)?;
            // Outside guest memory the bytes simply are not there.
            let _ = mem.write_slice(chunk, GuestAddress(addr));
            let len = if u.ratio(1u8, 32)? {
                u.arbitrary()?
            } else {
                piece as u32
            };
            descs.push(desc(addr, len, 0, 0));
        }
    }
    // What an EXEC of this payload needs: the task file and the status.
    let need = bytes.len().saturating_sub(REQUEST_HEADER_SIZE) as u64 + STATUS_SIZE as u64;
    let total: u64 = match u.int_in_range(0..=9u8)? {
        0 => need - 1,
        1 => STATUS_SIZE as u64,
        2 => STATUS_SIZE as u64 - 1,
        3 => 8,
        4 => 0,
        5 => u.arbitrary::<u32>()?.into(),
        6 => need + u.int_in_range(1..=4096)?,
        _ => need,
    };
    if total > 0 {
        for piece in split(u, total, 3)? {
            let addr = place(u, alloc, piece)?;
            descs.push(desc(addr, piece.min(u64::from(u32::MAX)) as u32, W, 0));
        }
    }
    if descs.len() > 1 && u.ratio(1u8, 16)? {
        // A writable buffer first: readable after writable.
        let last = descs.len() - 1;
        descs.swap(0, last);
    }
    if u.ratio(1u8, 16)? {
        let len: u32 = u.arbitrary()?;
        let extra = desc(
            pick_addr(u, u64::from(len))?,
            len,
            u.arbitrary::<u16>()? & W,
            0,
        );
        let at = u.int_in_range(0..=descs.len())?;
        descs.insert(at, extra);
    }
    Ok(descs)
}

/// Turns `descs` into the entries of a descriptor table (`table` slots
/// from `first`), direct, behind an indirect table, or with raw flags and
/// links. Returns the entries to store from index `first` on.
fn link(
    u: &mut Unstructured<'_>,
    mem: &GuestMemoryMmap,
    alloc: &mut Alloc,
    descs: &[RawDescriptor],
    first: u16,
) -> Result<Vec<RawDescriptor>> {
    let chained = |list: &[RawDescriptor], base: u16| -> Vec<RawDescriptor> {
        let n = list.len();
        list.iter()
            .enumerate()
            .map(|(i, d)| {
                let d = SplitDescriptor::from(*d);
                let (flags, next) = if i + 1 < n {
                    (d.flags() | NEXT, base.wrapping_add(i as u16 + 1))
                } else {
                    (d.flags() & !NEXT, 0)
                };
                desc(d.addr().0, d.len(), flags, next)
            })
            .collect()
    };
    Ok(match u.int_in_range(0..=5u8)? {
        0 | 1 if !descs.is_empty() => {
            // An indirect table, maybe after some direct descriptors.
            let direct = u.int_in_range(0..=descs.len() - 1)?;
            let (head, rest) = descs.split_at(direct);
            let mut table = chained(rest, 0);
            if u.ratio(1u8, 8)? {
                // A bad link or a nested indirect descriptor inside.
                let i = u.int_in_range(0..=table.len() - 1)?;
                let d = SplitDescriptor::from(table[i]);
                let flags = d.flags() | (u.arbitrary::<u16>()? & (NEXT | INDIRECT));
                let next = u.int_in_range(0..=table.len() as u16 + 1)?;
                table[i] = desc(d.addr().0, d.len(), flags, next);
            }
            let size = 16 * table.len() as u64;
            let at = place(u, alloc, size)?;
            for (i, d) in table.iter().enumerate() {
                let _ = mem.write_obj(*d, GuestAddress(at.wrapping_add(16 * i as u64)));
            }
            let wild: u32 = u.arbitrary()?;
            let len = if u.ratio(1u8, 8)? {
                *u.choose(&[0, size as u32 - 1, size as u32 + 16, wild])?
            } else {
                size as u32
            };
            let mut list = head.to_vec();
            list.push(desc(at, len, INDIRECT, 0));
            chained(&list, first)
        }
        2 => descs
            .iter()
            .map(|d| -> Result<RawDescriptor> {
                // Raw flags and links: loops, dangling links, stray
                // INDIRECT flags.
                let d = SplitDescriptor::from(*d);
                let flags = (d.flags() & W) | (u.arbitrary::<u16>()? & (NEXT | INDIRECT));
                let next = u.int_in_range(0..=QUEUE_SIZE + 1)?;
                Ok(desc(d.addr().0, d.len(), flags, next))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => chained(descs, first),
    })
}

/// The readable and writable buffers of a chain, as virtio-queue walks it.
#[derive(Default)]
struct Walk {
    readable: Vec<(u64, u32)>,
    writable: Vec<(u64, u32)>,
    misordered: bool,
}

impl Walk {
    fn of<M>(chain: &DescriptorChain<M>) -> Walk
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        let mut walk = Walk::default();
        for d in chain.clone() {
            if d.is_write_only() {
                walk.writable.push((d.addr().0, d.len()));
            } else {
                // Zero-length writable buffers before it do not count
                // (what request.rs does: they hold nothing to misplace).
                walk.misordered |= Walk::total(&walk.writable) > 0;
                walk.readable.push((d.addr().0, d.len()));
            }
        }
        walk
    }

    fn total(list: &[(u64, u32)]) -> u64 {
        list.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    fn inside(mem: &GuestMemoryMmap, list: &[(u64, u32)]) -> bool {
        list.iter()
            .all(|&(addr, len)| len == 0 || mem.check_range(GuestAddress(addr), len as usize))
    }

    /// Offsets in the writable stream at which address `a` lies.
    fn writable_offsets(&self, a: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        for &(addr, len) in &self.writable {
            if a >= addr && a - addr < u64::from(len) {
                out.push(offset + (a - addr));
            }
            offset += u64::from(len);
        }
        out
    }

    fn writable_overlaps(&self) -> bool {
        let mut list = self.writable.clone();
        list.sort_unstable();
        list.windows(2)
            .any(|w| w[0].0.saturating_add(u64::from(w[0].1)) > w[1].0)
    }
}

/// What the device must do with a chain, read from the spec rather than
/// from `request.rs`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Completed with used length 0, nothing written.
    Dropped,
    /// Refused with this transport status in the last 16 writable bytes.
    Rejected(u32),
    /// An ATTACH answered.
    Attached,
    /// A FLUSH_BUFFERS answered.
    Flushed,
    /// An ABORT answered.
    Aborted,
    /// A REGISTER_BUFFER or UNREGISTER_BUFFER answered with this status at
    /// the start of the writable part.
    Buffer(u32),
    /// A task file of this many bytes executed.
    Executed { tf_len: usize, sg: Vec<SgEntry> },
    /// A well-formed RING_SETUP or RING_KICK answered (this harness's card
    /// has no rings: UNSUPPORTED at the start of the writable part).
    Ring,
}

/// SPEC.md §4 and §9 applied to a walked chain whose readable bytes are
/// `readable` (`None`: a readable buffer lies outside guest memory).
fn expected(walk: &Walk, mem: &GuestMemoryMmap, readable: Option<&[u8]>) -> Expect {
    let writable = Walk::total(&walk.writable);
    if writable < STATUS_SIZE as u64 || !Walk::inside(mem, &walk.writable) {
        return Expect::Dropped;
    }
    let bad = Expect::Rejected(vq_status::BAD_REQUEST);
    let readable_len = Walk::total(&walk.readable);
    if walk.misordered || readable_len > MAX_READABLE as u64 {
        return bad;
    }
    let Some(bytes) = readable else {
        return bad;
    };
    let Ok((header, _)) = VqRequest::read_from_prefix(bytes) else {
        return bad;
    };
    let (kind, flags) = (header.req_type.get(), header.flags.get());
    // STREAM_BUFFER belongs on the stream queue: unknown here (§11).
    let known = matches!(
        kind,
        req_type::EXEC_TASK_FILE
            | req_type::ATTACH
            | req_type::FLUSH_BUFFERS
            | req_type::REGISTER_BUFFER
            | req_type::UNREGISTER_BUFFER
            | req_type::ABORT
            | req_type::RING_SETUP
            | req_type::RING_KICK
    );
    // Only a task file may say it is asynchronous (§4).
    let allowed = if kind == req_type::EXEC_TASK_FILE {
        vq_flags::ASYNC
    } else {
        0
    };
    if !known || flags & !allowed != 0 {
        return Expect::Rejected(vq_status::UNSUPPORTED);
    }
    if header.reserved.get() != 0 {
        return bad;
    }
    let sg_count = header.sg_count.get();
    match kind {
        req_type::ATTACH if bytes.len() == REQUEST_HEADER_SIZE && sg_count == 0 => Expect::Attached,
        req_type::ATTACH => bad,
        req_type::FLUSH_BUFFERS if bytes.len() == REQUEST_HEADER_SIZE && sg_count == 0 => {
            Expect::Flushed
        }
        req_type::FLUSH_BUFFERS => bad,
        req_type::ABORT => {
            // 1..=MAX_ABORT_TAGS tags of 8 bytes after the header (§4 Abort).
            let tags = bytes.len() - REQUEST_HEADER_SIZE;
            let n = tags / 8;
            if sg_count == 0 && tags.is_multiple_of(8) && (1..=MAX_ABORT_TAGS as usize).contains(&n)
            {
                Expect::Aborted
            } else {
                bad
            }
        }
        req_type::REGISTER_BUFFER | req_type::UNREGISTER_BUFFER => {
            expect_buffer(kind == req_type::REGISTER_BUFFER, bytes, sg_count, mem)
        }
        req_type::RING_KICK if bytes.len() == REQUEST_HEADER_SIZE && sg_count == 0 => Expect::Ring,
        req_type::RING_KICK => bad,
        req_type::RING_SETUP => {
            // §15: exactly the header and a RingSetupReq with known flags,
            // reserved 0 and an idle time in range.
            let payload = &bytes[REQUEST_HEADER_SIZE..];
            match RingSetupReq::read_from_bytes(payload) {
                Ok(r)
                    if sg_count == 0
                        && r.flags.get() & !ring_setup::ALL == 0
                        && r.reserved.get() == 0
                        && r.sq_idle_us.get() <= RING_MAX_SQ_IDLE_US =>
                {
                    Expect::Ring
                }
                _ => bad,
            }
        }
        _ => {
            if sg_count > MAX_SG_ENTRIES {
                return bad;
            }
            let sg_bytes = sg_count as usize * SG_ENTRY_SIZE;
            let Some(tf_end) = bytes
                .len()
                .checked_sub(sg_bytes)
                .filter(|&end| end >= REQUEST_HEADER_SIZE + TF_HEADER_SIZE)
            else {
                return bad;
            };
            let Ok(sg) = <[SgEntry]>::ref_from_bytes(&bytes[tf_end..]) else {
                return bad;
            };
            if sg.iter().any(|e| e.len.get() == 0 || e.reserved.get() != 0) {
                return bad;
            }
            let tf_len = tf_end - REQUEST_HEADER_SIZE;
            if writable < (tf_len + STATUS_SIZE) as u64 {
                return bad;
            }
            Expect::Executed {
                tf_len,
                sg: sg.to_vec(),
            }
        }
    }
}

/// SPEC §12 for a REGISTER_BUFFER (`register`) or UNREGISTER_BUFFER, sent
/// to a card that holds no buffer yet.
fn expect_buffer(register: bool, bytes: &[u8], sg_count: u32, mem: &GuestMemoryMmap) -> Expect {
    let bad = Expect::Rejected(vq_status::BAD_REQUEST);
    let Ok((desc, entries)) = BufferDesc::read_from_prefix(&bytes[REQUEST_HEADER_SIZE..]) else {
        return bad;
    };
    // REGISTER names its owner (nonzero), UNREGISTER none (§12).
    if (desc.owner.get() != 0) != register {
        return bad;
    }
    if !register {
        if sg_count != 0 || !entries.is_empty() || desc.length.get() != 0 {
            return bad;
        }
        // Nothing registered: the id is unknown.
        return Expect::Buffer(vq_status::BAD_REQUEST);
    }
    if !(1..=MAX_SG_ENTRIES).contains(&sg_count)
        || entries.len() != sg_count as usize * SG_ENTRY_SIZE
    {
        return bad;
    }
    let Ok(sg) = <[SgEntry]>::ref_from_bytes(entries) else {
        return bad;
    };
    if sg.iter().any(|e| e.len.get() == 0 || e.reserved.get() != 0) {
        return bad;
    }
    let id = desc.id.get();
    let sum: u64 = sg.iter().map(|e| u64::from(e.len.get())).sum();
    let inside = sg
        .iter()
        .all(|e| Walk::inside(mem, &[(e.addr.get(), e.len.get())]));
    let good = (1..=registered::MAX_BUFFERS).contains(&id) && inside && sum == desc.length.get();
    Expect::Buffer(if good {
        vq_status::OK
    } else {
        vq_status::BAD_REQUEST
    })
}

/// Reads the readable part of `chain` (`None` when a buffer lies outside
/// guest memory or the part is too long to be a request).
fn read_readable<M>(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
    walk: &Walk,
) -> Option<Vec<u8>>
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    if Walk::total(&walk.readable) > MAX_READABLE as u64 {
        return None;
    }
    let mut reader = Reader::new(mem, chain.clone()).ok()?;
    let mut bytes = vec![0u8; reader.available_bytes()];
    reader.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

/// The writable stream of `walk`, read back from guest memory.
fn writable_bytes(mem: &GuestMemoryMmap, walk: &Walk) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len) in walk.writable.iter().filter(|w| w.1 > 0) {
        let mut piece = vec![0u8; len as usize];
        if mem.read_slice(&mut piece, GuestAddress(addr)).is_err() {
            panic!("a writable buffer of an answered chain is outside guest memory");
        }
        out.extend_from_slice(&piece);
    }
    out
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// Checks one completed chain: the completion against the expectation,
/// and every byte of guest memory that changed.
fn check_completion(
    mem: &GuestMemoryMmap,
    walk: &Walk,
    expect: &Expect,
    completion: &Completion,
    before: &[(u64, Vec<u8>)],
) {
    let used = u64::from(completion.used_len);
    let writable = Walk::total(&walk.writable);
    assert!(
        used <= writable,
        "used length {used} > {writable} writable bytes"
    );
    let dma: &[SgEntry] = match (&completion.disposition, expect) {
        (Disposition::Executed(_), Expect::Executed { sg, .. }) => sg,
        _ => &[],
    };
    // Which writable-stream offsets the device may have written.
    let window = match &completion.disposition {
        Disposition::Rejected(_) => used.saturating_sub(STATUS_SIZE as u64)..used,
        _ => 0..used,
    };
    for a in changed(mem, before) {
        let in_dma = dma
            .iter()
            .any(|e| a >= e.addr.get() && a - e.addr.get() < u64::from(e.len.get()));
        let in_window = walk.writable_offsets(a).iter().any(|o| window.contains(o));
        assert!(
            in_dma || in_window,
            "byte {a:#x} written outside the chain's writable window {window:?} \
             ({:?})",
            completion.disposition
        );
    }
    match (&completion.disposition, expect) {
        (Disposition::Dropped(_), Expect::Dropped) => assert_eq!(used, 0),
        (Disposition::Rejected(e), Expect::Rejected(status)) => {
            assert_eq!(e.status(), *status, "{e:?}");
            assert_eq!(used, writable);
        }
        (Disposition::Attached(_), Expect::Attached)
        | (Disposition::Flushed(_), Expect::Flushed)
        | (Disposition::Aborted(_), Expect::Aborted) => assert_eq!(used, STATUS_SIZE as u64),
        (Disposition::Ring { result, .. }, Expect::Ring) => {
            assert_eq!(used, STATUS_SIZE as u64);
            assert!(result.is_err(), "a card without rings accepted {result:?}");
        }
        (Disposition::Buffer { result, .. }, Expect::Buffer(status)) => {
            assert_eq!(used, STATUS_SIZE as u64);
            let got = match result {
                Ok(()) => vq_status::OK,
                Err(e) => e.status(),
            };
            assert_eq!(got, *status, "{result:?}");
        }
        (Disposition::Executed(o), Expect::Executed { tf_len, .. }) => {
            assert_eq!(used, (tf_len + STATUS_SIZE) as u64);
            assert!(o.executed == 0 || o.executed == o.index);
        }
        (got, want) => panic!("chain answered {got:?}, the spec says {want:?}"),
    }
    // The answer reads back as written unless DMA or overlapping buffers
    // wrote over it.
    let dropped = matches!(completion.disposition, Disposition::Dropped(_));
    if dropped || !dma.is_empty() || walk.writable_overlaps() {
        return;
    }
    let stream = writable_bytes(mem, walk);
    let status_at = match (&completion.disposition, expect) {
        (Disposition::Rejected(e), _) => Some((stream.len() - STATUS_SIZE, e.status())),
        (Disposition::Attached(r) | Disposition::Flushed(r), _) => {
            let code = if r.is_ok() {
                vq_status::OK
            } else {
                vq_status::DEVICE_ERROR
            };
            Some((0, code))
        }
        (Disposition::Aborted(_), _) => Some((0, vq_status::OK)),
        (Disposition::Buffer { result, .. }, _) => {
            Some((0, result.map_or_else(|e| e.status(), |()| vq_status::OK)))
        }
        (Disposition::Ring { result, .. }, _) => Some((
            0,
            result
                .as_ref()
                .map_or_else(|e| e.status(), |()| vq_status::OK),
        )),
        (Disposition::Executed(o), Expect::Executed { tf_len, .. }) => {
            assert_eq!(le32(&stream, 0), o.error as u32, "result header error");
            assert_eq!(le32(&stream, 4), o.index, "result header count");
            Some((*tf_len, vq_status::OK))
        }
        _ => None,
    };
    if let Some((at, code)) = status_at {
        assert_eq!(le32(&stream, at), code, "status at writable offset {at}");
    }
}

thread_local! {
    /// Card RAM (a memfd, as in the daemon) and what it must hold.
    static CARD_RAM: RefCell<Option<(CardRam, Vec<u8>)>> = const { RefCell::new(None) };
}

/// The card of [`chain`]: the real model and DMA engine, a scripted ATTACH.
struct FuzzDevice<'a> {
    card: Card,
    irq: xxcapture_model::interrupts::InterruptController,
    ram: &'a CardRam,
    attach_fails: bool,
    executed: Vec<(Vec<u8>, Vec<SgEntry>)>,
    registered: RegisteredBuffers,
}

impl Device for FuzzDevice<'_> {
    fn execute(
        &mut self,
        task_file: &mut [u8],
        sg: &[SgEntry],
        mem: &GuestMemoryMmap,
        asynchronous: bool,
    ) -> Outcome {
        self.executed.push((task_file.to_vec(), sg.to_vec()));
        let mut guest = GuestDma { ram: self.ram, mem };
        let mut port = RegisteredPort {
            inner: &mut guest,
            buffers: &self.registered,
            owner: None,
        };
        let outcome =
            self.card
                .execute_request(task_file, sg, &mut port, &mut self.irq, 1_000, asynchronous);
        let _ = self.irq.take_due(1_000, usize::MAX);
        outcome
    }

    fn attach(&mut self) -> Result<(), String> {
        if self.attach_fails {
            Err("refused".into())
        } else {
            Ok(())
        }
    }

    fn flush_buffers(&mut self) -> Result<(), String> {
        // This harness holds no stream buffers: nothing to return.
        Ok(())
    }

    fn abort_buffers(&mut self, _tags: &[u64]) -> usize {
        // This harness holds no stream buffers: nothing to cancel.
        0
    }

    fn device_time_ns(&self) -> u64 {
        1_000
    }

    fn register_buffer(
        &mut self,
        id: u32,
        owner: u32,
        length: u64,
        entries: Vec<SgEntry>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RegisterError> {
        self.registered.register(id, owner, length, entries, mem)
    }

    fn unregister_buffer(&mut self, id: u32) -> Result<(), RegisterError> {
        self.registered.unregister(id)
    }
}

fn capture_card() -> Card {
    let config = CardConfig {
        card_ram_size: MIN_CARD_RAM,
        capabilities: caps::TASK_FILE | caps::DMA | caps::CARD_RAM_SHM | caps::CAPTURE,
        ..CardConfig::default()
    };
    match Card::new(config) {
        Ok(card) => card,
        Err(e) => panic!("fixed card config refused: {e}"),
    }
}

/// One arbitrary descriptor chain through [`process_chain`].
pub fn chain(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = chain_inner(&mut u);
}

fn chain_inner(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = memory();
    let mut alloc = Alloc::new();
    let payload = payload(u, &mut alloc)?;
    let descs = layout(u, &mem, &mut alloc, &payload)?;
    if descs.is_empty() {
        return Ok(());
    }
    let linked = link(u, &mem, &mut alloc, &descs, 0)?;
    let attach_fails = u.arbitrary()?;
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let Ok(chain) = vq.build_multiple_desc_chains(&linked) else {
        return Ok(());
    };
    let walk = Walk::of(&chain);
    let readable = read_readable(&mem, &chain, &walk);
    let expect = expected(&walk, &mem, readable.as_deref());
    let before = snapshot(&mem);
    CARD_RAM.with_borrow_mut(|slot| {
        if slot.is_none() {
            let ram = match CardRam::new(MIN_CARD_RAM) {
                Ok(ram) => ram,
                Err(e) => panic!("cannot create card RAM: {e}"),
            };
            *slot = Some((ram, vec![0u8; MIN_CARD_RAM as usize]));
        }
        let Some((ram, shadow)) = slot.as_mut() else {
            return;
        };
        let card = capture_card();
        let irq = card.interrupt_controller();
        let mut device = FuzzDevice {
            card,
            irq,
            ram,
            attach_fails,
            executed: Vec::new(),
            registered: RegisteredBuffers::default(),
        };
        let completion = process_chain(&mut device, &chain);
        check_completion(&mem, &walk, &expect, &completion, &before);
        let ran = matches!(completion.disposition, Disposition::Executed(_));
        assert_eq!(device.card.request_count(), u64::from(ran));
        assert_eq!(device.executed.len(), usize::from(ran));
        if let (Some((tf, sg)), Some(bytes), Expect::Executed { tf_len, sg: want }) =
            (device.executed.first(), readable.as_deref(), &expect)
        {
            let start = REQUEST_HEADER_SIZE;
            assert_eq!(tf[..], bytes[start..start + tf_len], "task file mangled");
            assert_eq!(sg, want, "scatter-gather table mangled");
            check_card_ram(ram, shadow, tf);
        }
    });
    Ok(())
}

/// Card RAM may change only where the task file's TO_CARD commands wrote.
fn check_card_ram(ram: &CardRam, shadow: &mut [u8], tf: &[u8]) {
    let commands: Vec<Command> = tf
        .get(TF_HEADER_SIZE..)
        .unwrap_or_default()
        .chunks_exact(size_of::<Command>())
        .filter_map(|c| Command::read_from_bytes(c).ok())
        .collect();
    let dma = |c: &&Command| {
        let op = c.op.get();
        op == Op::DmaTransferBlock as u16 || op == Op::DmaTransferNonBlock as u16
    };
    if !commands.iter().any(|c| dma(&c)) {
        return;
    }
    let to_card: Vec<(u64, u64)> = commands
        .iter()
        .filter(dma)
        .filter(|c| c.reg.get() == xxcapture_abi::dma_dir::TO_CARD)
        .map(|c| (c.mask.get(), c.mask.get().saturating_add(c.length.get())))
        .collect();
    // Compared in place: copying 4 MiB per input would dominate the run.
    let checked = ram.with_slot(0, shadow.len(), |now| {
        for at in diff(0, shadow, now) {
            assert!(
                to_card
                    .iter()
                    .any(|&(start, end)| (start..end).contains(&at)),
                "card RAM byte {at:#x} changed outside every TO_CARD transfer"
            );
        }
        shadow.copy_from_slice(now);
    });
    assert!(checked.is_some(), "cannot read card RAM");
}

/// A SHMEM_MAP stand-in that refuses when told to.
#[derive(Default)]
struct FakeMapper {
    refuse: AtomicBool,
}

impl ShmemMapper for FakeMapper {
    fn map(&self, _ram: &CardRam) -> std::io::Result<()> {
        if self.refuse.load(Ordering::Relaxed) {
            Err(std::io::Error::other("refused"))
        } else {
            Ok(())
        }
    }

    fn unmap(&self, _ram: &CardRam) -> std::io::Result<()> {
        Ok(())
    }
}

fn vring(
    atomic: &GuestMemoryAtomic<GuestMemoryMmap>,
    desc: u64,
    avail: u64,
    used: u64,
) -> VringRwLock {
    let Ok(vring) = VringRwLock::new(atomic.clone(), 1024) else {
        panic!("cannot create a vring");
    };
    vring.set_queue_size(QUEUE_SIZE);
    if vring.set_queue_info(desc, avail, used).is_err() {
        panic!("cannot place a vring");
    }
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// The whole backend: command-queue requests interleaved with config-space
/// reads and writes, vring stops, stray events and ring corruption.
pub fn backend(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = backend_inner(&mut u);
}

fn backend_inner(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = memory();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    // No CAPTURE: a capture thread would make runs depend on timing.
    let config = CardConfig {
        card_ram_size: MIN_CARD_RAM,
        capabilities: caps::TASK_FILE | caps::DMA | caps::CARD_RAM_SHM,
        ..CardConfig::default()
    };
    let card = match Card::new(config) {
        Ok(card) => card,
        Err(e) => panic!("fixed card config refused: {e}"),
    };
    let b = match XxcapBackend::new(card, u.arbitrary()?, None) {
        Ok(b) => b,
        Err(e) => panic!("cannot create the backend: {e}"),
    };
    let identity = b.get_config(0, CONFIG_SIZE as u32);
    assert_eq!(identity.len(), CONFIG_SIZE);
    let mapper = Arc::new(FakeMapper::default());
    if u.arbitrary()? {
        b.device().set_mapper(mapper.clone());
    }
    if b.update_memory(atomic.clone()).is_err() {
        panic!("update_memory failed");
    }
    b.set_event_idx(u.arbitrary()?);
    let cmd = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let evt = MockSplitQueue::create(&mem, GuestAddress(EVENT_QUEUE), QUEUE_SIZE);
    let stream = MockSplitQueue::create(&mem, GuestAddress(STREAM_QUEUE), QUEUE_SIZE);
    // The used rings go where `used_ring` says, not where the mock puts
    // them: the mock (virtio-queue 0.18) overlaps its used ring with the
    // avail ring (it sizes the avail ring in elements, not bytes).
    let vrings: Vec<VringRwLock> = [&cmd, &evt, &stream]
        .iter()
        .map(|q| {
            vring(
                &atomic,
                q.desc_table_addr().0,
                q.avail_addr().0,
                used_ring(q),
            )
        })
        .collect();
    let counters = b.device().counters();
    let mut guest = GuestQueue {
        next_desc: 0,
        avail_idx: 0,
        used_idx: 0,
        corrupted: false,
    };
    let mut alloc = Alloc::new();
    let mut steps = 0;
    while !u.is_empty() && steps < 64 {
        steps += 1;
        match u.int_in_range(0..=11u8)? {
            0..=4 => {
                if alloc.next > A_SIZE / 2 {
                    alloc = Alloc::new();
                }
                guest.request(u, &mem, &mut alloc, &cmd, &b, &vrings)?;
            }
            5 => {
                let offset = u.int_in_range(0..=CONFIG_SIZE as u32 + 8)?;
                let len = u.int_in_range(0..=300usize)?;
                let bytes = u.bytes(len)?;
                assert!(b.set_config(offset, bytes).is_ok(), "SET_CONFIG refused");
            }
            6 => {
                let (offset, size) = if u.arbitrary()? {
                    (u.arbitrary()?, u.arbitrary()?)
                } else {
                    (
                        u.int_in_range(0..=CONFIG_SIZE as u32)?,
                        u.int_in_range(0..=CONFIG_SIZE as u32)?,
                    )
                };
                let got = b.get_config(offset, size);
                let start = (offset as usize).min(CONFIG_SIZE);
                let end = start.saturating_add(size as usize).min(CONFIG_SIZE);
                assert_eq!(got.len(), end - start, "GET_CONFIG {offset} {size}");
            }
            7 => {
                let q = u.int_in_range(0..=3u32)?;
                assert!(b.stop_vring(q).is_ok());
            }
            8 => {
                let event = u.int_in_range(0..=4u16)?;
                let evset = *u.choose(&[
                    EventSet::IN,
                    EventSet::OUT,
                    EventSet::IN | EventSet::OUT,
                    EventSet::HANG_UP,
                ])?;
                // Stray or repeated kicks find nothing new to complete.
                assert!(b.handle_event(event, evset, &vrings, 0).is_ok());
            }
            9 => {
                // A driver gone wrong: a bogus avail index or head.
                if u.arbitrary()? {
                    cmd.avail().idx().store(u.arbitrary()?);
                } else {
                    let slot = usize::from(u.int_in_range(0..=QUEUE_SIZE - 1)?);
                    if let Ok(r) = cmd.avail().ring().ref_at(slot) {
                        r.store(u.arbitrary()?);
                    }
                }
                guest.corrupted = true;
            }
            10 => {
                mapper.refuse.store(u.arbitrary()?, Ordering::Relaxed);
            }
            _ => b.set_event_idx(u.arbitrary()?),
        }
        // Config space is the identity, whatever was written to it; only
        // the status word may change.
        let now = b.get_config(0, CONFIG_SIZE as u32);
        assert_eq!(now[..0x20], identity[..0x20], "identity changed");
        assert_eq!(now[0x24..], identity[0x24..], "identity changed");
    }
    let bad = counters.bad_requests.load(Ordering::Relaxed);
    let all = counters.requests.load(Ordering::Relaxed);
    assert!(bad <= all);
    b.device().shutdown();
    Ok(())
}

/// Where [`backend`] puts a queue's used ring: past its avail ring.
fn used_ring(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> u64 {
    q.desc_table_addr().0 + 0x200
}

/// The driver side of the command queue in [`backend`].
struct GuestQueue {
    next_desc: u16,
    avail_idx: u16,
    used_idx: u16,
    /// The ring was corrupted (or kicked out of turn): the used ring no
    /// longer tells which chain completed.
    corrupted: bool,
}

impl GuestQueue {
    fn request(
        &mut self,
        u: &mut Unstructured<'_>,
        mem: &GuestMemoryMmap,
        alloc: &mut Alloc,
        cmd: &MockSplitQueue<'_, GuestMemoryMmap>,
        b: &XxcapBackend,
        vrings: &[VringRwLock],
    ) -> Result<()> {
        let payload = payload(u, alloc)?;
        let descs = layout(u, mem, alloc, &payload)?;
        if descs.is_empty() || descs.len() > usize::from(QUEUE_SIZE) / 2 {
            return Ok(());
        }
        if usize::from(self.next_desc) + descs.len() > usize::from(QUEUE_SIZE) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let linked = link(u, mem, alloc, &descs, head)?;
        for (i, d) in linked.iter().enumerate() {
            if cmd.desc_table().store(head + i as u16, *d).is_err() {
                return Ok(());
            }
        }
        self.next_desc += linked.len() as u16;
        let slot = usize::from(self.avail_idx % QUEUE_SIZE);
        if let Ok(r) = cmd.avail().ring().ref_at(slot) {
            r.store(head);
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        cmd.avail().idx().store(self.avail_idx);
        // Walk the chain as the device will see it, before the device can
        // write into the tables (a writable buffer may overlap them).
        let chain = cmd
            .create_queue::<virtio_queue::Queue>()
            .ok()
            .and_then(|mut q| {
                q.set_next_avail(self.avail_idx.wrapping_sub(1));
                q.pop_descriptor_chain(mem)
            });
        let Some(chain) = chain else {
            // Posted but not walkable: the device sees it anyway, and the
            // used ring no longer pairs with what this side tracks.
            assert!(b
                .handle_event(queue::COMMAND, EventSet::IN, vrings, 0)
                .is_ok());
            self.corrupted = true;
            return Ok(());
        };
        let walk = Walk::of(&chain);
        let readable = read_readable(mem, &chain, &walk);
        let expect = expected(&walk, mem, readable.as_deref());
        let before = snapshot(mem);
        assert!(b
            .handle_event(queue::COMMAND, EventSet::IN, vrings, 0)
            .is_ok());
        if self.corrupted {
            return Ok(());
        }
        let used_base = used_ring(cmd);
        let read_u32 = |at: u64| mem.read_obj::<u32>(GuestAddress(at)).unwrap_or(u32::MAX);
        let used_idx = mem
            .read_obj::<u16>(GuestAddress(used_base + 2))
            .unwrap_or(0);
        // Every chain posted is completed, in one kick.
        assert_eq!(used_idx, self.avail_idx, "a posted chain was not completed");
        let slot = usize::from(self.used_idx % QUEUE_SIZE);
        self.used_idx = used_idx;
        let elem = used_base + 4 + 8 * slot as u64;
        assert_eq!(read_u32(elem), u32::from(head), "used id");
        let used = u64::from(read_u32(elem + 4));
        assert!(used <= Walk::total(&walk.writable), "used length too large");
        // Only the used ring, the writable buffers and DMA buffers change.
        let used_ring = used_base..used_base + 6 + 8 * u64::from(QUEUE_SIZE);
        let dma = match expect {
            Expect::Executed { sg, .. } => sg,
            _ => Vec::new(),
        };
        for a in changed(mem, &before) {
            let ok = used_ring.contains(&a)
                || walk.writable_offsets(a).iter().any(|&o| o < used)
                || dma
                    .iter()
                    .any(|e| a >= e.addr.get() && a - e.addr.get() < u64::from(e.len.get()));
            assert!(ok, "byte {a:#x} written outside the chain's used window");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
