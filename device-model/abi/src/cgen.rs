//! Renders the C headers from the Rust definitions.
//!
//! - `uapi_header()`: `guest-driver/include/uapi/linux/xxcapture.h`, what user
//!   space sees (structs, op and error codes, register offsets, ioctls).
//! - `device_header()`: `guest-driver/xxcapture_dev.h`, what only the driver
//!   needs (virtio id, queues, request framing, the register table).

use std::fmt::Write as _;

use crate::layout::{StructDef, DEVICE_STRUCTS, UAPI_STRUCTS};
use crate::regs::{Access, ValueRule, Width, REGISTERS};
use crate::{
    caps, control, dma_dir, format, ioctl, irq, queue, req_type, status, vq_status, Op, TfError,
};

/// Repository-relative paths of the generated files.
pub const UAPI_HEADER_PATH: &str = "guest-driver/include/uapi/linux/xxcapture.h";
pub const DEVICE_HEADER_PATH: &str = "guest-driver/xxcapture_dev.h";

const GENERATED_NOTE: &str = " * Generated from device-model/abi by\n *   cargo run -p xxcapture-abi --bin xxcap-gen-headers\n * Do not edit: change the Rust definitions and regenerate. A test fails\n * when this file and the Rust definitions differ.\n";

fn define(out: &mut String, name: &str, value: impl std::fmt::Display) {
    // Kernel style: one tab after the name, values aligned by the reader.
    let _ = writeln!(out, "#define {name}\t{value}");
}

fn hex32(v: u32) -> String {
    format!("0x{v:08x}U")
}

fn render_struct(out: &mut String, def: &StructDef) {
    let _ = writeln!(out, "/*\n * {}\n */", def.doc);
    let _ = writeln!(out, "struct {} {{", def.name);
    for field in def.fields {
        let array = if field.len > 1 {
            format!("[{}]", field.len)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "\t{} {}{};\t/* {} */",
            field.ctype.c_name(),
            field.name,
            array,
            field.doc
        );
    }
    let _ = writeln!(out, "}};\n");
}

fn bits(out: &mut String, prefix: &str, items: &[(&str, u32)]) {
    for (name, value) in items {
        define(
            out,
            &format!("{prefix}{name}"),
            format!("(1U << {})", value.trailing_zeros()),
        );
    }
    out.push('\n');
}

