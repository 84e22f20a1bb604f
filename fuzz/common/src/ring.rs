//! Fuzzing entry point for the submission and completion rings of `xxcapd`
//! (target `ring`, SPEC §15).
//!
//! The card is the daemon's own (`XxcapBackend` on virtual time, card RAM
//! with the ring area) over mock guest memory that holds two registered
//! buffers: one of the ring's owner, one of another owner. The input is a
//! sequence of operations of a hostile application: arbitrary bytes
//! anywhere in the ring area (header fields included), well-formed and
//! malformed task files placed in the arena with SQ entries for them,
//! index and flag writes, RING_KICKs, CQ consumption, setups and
//! teardowns.
//!
//! What each kick is checked for, from a snapshot of the area and of guest
//! memory taken before it (nothing else writes while it runs):
//!
//! - nothing panics, and every SQ entry the card consumed got exactly one
//!   completion, in SQ order (`request_id` the SQ index, `refcon` its
//!   `user_data`);
//! - an entry whose offset/size is out of the arena or disagrees with its
//!   header completes BAD_COUNT at index 0; any other status is one the
//!   task file can fail with on the ring (REFUSED only for raw DMA, BAD_OP
//!   only for unknown ops, DMA_FAULT only for DMA_BUFFER, never CANCELLED
//!   or DEVICE), and OK only if the task file names no other owner's
//!   buffer;
//! - CQ entries other than completions are device records or LOST records;
//! - inside the ring area only the card's header fields, the CQ entries it
//!   posted and the arena ranges of the task files it ran change; in guest
//!   memory only the owner's registered buffer does.

use std::io;
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use vhost_user_backend::VhostUserBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use xxcapture_abi::event::{FLAG_COMPLETION, FLAG_RING, LOST};
use xxcapture_abi::{
    caps, dma_dir, irq, regs, ring_setup, Command, Event, Op, RingSetupReq, SgEntry, SqEntry,
    TaskFileHeader, TfError, CMD_SIZE, MAX_COMMANDS, RING_AREA_SIZE, RING_ARENA_OFFSET,
    RING_ARENA_SIZE, RING_CQ_ENTRIES, RING_CQ_OFFSET, RING_SQ_ENTRIES, RING_SQ_OFFSET,
    TF_HEADER_SIZE,
};
use xxcapture_model::{Card, CardConfig, MIN_CARD_RAM};
use zerocopy::{FromBytes, IntoBytes};

use xxcapd::card_ram::{CardRam, RingArea};
use xxcapd::clock::Clock;
use xxcapd::device::{ShmemMapper, XxcapDevice};
use xxcapd::ring::field;
use xxcapd::vhu_xxcap::XxcapBackend;

/// The ring's owner, and the owner of the other registered buffer.
const OWNER: u32 = 7;
const OTHER: u32 = 8;
/// Guest memory, and the two registered buffers in it.
const MEM_SIZE: u64 = 256 << 10;
const OWN_BUF: (u64, u32) = (0x1000, 0x4000);
const OTHER_BUF: (u64, u32) = (0x8000, 0x4000);
/// Most operations one input runs.
const MAX_OPS: usize = 64;

struct OkMapper;

impl ShmemMapper for OkMapper {
    fn map(&self, _ram: &CardRam) -> io::Result<()> {
        Ok(())
    }
    fn unmap(&self, _ram: &CardRam) -> io::Result<()> {
        Ok(())
    }
}

/// Runs one input.
pub fn ring(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = ring_inner(&mut u);
}

/// The application's view: what it submitted and what it knows the card
/// did (from the completions it checked).
struct App {
    backend: XxcapBackend,
    mem: GuestMemoryMmap,
    ram: Arc<CardRam>,
    /// Next SQ index the application writes.
    sq_tail: u32,
    /// The card's SQ head and CQ tail, as the checked completions say.
    card_head: u32,
    card_tail: u32,
    /// The ring's owner (0: no ring).
    owner: u32,
}

