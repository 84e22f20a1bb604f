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
//!   to return the held stream buffers, a good ABORT to return the held
//!   stream buffers it names; the status (`OK` or `DEVICE_ERROR`)
//!   goes at the start of the writable area, used length [`STATUS_SIZE`];
//! * an EXEC_TASK_FILE that an ABORT cancelled ([`cancel_chain`]) is
//!   answered like an executed one, its header saying CANCELLED (count 0),
//!   without running;
//! * a well-formed REGISTER_BUFFER or UNREGISTER_BUFFER goes to the
//!   [`Device`] ([`crate::registered`] checks the rest); its status (`OK`,
//!   or the refusal's `BAD_REQUEST` / `DEVICE_ERROR`) goes at the start of
//!   the writable area, used length [`STATUS_SIZE`];
//! * a well-formed RING_SETUP or RING_KICK goes to the [`Device`]
//!   ([`crate::ring`]); its status (`OK`, `UNSUPPORTED` or
//!   `DEVICE_ERROR`) goes at the start of the writable area, used length
//!   [`STATUS_SIZE`];
//! * every status carries the device clock at completion.
//!
//! Stream-queue chains share the chain rules and are parsed with the stream
//! code ([`crate::stream::process_stream_chain`]).

use std::io::{Read, Write};
use std::mem::size_of;
use std::ops::Deref;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::{
    req_type, ring_setup, vq_flags, vq_status, BufferDesc, RingSetupReq, SgEntry, TaskFileHeader,
    TfError, VqRequest, VqStatus, MAX_ABORT_TAGS, MAX_SG_ENTRIES, MAX_TASK_FILE_SIZE,
    RING_MAX_SQ_IDLE_US, TF_HEADER_SIZE,
};
use xxcapture_model::Outcome;

use crate::registered::RegisterError;
use crate::ring::RingError;
use zerocopy::{FromBytes, IntoBytes};

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
    /// `sg` and the guest memory `mem`. `asynchronous`: the request carries
    /// `XXCAP_VQ_FLAG_ASYNC` (DMA_TRANSFER_NONBLOCK allowed).
    fn execute(
        &mut self,
        task_file: &mut [u8],
        sg: &[SgEntry],
        mem: &GuestMemoryMmap,
        asynchronous: bool,
    ) -> Outcome;

    /// Maps card RAM and the status block into shared-memory region 0 if
    /// not mapped since the last reset. `Err` describes why mapping failed.
    fn attach(&mut self) -> Result<(), String>;

    /// Returns every held stream buffer with CANCELLED, and waits for the
    /// one being filled. `Err` describes why that failed.
    fn flush_buffers(&mut self) -> Result<(), String>;

    /// Returns the held stream buffers whose tags are in `tags` with
    /// CANCELLED (not one the engine is filling). Returns how many.
    fn abort_buffers(&mut self, tags: &[u64]) -> usize;

    /// DEVICE_TIME_NS now: stamped into every status.
    fn device_time_ns(&self) -> u64;

    /// Holds `entries` (non-empty, `reserved` 0) as registered buffer `id`
    /// of `length` bytes belonging to `owner` (nonzero), after checking
    /// them against `mem` and the card's limits.
    fn register_buffer(
        &mut self,
        _id: u32,
        _owner: u32,
        _length: u64,
        _entries: Vec<SgEntry>,
        _mem: &GuestMemoryMmap,
    ) -> Result<(), RegisterError> {
        Err(RegisterError::Unsupported)
    }

    /// Forgets registered buffer `id`.
    fn unregister_buffer(&mut self, _id: u32) -> Result<(), RegisterError> {
        Err(RegisterError::Unsupported)
    }

    /// Sets up the rings for `req.owner` (0: tears them down); `req` passed
    /// the framing checks (flags, reserved, idle time).
    fn ring_setup(&mut self, _req: RingSetupReq) -> Result<(), RingError> {
        Err(RingError::Unsupported("this card has no rings"))
    }

    /// The application advanced the SQ tail.
    fn ring_kick(&mut self, _mem: &GuestMemoryMmap) -> Result<(), RingError> {
        Err(RingError::Unsupported("this card has no rings"))
    }
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
    #[error("ABORT with {readable} readable bytes and {sg_count} scatter-gather entries")]
    BadAbort { readable: u64, sg_count: u32 },
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
    #[error("{req} with {readable} readable bytes, {sg_count} entries, owner {owner:#x}, length {length}")]
    BadBufferRequest {
        req: &'static str,
        readable: u64,
        sg_count: u32,
        owner: u32,
        length: u64,
    },
    #[error("{req} with {readable} readable bytes and {sg_count} scatter-gather entries")]
    BadRingRequest {
        req: &'static str,
        readable: u64,
        sg_count: u32,
    },
    #[error("RING_SETUP with flags {flags:#x}, sq_idle_us {sq_idle_us}, reserved {reserved:#x}")]
    BadRingSetup {
        flags: u32,
        sq_idle_us: u32,
        reserved: u32,
    },
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
    /// An ABORT was answered; this many held stream buffers were cancelled
    /// (the task files it cancelled were answered before it).
    Aborted(usize),
    /// A task file was returned CANCELLED without running (an ABORT named
    /// it, or the device stopped before running it).
    Cancelled,
    /// A REGISTER_BUFFER (`true`) or UNREGISTER_BUFFER was answered with
    /// `OK`, or with the status of the refusal.
    Buffer {
        register: bool,
        id: u32,
        result: Result<(), RegisterError>,
    },
    /// A RING_SETUP (`kick` false) or RING_KICK was answered with `OK`, or
    /// with the status of the refusal.
    Ring {
        kick: bool,
        result: Result<(), RingError>,
    },
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
    /// What became of the request.
    pub disposition: Disposition,
}