/// The UAPI header, byte for byte.
pub fn uapi_header() -> String {
    let mut out = String::new();
    out.push_str(
        "/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */\n",
    );
    out.push_str(
        "/*\n * xxcapture: user-space ABI of the emulated Double X video-capture card.\n *\n",
    );
    out.push_str(GENERATED_NOTE);
    out.push_str(" */\n#ifndef _UAPI_LINUX_XXCAPTURE_H\n#define _UAPI_LINUX_XXCAPTURE_H\n\n");
    out.push_str("#include <linux/ioctl.h>\n#include <linux/types.h>\n\n");

    define(&mut out, "XXCAP_MAGIC", hex32(crate::MAGIC));
    define(&mut out, "XXCAP_ABI_VERSION", hex32(crate::ABI_VERSION));
    define(
        &mut out,
        "XXCAP_MODEL_DOUBLE_X",
        hex32(crate::MODEL_DOUBLE_X),
    );
    define(&mut out, "XXCAP_MAX_COMMANDS", crate::MAX_COMMANDS);
    define(&mut out, "XXCAP_TF_HEADER_SIZE", crate::TF_HEADER_SIZE);
    define(&mut out, "XXCAP_CMD_SIZE", crate::CMD_SIZE);
    define(
        &mut out,
        "XXCAP_MAX_TASK_FILE_SIZE",
        crate::MAX_TASK_FILE_SIZE,
    );
    out.push('\n');
    out.push_str("/* Card RAM and status block: mmap offsets on /dev/xxcaptureN */\n");
    define(&mut out, "XXCAP_MMAP_OFFSET_CARD_RAM", "0ULL");
    define(
        &mut out,
        "XXCAP_MMAP_OFFSET_STATUS",
        format!("0x{:x}ULL", crate::MMAP_OFFSET_STATUS),
    );
    define(
        &mut out,
        "XXCAP_STATUS_BLOCK_SIZE",
        crate::STATUS_BLOCK_SIZE,
    );
    define(&mut out, "XXCAP_STATUS_MAGIC", hex32(crate::STATUS_MAGIC));
    define(&mut out, "XXCAP_MAX_RING_SLOTS", crate::MAX_RING_SLOTS);
    define(&mut out, "XXCAP_SLOT_EMPTY", crate::slot_state::EMPTY);
    define(&mut out, "XXCAP_SLOT_FILLING", crate::slot_state::FILLING);
    define(&mut out, "XXCAP_SLOT_FULL", crate::slot_state::FULL);
    out.push('\n');
    out.push_str("/* Submission and completion rings: the ring area */\n");
    define(
        &mut out,
        "XXCAP_MMAP_OFFSET_RING",
        format!("0x{:x}ULL", crate::MMAP_OFFSET_RING),
    );
    define(&mut out, "XXCAP_RING_MAGIC", hex32(crate::RING_MAGIC));
    define(&mut out, "XXCAP_RING_VERSION", crate::RING_VERSION);
    define(&mut out, "XXCAP_RING_SQ_ENTRIES", crate::RING_SQ_ENTRIES);
    define(&mut out, "XXCAP_RING_CQ_ENTRIES", crate::RING_CQ_ENTRIES);
    define(&mut out, "XXCAP_RING_SQ_OFFSET", crate::RING_SQ_OFFSET);
    define(&mut out, "XXCAP_RING_CQ_OFFSET", crate::RING_CQ_OFFSET);
    define(
        &mut out,
        "XXCAP_RING_ARENA_OFFSET",
        crate::RING_ARENA_OFFSET,
    );
    define(&mut out, "XXCAP_RING_ARENA_SIZE", crate::RING_ARENA_SIZE);
    define(&mut out, "XXCAP_RING_AREA_SIZE", crate::RING_AREA_SIZE);
    define(
        &mut out,
        "XXCAP_RING_DEFAULT_SQ_IDLE_US",
        crate::RING_DEFAULT_SQ_IDLE_US,
    );
    define(
        &mut out,
        "XXCAP_RING_MAX_SQ_IDLE_US",
        crate::RING_MAX_SQ_IDLE_US,
    );
    define(
        &mut out,
        "XXCAP_RING_SETUP_SQPOLL",
        crate::ring_setup::SQPOLL,
    );
    define(
        &mut out,
        "XXCAP_RING_SQ_NEED_WAKEUP",
        crate::sq_flags::NEED_WAKEUP,
    );
    define(&mut out, "XXCAP_RING_CQ_ARMED", crate::cq_flags::ARMED);
    out.push('\n');

    out.push_str("/* Capability bits (identity.capabilities, register CAPS) */\n");
    bits(
        &mut out,
        "XXCAP_CAP_",
        &[
            ("TASK_FILE", caps::TASK_FILE),
            ("DMA", caps::DMA),
            ("CARD_RAM_SHM", caps::CARD_RAM_SHM),
            ("EVENTS", caps::EVENTS),
            ("CAPTURE", caps::CAPTURE),
            ("STREAMING", caps::STREAMING),
            ("RING", caps::RING),
        ],
    );
    out.push_str("/* Status bits (identity.status, register STATUS) */\n");
    bits(
        &mut out,
        "XXCAP_STATUS_",
        &[
            ("READY", status::READY),
            ("CAPTURING", status::CAPTURING),
            ("DMA_BUSY", status::DMA_BUSY),
            ("DMA_ERROR", status::DMA_ERROR),
        ],
    );
    out.push_str("/* Register CONTROL */\n");
    bits(
        &mut out,
        "XXCAP_CONTROL_",
        &[
            ("ENABLE", control::ENABLE),
            ("CAPTURE", control::CAPTURE),
            ("DMA_RESET", control::DMA_RESET),
            ("STREAM", control::STREAM),
        ],
    );
    out.push_str("/* Interrupt causes (INT_STATUS, INT_MASK, INT_ACK, INT_RAISE) */\n");
    bits(
        &mut out,
        "XXCAP_IRQ_",
        &[
            ("FRAME_DONE", irq::FRAME_DONE),
            ("DMA_DONE", irq::DMA_DONE),
            ("DMA_ERROR", irq::DMA_ERROR),
            ("OVERFLOW", irq::OVERFLOW),
            ("TEST", irq::TEST),
        ],
    );
    out.push_str("/* Event records (read() on /dev/xxcaptureN) */\n");
    define(&mut out, "XXCAP_EVENT_LOST", hex32(crate::event::LOST));
    define(
        &mut out,
        "XXCAP_EVENT_RING_WAKE",
        hex32(crate::event::RING_WAKE),
    );
    define(
        &mut out,
        "XXCAP_EVENT_FLAG_COMPLETION",
        crate::event::FLAG_COMPLETION,
    );
    define(&mut out, "XXCAP_EVENT_FLAG_RING", crate::event::FLAG_RING);
    define(&mut out, "XXCAP_EVENT_SIZE", crate::event::SIZE);
    define(
        &mut out,
        "XXCAP_MAX_QUEUED_BUFFERS",
        crate::MAX_QUEUED_BUFFERS,
    );
    define(
        &mut out,
        "XXCAP_MAX_BUFFER_SIZE",
        format!("0x{:x}ULL", crate::MAX_BUFFER_SIZE),
    );
    out.push_str("\n/* Registered buffers: limits of the driver */\n");
    define(
        &mut out,
        "XXCAP_MAX_REGISTERED_PER_OPEN",
        crate::MAX_REGISTERED_PER_OPEN,
    );
    define(
        &mut out,
        "XXCAP_MAX_REGISTERED_PER_CARD",
        crate::MAX_REGISTERED_PER_CARD,
    );
    define(
        &mut out,
        "XXCAP_MAX_REGISTERED_SIZE",
        format!("0x{:x}ULL", crate::MAX_REGISTERED_SIZE),
    );
    define(
        &mut out,
        "XXCAP_MAX_REGISTERED_BYTES",
        format!("0x{:x}ULL", crate::MAX_REGISTERED_BYTES),
    );
    out.push_str("\n/* EXEC flags */\n");
    define(&mut out, "XXCAP_EXEC_POLL", crate::exec_flags::POLL);
    out.push_str("\n/* ABORT flags */\n");
    define(&mut out, "XXCAP_ABORT_ALL", crate::abort_flags::ALL);
    out.push('\n');
    out.push_str("/* Pixel formats (register FRAME_FORMAT) */\n");
    for (name, value) in [
        ("YUYV", format::YUYV),
        ("NV12", format::NV12),
        ("RGB24", format::RGB24),
    ] {
        define(&mut out, &format!("XXCAP_FORMAT_{name}"), value);
    }
    out.push_str("\n/* Video sources (register FRAME_SOURCE) */\n");
    define(
        &mut out,
        "XXCAP_SOURCE_TEST_PATTERN",
        crate::source::TEST_PATTERN,
    );
    define(&mut out, "XXCAP_SOURCE_FILE", crate::source::FILE);
    out.push_str("\n/* DMA directions (the reg field of a DMA command) */\n");
    define(&mut out, "XXCAP_DMA_TO_CARD", dma_dir::TO_CARD);
    define(&mut out, "XXCAP_DMA_FROM_CARD", dma_dir::FROM_CARD);

    out.push_str("\n/* Registers: byte offsets, the reg field of a command */\n");
    for reg in REGISTERS {
        define(
            &mut out,
            &format!("XXCAP_REG_{}", reg.name),
            format!("0x{:03x}", reg.offset),
        );
    }

    out.push_str("\n/* Task-file op codes */\n");
    for op in Op::ALL {
        define(&mut out, &format!("XXCAP_OP_{}", op.c_name()), op as u16);
    }
    out.push_str("\n/* Task-file error codes (header.error) */\n");
    for err in TfError::ALL {
        let _ = writeln!(
            out,
            "#define XXCAP_TF_{}\t{}\t/* {} */",
            err.c_name(),
            err as u32,
            err.description()
        );
    }
    out.push('\n');

    for def in UAPI_STRUCTS {
        render_struct(&mut out, def);
    }

    out.push_str("/* ioctls on /dev/xxcaptureN */\n");
    let _ = writeln!(out, "#define XXCAP_IOC_TYPE\t'{}'", ioctl::TYPE as char);
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_NOP\t_IO(XXCAP_IOC_TYPE, 0x{:02x})",
        ioctl::NOP_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_GET_INFO\t_IOR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_identity)",
        ioctl::GET_INFO_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_EXEC\t_IOWR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_exec)",
        ioctl::EXEC_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_SUBMIT\t_IOWR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_submit)",
        ioctl::SUBMIT_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_QUEUE_BUFFER\t_IOWR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_queue_buffer)",
        ioctl::QUEUE_BUFFER_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_SUBSCRIBE\t_IOWR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_subscribe)",
        ioctl::SUBSCRIBE_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_FLUSH_BUFFERS\t_IO(XXCAP_IOC_TYPE, 0x{:02x})",
        ioctl::FLUSH_BUFFERS_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_REGISTER_BUFFER\t_IOWR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_register_buffer)",
        ioctl::REGISTER_BUFFER_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_UNREGISTER_BUFFER\t_IOW(XXCAP_IOC_TYPE, 0x{:02x}, __u32)",
        ioctl::UNREGISTER_BUFFER_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_ABORT\t_IOW(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_abort)",
        ioctl::ABORT_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_RING_SETUP\t_IOWR(XXCAP_IOC_TYPE, 0x{:02x}, struct xxcap_ring_setup)",
        ioctl::RING_SETUP_NR
    );
    let _ = writeln!(
        out,
        "#define XXCAP_IOC_RING_ENTER\t_IO(XXCAP_IOC_TYPE, 0x{:02x})",
        ioctl::RING_ENTER_NR
    );
    out.push_str("\n#endif /* _UAPI_LINUX_XXCAPTURE_H */\n");
    out
}

