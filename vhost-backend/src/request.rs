//! Command-queue requests: from a descriptor chain to an executed task file
//! or an ATTACH.
//!
//! One descriptor chain is one request. Its device-readable part holds a
//! [`VqRequest`] header; for EXEC_TASK_FILE the task file and then
//! `sg_count` [`SgEntry`]s follow (the DMA buffers of its DMA commands). Its
//! device-writable part receives the executed task file followed by a
//! [`VqStatus`] (ATTACH: the status only). Either part may be split over any
//! number of descriptors, direct or indirect.
//!
//! The guest is untrusted. Every guest address goes through virtio-queue's
//! bounds-checked [`Reader`] / [`Writer`]; nothing here panics, loops or
//! allocates more than [`MAX_READABLE`] bytes whatever the chain says. The rules:
//!
//! * fewer than [`STATUS_SIZE`] writable bytes, or writable buffers outside
//!   guest memory: nothing can be reported, the chain is completed with a used
//!   length of 0 ([`Disposition::Dropped`]);
//! * any other malformed chain (including a malformed scatter-gather table)
//!   gets `BAD_REQUEST`, an unknown request type or non-zero flags get
//!   `UNSUPPORTED`; in both cases the status goes in the LAST
//!   [`STATUS_SIZE`] bytes of the writable area and the used length is the
//!   whole writable area;
//! * a good EXEC_TASK_FILE is executed by the [`Device`]; the executed task
//!   file goes at the start of the writable area, the `OK` status right after
//!   it, and the used length is task-file length + [`STATUS_SIZE`];
//! * a good ATTACH asks the [`Device`] to map card RAM, a good FLUSH_BUFFERS
//!   to return the held stream buffers; the status (`OK` or `DEVICE_ERROR`)
//!   goes at the start of the writable area, used length [`STATUS_SIZE`];
//! * every status carries the device clock at completion.
//!
//! Stream-queue chains ([`process_stream_chain`]) are capture buffers: a
//! good one is held ([`HeldBuffer`]) until the capture engine fills it; a
//! malformed one is answered at once with a [`StreamResult`] whose `status`
//! says why (at the START of the writable part, which holds exactly that
//! result), or used length 0 when fewer than 32 writable bytes exist.

use std::io::{Read, Write};
use std::mem::size_of;
use std::ops::Deref;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use xxcapture_abi::{
    req_type, vq_status, SgEntry, StreamResult, VqRequest, VqStatus, MAX_SG_ENTRIES,
    MAX_TASK_FILE_SIZE, TF_HEADER_SIZE,
};
use xxcapture_model::Outcome;
use zerocopy::{FromBytes, IntoBytes};

use crate::stream::{HeldBuffer, RESULT_SIZE};

/// Size of the request header at the start of the readable part.
pub const REQUEST_HEADER_SIZE: usize = size_of::<VqRequest>();
/// Size of the status at the end of the writable part.
pub const STATUS_SIZE: usize = size_of::<VqStatus>();
/// Size of one scatter-gather entry.
pub const SG_ENTRY_SIZE: usize = size_of::<SgEntry>();
/// Smallest readable part: the request header (an ATTACH).
pub const MIN_READABLE: usize = REQUEST_HEADER_SIZE;
/// Largest readable part the device accepts: header, the largest task file
/// and the most scatter-gather entries.
pub const MAX_READABLE: usize =
    REQUEST_HEADER_SIZE + MAX_TASK_FILE_SIZE + MAX_SG_ENTRIES as usize * SG_ENTRY_SIZE;

/// What a request asks of the card.
pub trait Device {
    /// Executes `task_file` in place; its DMA commands use the entries of
    /// `sg` and the guest memory `mem`.
    fn execute(&mut self, task_file: &mut [u8], sg: &[SgEntry], mem: &GuestMemoryMmap) -> Outcome;

    /// Maps card RAM and the status block into shared-memory region 0 if
    /// not mapped since the last reset. `Err` describes why mapping failed.
    fn attach(&mut self) -> Result<(), String>;

    /// Returns every held stream buffer with CANCELLED, and waits for the
    /// one being filled. `Err` describes why that failed.
    fn flush_buffers(&mut self) -> Result<(), String>;

