//! Field-by-field descriptions of the wire structs, from which the C structs
//! are generated. Tests check every Rust struct against its description
//! (offsets and size), so the Rust and C layouts cannot drift apart.

/// C field types. `Le*` are device-facing little-endian fields.
#[derive(Clone, Copy, Debug)]
pub enum CType {
    U8,
    U16,
    U32,
    U64,
    Le16,
    Le32,
    Le64,
    /// A nested struct (by its description).
    Struct(&'static StructDef),
}

impl CType {
    pub fn size(self) -> usize {
        match self {
            CType::U8 => 1,
            CType::U16 | CType::Le16 => 2,
            CType::U32 | CType::Le32 => 4,
            CType::U64 | CType::Le64 => 8,
            CType::Struct(def) => def.offsets().1,
        }
    }

    pub fn align(self) -> usize {
        match self {
            CType::Struct(def) => def
                .fields
                .iter()
                .map(|f| f.ctype.align())
                .max()
                .unwrap_or(1),
            other => other.size(),
        }
    }

    pub fn c_name(self) -> String {
        match self {
            CType::Struct(def) => format!("struct {}", def.name),
            other => other.scalar_name().to_string(),
        }
    }

    fn scalar_name(self) -> &'static str {
        match self {
            CType::Struct(_) => "",
            CType::U8 => "__u8",
            CType::U16 => "__u16",
            CType::U32 => "__u32",
            CType::U64 => "__u64",
            CType::Le16 => "__le16",
            CType::Le32 => "__le32",
            CType::Le64 => "__le64",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ctype: CType,
    /// Array length; 1 for a scalar.
    pub len: usize,
    pub doc: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct StructDef {
    /// C struct name.
    pub name: &'static str,
    pub doc: &'static str,
    pub fields: &'static [Field],
}

const fn f(name: &'static str, ctype: CType, doc: &'static str) -> Field {
    Field {
        name,
        ctype,
        len: 1,
        doc,
    }
}

const fn arr(name: &'static str, ctype: CType, len: usize, doc: &'static str) -> Field {
    Field {
        name,
        ctype,
        len,
        doc,
    }
}

impl StructDef {
    /// Field offsets under C's natural alignment rules, and the struct size.
    pub fn offsets(&self) -> (Vec<(&'static str, usize)>, usize) {
        let mut offset = 0usize;
        let mut max_align = 1usize;
        let mut out = Vec::with_capacity(self.fields.len());
        for field in self.fields {
            let align = field.ctype.align();
            max_align = max_align.max(align);
            offset = offset.next_multiple_of(align);
            out.push((field.name, offset));
            offset += field.ctype.size() * field.len;
        }
        (out, offset.next_multiple_of(max_align))
    }

    /// True when the natural layout has no implicit padding (all wire structs
    /// must be explicit about every byte).
    pub fn has_no_padding(&self) -> bool {
        let (offsets, size) = self.offsets();
        let mut expected = 0usize;
        for (field, (_, offset)) in self.fields.iter().zip(offsets) {
            if offset != expected {
                return false;
            }
            expected = offset + field.ctype.size() * field.len;
        }
        expected == size
    }
}

use CType::{Le32, Le64, U16, U32, U64, U8};

pub const IDENTITY: StructDef = StructDef {
    name: "xxcap_identity",
    doc: "Card identity: the device config-space layout (little-endian on the\n * device side) and the result of XXCAP_IOC_GET_INFO.",
    fields: &[
        f("magic", U32, "XXCAP_MAGIC"),
        f("abi_version", U32, "XXCAP_ABI_VERSION of the card"),
        f("model", U32, "XXCAP_MODEL_DOUBLE_X"),
        f("revision", U32, "hardware revision"),
        f("capabilities", U32, "XXCAP_CAP_* bits"),
        f("max_commands", U32, "most commands per task file"),
        f("card_ram_size", U64, "card RAM in bytes"),
        f("status", U32, "XXCAP_STATUS_* bits at the time of reading"),
        f("reserved0", U32, "zero"),
        arr("serial", U8, 16, "NUL-padded serial number"),
        arr("name", U8, 32, "NUL-padded product name"),
        arr("reserved1", U32, 2, "zero"),
    ],
};

pub const TASK_FILE_HEADER: StructDef = StructDef {
    name: "xxcap_tf_header",
    doc: "Task-file header, followed by `count` struct xxcap_cmd.",
    fields: &[
        f("error", U32, "out: XXCAP_TF_* error code"),
        f(
            "count",
            U32,
            "in: number of commands; out: index of the failing command",
        ),
        f("flags", U32, "in: zero"),
        f("reserved", U32, "in: zero"),
    ],
};

pub const COMMAND: StructDef = StructDef {
    name: "xxcap_cmd",
    doc: "One task-file command. Register ops use reg/value/mask; DMA ops use\n * reg as the direction, value as the buffer address, mask as the card-RAM\n * offset and length as the byte count (out: bytes transferred).\n * XXCAP_OP_DMA_BUFFER: flags is a registered buffer's id, value the offset\n * in it. Unused fields must be zero.",
    fields: &[
        f("op", U16, "XXCAP_OP_*"),
        f("reg", U16, "XXCAP_REG_* offset, or XXCAP_DMA_* direction"),
        f("flags", U32, "zero; DMA_BUFFER: registered buffer id"),
        f("value", U64, "in/out value, or DMA buffer address"),
        f("mask", U64, "SET_TO_REGISTER mask, or DMA card-RAM offset"),
        f("length", U64, "DMA byte count; zero otherwise"),
    ],
};

pub const EXEC: StructDef = StructDef {
    name: "xxcap_exec",
    doc: "Argument of XXCAP_IOC_EXEC: the task file is executed in place.",
    fields: &[
        f("task_file", U64, "user address of the task file"),
        f("size", U32, "its size in bytes: header + count * command"),
        f("flags", U32, "zero"),
    ],
};

pub const VQ_REQUEST: StructDef = StructDef {
    name: "xxcap_vq_request",
    doc: "Start of every command-queue request (device-readable); the task\n * file follows.",
    fields: &[
        f("req_type", Le32, "XXCAP_REQ_*"),
        f("flags", Le32, "zero"),
        f(
            "tag",
            Le64,
            "driver's request tag, echoed nowhere, for tracing",
        ),
        f(
            "sg_count",
            Le32,
            "struct xxcap_sg_entry after the task file",
        ),
        f("reserved", Le32, "zero"),
    ],
};

pub const SG_ENTRY: StructDef = StructDef {
    name: "xxcap_sg_entry",
    doc: "One piece of a DMA buffer: guest-physical address and length of
 * pinned memory of the caller. A DMA command's value field holds the index
 * of its first entry; its entries cover exactly its length.",
    fields: &[
        f("addr", Le64, "guest-physical address"),
        f("len", Le32, "bytes"),
        f("reserved", Le32, "zero"),
    ],
};

pub const BUFFER_DESC: StructDef = StructDef {
    name: "xxcap_buffer_desc",
    doc: "Follows the request header of XXCAP_REQ_REGISTER_BUFFER (then\n * sg_count entries) and XXCAP_REQ_UNREGISTER_BUFFER.",
    fields: &[
        f("id", Le32, "1..XXCAP_MAX_REGISTERED_CARD, the driver's choice"),
        f("owner", Le32, "REGISTER: the open's nonzero owner tag; UNREGISTER: 0"),
        f("length", Le64, "REGISTER: sum of the entries; UNREGISTER: 0"),
    ],
};

pub const REGISTER_BUFFER: StructDef = StructDef {
    name: "xxcap_register_buffer",
    doc: "Argument of XXCAP_IOC_REGISTER_BUFFER: a buffer pinned and described\n * to the card once, until XXCAP_IOC_UNREGISTER_BUFFER or close.\n * XXCAP_OP_DMA_BUFFER commands of the same open name it by id (in flags)\n * and an offset (in value).",
    fields: &[
        f("addr", U64, "user address of the buffer"),
        f("length", U64, "its length in bytes"),
        f("flags", U32, "zero"),
        f("id", U32, "out: the buffer's id"),
    ],
};

pub const SLOT_INFO: StructDef = StructDef {
    name: "xxcap_slot_info",
    doc: "One capture-ring slot in the status block.",
    fields: &[
        f("frame_number", U64, "frame in the slot when state is FULL"),
        f("timestamp_ns", U64, "device time the frame completed"),
        f("state", U32, "XXCAP_SLOT_*"),
        f("size", U32, "bytes of frame data"),
        f("reserved", U64, "zero"),
    ],
};

pub const STATUS_BLOCK: StructDef = StructDef {
    name: "xxcap_status_block",
    doc: "Status block, kept current by the card in shared memory; mmap it
 * read-only at offset XXCAP_MMAP_OFFSET_STATUS. Sequence lock: seq is odd
 * while the card writes; copy, and retry if seq was odd or changed.",
    fields: &[
        f("magic", U32, "XXCAP_STATUS_MAGIC"),
        f("version", U32, "1"),
        f("seq", U32, "sequence lock"),
        f("status", U32, "XXCAP_STATUS_* bits"),
        f("frame_counter", U64, "frames completed since capture start"),
        f("dropped", U64, "frames the card dropped"),
        f("errors", U64, "capture errors"),
        f("device_time_ns", U64, "device time of the last update"),
        f("ring_offset", U64, "card-RAM offset of slot 0"),
        f(
            "ring_slots",
            U32,
            "slots in the ring; frame N is in slot N % ring_slots",
        ),
        f("slot_size", U32, "bytes per slot"),
        f("format", U32, "XXCAP_FORMAT_*"),
        f("width", U32, "pixels"),
        f("height", U32, "pixels"),
        f("fps", U32, "frames per second; 0 free-running"),
        f("frame_size", U32, "bytes of one frame"),
        f("reserved0", U32, "zero"),
        arr("reserved1", U64, 3, "zero"),
        arr(
            "slots",
            CType::Struct(&SLOT_INFO),
            crate::MAX_RING_SLOTS,
            "per-slot state",
        ),
    ],
};

pub const VQ_STATUS: StructDef = StructDef {
    name: "xxcap_vq_status",
    doc: "End of every command-queue request (device-writable), after the\n * task-file result.",
    fields: &[
        f("status", Le32, "XXCAP_VQ_* transport status"),
        f("reserved", Le32, "zero"),
        f("device_time_ns", Le64, "device clock at completion"),
    ],
};

pub const STREAM_RESULT: StructDef = StructDef {
    name: "xxcap_stream_result",
    doc: "End of a stream-queue request (device-writable): how the capture\n * buffer was used.",
    fields: &[
        f("status", Le32, "XXCAP_VQ_* transport status"),
        f(
            "error",
            Le32,
            "XXCAP_TF_OK, DMA_RANGE, DMA_FAULT or CANCELLED",
        ),
        f("frame_number", Le64, "frame written into the buffer"),
        f(
            "device_time_ns",
            Le64,
            "device clock at completion or cancellation",
        ),
        f("bytes", Le32, "bytes of frame data written"),
        f("reserved", Le32, "zero"),
    ],
};

pub const SUBMIT: StructDef = StructDef {
    name: "xxcap_submit",
    doc: "Argument of XXCAP_IOC_SUBMIT: the task file runs asynchronously; its\n * completion is an XXCAP_IRQ_DMA_DONE (no error) or XXCAP_IRQ_DMA_ERROR\n * event record carrying refcon and request_id. Results of GET ops are not\n * returned.",
    fields: &[
        f("task_file", U64, "user address of the task file"),
        f("size", U32, "its size in bytes"),
        f("flags", U32, "zero"),
        f("refcon", U64, "caller's reference, echoed in the event"),
        f("request_id", U64, "out: id echoed in the event"),
    ],
};

pub const QUEUE_BUFFER: StructDef = StructDef {
    name: "xxcap_queue_buffer",
    doc: "Argument of XXCAP_IOC_QUEUE_BUFFER: a capture buffer, pinned until a\n * frame fills it (an XXCAP_IRQ_FRAME_DONE event record) or it is\n * cancelled (the same record with status XXCAP_TF_CANCELLED).",
    fields: &[
        f("addr", U64, "user address of the buffer"),
        f("length", U64, "its length in bytes"),
        f("refcon", U64, "caller's reference, echoed in the event"),
        f("request_id", U64, "out: id echoed in the event"),
        f("flags", U32, "zero"),
        f("reserved", U32, "zero"),
    ],
};

pub const ABORT: StructDef = StructDef {
    name: "xxcap_abort",
    doc: "Argument of XXCAP_IOC_ABORT: cancels one outstanding request of this\n * open, or with XXCAP_ABORT_ALL all of them. Each cancelled request\n * completes once, with status XXCAP_TF_CANCELLED.",
    fields: &[
        f("request_id", U64, "id from SUBMIT or QUEUE_BUFFER; 0 with ALL"),
        f("flags", U32, "XXCAP_ABORT_*"),
        f("reserved", U32, "zero"),
    ],
};

pub const SUBSCRIBE: StructDef = StructDef {
    name: "xxcap_subscribe",
    doc: "Argument of XXCAP_IOC_SUBSCRIBE: the XXCAP_IRQ_* causes this open\n * receives from the event queue (out: the previous mask).",
    fields: &[
        f("mask", U32, "in: new mask; out: previous mask"),
        f("flags", U32, "zero"),
    ],
};

pub const EVENT: StructDef = StructDef {
    name: "xxcap_event",
    doc: "One event record, as read() returns it (and, little-endian, as the\n * device writes it on the event queue).",
    fields: &[
        f("cause", U32, "one XXCAP_IRQ_* bit, or XXCAP_EVENT_LOST"),
        f("status", U32, "completions: XXCAP_TF_* of the request"),
        f(
            "sequence",
            U64,
            "device events: device event number since reset",
        ),
        f("frame_number", U64, "FRAME_DONE, OVERFLOW: the frame"),
        f(
            "request_id",
            U64,
            "completions: id from SUBMIT or QUEUE_BUFFER",
        ),
        f("refcon", U64, "completions: the caller's reference"),
        f("device_time_ns", U64, "device clock when the cause occurred"),
        f(
            "guest_time_ns",
            U64,
            "CLOCK_MONOTONIC when the driver took it",
        ),
        f(
            "count",
            U32,
            "LOST: records lost; FRAME_DONE: bytes; DMA: out count",
        ),
        f("flags", U32, "XXCAP_EVENT_FLAG_*"),
    ],
};

pub const RING_HEADER: StructDef = StructDef {
    name: "xxcap_ring_header",
    doc: "Header page of the ring area (mmap at XXCAP_MMAP_OFFSET_RING after\n * XXCAP_IOC_RING_SETUP). Indices run free and are masked by the entry\n * count. The card writes the geometry, sq_head, sq_flags, cq_tail,\n * cq_lost and the statistics; the application writes sq_tail, cq_head,\n * cq_flags and event_mask.",
    fields: &[
        f("magic", U32, "XXCAP_RING_MAGIC"),
        f("version", U32, "XXCAP_RING_VERSION"),
        f("sq_entries", U32, "SQ entries"),
        f("cq_entries", U32, "CQ entries"),
        f("sq_offset", U32, "SQ array, bytes into the area"),
        f("cq_offset", U32, "CQ array (struct xxcap_event)"),
        f("arena_offset", U32, "task-file arena"),
        f("arena_size", U32, "its size in bytes"),
        f("setup_flags", U32, "XXCAP_RING_SETUP_* granted"),
        f("sq_idle_us", U32, "SQ poller idle time"),
        arr("reserved0", U32, 6, "zero"),
        f("sq_head", U32, "card: next SQ index consumed"),
        f("sq_flags", U32, "card: XXCAP_RING_SQ_*"),
        f("cq_tail", U32, "card: next CQ index written"),
        f("cq_lost", U32, "card: device events dropped, CQ full"),
        arr("reserved1", U32, 12, "zero"),
        f("sq_tail", U32, "application: next SQ index written"),
        f("cq_head", U32, "application: next CQ index consumed"),
        f("cq_flags", U32, "application: XXCAP_RING_CQ_*"),
        f("event_mask", U32, "application: XXCAP_IRQ_* routed to the CQ"),
        arr("reserved2", U32, 12, "zero"),
        f("sqes", U64, "card: SQ entries consumed"),
        f("kicks", U64, "card: RING_ENTER kicks received"),
        f("wakeups", U64, "card: RING_WAKE interrupts sent"),
        f("poll_cpu_ns", U64, "card: SQ poller CPU time"),
        f("poll_awake_ns", U64, "card: SQ poller time awake"),
        f("poll_sleeps", U64, "card: times the SQ poller slept"),
        arr("reserved3", U64, 2, "zero"),
    ],
};

pub const SQ_ENTRY: StructDef = StructDef {
    name: "xxcap_sq_entry",
    doc: "One submission-ring entry: a task file in the arena.",
    fields: &[
        f("offset", U32, "task file, bytes into the arena"),
        f("size", U32, "header and whole command blocks"),
        f("user_data", U64, "returned as the completion's refcon"),
    ],
};

pub const RING_SETUP: StructDef = StructDef {
    name: "xxcap_ring_setup",
    doc: "Argument of XXCAP_IOC_RING_SETUP: sets up the submission and\n * completion rings for the controlling open, once per open.",
    fields: &[
        f("flags", U32, "XXCAP_RING_SETUP_*"),
        f("sq_idle_us", U32, "SQ poller idle time (0: default)"),
        f("area_size", U32, "out: bytes to map at XXCAP_MMAP_OFFSET_RING"),
        f("reserved", U32, "zero"),
    ],
};

pub const RING_SETUP_REQ: StructDef = StructDef {
    name: "xxcap_ring_setup_req",
    doc: "Follows the request header of XXCAP_REQ_RING_SETUP.",
    fields: &[
        f(
            "owner",
            Le32,
            "owner tag of the controlling open; 0 tears down",
        ),
        f("flags", Le32, "XXCAP_RING_SETUP_*"),
        f("sq_idle_us", Le32, "SQ poller idle time (0: default)"),
        f("reserved", Le32, "zero"),
    ],
};

/// User-visible structs (UAPI header).
pub const UAPI_STRUCTS: &[StructDef] = &[
    IDENTITY,
    TASK_FILE_HEADER,
    COMMAND,
    EXEC,
    SUBMIT,
    QUEUE_BUFFER,
    SUBSCRIBE,
    REGISTER_BUFFER,
    ABORT,
    EVENT,
    SLOT_INFO,
    STATUS_BLOCK,
    RING_SETUP,
    RING_HEADER,
    SQ_ENTRY,
];
/// Device-facing structs (driver-private header).
pub const DEVICE_STRUCTS: &[StructDef] = &[
    VQ_REQUEST,
    VQ_STATUS,
    SG_ENTRY,
    STREAM_RESULT,
    BUFFER_DESC,
    RING_SETUP_REQ,
];

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// Checks a Rust struct against its description: same field names in the
    /// same order, same offsets, same size.
    macro_rules! assert_layout {
        ($ty:ty, $def:expr, $($field:ident),+ $(,)?) => {{
            let def = $def;
            let (offsets, size) = def.offsets();
            let rust: Vec<(&str, usize)> = vec![$((stringify!($field), offset_of!($ty, $field))),+];
            assert_eq!(rust, offsets, "{} field offsets", def.name);
            assert_eq!(size_of::<$ty>(), size, "{} size", def.name);
            assert!(def.has_no_padding(), "{} has implicit padding", def.name);
        }};
    }

    #[test]
    fn rust_structs_match_descriptions() {
        assert_layout!(
            crate::Identity,
            IDENTITY,
            magic,
            abi_version,
            model,
            revision,
            capabilities,
            max_commands,
            card_ram_size,
            status,
            reserved0,
            serial,
            name,
            reserved1
        );
        assert_layout!(
            crate::TaskFileHeader,
            TASK_FILE_HEADER,
            error,
            count,
            flags,
            reserved
        );
        assert_layout!(crate::Command, COMMAND, op, reg, flags, value, mask, length);
        assert_layout!(crate::Exec, EXEC, task_file, size, flags);
        assert_layout!(
            crate::VqRequest,
            VQ_REQUEST,
            req_type,
            flags,
            tag,
            sg_count,
            reserved
        );
        assert_layout!(crate::SgEntry, SG_ENTRY, addr, len, reserved);
        assert_layout!(
            crate::SlotInfo,
            SLOT_INFO,
            frame_number,
            timestamp_ns,
            state,
            size,
            reserved
        );
        assert_layout!(
            crate::StatusBlock,
            STATUS_BLOCK,
            magic,
            version,
            seq,
            status,
            frame_counter,
            dropped,
            errors,
            device_time_ns,
            ring_offset,
            ring_slots,
            slot_size,
            format,
            width,
            height,
            fps,
            frame_size,
            reserved0,
            reserved1,
            slots
        );
        assert_layout!(crate::VqStatus, VQ_STATUS, status, reserved, device_time_ns);
        assert_layout!(
            crate::StreamResult,
            STREAM_RESULT,
            status,
            error,
            frame_number,
            device_time_ns,
            bytes,
            reserved
        );
        assert_layout!(
            crate::Submit,
            SUBMIT,
            task_file,
            size,
            flags,
            refcon,
            request_id
        );
        assert_layout!(crate::Abort, ABORT, request_id, flags, reserved);
        assert_layout!(
            crate::QueueBuffer,
            QUEUE_BUFFER,
            addr,
            length,
            refcon,
            request_id,
            flags,
            reserved
        );
        assert_layout!(crate::Subscribe, SUBSCRIBE, mask, flags);
        assert_layout!(crate::BufferDesc, BUFFER_DESC, id, owner, length);
        assert_layout!(crate::SqEntry, SQ_ENTRY, offset, size, user_data);
        assert_layout!(
            crate::RingSetup,
            RING_SETUP,
            flags,
            sq_idle_us,
            area_size,
            reserved
        );
        assert_layout!(
            crate::RingSetupReq,
            RING_SETUP_REQ,
            owner,
            flags,
            sq_idle_us,
            reserved
        );
        assert_layout!(
            crate::RingHeader,
            RING_HEADER,
            magic,
            version,
            sq_entries,
            cq_entries,
            sq_offset,
            cq_offset,
            arena_offset,
            arena_size,
            setup_flags,
            sq_idle_us,
            reserved0,
            sq_head,
            sq_flags,
            cq_tail,
            cq_lost,
            reserved1,
            sq_tail,
            cq_head,
            cq_flags,
            event_mask,
            reserved2,
            sqes,
            kicks,
            wakeups,
            poll_cpu_ns,
            poll_awake_ns,
            poll_sleeps,
            reserved3
        );
        assert_layout!(
            crate::RegisterBuffer,
            REGISTER_BUFFER,
            addr,
            length,
            flags,
            id
        );
        assert_layout!(
            crate::Event,
            EVENT,
            cause,
            status,
            sequence,
            frame_number,
            request_id,
            refcon,
            device_time_ns,
            guest_time_ns,
            count,
            flags
        );
    }
}