fn access_c(access: Access) -> &'static str {
    match access {
        Access::ReadOnly => "XXCAP_ACCESS_RO",
        Access::ReadWrite => "XXCAP_ACCESS_RW",
        Access::WriteOneToClear => "XXCAP_ACCESS_W1C",
        Access::WriteOneToSet => "XXCAP_ACCESS_W1S",
    }
}

/// The driver-private device header, byte for byte.
pub fn device_header() -> String {
    let mut out = String::new();
    out.push_str("/* SPDX-License-Identifier: GPL-2.0 */\n");
    out.push_str("/*\n * xxcapture: device-facing ABI (virtio transport, register table).\n *\n");
    out.push_str(GENERATED_NOTE);
    out.push_str(" */\n#ifndef _XXCAPTURE_DEV_H\n#define _XXCAPTURE_DEV_H\n\n");
    out.push_str("#include <linux/kernel.h>\n#include <linux/types.h>\n#include <uapi/linux/xxcapture.h>\n\n");

    out.push_str("/* Default virtio device id: override with XXCAPTURE_VIRTIO_ID=N at build */\n");
    define(&mut out, "XXCAP_VIRTIO_ID_DEFAULT", crate::VIRTIO_ID);
    define(
        &mut out,
        "XXCAP_ABI_VERSION_MAJOR",
        crate::ABI_VERSION_MAJOR,
    );
    define(&mut out, "XXCAP_CONFIG_SIZE", crate::CONFIG_SIZE);
    out.push('\n');
    define(&mut out, "XXCAP_VQ_COMMAND", queue::COMMAND);
    define(&mut out, "XXCAP_VQ_EVENT", queue::EVENT);
    define(&mut out, "XXCAP_VQ_STREAM", queue::STREAM);
    define(&mut out, "XXCAP_VQ_COUNT", queue::COUNT);
    out.push('\n');
    define(
        &mut out,
        "XXCAP_REQ_EXEC_TASK_FILE",
        req_type::EXEC_TASK_FILE,
    );
    define(&mut out, "XXCAP_REQ_ATTACH", req_type::ATTACH);
    define(&mut out, "XXCAP_REQ_STREAM_BUFFER", req_type::STREAM_BUFFER);
    define(&mut out, "XXCAP_REQ_FLUSH_BUFFERS", req_type::FLUSH_BUFFERS);
    define(
        &mut out,
        "XXCAP_REQ_REGISTER_BUFFER",
        req_type::REGISTER_BUFFER,
    );
    define(
        &mut out,
        "XXCAP_REQ_UNREGISTER_BUFFER",
        req_type::UNREGISTER_BUFFER,
    );
    define(&mut out, "XXCAP_REQ_ABORT", req_type::ABORT);
    define(&mut out, "XXCAP_REQ_RING_SETUP", req_type::RING_SETUP);
    define(&mut out, "XXCAP_REQ_RING_KICK", req_type::RING_KICK);
    define(&mut out, "XXCAP_VQ_FLAG_ASYNC", crate::vq_flags::ASYNC);
    define(&mut out, "XXCAP_MAX_ABORT_TAGS", crate::MAX_ABORT_TAGS);
    define(
        &mut out,
        "XXCAP_MAX_REGISTERED_CARD",
        crate::registered::MAX_BUFFERS,
    );
    define(
        &mut out,
        "XXCAP_EVENT_BUFFER_SIZE",
        crate::event::BUFFER_SIZE,
    );
    define(&mut out, "XXCAP_SHM_ID_CARD_RAM", crate::SHM_ID_CARD_RAM);
    define(&mut out, "XXCAP_VQ_OK", vq_status::OK);
    define(&mut out, "XXCAP_VQ_BAD_REQUEST", vq_status::BAD_REQUEST);
    define(&mut out, "XXCAP_VQ_UNSUPPORTED", vq_status::UNSUPPORTED);
    define(&mut out, "XXCAP_VQ_DEVICE_ERROR", vq_status::DEVICE_ERROR);
    define(&mut out, "XXCAP_MAX_SG_ENTRIES", crate::MAX_SG_ENTRIES);
    out.push('\n');

    for def in DEVICE_STRUCTS {
        render_struct(&mut out, def);
    }

    out.push_str("enum xxcap_access {\n\tXXCAP_ACCESS_RO,\n\tXXCAP_ACCESS_RW,\n\tXXCAP_ACCESS_W1C,\n\tXXCAP_ACCESS_W1S,\n};\n\n");
    out.push_str("enum xxcap_rule {\n\tXXCAP_RULE_ANY,\n\tXXCAP_RULE_ONE_OF,\n\tXXCAP_RULE_EVEN_RANGE,\n\tXXCAP_RULE_RANGE,\n\tXXCAP_RULE_CARD_RAM_OFFSET,\n};\n\n");
    out.push_str("struct xxcap_reg_desc {\n\tconst char *name;\n\tu16 offset;\n\tu8 width;\t\t/* 32 or 64 bits */\n\tu8 access;\t\t/* enum xxcap_access */\n\tu64 writable;\t\t/* bits a write may change */\n\tu8 rule;\t\t/* enum xxcap_rule */\n\tu32 min;\n\tu32 max;\n\tconst u32 *one_of;\n\tunsigned int n_one_of;\n};\n\n");

    for reg in REGISTERS {
        if let ValueRule::OneOf(values) = reg.rule {
            let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                out,
                "static const u32 xxcap_{}_values[] __maybe_unused = {{ {} }};",
                reg.name.to_ascii_lowercase(),
                list.join(", ")
            );
        }
    }
    out.push_str("\n/* Sorted by offset; used by the validation code only */\nstatic const struct xxcap_reg_desc xxcap_regs[] __maybe_unused = {\n");
    for reg in REGISTERS {
        let width = match reg.width {
            Width::W32 => 32,
            Width::W64 => 64,
        };
        let (min, max) = match reg.rule {
            ValueRule::EvenRange { min, max } | ValueRule::Range { min, max } => (min, max),
            _ => (0, 0),
        };
        let (one_of, n) = match reg.rule {
            ValueRule::OneOf(_) => (
                format!("xxcap_{}_values", reg.name.to_ascii_lowercase()),
                format!("ARRAY_SIZE(xxcap_{}_values)", reg.name.to_ascii_lowercase()),
            ),
            _ => ("NULL".to_string(), "0".to_string()),
        };
        let _ = writeln!(
            out,
            "\t{{ \"{}\", XXCAP_REG_{}, {}, {}, 0x{:x}ULL, {}, {}, {}, {}, {} }},",
            reg.name,
            reg.name,
            width,
            access_c(reg.access),
            reg.writable,
            reg.rule.c_kind(),
            min,
            max,
            one_of,
            n
        );
    }
    out.push_str("};\n\n#endif /* _XXCAPTURE_DEV_H */\n");
    out
}