    /// DEVICE_TIME_NS now: stamped into every status.
    fn device_time_ns(&self) -> u64;
}

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
    #[error("{0} device-readable bytes are too short for the request")]
    TooShort(u64),
    #[error("a device-readable buffer lies outside guest memory")]
    ReadableOutOfBounds,
    #[error("reading the request from guest memory failed")]
    ReadFailed,
    #[error("unsupported request type {req_type} with flags {flags:#x}")]
    Unsupported { req_type: u32, flags: u32 },
    #[error("the request header's reserved field is {0:#x}")]
    Reserved(u32),
    #[error("{0} scatter-gather entries exceed the maximum ({MAX_SG_ENTRIES})")]
    TooManyEntries(u32),
    #[error("scatter-gather entry {0} has length 0 or a non-zero reserved field")]
    BadEntry(u32),
    #[error("ATTACH with {readable} readable bytes and {sg_count} scatter-gather entries")]
    BadAttach { readable: u64, sg_count: u32 },
    #[error("FLUSH_BUFFERS with {readable} readable bytes and {sg_count} scatter-gather entries")]
    BadFlush { readable: u64, sg_count: u32 },
    #[error("stream buffer with {0} scatter-gather entries (1..={MAX_SG_ENTRIES})")]
    BadEntryCount(u32),
    #[error("stream buffer of {readable} readable bytes for {sg_count} scatter-gather entries")]
    BadStreamLength { readable: u64, sg_count: u32 },
    #[error("scatter-gather entry {0} lies outside guest memory")]
    EntryOutOfBounds(u32),
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The task file ran (task-file errors, if any, are in `Outcome`).
    Executed(Outcome),
    /// An ATTACH was answered: `Ok` mapped (or already mapped), `Err` with
    /// why mapping failed (answered `DEVICE_ERROR`).
    Attached(Result<(), String>),
    /// A FLUSH_BUFFERS was answered (`Err`: `DEVICE_ERROR`).
    Flushed(Result<(), String>),
    /// The chain was refused with the status of `ChainError::status`.
    Rejected(ChainError),
    /// Nothing could be reported; completed with length 0.
    Dropped(ChainError),
}

/// The result of processing one chain: what to pass to `add_used`.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// A parsed request.
enum Request {
    /// Request header + task file, and the scatter-gather table.
    Exec {
        buf: Vec<u8>,
        tf_end: usize,
        sg: Vec<SgEntry>,
    },
    Attach,
    Flush,
}

/// Processes one command-queue chain against `device`.
pub fn process_chain<M>(device: &mut dyn Device, chain: &DescriptorChain<M>) -> Completion
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
    let request = read_request(mem, chain, &layout).and_then(|req| {
        let result_len = match &req {
            Request::Exec { tf_end, .. } => tf_end - REQUEST_HEADER_SIZE,
            Request::Attach | Request::Flush => 0,
        };
        let need = (result_len + STATUS_SIZE) as u64;
        let got = writer.available_bytes() as u64;
        if got < need {
            Err(ChainError::ResultTooSmall { got, need })
        } else {
            Ok(req)
        }
    });
    match request {
        Ok(Request::Exec {
            mut buf,
            tf_end,
            sg,
        }) => {
            let tf = &mut buf[REQUEST_HEADER_SIZE..tf_end];
            let outcome = device.execute(tf, &sg, mem);
            let done = status(vq_status::OK, device.device_time_ns());
            let written = writer
                .write_all(tf)
                .and_then(|()| writer.write_all(done.as_bytes()));
            match written {
                Ok(()) => Completion {
                    used_len: u32::try_from(tf.len() + STATUS_SIZE).unwrap_or(u32::MAX),
                    disposition: Disposition::Executed(outcome),
                },
                Err(_) => Completion::dropped(ChainError::WriteFailed),
            }
        }
        Ok(Request::Attach) => {
            let result = device.attach();
            answer(device, &mut writer, result, Disposition::Attached)
        }
        Ok(Request::Flush) => {
            let result = device.flush_buffers();
            answer(device, &mut writer, result, Disposition::Flushed)
        }
        Err(error) => {
            let now = device.device_time_ns();
            reject(writer, error, now)
        }
    }
}

/// Writes the status of an ATTACH or FLUSH_BUFFERS at the start of the
/// writable area.
fn answer(
    device: &mut dyn Device,
    writer: &mut Writer<'_>,
    result: Result<(), String>,
    disposition: fn(Result<(), String>) -> Disposition,
) -> Completion {
    let code = if result.is_ok() {
        vq_status::OK
    } else {
        vq_status::DEVICE_ERROR
    };
    match writer.write_all(status(code, device.device_time_ns()).as_bytes()) {
        Ok(()) => Completion {
            used_len: STATUS_SIZE as u32,
            disposition: disposition(result),
        },
        Err(_) => Completion::dropped(ChainError::WriteFailed),
    }
}

fn status(code: u32, device_time_ns: u64) -> VqStatus {
    VqStatus {
        status: code.into(),
        reserved: 0.into(),
        device_time_ns: device_time_ns.into(),
    }
}