fn ring_inner(u: &mut Unstructured<'_>) -> Result<()> {
    let config = CardConfig {
        card_ram_size: MIN_CARD_RAM,
        capabilities: caps::TASK_FILE | caps::DMA | caps::CARD_RAM_SHM | caps::EVENTS | caps::RING,
        ..CardConfig::default()
    };
    let card = match Card::new(config) {
        Ok(card) => card,
        Err(e) => panic!("fixed card config refused: {e}"),
    };
    // Virtual time: no SQ poller thread, the same run every time.
    let backend = match XxcapBackend::with_clock(card, false, None, Clock::virtual_time()) {
        Ok(b) => b,
        Err(e) => panic!("cannot create the backend: {e}"),
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]) else {
        panic!("cannot create mock guest memory");
    };
    let canary: Vec<u8> = (0..MEM_SIZE).map(|i| (i * 7 + 3) as u8).collect();
    if mem.write_slice(&canary, GuestAddress(0)).is_err() {
        panic!("cannot fill guest memory");
    }
    if backend
        .update_memory(GuestMemoryAtomic::new(mem.clone()))
        .is_err()
    {
        panic!("cannot set guest memory");
    }
    let dev = backend.device();
    dev.set_mapper(Arc::new(OkMapper));
    let ram = dev.card_ram();
    let setup_ok = batch(dev, |d| {
        d.attach().is_ok()
            && d.register_buffer(1, OWNER, u64::from(OWN_BUF.1), vec![sg(OWN_BUF)], &mem)
                .is_ok()
            && d.register_buffer(2, OTHER, u64::from(OTHER_BUF.1), vec![sg(OTHER_BUF)], &mem)
                .is_ok()
    });
    assert!(setup_ok, "attach or registration refused");
    let mut app = App {
        backend,
        mem,
        ram,
        sq_tail: 0,
        card_head: 0,
        card_tail: 0,
        owner: 0,
    };
    app.setup(0)?;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9u8)? {
            0 => app.scribble(u)?,
            1 => app.write_field(u)?,
            2..=4 => app.submit(u)?,
            5 | 6 => app.kick(),
            7 => app.consume(u)?,
            8 => app.setup(u.int_in_range(0..=3u32)?)?,
            _ => app.raise(u)?,
        }
    }
    app.kick();
    Ok(())
}

fn sg((addr, len): (u64, u32)) -> SgEntry {
    SgEntry::new(addr, len)
}

fn batch<R>(dev: &XxcapDevice, f: impl FnOnce(&mut dyn xxcapd::request::Device) -> R) -> R {
    match dev.with_batch(f) {
        Some(r) => r,
        None => panic!("the device is quiescing"),
    }
}

impl App {
    fn dev(&self) -> &XxcapDevice {
        self.backend.device()
    }

