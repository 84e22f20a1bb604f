//! Command-queue requests: from a descriptor chain to an executed task file.
//!
//! One descriptor chain is one request. Its device-readable part holds a
//! [`VqRequest`] header followed by the task file; its device-writable part
//! receives the executed task file followed by a [`VqStatus`]. Either part may
//! be split over any number of descriptors, direct or indirect.
//!
//! The guest is untrusted. Every guest address goes through virtio-queue's
//! bounds-checked [`Reader`] / [`Writer`]; nothing here panics, loops or
//! allocates more than [`MAX_READABLE`] bytes whatever the chain says. The rules:
//!
//! * fewer than [`STATUS_SIZE`] writable bytes, or writable buffers outside
//!   guest memory: nothing can be reported, the chain is completed with a used
//!   length of 0 ([`Disposition::Dropped`]);
//! * any other malformed chain gets `BAD_REQUEST`, an unknown request type or
//!   non-zero flags get `UNSUPPORTED`; in both cases the status goes in the
//!   LAST [`STATUS_SIZE`] bytes of the writable area and the used length is
//!   the whole writable area;
//! * a good request is executed by the card; the executed task file goes at
//!   the start of the writable area, the `OK` status right after it, and the
//!   used length is task-file length + [`STATUS_SIZE`].

use std::io::{Read, Write};
use std::mem::size_of;
use std::ops::Deref;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::{req_type, vq_status, VqRequest, VqStatus, MAX_TASK_FILE_SIZE, TF_HEADER_SIZE};
use xxcapture_model::{Card, Outcome};
use zerocopy::{FromBytes, IntoBytes};

/// Size of the request header at the start of the readable part.
pub const REQUEST_HEADER_SIZE: usize = size_of::<VqRequest>();
/// Size of the status at the end of the writable part.
pub const STATUS_SIZE: usize = size_of::<VqStatus>();
/// Smallest readable part: request header plus task-file header.
pub const MIN_READABLE: usize = REQUEST_HEADER_SIZE + TF_HEADER_SIZE;
/// Largest readable part the device accepts.
pub const MAX_READABLE: usize = REQUEST_HEADER_SIZE + MAX_TASK_FILE_SIZE;

/// Why a chain was not executed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("{0} device-writable bytes leave no room for a status")]
    NoStatusRoom(u64),
    #[error("a device-writable buffer lies outside guest memory")]
    WritableOutOfBounds,
    #[error("a device-readable descriptor follows a device-writable one")]
    Misordered,
    #[error("{0} device-readable bytes exceed the largest request ({MAX_READABLE})")]
    TooLong(u64),
    #[error("{0} device-readable bytes are too short for the request and task-file headers")]
    TooShort(u64),
    #[error("a device-readable buffer lies outside guest memory")]
    ReadableOutOfBounds,
    #[error("reading the request from guest memory failed")]
    ReadFailed,
    #[error("unsupported request type {req_type} with flags {flags:#x}")]
    Unsupported { req_type: u32, flags: u32 },
    #[error("{got} device-writable bytes cannot hold the {need}-byte result and status")]
    ResultTooSmall { got: u64, need: u64 },
    #[error("writing the response to guest memory failed")]
    WriteFailed,
}

impl ChainError {
    /// The transport status reported for this error.
    pub fn status(self) -> u32 {
        match self {
            ChainError::Unsupported { .. } => vq_status::UNSUPPORTED,
            _ => vq_status::BAD_REQUEST,
        }
    }
}

/// What happened to one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The task file ran (task-file errors, if any, are in `Outcome`).
    Executed(Outcome),
    /// The chain was refused with the status of `ChainError::status`.
    Rejected(ChainError),
    /// Nothing could be reported; completed with length 0.
    Dropped(ChainError),
}

/// The result of processing one chain: what to pass to `add_used`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into the chain's device-writable part.
    pub used_len: u32,
    pub disposition: Disposition,
}

impl Completion {
    fn dropped(error: ChainError) -> Self {
        Completion {
            used_len: 0,
            disposition: Disposition::Dropped(error),
        }
    }
}