impl Completion {
    /// Nothing written: used length 0.
    pub(crate) fn dropped(error: ChainError) -> Self {
        Completion {
            used_len: 0,
            disposition: Disposition::Dropped(error),
        }
    }
}

/// Byte totals of a chain, found by walking its descriptors once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Device-readable bytes.
    pub(crate) readable: u64,
    /// Device-writable bytes.
    pub(crate) writable: u64,
    /// A readable descriptor follows a writable one.
    pub(crate) misordered: bool,
}

impl Layout {
    /// Walks the chain. The walk is bounded by the queue (or indirect table)
    /// size and virtio-queue ends it at 4 GiB, so the sums cannot overflow.
    pub(crate) fn scan<M>(chain: DescriptorChain<M>) -> Self
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
    Abort(Vec<u64>),
    Register {
        id: u32,
        owner: u32,
        length: u64,
        sg: Vec<SgEntry>,
    },
    Unregister {
        id: u32,
    },
    RingSetup(RingSetupReq),
    RingKick,
}

/// Processes one command-queue chain against `device`.
pub fn process_chain<M>(device: &mut dyn Device, chain: &DescriptorChain<M>) -> Completion
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    handle_chain(device, chain, false)
}

/// Answers one command-queue chain without running it: a well-formed
/// EXEC_TASK_FILE comes back as sent, with CANCELLED and count 0 in its
/// header and status `OK`. Any other chain is processed as usual (only
/// task files are cancelled).
pub fn cancel_chain<M>(device: &mut dyn Device, chain: &DescriptorChain<M>) -> Completion
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    handle_chain(device, chain, true)
}

/// The request type, flags and tag of a chain, read without judging the
/// rest of it; `None` when its first 24 readable bytes cannot be read.
pub fn peek_header<M>(chain: &DescriptorChain<M>) -> Option<VqRequest>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut reader = Reader::new(chain.memory(), chain.clone()).ok()?;
    let mut raw = [0u8; REQUEST_HEADER_SIZE];
    reader.read_exact(&mut raw).ok()?;
    VqRequest::read_from_bytes(&raw).ok()
}

/// The tags of a well-formed ABORT chain (`None` for anything else, which
/// [`process_chain`] then answers as it deserves).
pub fn abort_tags<M>(chain: &DescriptorChain<M>) -> Option<Vec<u64>>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let layout = Layout::scan(chain.clone());
    match read_request(chain.memory(), chain, &layout) {
        Ok(Request::Abort(tags)) => Some(tags),
        _ => None,
    }
}