/// A C program that prints sizes, offsets and ioctl numbers as computed by the
/// C compiler from the UAPI header, one `name value` per line; the test
/// compares its output with [`expected_probe_output`].
pub fn c_probe_source() -> String {
    let mut out = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/xxcapture.h>\n\nint main(void)\n{\n",
    );
    for def in UAPI_STRUCTS {
        let _ = writeln!(
            out,
            "\tprintf(\"sizeof.{0} %zu\\n\", sizeof(struct {0}));",
            def.name
        );
        for field in def.fields {
            let _ = writeln!(
                out,
                "\tprintf(\"offsetof.{0}.{1} %zu\\n\", offsetof(struct {0}, {1}));",
                def.name, field.name
            );
        }
    }
    for name in [
        "XXCAP_IOC_NOP",
        "XXCAP_IOC_GET_INFO",
        "XXCAP_IOC_EXEC",
        "XXCAP_IOC_SUBMIT",
        "XXCAP_IOC_QUEUE_BUFFER",
        "XXCAP_IOC_SUBSCRIBE",
        "XXCAP_IOC_FLUSH_BUFFERS",
        "XXCAP_IOC_REGISTER_BUFFER",
        "XXCAP_IOC_UNREGISTER_BUFFER",
        "XXCAP_IOC_ABORT",
        "XXCAP_IOC_RING_SETUP",
        "XXCAP_IOC_RING_ENTER",
    ] {
        let _ = writeln!(out, "\tprintf(\"{name} %lu\\n\", (unsigned long){name});");
    }
    out.push_str("\treturn 0;\n}\n");
    out
}