    fn area(&self) -> RingArea<'_> {
        match self.ram.ring_area() {
            Some(a) => a,
            None => panic!("a CAP_RING card without a ring area"),
        }
    }

    fn area_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; RING_AREA_SIZE as usize];
        if self.area().read(0, &mut out).is_none() {
            panic!("cannot read the ring area");
        }
        out
    }

    fn guest_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; MEM_SIZE as usize];
        if self.mem.read_slice(&mut out, GuestAddress(0)).is_err() {
            panic!("cannot read guest memory");
        }
        out
    }

    fn store(&self, at: usize, value: u32) {
        self.area()
            .store(at, value, std::sync::atomic::Ordering::Release);
    }

    /// RING_SETUP: owner 0 tears down, SQPOLL is refused on virtual time.
    fn setup(&mut self, which: u32) -> Result<()> {
        let (owner, flags) = match which {
            0 => (OWNER, 0),
            1 => (0, 0),
            2 => (OWNER, ring_setup::SQPOLL),
            _ => (OTHER, 0),
        };
        let req = RingSetupReq {
            owner: owner.into(),
            flags: flags.into(),
            sq_idle_us: 0.into(),
            reserved: 0.into(),
        };
        let result = batch(self.dev(), |d| d.ring_setup(req));
        match (owner, flags) {
            (_, ring_setup::SQPOLL) => {
                // Refused: the ring stays as it was.
                assert!(result.is_err(), "SQPOLL accepted on virtual time");
                return Ok(());
            }
            (0, _) => {
                assert_eq!(result, Ok(()));
                assert!(
                    self.area_bytes().iter().all(|&b| b == 0),
                    "teardown left bytes in the area"
                );
            }
            _ => assert_eq!(result, Ok(()), "setup refused"),
        }
        self.sq_tail = 0;
        self.card_head = 0;
        self.card_tail = 0;
        self.owner = owner;
        Ok(())
    }

    /// The id and placement of the ring owner's registered buffer.
    fn own_buffer(&self) -> (u32, (u64, u32)) {
        if self.owner == OTHER {
            (2, OTHER_BUF)
        } else {
            (1, OWN_BUF)
        }
    }

    /// Arbitrary bytes anywhere in the area.
    fn scribble(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let at = u.int_in_range(0..=RING_AREA_SIZE - 1)? as usize;
        let len = u.int_in_range(0..=64usize)?;
        let bytes = u.bytes(len)?;
        let len = bytes.len().min(RING_AREA_SIZE as usize - at);
        let _ = self.area().write(at, &bytes[..len]);
        Ok(())
    }

    /// An index, flag or mask written, sane or not.
    fn write_field(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let at = *u.choose(&[
            field::SQ_TAIL,
            field::CQ_HEAD,
            field::CQ_FLAGS,
            field::EVENT_MASK,
            field::SQ_HEAD,
            field::CQ_TAIL,
            field::SQ_FLAGS,
        ])?;
        let value = match u.int_in_range(0..=3u8)? {
            0 => u.arbitrary::<u32>()?,
            1 => self.card_head.wrapping_add(u.int_in_range(0..=300u32)?),
            2 => self.card_tail.wrapping_sub(u.int_in_range(0..=3u32)?),
            _ => u.int_in_range(0..=irq::ALL)?,
        };
        self.store(at, value);
        Ok(())
    }

    /// A task file placed in the arena and an SQ entry naming it (or not
    /// quite) at the application's tail.
    fn submit(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let tf = ring_task_file(u)?;
        let offset = if u.ratio(1u8, 16)? {
            u.arbitrary::<u32>()?
        } else {
            u.int_in_range(0..=RING_ARENA_SIZE / 16)? * 16
        };
        let fits = u64::from(offset) + tf.len() as u64 <= u64::from(RING_ARENA_SIZE);
        if fits {
            let _ = self
                .area()
                .write(RING_ARENA_OFFSET as usize + offset as usize, &tf);
        }
        let size = if u.ratio(1u8, 16)? {
            u.arbitrary::<u32>()?
        } else {
            tf.len() as u32
        };
        let sqe = SqEntry {
            offset: offset.into(),
            size: size.into(),
            user_data: u.arbitrary::<u64>()?.into(),
        };
        let at = RING_SQ_OFFSET as usize
            + (self.sq_tail % RING_SQ_ENTRIES) as usize * std::mem::size_of::<SqEntry>();
        let _ = self.area().write(at, sqe.as_bytes());
        self.sq_tail = self.sq_tail.wrapping_add(1);
        self.store(field::SQ_TAIL, self.sq_tail);
        Ok(())
    }

    /// The application consumed completions (up to the card's tail).
    fn consume(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let back = u.int_in_range(0..=RING_CQ_ENTRIES)?;
        self.store(field::CQ_HEAD, self.card_tail.wrapping_sub(back));
        Ok(())
    }

    /// A device event (routed into the CQ if the mask says so).
    fn raise(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let cause = *u.choose(&[irq::TEST, irq::FRAME_DONE, irq::OVERFLOW])?;
        let mut setup = [0u8; TF_HEADER_SIZE + CMD_SIZE];
        let header = TaskFileHeader {
            count: 1.into(),
            ..TaskFileHeader::default()
        };
        let cmd = Command {
            op: (Op::SetRegister as u16).into(),
            reg: regs::INT_MASK.into(),
            value: u64::from(irq::ALL).into(),
            ..Command::default()
        };
        setup[..TF_HEADER_SIZE].copy_from_slice(header.as_bytes());
        setup[TF_HEADER_SIZE..].copy_from_slice(cmd.as_bytes());
        let mem = self.mem.clone();
        batch(self.dev(), |d| {
            d.execute(&mut setup, &[], &mem, false);
        });
        let before = self.snapshot();
        self.dev().events().raise(cause, 1, 1, Some(&self.mem));
        self.check(before);
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let stats = self.dev().ring_stats();
        Snapshot {
            area: self.area_bytes(),
            guest: self.guest_bytes(),
            sqes: get(&stats.sqes),
            completions: get(&stats.completions),
            posted: get(&stats.posted),
        }
    }

    fn kick(&mut self) {
        let before = self.snapshot();
        let mem = self.mem.clone();
        let result = batch(self.dev(), |d| d.ring_kick(&mem));
        assert_eq!(result, Ok(()), "RING_KICK refused");
        self.check(before);
    }

    /// The oracle: what changed since `before` (see the module docs).
    fn check(&mut self, before: Snapshot) {
        let after = self.snapshot();
        let consumed = after.sqes - before.sqes;
        assert_eq!(
            after.completions - before.completions,
            consumed,
            "completions != SQ entries consumed"
        );
        let posted = u32::try_from(after.posted - before.posted).unwrap_or(u32::MAX);
        assert!(posted <= RING_CQ_ENTRIES, "more posted than the CQ holds");
        let new_tail = self.card_tail.wrapping_add(posted);
        if posted > 0 {
            assert_eq!(
                le32(&after.area, field::CQ_TAIL),
                new_tail,
                "cq_tail is not the card's"
            );
        }
        // What the card may have written in the area.
        let mut allowed: Vec<std::ops::Range<usize>> = vec![
            field::SQ_HEAD..field::SQ_TAIL,
            field::CQ_FLAGS..field::CQ_FLAGS + 4,
            field::SQES..256,
        ];
        let mut completions = 0u64;
        let mut dirty: Vec<std::ops::Range<usize>> = Vec::new();
        for i in 0..posted {
            let index = self.card_tail.wrapping_add(i);
            let at = RING_CQ_OFFSET as usize + (index % RING_CQ_ENTRIES) as usize * 64;
            allowed.push(at..at + 64);
            let Ok(record) = Event::read_from_bytes(&after.area[at..at + 64]) else {
                panic!("CQ entry unreadable");
            };
            if record.flags.get() == FLAG_COMPLETION | FLAG_RING {
                completions += 1;
                self.check_completion(&before.area, &record, &mut dirty);
                for r in &dirty {
                    allowed.push(r.clone());
                }
            } else {
                assert_eq!(record.flags.get(), 0, "{record:?}");
                let cause = record.cause.get();
                assert!(
                    cause == LOST || [irq::TEST, irq::FRAME_DONE, irq::OVERFLOW].contains(&cause),
                    "CQ record of cause {cause:#x}"
                );
            }
        }
        assert_eq!(
            completions, consumed,
            "consumed entries without a completion"
        );
        self.card_tail = new_tail;
        for at in changed(&before.area, &after.area) {
            assert!(
                allowed.iter().any(|r| r.contains(&at)),
                "ring area byte {at:#x} changed ({:#x} -> {:#x})",
                before.area[at],
                after.area[at]
            );
        }
        let (_, (addr, len)) = self.own_buffer();
        let own = addr as usize..(addr + u64::from(len)) as usize;
        for at in changed(&before.guest, &after.guest) {
            assert!(
                own.contains(&at),
                "guest byte {at:#x} outside the owner's buffer changed"
            );
        }
    }

    /// One completion against the entry and task file the card read (from
    /// the area before the kick; an arena range an earlier entry of the
    /// same kick wrote back is not predicted).
    fn check_completion(
        &mut self,
        area: &[u8],
        record: &Event,
        dirty: &mut Vec<std::ops::Range<usize>>,
    ) {
        let index = self.card_head;
        self.card_head = self.card_head.wrapping_add(1);
        assert_eq!(record.request_id.get(), u64::from(index), "out of SQ order");
        let at = RING_SQ_OFFSET as usize + (index % RING_SQ_ENTRIES) as usize * 16;
        let Ok(sqe) = SqEntry::read_from_bytes(&area[at..at + 16]) else {
            panic!("SQ entry unreadable");
        };
        assert_eq!(record.refcon.get(), sqe.user_data.get());
        let Some(status) = TfError::from_raw(record.status.get()) else {
            panic!("completion status {} is no TfError", record.status.get());
        };
        let ok_cause = if status == TfError::Ok {
            irq::DMA_DONE
        } else {
            irq::DMA_ERROR
        };
        assert_eq!(record.cause.get(), ok_cause);
        assert!(!matches!(status, TfError::Cancelled | TfError::Device));
        let (offset, size) = (sqe.offset.get() as usize, sqe.size.get() as usize);
        let start = RING_ARENA_OFFSET as usize + offset;
        let range_ok = offset
            .checked_add(size)
            .is_some_and(|end| end <= RING_ARENA_SIZE as usize);
        let n = size
            .checked_sub(TF_HEADER_SIZE)
            .filter(|b| b % CMD_SIZE == 0)
            .map(|b| b / CMD_SIZE);
        let shape_ok = range_ok && n.is_some_and(|n| (1..=MAX_COMMANDS as usize).contains(&n));
        if !shape_ok {
            assert_eq!(
                (status, record.count.get()),
                (TfError::BadCount, 0),
                "{sqe:?}"
            );
            return;
        }
        let range = start..start + size;
        let predicted = !dirty
            .iter()
            .any(|d| d.start < range.end && range.start < d.end);
        let n = n.unwrap_or(0);
        let tf = &area[range.clone()];
        let header = TaskFileHeader::read_from_prefix(tf).map(|h| h.0).ok();
        let agrees = header.is_some_and(|h| h.count.get() as usize == n);
        if predicted && !agrees {
            assert_eq!((status, record.count.get()), (TfError::BadCount, 0));
            return;
        }
        if status == TfError::BadCount {
            assert!(
                !predicted,
                "BAD_COUNT for an entry that agrees with its header"
            );
            assert_eq!(record.count.get(), 0);
            return;
        }
        dirty.push(range);
        if !predicted {
            return;
        }
        let header = header.unwrap_or_default();
        let commands: Vec<Command> = tf[TF_HEADER_SIZE..]
            .chunks_exact(CMD_SIZE)
            .filter_map(|c| Command::read_from_bytes(c).ok())
            .collect();
        let count = record.count.get() as usize;
        let (own_id, (_, own_len)) = self.own_buffer();
        if header.flags.get() != 0 || header.reserved.get() != 0 {
            assert_eq!((status, count), (TfError::Reserved, 0), "bad header");
            return;
        }
        if status == TfError::Ok {
            assert_eq!(count, n);
            for c in &commands {
                let op = c.op.get();
                assert!(op != 6 && op != 7, "raw DMA ran on the ring");
                if op == Op::DmaBuffer as u16 {
                    assert_eq!(c.flags.get(), own_id, "another owner's buffer was used");
                }
            }
            return;
        }
        let Some(cmd) = commands.get(count) else {
            panic!("failing index {count} of {n} commands");
        };
        for earlier in &commands[..count] {
            let op = earlier.op.get();
            assert!(
                op <= 8 && op != 6 && op != 7,
                "{earlier:?} passed on the ring"
            );
        }
        let op = cmd.op.get();
        match status {
            TfError::Refused => assert!(op == 6 || op == 7, "REFUSED {cmd:?}"),
            TfError::BadOp => assert!(op > 8, "BAD_OP {cmd:?}"),
            TfError::DmaFault => {
                assert_eq!(op, Op::DmaBuffer as u16, "DMA_FAULT {cmd:?}");
                // The owner's buffer faults only outside its range.
                let inside = cmd
                    .value
                    .get()
                    .checked_add(cmd.length.get())
                    .is_some_and(|end| end <= u64::from(own_len));
                assert!(
                    cmd.flags.get() != own_id || !inside,
                    "DMA_FAULT on the owner's buffer {cmd:?}"
                );
            }
            TfError::Ok | TfError::BadCount | TfError::Cancelled | TfError::Device => {
                unreachable!("checked above")
            }
            _ => assert!(op != 6 && op != 7, "{status:?} for raw DMA {cmd:?}"),
        }
    }
}