fn handle_chain<M>(device: &mut dyn Device, chain: &DescriptorChain<M>, cancel: bool) -> Completion
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
            Request::Attach
            | Request::Flush
            | Request::Abort(_)
            | Request::Register { .. }
            | Request::Unregister { .. }
            | Request::RingSetup(_)
            | Request::RingKick => 0,
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
            let asynchronous = buf[4..8] == vq_flags::ASYNC.to_le_bytes();
            let tf = &mut buf[REQUEST_HEADER_SIZE..tf_end];
            let outcome = if cancel {
                if let Ok((header, _)) = TaskFileHeader::mut_from_prefix(tf) {
                    header.error = (TfError::Cancelled as u32).into();
                    header.count = 0.into();
                }
                None
            } else {
                Some(device.execute(tf, &sg, mem, asynchronous))
            };
            let done = status(vq_status::OK, device.device_time_ns());
            let written = writer
                .write_all(tf)
                .and_then(|()| writer.write_all(done.as_bytes()));
            match written {
                Ok(()) => Completion {
                    used_len: u32::try_from(tf.len() + STATUS_SIZE).unwrap_or(u32::MAX),
                    disposition: outcome.map_or(Disposition::Cancelled, Disposition::Executed),
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
        Ok(Request::Abort(tags)) => {
            let cancelled = device.abort_buffers(&tags);
            let completion = answer(device, &mut writer, Ok(()), Disposition::Flushed);
            Completion {
                disposition: match completion.disposition {
                    Disposition::Flushed(_) => Disposition::Aborted(cancelled),
                    other => other,
                },
                ..completion
            }
        }
        Ok(Request::Register {
            id,
            owner,
            length,
            sg,
        }) => {
            let result = device.register_buffer(id, owner, length, sg, mem);
            answer_buffer(device, &mut writer, true, id, result)
        }
        Ok(Request::RingSetup(req)) => {
            let result = device.ring_setup(req);
            answer_ring(device, &mut writer, false, result)
        }
        Ok(Request::RingKick) => {
            let result = device.ring_kick(mem);
            answer_ring(device, &mut writer, true, result)
        }
        Ok(Request::Unregister { id }) => {
            let result = device.unregister_buffer(id);
            answer_buffer(device, &mut writer, false, id, result)
        }
        Err(error) => {
            let now = device.device_time_ns();
            reject(writer, error, now)
        }
    }
}

/// Writes the status of a REGISTER_BUFFER or UNREGISTER_BUFFER at the
/// start of the writable area.
fn answer_buffer(
    device: &mut dyn Device,
    writer: &mut Writer<'_>,
    register: bool,
    id: u32,
    result: Result<(), RegisterError>,
) -> Completion {
    let code = match result {
        Ok(()) => vq_status::OK,
        Err(e) => e.status(),
    };
    match writer.write_all(status(code, device.device_time_ns()).as_bytes()) {
        Ok(()) => Completion {
            used_len: STATUS_SIZE as u32,
            disposition: Disposition::Buffer {
                register,
                id,
                result,
            },
        },
        Err(_) => Completion::dropped(ChainError::WriteFailed),
    }
}