/// What [`c_probe_source`] must print, from the Rust side.
pub fn expected_probe_output() -> String {
    let mut out = String::new();
    for def in UAPI_STRUCTS {
        let (offsets, size) = def.offsets();
        let _ = writeln!(out, "sizeof.{} {}", def.name, size);
        for (field, offset) in offsets {
            let _ = writeln!(out, "offsetof.{}.{} {}", def.name, field, offset);
        }
    }
    let _ = writeln!(out, "XXCAP_IOC_NOP {}", ioctl::NOP);
    let _ = writeln!(out, "XXCAP_IOC_GET_INFO {}", ioctl::GET_INFO);
    let _ = writeln!(out, "XXCAP_IOC_EXEC {}", ioctl::EXEC);
    let _ = writeln!(out, "XXCAP_IOC_SUBMIT {}", ioctl::SUBMIT);
    let _ = writeln!(out, "XXCAP_IOC_QUEUE_BUFFER {}", ioctl::QUEUE_BUFFER);
    let _ = writeln!(out, "XXCAP_IOC_SUBSCRIBE {}", ioctl::SUBSCRIBE);
    let _ = writeln!(out, "XXCAP_IOC_FLUSH_BUFFERS {}", ioctl::FLUSH_BUFFERS);
    let _ = writeln!(out, "XXCAP_IOC_REGISTER_BUFFER {}", ioctl::REGISTER_BUFFER);
    let _ = writeln!(
        out,
        "XXCAP_IOC_UNREGISTER_BUFFER {}",
        ioctl::UNREGISTER_BUFFER
    );
    let _ = writeln!(out, "XXCAP_IOC_ABORT {}", ioctl::ABORT);
    let _ = writeln!(out, "XXCAP_IOC_RING_SETUP {}", ioctl::RING_SETUP);
    let _ = writeln!(out, "XXCAP_IOC_RING_ENTER {}", ioctl::RING_ENTER);
    out
}