/// Reads and checks the readable part.
fn read_request<M>(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
    layout: &Layout,
) -> Result<Request, ChainError>
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
    let known = matches!(
        req,
        req_type::EXEC_TASK_FILE | req_type::ATTACH | req_type::FLUSH_BUFFERS
    );
    if !known || flags != 0 {
        return Err(ChainError::Unsupported {
            req_type: req,
            flags,
        });
    }
    if header.reserved.get() != 0 {
        return Err(ChainError::Reserved(header.reserved.get()));
    }
    let sg_count = header.sg_count.get();
    if req == req_type::ATTACH {
        if buf.len() != REQUEST_HEADER_SIZE || sg_count != 0 {
            return Err(ChainError::BadAttach {
                readable: layout.readable,
                sg_count,
            });
        }
        return Ok(Request::Attach);
    }
    if req == req_type::FLUSH_BUFFERS {
        if buf.len() != REQUEST_HEADER_SIZE || sg_count != 0 {
            return Err(ChainError::BadFlush {
                readable: layout.readable,
                sg_count,
            });
        }
        return Ok(Request::Flush);
    }
    if sg_count > MAX_SG_ENTRIES {
        return Err(ChainError::TooManyEntries(sg_count));
    }
    // sg_count <= 2^16: the product is small.
    let sg_bytes = sg_count as usize * SG_ENTRY_SIZE;
    let tf_end = buf
        .len()
        .checked_sub(sg_bytes)
        .filter(|&end| end >= REQUEST_HEADER_SIZE + TF_HEADER_SIZE)
        .ok_or(ChainError::TooShort(layout.readable))?;
    let entries =
        <[SgEntry]>::ref_from_bytes(&buf[tf_end..]).map_err(|_| ChainError::ReadFailed)?;
    if let Some(bad) = entries
        .iter()
        .position(|e| e.len.get() == 0 || e.reserved.get() != 0)
    {
        return Err(ChainError::BadEntry(u32::try_from(bad).unwrap_or(u32::MAX)));
    }
    let sg = entries.to_vec();
    buf.truncate(tf_end);
    Ok(Request::Exec { buf, tf_end, sg })
}

/// Writes the error status into the last bytes of the writable area.
fn reject(mut writer: Writer<'_>, error: ChainError, device_time_ns: u64) -> Completion {
    let total = writer.available_bytes();
    let Some(offset) = total.checked_sub(STATUS_SIZE) else {
        return Completion::dropped(error);
    };
    let written = writer
        .split_at(offset)
        .map_err(|_| ())
        .and_then(|mut tail| {
            tail.write_all(status(error.status(), device_time_ns).as_bytes())
                .map_err(|_| ())
        });
    match written {
        Ok(()) => Completion {
            used_len: u32::try_from(total).unwrap_or(u32::MAX),
            disposition: Disposition::Rejected(error),
        },
        Err(()) => Completion::dropped(error),
    }
}

/// What became of one stream-queue chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamChain {
    /// A good capture buffer, to be held until a frame fills it.
    Hold(HeldBuffer),
    /// Refused: complete it at once with this.
    Done(Completion),
}

/// Parses one stream-queue chain (a STREAM_BUFFER request) against the
/// guest memory `mem`: a held buffer, or the answer to a malformed one.
pub fn process_stream_chain<M>(chain: &DescriptorChain<M>, device_time_ns: u64) -> StreamChain
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let layout = Layout::scan(chain.clone());
    if layout.writable < RESULT_SIZE as u64 {
        return StreamChain::Done(Completion::dropped(ChainError::NoStatusRoom(
            layout.writable,
        )));
    }
    let mem = chain.memory();
    let Ok(mut writer) = Writer::new(mem, chain.clone()) else {
        return StreamChain::Done(Completion::dropped(ChainError::WritableOutOfBounds));
    };
    match read_stream_request(mem, chain, &layout) {
        Ok((tag, sg)) => {
            let result = chain
                .clone()
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr().0, d.len()))
                .collect();
            let capacity = sg.iter().map(|e| u64::from(e.len.get())).sum();
            StreamChain::Hold(HeldBuffer {
                head: chain.head_index(),
                tag,
                sg,
                capacity,
                result,
            })
        }
        Err(error) => {
            let answer = StreamResult {
                status: error.status().into(),
                device_time_ns: device_time_ns.into(),
                ..StreamResult::default()
            };
            let completion = match writer.write_all(answer.as_bytes()) {
                Ok(()) => Completion {
                    used_len: RESULT_SIZE as u32,
                    disposition: Disposition::Rejected(error),
                },
                Err(_) => Completion::dropped(ChainError::WriteFailed),
            };
            StreamChain::Done(completion)
        }
    }
}