/// Writes the status of a RING_SETUP or RING_KICK at the start of the
/// writable area.
fn answer_ring(
    device: &mut dyn Device,
    writer: &mut Writer<'_>,
    kick: bool,
    result: Result<(), RingError>,
) -> Completion {
    let code = match &result {
        Ok(()) => vq_status::OK,
        Err(e) => e.status(),
    };
    match writer.write_all(status(code, device.device_time_ns()).as_bytes()) {
        Ok(()) => Completion {
            used_len: STATUS_SIZE as u32,
            disposition: Disposition::Ring { kick, result },
        },
        Err(_) => Completion::dropped(ChainError::WriteFailed),
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
        req_type::EXEC_TASK_FILE
            | req_type::ATTACH
            | req_type::FLUSH_BUFFERS
            | req_type::REGISTER_BUFFER
            | req_type::UNREGISTER_BUFFER
            | req_type::ABORT
            | req_type::RING_SETUP
            | req_type::RING_KICK
    );
    let allowed_flags = if req == req_type::EXEC_TASK_FILE {
        vq_flags::ASYNC
    } else {
        0
    };
    if !known || flags & !allowed_flags != 0 {
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
    if req == req_type::ABORT {
        let payload = &buf[REQUEST_HEADER_SIZE..];
        let n = payload.len() / 8;
        if sg_count != 0
            || !payload.len().is_multiple_of(8)
            || n == 0
            || n > MAX_ABORT_TAGS as usize
        {
            return Err(ChainError::BadAbort {
                readable: layout.readable,
                sg_count,
            });
        }
        let tags = payload
            .chunks_exact(8)
            .map(|t| u64::from_le_bytes(t.try_into().unwrap_or_default()))
            .collect();
        return Ok(Request::Abort(tags));
    }
    if req == req_type::REGISTER_BUFFER || req == req_type::UNREGISTER_BUFFER {
        return read_buffer_request(&buf, req, sg_count, layout.readable);
    }
    if req == req_type::RING_KICK {
        if buf.len() != REQUEST_HEADER_SIZE || sg_count != 0 {
            return Err(ChainError::BadRingRequest {
                req: "RING_KICK",
                readable: layout.readable,
                sg_count,
            });
        }
        return Ok(Request::RingKick);
    }
    if req == req_type::RING_SETUP {
        let payload = &buf[REQUEST_HEADER_SIZE..];
        let Ok(setup) = RingSetupReq::read_from_bytes(payload) else {
            return Err(ChainError::BadRingRequest {
                req: "RING_SETUP",
                readable: layout.readable,
                sg_count,
            });
        };
        if sg_count != 0 {
            return Err(ChainError::BadRingRequest {
                req: "RING_SETUP",
                readable: layout.readable,
                sg_count,
            });
        }
        let (flags, sq_idle_us, reserved) = (
            setup.flags.get(),
            setup.sq_idle_us.get(),
            setup.reserved.get(),
        );
        if flags & !ring_setup::ALL != 0 || reserved != 0 || sq_idle_us > RING_MAX_SQ_IDLE_US {
            return Err(ChainError::BadRingSetup {
                flags,
                sq_idle_us,
                reserved,
            });
        }
        return Ok(Request::RingSetup(setup));
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

/// Checks the framing of a REGISTER_BUFFER (header, `BufferDesc`, exactly
/// `sg_count` entries, 1..=MAX_SG_ENTRIES of them, each non-empty with
/// `reserved` 0) or UNREGISTER_BUFFER (header and `BufferDesc` with length
/// 0, no entries). The device checks ids, guest memory and its limits.
fn read_buffer_request(
    buf: &[u8],
    req: u32,
    sg_count: u32,
    readable: u64,
) -> Result<Request, ChainError> {
    let register = req == req_type::REGISTER_BUFFER;
    let rest = &buf[REQUEST_HEADER_SIZE..];
    let (desc, entries) = BufferDesc::read_from_prefix(rest).unwrap_or_default();
    let (owner, length) = (desc.owner.get(), desc.length.get());
    let framing_ok = rest.len() >= size_of::<BufferDesc>()
        && if register {
            owner != 0
            && (1..=MAX_SG_ENTRIES).contains(&sg_count)
                // sg_count <= 2^16: the product is small.
                && entries.len() == sg_count as usize * SG_ENTRY_SIZE
        } else {
            owner == 0 && sg_count == 0 && entries.is_empty() && length == 0
        };
    if !framing_ok {
        return Err(ChainError::BadBufferRequest {
            req: if register {
                "REGISTER_BUFFER"
            } else {
                "UNREGISTER_BUFFER"
            },
            readable,
            sg_count,
            owner,
            length,
        });
    }
    let id = desc.id.get();
    if !register {
        return Ok(Request::Unregister { id });
    }
    let table = <[SgEntry]>::ref_from_bytes(entries).map_err(|_| ChainError::ReadFailed)?;
    if let Some(bad) = table
        .iter()
        .position(|e| e.len.get() == 0 || e.reserved.get() != 0)
    {
        return Err(ChainError::BadEntry(u32::try_from(bad).unwrap_or(u32::MAX)));
    }
    Ok(Request::Register {
        id,
        owner,
        length,
        sg: table.to_vec(),
    })
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

#[cfg(test)]
mod tests;