struct Snapshot {
    area: Vec<u8>,
    guest: Vec<u8>,
    sqes: u64,
    completions: u64,
    posted: u64,
}

/// Offsets at which `a` and `b` (of one length) differ: whole chunks are
/// compared first, so that unchanged memory costs one `memcmp`.
fn changed<'a>(a: &'a [u8], b: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    const CHUNK: usize = 4096;
    a.chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .flat_map(|(n, (x, y))| {
            x.iter()
                .zip(y.iter())
                .enumerate()
                .filter(|(_, (p, q))| p != q)
                .map(move |(i, _)| n * CHUNK + i)
        })
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// A ring task file: mostly register commands and DMA_BUFFER transfers
/// against the two registered buffers, some raw DMA, some junk.
fn ring_task_file(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1u8, 8)? {
        let len = u.int_in_range(0..=96usize)?;
        return Ok(u.bytes(len)?.to_vec());
    }
    let count = u.int_in_range(1..=6u32)?;
    let mut header = TaskFileHeader {
        count: count.into(),
        ..TaskFileHeader::default()
    };
    if u.ratio(1u8, 16)? {
        header.count = u.int_in_range(0..=8u32)?.into();
    }
    if u.ratio(1u8, 32)? {
        header.flags = 1.into();
    }
    let mut out = header.as_bytes().to_vec();
    for _ in 0..count {
        out.extend_from_slice(ring_command(u)?.as_bytes());
    }
    Ok(out)
}