/// Reads and checks a stream request's readable part: the header, then
/// exactly `sg_count` entries, each non-empty, reserved 0, inside guest
/// memory. Returns the tag and the entries.
fn read_stream_request<M>(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
    layout: &Layout,
) -> Result<(u64, Vec<SgEntry>), ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if layout.misordered {
        return Err(ChainError::Misordered);
    }
    let most = (REQUEST_HEADER_SIZE + MAX_SG_ENTRIES as usize * SG_ENTRY_SIZE) as u64;
    if layout.readable > most {
        return Err(ChainError::TooLong(layout.readable));
    }
    if layout.readable < MIN_READABLE as u64 {
        return Err(ChainError::TooShort(layout.readable));
    }
    let mut reader =
        Reader::new(mem, chain.clone()).map_err(|_| ChainError::ReadableOutOfBounds)?;
    // Bounded by `most` above.
    let mut buf = vec![0u8; reader.available_bytes()];
    reader
        .read_exact(&mut buf)
        .map_err(|_| ChainError::ReadFailed)?;
    let (header, rest) = VqRequest::read_from_prefix(&buf).map_err(|_| ChainError::ReadFailed)?;
    let (req, flags) = (header.req_type.get(), header.flags.get());
    if req != req_type::STREAM_BUFFER || flags != 0 {
        return Err(ChainError::Unsupported {
            req_type: req,
            flags,
        });
    }
    if header.reserved.get() != 0 {
        return Err(ChainError::Reserved(header.reserved.get()));
    }
    let sg_count = header.sg_count.get();
    if sg_count == 0 || sg_count > MAX_SG_ENTRIES {
        return Err(ChainError::BadEntryCount(sg_count));
    }
    // sg_count <= 2^16: the product is small.
    if rest.len() != sg_count as usize * SG_ENTRY_SIZE {
        return Err(ChainError::BadStreamLength {
            readable: layout.readable,
            sg_count,
        });
    }
    let entries = <[SgEntry]>::ref_from_bytes(rest).map_err(|_| ChainError::ReadFailed)?;
    for (index, e) in entries.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if e.len.get() == 0 || e.reserved.get() != 0 {
            return Err(ChainError::BadEntry(index));
        }
        if !mem.check_range(GuestAddress(e.addr.get()), e.len.get() as usize) {
            return Err(ChainError::EntryOutOfBounds(index));
        }
    }
    Ok((header.tag.get(), entries.to_vec()))
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
        regs, Command, Op, StreamResult, TaskFileHeader, TaskFileResult, TfError, CMD_SIZE, MAGIC,
        MAX_COMMANDS,
    };
    use xxcapture_model::{Card, CardConfig, InterruptController, CAPTURE_CARD_CAPS};

    use crate::card_ram::{CardRam, GuestDma};

    const MEM_SIZE: u64 = 8 << 20;
    const QUEUE_SIZE: u16 = 256;
    /// Data buffers live above the queue structures.
    const DATA: u64 = 0x10_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
    }

    /// A card with DMA over a small card RAM, and a scripted ATTACH.
    struct TestDevice {
        card: Card,
        irq: InterruptController,
        ram: CardRam,
        attaches: u32,
        attach_fails: bool,
        flushes: u32,
    }

    impl TestDevice {
        fn request_count(&self) -> u64 {
            self.card.request_count()
        }

        fn command_count(&self) -> u64 {
            self.card.command_count()
        }
    }

    impl Device for TestDevice {
        fn execute(&mut self, tf: &mut [u8], sg: &[SgEntry], mem: &GuestMemoryMmap) -> Outcome {
            let mut port = GuestDma {
                ram: &self.ram,
                mem,
            };
            self.card.execute_dma(tf, sg, &mut port, &mut self.irq, 42)
        }

        fn flush_buffers(&mut self) -> Result<(), String> {
            self.flushes += 1;
            Ok(())
        }

        fn device_time_ns(&self) -> u64 {
            4242
        }

        fn attach(&mut self) -> Result<(), String> {
            self.attaches += 1;
            if self.attach_fails {
                Err("refused".into())
            } else {
                Ok(())
            }
        }
    }

    const CARD_RAM: u64 = 4 << 20;

    fn card() -> TestDevice {
        let config = CardConfig {
            card_ram_size: CARD_RAM,
            capabilities: CAPTURE_CARD_CAPS,
            ..CardConfig::default()
        };
        let card = Card::new(config).expect("card");
        TestDevice {
            irq: card.interrupt_controller(),
            card,
            ram: CardRam::new(CARD_RAM).expect("card RAM"),
            attaches: 0,
            attach_fails: false,
            flushes: 0,
        }
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
            sg_count: 0.into(),
            reserved: 0.into(),
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
    fn run(mem: &GuestMemoryMmap, card: &mut TestDevice, descs: &[RawDescriptor]) -> Completion {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let chain = vq.build_desc_chain(descs).expect("chain");
        process_chain(card, &chain)
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
            (3, 0),
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

    // ---- DMA and scatter-gather tables -------------------------------

    fn sg(addr: u64, len: u32) -> SgEntry {
        SgEntry::new(addr, len)
    }

    fn dma_cmd(dir: u16, first: u64, offset: u64, length: u64) -> Command {
        Command {
            op: (Op::DmaTransferBlock as u16).into(),
            reg: dir.into(),
            value: first.into(),
            mask: offset.into(),
            length: length.into(),
            ..Command::default()
        }
    }

    /// Request header (with `sg_count`), task file of `cmds`, then `table`.
    fn dma_request(cmds: &[Command], table: &[SgEntry], sg_count: u32) -> (Vec<u8>, usize) {
        let header = VqRequest {
            req_type: req_type::EXEC_TASK_FILE.into(),
            sg_count: sg_count.into(),
            ..VqRequest::default()
        };
        let tf_header = TaskFileHeader {
            count: (cmds.len() as u32).into(),
            ..TaskFileHeader::default()
        };
        let mut buf = header.as_bytes().to_vec();
        buf.extend_from_slice(tf_header.as_bytes());
        for c in cmds {
            buf.extend_from_slice(c.as_bytes());
        }
        let tf_len = buf.len() - REQUEST_HEADER_SIZE;
        for e in table {
            buf.extend_from_slice(e.as_bytes());
        }
        (buf, tf_len)
    }

    /// Sends `req` in 100-byte readable pieces with a writable area of
    /// `wlen` at OUT; returns the completion.
    fn send(mem: &GuestMemoryMmap, dev: &mut TestDevice, req: &[u8], wlen: usize) -> Completion {
        put(mem, DATA, req);
        let (descs, out) = split_layout(req, 100, wlen, 64);
        assert_eq!(out, out_at(req.len()));
        run(mem, dev, &descs)
    }

    fn out_at(req_len: usize) -> u64 {
        (DATA + req_len as u64).next_multiple_of(0x1000)
    }

    fn tf_result(mem: &GuestMemoryMmap, out: u64, len: usize) -> TaskFileResult {
        TaskFileResult::parse(&get(mem, out, len)).expect("result")
    }

    /// Guest buffers for DMA live at 0x40_0000..: page-split, unaligned.
    const BUF: u64 = 0x40_0000;

    #[test]
    fn dma_both_directions_with_entries_split_across_pages() {
        let mem = memory();
        let mut dev = card();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
        // The source buffer: 3 pieces on different pages, unaligned.
        let pieces = [
            (BUF + 0xf00, 0x100u32),
            (BUF + 0x3000, 0x1000),
            (BUF + 0x5123, 0),
        ];
        let rest = 10_000 - 0x1100;
        let pieces = [pieces[0], pieces[1], (pieces[2].0, rest as u32)];
        let mut at = 0usize;
        for (addr, len) in pieces {
            put(&mem, addr, &data[at..at + len as usize]);
            at += len as usize;
        }
        let mut table: Vec<SgEntry> = pieces.iter().map(|&(a, l)| sg(a, l)).collect();
        // The destination: 2 pieces elsewhere.
        table.push(sg(BUF + 0x1_0ffc, 4));
        table.push(sg(BUF + 0x2_0000, 9_996));
        let cmds = [
            dma_cmd(0, 0, 0x2_0000, 10_000),
            dma_cmd(1, 3, 0x2_0000, 10_000),
        ];
        let (req, tf_len) = dma_request(&cmds, &table, table.len() as u32);
        let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
        assert!(
            matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::Ok),
            "{c:?}"
        );
        let out = out_at(req.len());
        let res = tf_result(&mem, out, tf_len);
        assert_eq!(res.error, TfError::Ok);
        assert_eq!(res.commands[1].length.get(), 10_000);
        assert_eq!(status_at(&mem, out + tf_len as u64), vq_status::OK);
        assert_eq!(dev.ram.read(0x2_0000, 10_000).expect("card RAM"), data);
        let mut back = get(&mem, BUF + 0x1_0ffc, 4);
        back.extend_from_slice(&get(&mem, BUF + 0x2_0000, 9_996));
        assert_eq!(back, data);
        assert_eq!(dev.card.registers().peek(regs::DMA_TRANSFERRED), 10_000);
    }

    #[test]
    fn dma_entry_outside_guest_memory_faults_and_writes_nothing() {
        let mem = memory();
        let mut dev = card();
        dev.ram.write(0, &[0x5a; 0x2000]).expect("fill card RAM");
        put(&mem, BUF, &[0x11; 0x1000]);
        let sentinel = vec![0xeeu8; 0x1000];
        put(&mem, BUF + 0x1000, &sentinel);
        for bad in [
            sg(MEM_SIZE - 0x800, 0x1000),
            sg(u64::MAX - 0x7ff, 0x1000),
            sg(MEM_SIZE, 0x1000),
        ] {
            // FROM_CARD: a good entry then one past guest memory.
            let table = [sg(BUF + 0x1000, 0x1000), bad];
            let cmds = [dma_cmd(1, 0, 0, 0x2000)];
            let (req, tf_len) = dma_request(&cmds, &table, 2);
            let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
            assert!(
                matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::DmaFault)
            );
            let res = tf_result(&mem, out_at(req.len()), tf_len);
            assert_eq!((res.error, res.index), (TfError::DmaFault, 0));
            assert_eq!(get(&mem, BUF + 0x1000, 0x1000), sentinel);
            assert_eq!(get(&mem, MEM_SIZE - 0x800, 0x800), vec![0u8; 0x800]);
            // TO_CARD: card RAM stays as it was.
            let cmds = [dma_cmd(0, 0, 0, 0x2000)];
            let (req, tf_len) = dma_request(&cmds, &table, 2);
            send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
            assert_eq!(
                tf_result(&mem, out_at(req.len()), tf_len).error,
                TfError::DmaFault
            );
            assert_eq!(dev.ram.read(0, 0x2000).expect("read"), vec![0x5a; 0x2000]);
        }
    }

    #[test]
    fn malformed_sg_tables_are_bad_requests() {
        let mem = memory();
        let cmds = [dma_cmd(0, 0, 0, 0x100)];
        let good = [sg(BUF, 0x100)];
        let mut zero_len = good;
        zero_len[0].len = 0.into();
        let mut reserved = good;
        reserved[0].reserved = 1.into();
        let cases: Vec<(Vec<u8>, ChainError)> = vec![
            (dma_request(&cmds, &zero_len, 1).0, ChainError::BadEntry(0)),
            (dma_request(&cmds, &reserved, 1).0, ChainError::BadEntry(0)),
            (
                dma_request(&cmds, &good, MAX_SG_ENTRIES + 1).0,
                ChainError::TooManyEntries(MAX_SG_ENTRIES + 1),
            ),
        ];
        for (req, expected) in cases {
            put(&mem, DATA, &req);
            let out = 0x30_0000;
            let descs = [desc(DATA, req.len() as u32, 0), desc(out, 64, W)];
            assert_eq!(expect_rejected(&descs, &mem, out, 64), expected);
        }
        // sg_count claims more entries than the readable part holds: what is
        // left for the task file is too short.
        let (req, _) = dma_request(&cmds, &good, 5);
        put(&mem, DATA, &req);
        let descs = [desc(DATA, req.len() as u32, 0), desc(0x30_0000, 64, W)];
        assert_eq!(
            expect_rejected(&descs, &mem, 0x30_0000, 64),
            ChainError::TooShort(req.len() as u64)
        );
        // sg_count too small for the table: the extra bytes count as task
        // file, which the card answers BAD_COUNT.
        let (req, tf_len) = dma_request(&cmds, &good, 0);
        let mut dev = card();
        let c = send(&mem, &mut dev, &req, tf_len + 16 + STATUS_SIZE);
        assert!(matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::BadCount));
        // A reserved request-header field.
        let (mut req, _) = dma_request(&cmds, &good, 1);
        req[20] = 1;
        put(&mem, DATA, &req);
        let descs = [desc(DATA, req.len() as u32, 0), desc(0x30_0000, 64, W)];
        assert_eq!(
            expect_rejected(&descs, &mem, 0x30_0000, 64),
            ChainError::Reserved(1)
        );
    }

    #[test]
    fn sg_entries_that_do_not_sum_to_the_length_are_dma_faults() {
        let mem = memory();
        let mut dev = card();
        let table = [sg(BUF, 0x100), sg(BUF + 0x1000, 0x100)];
        for cmd in [
            dma_cmd(0, 0, 0, 0x180), // overshoots inside entry 1
            dma_cmd(0, 1, 0, 0x200), // runs past sg_count
            dma_cmd(0, 2, 0, 0x100), // first entry past the table
        ] {
            let (req, tf_len) = dma_request(&[cmd], &table, 2);
            send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
            let res = tf_result(&mem, out_at(req.len()), tf_len);
            assert_eq!((res.error, res.index), (TfError::DmaFault, 0), "{cmd:?}");
        }
    }

    // ---- ATTACH ----------------------------------------------------------

    fn attach_request(sg_count: u32, extra: usize) -> Vec<u8> {
        let header = VqRequest {
            req_type: req_type::ATTACH.into(),
            sg_count: sg_count.into(),
            ..VqRequest::default()
        };
        let mut buf = header.as_bytes().to_vec();
        buf.resize(buf.len() + extra, 0);
        buf
    }

    #[test]
    fn attach_answers_ok_or_device_error() {
        let mem = memory();
        let mut dev = card();
        let req = attach_request(0, 0);
        put(&mem, DATA, &req);
        let out = 0x30_0000;
        let descs = [desc(DATA, 24, 0), desc(out, 16, W)];
        let c = run(&mem, &mut dev, &descs);
        assert_eq!(c.used_len, 16);
        assert_eq!(c.disposition, Disposition::Attached(Ok(())));
        assert_eq!(status_at(&mem, out), vq_status::OK);
        dev.attach_fails = true;
        let c = run(&mem, &mut dev, &descs);
        assert_eq!(c.disposition, Disposition::Attached(Err("refused".into())));
        assert_eq!(status_at(&mem, out), vq_status::DEVICE_ERROR);
        assert_eq!(dev.attaches, 2);
        assert_eq!(dev.request_count(), 0, "ATTACH runs no task file");
    }

    #[test]
    fn malformed_attach_is_a_bad_request() {
        let mem = memory();
        let out = 0x30_0000;
        for (req, flags) in [(attach_request(1, 0), 0u32), (attach_request(0, 16), 0)] {
            put(&mem, DATA, &req);
            let descs = [desc(DATA, req.len() as u32, 0), desc(out, 16, W)];
            let e = expect_rejected(&descs, &mem, out, 16);
            assert!(matches!(e, ChainError::BadAttach { .. }), "{e:?} {flags}");
        }
        let mut req = attach_request(0, 0);
        req[4] = 1; // flags
        put(&mem, DATA, &req);
        let descs = [desc(DATA, 24, 0), desc(out, 16, W)];
        let e = expect_rejected(&descs, &mem, out, 16);
        assert_eq!(e.status(), vq_status::UNSUPPORTED);
    }

    #[test]
    fn statuses_carry_the_device_clock() {
        let mem = memory();
        let req = good_req(&mem);
        let tf_len = req.len() - REQUEST_HEADER_SIZE;
        let out = 0x20_0000;
        let descs = [
            desc(DATA, req.len() as u32, 0),
            desc(out, (tf_len + STATUS_SIZE) as u32, W),
        ];
        let mut dev = card();
        run(&mem, &mut dev, &descs);
        let raw = get(&mem, out + tf_len as u64, STATUS_SIZE);
        let st = VqStatus::read_from_bytes(&raw).expect("status");
        assert_eq!(
            (st.status.get(), st.device_time_ns.get()),
            (vq_status::OK, 4242)
        );
        // Rejections too.
        let descs = [desc(DATA, 8, 0), desc(out, 64, W)];
        run(&mem, &mut dev, &descs);
        let raw = get(&mem, out + 48, STATUS_SIZE);
        let st = VqStatus::read_from_bytes(&raw).expect("status");
        assert_eq!(
            (st.status.get(), st.device_time_ns.get()),
            (vq_status::BAD_REQUEST, 4242)
        );
    }

    // ---- FLUSH_BUFFERS and STREAM_BUFFER ------------------------------

    fn header(req: u32, sg_count: u32) -> VqRequest {
        VqRequest {
            req_type: req.into(),
            sg_count: sg_count.into(),
            tag: 77.into(),
            ..VqRequest::default()
        }
    }

    #[test]
    fn flush_buffers_answers_after_the_device_flushed() {
        let mem = memory();
        let mut dev = card();
        put(&mem, DATA, header(req_type::FLUSH_BUFFERS, 0).as_bytes());
        let out = 0x30_0000;
        let c = run(&mem, &mut dev, &[desc(DATA, 24, 0), desc(out, 16, W)]);
        assert_eq!(c.used_len, 16);
        assert_eq!(c.disposition, Disposition::Flushed(Ok(())));
        assert_eq!(status_at(&mem, out), vq_status::OK);
        assert_eq!(dev.flushes, 1);
        // A payload, or entries: BAD_REQUEST, and no flush.
        let mut long = header(req_type::FLUSH_BUFFERS, 0).as_bytes().to_vec();
        long.extend_from_slice(&[0; 16]);
        put(&mem, DATA, &long);
        let e = expect_rejected(&[desc(DATA, 40, 0), desc(out, 16, W)], &mem, out, 16);
        assert!(matches!(e, ChainError::BadFlush { .. }));
        put(&mem, DATA, header(req_type::FLUSH_BUFFERS, 1).as_bytes());
        let e = expect_rejected(&[desc(DATA, 24, 0), desc(out, 16, W)], &mem, out, 16);
        assert!(matches!(e, ChainError::BadFlush { .. }));
        // STREAM_BUFFER belongs on the stream queue.
        put(&mem, DATA, header(req_type::STREAM_BUFFER, 0).as_bytes());
        let e = expect_rejected(&[desc(DATA, 24, 0), desc(out, 16, W)], &mem, out, 16);
        assert_eq!(e.status(), vq_status::UNSUPPORTED);
        assert_eq!(dev.flushes, 1);
    }

    fn stream_req(req: u32, flags: u32, sg_count: u32, entries: &[SgEntry]) -> Vec<u8> {
        let mut h = header(req, sg_count);
        h.flags = flags.into();
        let mut buf = h.as_bytes().to_vec();
        for e in entries {
            buf.extend_from_slice(e.as_bytes());
        }
        buf
    }

    fn run_stream(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> StreamChain {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let chain = vq.build_desc_chain(descs).expect("chain");
        process_stream_chain(&chain, 999)
    }

    #[test]
    fn good_stream_buffers_are_held_with_their_entries_and_result_area() {
        let mem = memory();
        let entries = [sg(BUF, 0x1000), sg(BUF + 0x3000, 0x800)];
        let req = stream_req(req_type::STREAM_BUFFER, 0, 2, &entries);
        put(&mem, DATA, &req);
        let out = 0x30_0000;
        // Readable split in two, result split in two.
        let descs = [
            desc(DATA, 10, 0),
            desc(DATA + 10, req.len() as u32 - 10, 0),
            desc(out, 20, W),
            desc(out + 0x100, 12, W),
        ];
        let StreamChain::Hold(held) = run_stream(&mem, &descs) else {
            panic!("not held");
        };
        assert_eq!(held.sg, entries.to_vec());
        assert_eq!((held.tag, held.capacity), (77, 0x1800));
        assert_eq!(held.result, vec![(out, 20), (out + 0x100, 12)]);
    }

    #[test]
    fn malformed_stream_buffers_are_answered_at_once() {
        let mem = memory();
        let good = [sg(BUF, 0x1000)];
        let mut zero = good;
        zero[0].len = 0.into();
        let mut reserved = good;
        reserved[0].reserved = 1.into();
        let mut hdr_reserved = stream_req(req_type::STREAM_BUFFER, 0, 1, &good);
        hdr_reserved[20] = 1;
        let cases: Vec<(Vec<u8>, ChainError)> = vec![
            (
                stream_req(req_type::EXEC_TASK_FILE, 0, 1, &good),
                ChainError::Unsupported {
                    req_type: 1,
                    flags: 0,
                },
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 2, 1, &good),
                ChainError::Unsupported {
                    req_type: 3,
                    flags: 2,
                },
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 0, &[]),
                ChainError::BadEntryCount(0),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, MAX_SG_ENTRIES + 1, &good),
                ChainError::BadEntryCount(MAX_SG_ENTRIES + 1),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 2, &good),
                ChainError::BadStreamLength {
                    readable: 40,
                    sg_count: 2,
                },
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 1, &zero),
                ChainError::BadEntry(0),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 1, &reserved),
                ChainError::BadEntry(0),
            ),
            (
                stream_req(
                    req_type::STREAM_BUFFER,
                    0,
                    1,
                    &[sg(MEM_SIZE - 0x800, 0x1000)],
                ),
                ChainError::EntryOutOfBounds(0),
            ),
            (
                stream_req(req_type::STREAM_BUFFER, 0, 1, &[sg(u64::MAX - 0x10, 0x100)]),
                ChainError::EntryOutOfBounds(0),
            ),
            (hdr_reserved, ChainError::Reserved(1)),
            (vec![0u8; 16], ChainError::TooShort(16)),
        ];
        let out = 0x30_0000;
        for (req, expected) in cases {
            put(&mem, DATA, &req);
            put(&mem, out, &[0xee; 64]);
            let descs = [desc(DATA, req.len() as u32, 0), desc(out, 32, W)];
            let StreamChain::Done(c) = run_stream(&mem, &descs) else {
                panic!("held: {expected:?}");
            };
            assert_eq!(c.used_len, 32);
            assert_eq!(c.disposition, Disposition::Rejected(expected));
            let r = StreamResult::read_from_bytes(&get(&mem, out, 32)).expect("result");
            assert_eq!(r.status.get(), expected.status(), "{expected:?}");
            assert_eq!(r.device_time_ns.get(), 999);
            assert_eq!(get(&mem, out + 32, 32), vec![0xee; 32], "past the result");
        }
        // Too little room for a result: nothing written, used length 0.
        let req = stream_req(req_type::STREAM_BUFFER, 0, 1, &good);
        put(&mem, DATA, &req);
        put(&mem, out, &[0xee; 64]);
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, 31, W)];
        let StreamChain::Done(c) = run_stream(&mem, &descs) else {
            panic!("held");
        };
        assert_eq!(c, Completion::dropped(ChainError::NoStatusRoom(31)));
        assert_eq!(get(&mem, out, 64), vec![0xee; 64]);
        // Readable after writable.
        let descs = [desc(out, 32, W), desc(DATA, req.len() as u32, 0)];
        assert!(matches!(
            run_stream(&mem, &descs),
            StreamChain::Done(Completion {
                disposition: Disposition::Rejected(ChainError::Misordered),
                ..
            })
        ));
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