/// Byte totals of a chain, found by walking its descriptors once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Layout {
    readable: u64,
    writable: u64,
    misordered: bool,
}

impl Layout {
    /// Walks the chain. The walk is bounded by the queue (or indirect table)
    /// size and virtio-queue ends it at 4 GiB, so the sums cannot overflow.
    fn scan<M>(chain: DescriptorChain<M>) -> Self
    where
        M: Deref<Target = GuestMemoryMmap>,
    {
        let mut layout = Layout::default();
        for desc in chain {
            let len = u64::from(desc.len());
            if desc.is_write_only() {
                layout.writable = layout.writable.saturating_add(len);
            } else {
                if layout.writable > 0 {
                    layout.misordered = true;
                }
                layout.readable = layout.readable.saturating_add(len);
            }
        }
        layout
    }
}

/// Processes one command-queue chain against `card`.
pub fn process_chain<M>(card: &mut Card, chain: &DescriptorChain<M>, now_ns: u64) -> Completion
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let layout = Layout::scan(chain.clone());
    if layout.writable < STATUS_SIZE as u64 {
        return Completion::dropped(ChainError::NoStatusRoom(layout.writable));
    }
    let mem = chain.memory();
    let Ok(mut writer) = Writer::new(mem, chain.clone()) else {
        return Completion::dropped(ChainError::WritableOutOfBounds);
    };
    let request = read_request(mem, chain, &layout).and_then(|buf| {
        let tf_len = buf.len() - REQUEST_HEADER_SIZE;
        let need = (tf_len + STATUS_SIZE) as u64;
        let got = writer.available_bytes() as u64;
        if got < need {
            Err(ChainError::ResultTooSmall { got, need })
        } else {
            Ok(buf)
        }
    });
    match request {
        Ok(mut buf) => {
            let tf = &mut buf[REQUEST_HEADER_SIZE..];
            let outcome = card.execute(tf, now_ns);
            let status = VqStatus {
                status: vq_status::OK.into(),
                reserved: 0.into(),
            };
            let written = writer
                .write_all(tf)
                .and_then(|()| writer.write_all(status.as_bytes()));
            match written {
                Ok(()) => Completion {
                    used_len: u32::try_from(tf.len() + STATUS_SIZE).unwrap_or(u32::MAX),
                    disposition: Disposition::Executed(outcome),
                },
                Err(_) => Completion::dropped(ChainError::WriteFailed),
            }
        }
        Err(error) => reject(writer, error),
    }
}

/// Reads and checks the readable part; returns request header + task file.
fn read_request<M>(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
    layout: &Layout,
) -> Result<Vec<u8>, ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if layout.misordered {
        return Err(ChainError::Misordered);
    }
    if layout.readable > MAX_READABLE as u64 {
        return Err(ChainError::TooLong(layout.readable));
    }
    if layout.readable < MIN_READABLE as u64 {
        return Err(ChainError::TooShort(layout.readable));
    }
    let mut reader =
        Reader::new(mem, chain.clone()).map_err(|_| ChainError::ReadableOutOfBounds)?;
    // Bounded by MAX_READABLE above.
    let mut buf = vec![0u8; reader.available_bytes()];
    if buf.len() < MIN_READABLE {
        return Err(ChainError::ReadFailed);
    }
    reader
        .read_exact(&mut buf)
        .map_err(|_| ChainError::ReadFailed)?;
    let (header, _) = VqRequest::read_from_prefix(&buf).map_err(|_| ChainError::ReadFailed)?;
    let (req, flags) = (header.req_type.get(), header.flags.get());
    if req != req_type::EXEC_TASK_FILE || flags != 0 {
        return Err(ChainError::Unsupported {
            req_type: req,
            flags,
        });
    }
    Ok(buf)
}