fn ring_command(u: &mut Unstructured<'_>) -> Result<Command> {
    let cmd = match u.int_in_range(0..=7u8)? {
        0 => Command {
            op: (Op::GetRegister as u16).into(),
            reg: (*u.choose(&[
                regs::ID,
                regs::REQUEST_COUNT,
                regs::INT_STATUS,
                regs::SCRATCH,
            ])?)
            .into(),
            ..Command::default()
        },
        1 => Command {
            op: (Op::SetRegister as u16).into(),
            reg: regs::SCRATCH.into(),
            value: u64::from(u.arbitrary::<u32>()?).into(),
            ..Command::default()
        },
        2 => Command {
            op: (Op::SetRegister as u16).into(),
            reg: (*u.choose(&[regs::INT_RAISE, regs::INT_MASK])?).into(),
            value: u64::from(irq::TEST).into(),
            ..Command::default()
        },
        3 | 4 => Command {
            op: (Op::DmaBuffer as u16).into(),
            reg: (*u.choose(&[dma_dir::TO_CARD, dma_dir::FROM_CARD, 2])?).into(),
            flags: u.int_in_range(0..=3u32)?.into(),
            value: u.int_in_range(0..=0x4100u64)?.into(),
            mask: u.int_in_range(0..=0x1000u64)?.into(),
            length: u.int_in_range(0..=0x400u64)?.into(),
        },
        5 => Command {
            op: u.int_in_range(6..=7u16)?.into(),
            reg: dma_dir::TO_CARD.into(),
            value: OWN_BUF.0.into(),
            length: 16.into(),
            ..Command::default()
        },
        _ => Command::read_from_bytes(u.bytes(CMD_SIZE)?).unwrap_or_default(),
    };
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_corpus_replays() {
        crate::replay_corpus("ring", ring);
    }

    #[test]
    fn harness_accepts_any_bytes() {
        for len in (0..400usize).step_by(5) {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + len * 11) as u8).collect();
            ring(&data);
        }
    }
}