/// Writes the error status into the last bytes of the writable area.
fn reject(mut writer: Writer<'_>, error: ChainError) -> Completion {
    let total = writer.available_bytes();
    let Some(offset) = total.checked_sub(STATUS_SIZE) else {
        return Completion::dropped(error);
    };
    let status = VqStatus {
        status: error.status().into(),
        reserved: 0.into(),
    };
    let written = writer
        .split_at(offset)
        .map_err(|_| ())
        .and_then(|mut tail| tail.write_all(status.as_bytes()).map_err(|_| ()));
    match written {
        Ok(()) => Completion {
            used_len: u32::try_from(total).unwrap_or(u32::MAX),
            disposition: Disposition::Rejected(error),
        },
        Err(()) => Completion::dropped(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use xxcapture_abi::{
        regs, Command, Op, TaskFileHeader, TfError, CMD_SIZE, MAGIC, MAX_COMMANDS,
    };
    use xxcapture_model::CardConfig;

    const MEM_SIZE: u64 = 8 << 20;
    const QUEUE_SIZE: u16 = 256;
    /// Data buffers live above the queue structures.
    const DATA: u64 = 0x10_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
    }

    fn card() -> Card {
        Card::new(CardConfig::default()).expect("card")
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// A task file reading the ID register `count` times.
    fn task_file(count: u32) -> Vec<u8> {
        let header = TaskFileHeader {
            count: count.into(),
            ..TaskFileHeader::default()
        };
        let cmd = Command {
            op: (Op::GetRegister as u16).into(),
            reg: regs::ID.into(),
            ..Command::default()
        };
        let mut tf = header.as_bytes().to_vec();
        for _ in 0..count {
            tf.extend_from_slice(cmd.as_bytes());
        }
        tf
    }

    fn request(req: u32, flags: u32, tf: &[u8]) -> Vec<u8> {
        let header = VqRequest {
            req_type: req.into(),
            flags: flags.into(),
            tag: 0x1234.into(),
        };
        let mut buf = header.as_bytes().to_vec();
        buf.extend_from_slice(tf);
        buf
    }

    /// Writes `bytes` at `addr`.
    fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
        mem.write_slice(bytes, GuestAddress(addr)).expect("write");
    }

    fn get(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        mem.read_slice(&mut out, GuestAddress(addr)).expect("read");
        out
    }

    fn status_at(mem: &GuestMemoryMmap, addr: u64) -> u32 {
        let raw = get(mem, addr, STATUS_SIZE);
        VqStatus::read_from_bytes(&raw)
            .expect("status")
            .status
            .get()
    }

    /// Builds `descs` as one chain on a mock queue and processes it.
    fn run(mem: &GuestMemoryMmap, card: &mut Card, descs: &[RawDescriptor]) -> Completion {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let chain = vq.build_desc_chain(descs).expect("chain");
        process_chain(card, &chain, 42)
    }

    /// Lays the request out in pieces of `piece` bytes from `DATA`, then a
    /// writable area of `writable` bytes, and returns descriptors and the
    /// writable area's address.
    fn split_layout(
        req: &[u8],
        piece: usize,
        writable: usize,
        wpiece: usize,
    ) -> (Vec<RawDescriptor>, u64) {
        let mut descs = Vec::new();
        let mut addr = DATA;
        for chunk in req.chunks(piece) {
            descs.push(desc(addr, chunk.len() as u32, 0));
            addr += chunk.len() as u64;
        }
        let out = addr.next_multiple_of(0x1000);
        let mut waddr = out;
        let mut left = writable;
        while left > 0 {
            let n = left.min(wpiece);
            descs.push(desc(waddr, n as u32, W));
            waddr += n as u64;
            left -= n;
        }
        (descs, out)
    }

    fn check_executed(mem: &GuestMemoryMmap, out: u64, count: u32, c: Completion) {
        let tf_len = TF_HEADER_SIZE + count as usize * CMD_SIZE;
        assert_eq!(c.used_len as usize, tf_len + STATUS_SIZE);
        match c.disposition {
            Disposition::Executed(o) => {
                assert_eq!(o.error, TfError::Ok);
                assert_eq!(o.executed, count);
            }
            other => panic!("not executed: {other:?}"),
        }
        let result = get(mem, out, tf_len);
        let (header, body) = TaskFileHeader::read_from_prefix(&result).expect("header");
        assert_eq!(header.error.get(), TfError::Ok as u32);
        assert_eq!(header.count.get(), count);
        for block in body.chunks(CMD_SIZE) {
            let cmd = Command::read_from_bytes(block).expect("command");
            assert_eq!(cmd.value.get(), u64::from(MAGIC));
        }
        assert_eq!(status_at(mem, out + tf_len as u64), vq_status::OK);
    }

    #[test]
    fn good_request_with_64_commands_executes() {
        let mem = memory();
        let mut card = card();
        let tf = task_file(64);
        let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
        put(&mem, DATA, &req);
        let out = 0x20_0000;
        let descs = [
            desc(DATA, req.len() as u32, 0),
            desc(out, (tf.len() + STATUS_SIZE) as u32, W),
        ];
        let c = run(&mem, &mut card, &descs);
        check_executed(&mem, out, 64, c);
        assert_eq!(card.request_count(), 1);
        assert_eq!(card.command_count(), 64);
    }

    #[test]
    fn readable_and_writable_parts_split_over_many_descriptors() {
        let mem = memory();
        let mut card = card();
        let tf = task_file(10);
        let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
        put(&mem, DATA, &req);
        // 7-byte pieces split the headers and every command; 5-byte writable pieces.
        let (descs, out) = split_layout(&req, 7, tf.len() + STATUS_SIZE, 5);
        assert!(descs.len() > 100);
        let c = run(&mem, &mut card, &descs);
        check_executed(&mem, out, 10, c);
    }

    #[test]
    fn largest_task_file_through_an_indirect_page_scatterlist() {
        let mem = memory();
        let mut card = card();
        let tf = task_file(MAX_COMMANDS);
        assert_eq!(tf.len(), MAX_TASK_FILE_SIZE);
        let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
        put(&mem, DATA, &req);
        let (descs, out) = split_layout(&req, 4096, tf.len() + STATUS_SIZE, 4096);
        // Write the descriptors as an indirect table with proper next links.
        let table = 0x60_0000;
        let n = descs.len();
        for (i, d) in descs.iter().enumerate() {
            let d = SplitDescriptor::from(*d);
            let flags = if i + 1 < n {
                d.flags() | VRING_DESC_F_NEXT as u16
            } else {
                d.flags()
            };
            let raw = RawDescriptor::from(SplitDescriptor::new(
                d.addr().0,
                d.len(),
                flags,
                (i + 1) as u16,
            ));
            mem.write_obj(raw, GuestAddress(table + 16 * i as u64))
                .expect("table");
        }
        let head = [desc(table, (16 * n) as u32, VRING_DESC_F_INDIRECT as u16)];
        let c = run(&mem, &mut card, &head);
        check_executed(&mem, out, MAX_COMMANDS, c);
    }

    #[test]
    fn bigger_writable_area_still_gets_result_then_status() {
        let mem = memory();
        let mut card = card();
        let tf = task_file(3);
        let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
        put(&mem, DATA, &req);
        let out = 0x20_0000;
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, 4096, W)];
        let c = run(&mem, &mut card, &descs);
        check_executed(&mem, out, 3, c);
    }

    #[test]
    fn task_file_errors_are_reported_in_the_header_with_status_ok() {
        let mem = memory();
        let mut card = card();
        let mut tf = task_file(4);
        tf[4..8].copy_from_slice(&5u32.to_le_bytes()); // count disagrees with the size
        let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
        put(&mem, DATA, &req);
        let out = 0x20_0000;
        let descs = [
            desc(DATA, req.len() as u32, 0),
            desc(out, (tf.len() + STATUS_SIZE) as u32, W),
        ];
        let c = run(&mem, &mut card, &descs);
        assert!(matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::BadCount));
        let header = TaskFileHeader::read_from_bytes(&get(&mem, out, TF_HEADER_SIZE)).expect("h");
        assert_eq!(header.error.get(), TfError::BadCount as u32);
        assert_eq!(status_at(&mem, out + tf.len() as u64), vq_status::OK);
    }

    /// Runs a chain that must be rejected with `status` written at the end of
    /// the `wlen`-byte writable area at `out`, without touching the card.
    fn expect_rejected(
        descs: &[RawDescriptor],
        mem: &GuestMemoryMmap,
        out: u64,
        wlen: u32,
    ) -> ChainError {
        let mut card = card();
        let c = run(mem, &mut card, descs);
        assert_eq!(card.request_count(), 0, "card must not run");
        assert_eq!(c.used_len, wlen);
        let Disposition::Rejected(e) = c.disposition else {
            panic!("not rejected: {c:?}");
        };
        assert_eq!(
            status_at(mem, out + u64::from(wlen) - STATUS_SIZE as u64),
            e.status()
        );
        e
    }

    fn good_req(mem: &GuestMemoryMmap) -> Vec<u8> {
        let req = request(req_type::EXEC_TASK_FILE, 0, &task_file(2));
        put(mem, DATA, &req);
        req
    }

    #[test]
    fn no_writable_part_is_dropped() {
        let mem = memory();
        let req = good_req(&mem);
        let mut card = card();
        let c = run(&mem, &mut card, &[desc(DATA, req.len() as u32, 0)]);
        assert_eq!(c, Completion::dropped(ChainError::NoStatusRoom(0)));
        assert_eq!(card.request_count(), 0);
    }

    #[test]
    fn writable_part_too_small_for_a_status_is_dropped() {
        let mem = memory();
        let req = good_req(&mem);
        let mut card = card();
        let descs = [desc(DATA, req.len() as u32, 0), desc(0x20_0000, 7, W)];
        let c = run(&mem, &mut card, &descs);
        assert_eq!(c, Completion::dropped(ChainError::NoStatusRoom(7)));
    }

    #[test]
    fn writable_part_outside_guest_memory_is_dropped() {
        let mem = memory();
        let req = good_req(&mem);
        let mut card = card();
        for (addr, len) in [(MEM_SIZE, 64u32), (MEM_SIZE - 8, 64), (u64::MAX - 4, 64)] {
            let descs = [desc(DATA, req.len() as u32, 0), desc(addr, len, W)];
            let c = run(&mem, &mut card, &descs);
            assert_eq!(c, Completion::dropped(ChainError::WritableOutOfBounds));
        }
        assert_eq!(card.request_count(), 0);
    }

    #[test]
    fn readable_part_outside_guest_memory_is_a_bad_request() {
        let mem = memory();
        let out = 0x20_0000;
        for (addr, len) in [(MEM_SIZE, 96u32), (MEM_SIZE - 32, 96), (u64::MAX - 8, 96)] {
            let descs = [desc(addr, len, 0), desc(out, 96, W)];
            let e = expect_rejected(&descs, &mem, out, 96);
            assert_eq!(e, ChainError::ReadableOutOfBounds);
        }
    }

    #[test]
    fn short_readable_part_is_a_bad_request() {
        let mem = memory();
        good_req(&mem);
        let out = 0x20_0000;
        for len in [0u32, 8, 16, 31] {
            let descs = [desc(DATA, len, 0), desc(out, 64, W)];
            let e = expect_rejected(&descs, &mem, out, 64);
            assert_eq!(e, ChainError::TooShort(u64::from(len)));
        }
        // No readable descriptor at all.
        let e = expect_rejected(&[desc(out, 64, W)], &mem, out, 64);
        assert_eq!(e, ChainError::TooShort(0));
    }

    #[test]
    fn absurd_readable_lengths_are_refused_without_reading() {
        let mem = memory();
        let out = 0x20_0000;
        // One byte over the limit, inside guest memory.
        let over = (MAX_READABLE + 1) as u32;
        let e = expect_rejected(&[desc(DATA, over, 0), desc(out, 64, W)], &mem, out, 64);
        assert_eq!(e, ChainError::TooLong(u64::from(over)));
        // Nearly 4 GiB, far beyond guest memory.
        let huge = u32::MAX - 64;
        let e = expect_rejected(&[desc(DATA, huge, 0), desc(out, 64, W)], &mem, out, 64);
        assert_eq!(e, ChainError::TooLong(u64::from(huge)));
    }

    #[test]
    fn readable_after_writable_is_a_bad_request() {
        let mem = memory();
        let req = good_req(&mem);
        let out = 0x20_0000;
        let descs = [
            desc(DATA, 16, 0),
            desc(out, 64, W),
            desc(DATA + 16, req.len() as u32 - 16, 0),
            desc(out + 64, 64, W),
        ];
        let e = expect_rejected(&descs, &mem, out, 128);
        assert_eq!(e, ChainError::Misordered);
    }

    #[test]
    fn unknown_request_type_or_flags_are_unsupported() {
        let mem = memory();
        let tf = task_file(2);
        let out = 0x20_0000;
        let wlen = (tf.len() + STATUS_SIZE) as u32;
        for (req_type, flags) in [
            (0u32, 0u32),
            (2, 0),
            (u32::MAX, 0),
            (req_type::EXEC_TASK_FILE, 1),
        ] {
            let req = request(req_type, flags, &tf);
            put(&mem, DATA, &req);
            let descs = [desc(DATA, req.len() as u32, 0), desc(out, wlen, W)];
            let e = expect_rejected(&descs, &mem, out, wlen);
            assert_eq!(e, ChainError::Unsupported { req_type, flags });
            assert_eq!(e.status(), vq_status::UNSUPPORTED);
        }
    }

    #[test]
    fn result_area_too_small_is_a_bad_request() {
        let mem = memory();
        let req = good_req(&mem);
        let tf_len = (req.len() - REQUEST_HEADER_SIZE) as u32;
        let out = 0x20_0000;
        let wlen = tf_len + STATUS_SIZE as u32 - 1;
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, wlen, W)];
        let e = expect_rejected(&descs, &mem, out, wlen);
        assert_eq!(
            e,
            ChainError::ResultTooSmall {
                got: u64::from(wlen),
                need: u64::from(wlen) + 1
            }
        );
    }

    #[test]
    fn nested_indirect_table_ends_the_chain_and_is_refused() {
        let mem = memory();
        good_req(&mem);
        let table = 0x60_0000;
        // An indirect table whose only entry is itself indirect: the chain
        // walk stops, so no writable part is seen.
        let inner = RawDescriptor::from(SplitDescriptor::new(
            table,
            16,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ));
        mem.write_obj(inner, GuestAddress(table)).expect("table");
        let mut card = card();
        let c = run(
            &mem,
            &mut card,
            &[desc(table, 16, VRING_DESC_F_INDIRECT as u16)],
        );
        assert_eq!(c.used_len, 0);
        assert_eq!(card.request_count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary chains never panic, never report more than the chain's
        /// writable bytes, and execute only well-formed requests.
        #[test]
        fn arbitrary_chains_never_panic(
            parts in proptest::collection::vec(
                (prop_oneof![
                    Just(DATA), Just(0x20_0000u64), Just(MEM_SIZE - 16), Just(MEM_SIZE),
                    any::<u64>(), DATA..MEM_SIZE
                ],
                prop_oneof![0u32..64, 0u32..0x3_0000, any::<u32>()],
                prop_oneof![Just(0u16), Just(W), Just(VRING_DESC_F_INDIRECT as u16), any::<u16>()]),
                0..12),
            req_type in prop_oneof![Just(req_type::EXEC_TASK_FILE), any::<u32>()],
            count in 0u32..8,
        ) {
            let mem = memory();
            put(&mem, DATA, &request(req_type, 0, &task_file(count)));
            let descs: Vec<_> = parts
                .iter()
                .map(|&(addr, len, flags)| desc(addr, len, flags))
                .collect();
            // An upper bound: indirect tables can only be read from guest
            // memory, which holds no writable descriptors here.
            let writable: u64 = parts
                .iter()
                .filter(|p| p.2 & W != 0)
                .map(|p| u64::from(p.1))
                .sum();
            let mut card = card();
            if descs.is_empty() {
                return Ok(());
            }
            let c = run(&mem, &mut card, &descs);
            prop_assert!(u64::from(c.used_len) <= writable);
            if !matches!(c.disposition, Disposition::Executed(_)) {
                prop_assert_eq!(card.request_count(), 0);
            }
        }
    }
}
