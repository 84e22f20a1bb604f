/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */
/*
 * xxcapture: user-space ABI of the emulated Double X video-capture card.
 *
 * Generated from device-model/abi by
 *   cargo run -p xxcapture-abi --bin xxcap-gen-headers
 * Do not edit: change the Rust definitions and regenerate. A test fails
 * when this file and the Rust definitions differ.
 */
#ifndef _UAPI_LINUX_XXCAPTURE_H
#define _UAPI_LINUX_XXCAPTURE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define XXCAP_MAGIC	0x50435858U
#define XXCAP_ABI_VERSION	0x00020003U
#define XXCAP_MODEL_DOUBLE_X	0x0000d0b1U
#define XXCAP_MAX_COMMANDS	4096
#define XXCAP_TF_HEADER_SIZE	16
#define XXCAP_CMD_SIZE	32
#define XXCAP_MAX_TASK_FILE_SIZE	131088

/* Card RAM and status block: mmap offsets on /dev/xxcaptureN */
#define XXCAP_MMAP_OFFSET_CARD_RAM	0ULL
#define XXCAP_MMAP_OFFSET_STATUS	0x10000000000ULL
#define XXCAP_STATUS_BLOCK_SIZE	4096
#define XXCAP_STATUS_MAGIC	0x42535858U
#define XXCAP_MAX_RING_SLOTS	64
#define XXCAP_SLOT_EMPTY	0
#define XXCAP_SLOT_FILLING	1
#define XXCAP_SLOT_FULL	2

/* Submission and completion rings: the ring area */
#define XXCAP_MMAP_OFFSET_RING	0x20000000000ULL
#define XXCAP_RING_MAGIC	0x47525858U
#define XXCAP_RING_VERSION	1
#define XXCAP_RING_SQ_ENTRIES	256
#define XXCAP_RING_CQ_ENTRIES	2048
#define XXCAP_RING_SQ_OFFSET	4096
#define XXCAP_RING_CQ_OFFSET	8192
#define XXCAP_RING_ARENA_OFFSET	139264
#define XXCAP_RING_ARENA_SIZE	524288
#define XXCAP_RING_AREA_SIZE	663552
#define XXCAP_RING_DEFAULT_SQ_IDLE_US	1000
#define XXCAP_RING_MAX_SQ_IDLE_US	1000000
#define XXCAP_RING_SETUP_SQPOLL	1
#define XXCAP_RING_SQ_NEED_WAKEUP	1
#define XXCAP_RING_CQ_ARMED	1

/* Capability bits (identity.capabilities, register CAPS) */
#define XXCAP_CAP_TASK_FILE	(1U << 0)
#define XXCAP_CAP_DMA	(1U << 1)
#define XXCAP_CAP_CARD_RAM_SHM	(1U << 2)
#define XXCAP_CAP_EVENTS	(1U << 3)
#define XXCAP_CAP_CAPTURE	(1U << 4)
#define XXCAP_CAP_STREAMING	(1U << 5)
#define XXCAP_CAP_RING	(1U << 6)

/* Status bits (identity.status, register STATUS) */
#define XXCAP_STATUS_READY	(1U << 0)
#define XXCAP_STATUS_CAPTURING	(1U << 1)
#define XXCAP_STATUS_DMA_BUSY	(1U << 2)
#define XXCAP_STATUS_DMA_ERROR	(1U << 3)

/* Register CONTROL */
#define XXCAP_CONTROL_ENABLE	(1U << 0)
#define XXCAP_CONTROL_CAPTURE	(1U << 1)
#define XXCAP_CONTROL_DMA_RESET	(1U << 2)
#define XXCAP_CONTROL_STREAM	(1U << 3)

/* Interrupt causes (INT_STATUS, INT_MASK, INT_ACK, INT_RAISE) */
#define XXCAP_IRQ_FRAME_DONE	(1U << 0)
#define XXCAP_IRQ_DMA_DONE	(1U << 1)
#define XXCAP_IRQ_DMA_ERROR	(1U << 2)
#define XXCAP_IRQ_OVERFLOW	(1U << 3)
#define XXCAP_IRQ_TEST	(1U << 4)

/* Event records (read() on /dev/xxcaptureN) */
#define XXCAP_EVENT_LOST	0x80000000U
#define XXCAP_EVENT_RING_WAKE	0x40000000U
#define XXCAP_EVENT_FLAG_COMPLETION	1
#define XXCAP_EVENT_FLAG_RING	2
#define XXCAP_EVENT_SIZE	64
#define XXCAP_MAX_QUEUED_BUFFERS	32
#define XXCAP_MAX_BUFFER_SIZE	0x4000000ULL

/* Registered buffers: limits of the driver */
#define XXCAP_MAX_REGISTERED_PER_OPEN	16
#define XXCAP_MAX_REGISTERED_PER_CARD	64
#define XXCAP_MAX_REGISTERED_SIZE	0x10000000ULL
#define XXCAP_MAX_REGISTERED_BYTES	0x40000000ULL

/* EXEC flags */
#define XXCAP_EXEC_POLL	1

/* ABORT flags */
#define XXCAP_ABORT_ALL	1

/* Pixel formats (register FRAME_FORMAT) */
#define XXCAP_FORMAT_YUYV	1
#define XXCAP_FORMAT_NV12	2
#define XXCAP_FORMAT_RGB24	3

/* Video sources (register FRAME_SOURCE) */
#define XXCAP_SOURCE_TEST_PATTERN	0
#define XXCAP_SOURCE_FILE	1

/* DMA directions (the reg field of a DMA command) */
#define XXCAP_DMA_TO_CARD	0
#define XXCAP_DMA_FROM_CARD	1

/* Registers: byte offsets, the reg field of a command */
#define XXCAP_REG_ID	0x000
#define XXCAP_REG_VERSION	0x004
#define XXCAP_REG_CAPS	0x008
#define XXCAP_REG_CONTROL	0x00c
#define XXCAP_REG_STATUS	0x010
#define XXCAP_REG_INT_STATUS	0x014
#define XXCAP_REG_INT_MASK	0x018
#define XXCAP_REG_INT_ACK	0x01c
#define XXCAP_REG_INT_RAISE	0x020
#define XXCAP_REG_INT_COALESCE_COUNT	0x024
#define XXCAP_REG_INT_COALESCE_USEC	0x028
#define XXCAP_REG_DMA_LENGTH	0x02c
#define XXCAP_REG_DMA_DIRECTION	0x030
#define XXCAP_REG_DMA_TRANSFERRED	0x034
#define XXCAP_REG_FRAME_FORMAT	0x038
#define XXCAP_REG_FRAME_WIDTH	0x03c
#define XXCAP_REG_FRAME_HEIGHT	0x040
#define XXCAP_REG_FRAME_RATE	0x044
#define XXCAP_REG_FRAME_COUNTER	0x048
#define XXCAP_REG_CARD_RAM_PAGES	0x04c
#define XXCAP_REG_SCRATCH	0x050
#define XXCAP_REG_REQUEST_COUNT	0x054
#define XXCAP_REG_COMMAND_COUNT	0x058
#define XXCAP_REG_RING_SLOTS	0x05c
#define XXCAP_REG_RING_SLOT_SIZE	0x060
#define XXCAP_REG_FRAME_SOURCE	0x064
#define XXCAP_REG_DROPPED_FRAMES	0x068
#define XXCAP_REG_RING_RELEASE	0x06c
#define XXCAP_REG_EVENT_COUNT	0x070
#define XXCAP_REG_EVENTS_LOST	0x074
#define XXCAP_REG_FAULTS_INJECTED	0x078
#define XXCAP_REG_DMA_CARD_ADDR	0x100
#define XXCAP_REG_SCRATCH64	0x108
#define XXCAP_REG_DEVICE_TIME_NS	0x110

/* Task-file op codes */
#define XXCAP_OP_GET_ADDRESS	0
#define XXCAP_OP_GET_REGISTER	1
#define XXCAP_OP_SET_ADDRESS	2
#define XXCAP_OP_SET_REGISTER	3
#define XXCAP_OP_CLEAR_REGISTER	4
#define XXCAP_OP_SET_TO_REGISTER	5
#define XXCAP_OP_DMA_TRANSFER_BLOCK	6
#define XXCAP_OP_DMA_TRANSFER_NONBLOCK	7
#define XXCAP_OP_DMA_BUFFER	8

/* Task-file error codes (header.error) */
#define XXCAP_TF_OK	0	/* success */
#define XXCAP_TF_BAD_OP	1	/* unknown op code */
#define XXCAP_TF_BAD_REGISTER	2	/* unknown register or wrong register width for the op */
#define XXCAP_TF_READ_ONLY	3	/* write to read-only bits */
#define XXCAP_TF_BAD_VALUE	4	/* value not accepted by the register */
#define XXCAP_TF_BAD_COUNT	5	/* command count zero, too large, or inconsistent with the buffer */
#define XXCAP_TF_RESERVED	6	/* reserved field not zero */
#define XXCAP_TF_NOT_SUPPORTED	7	/* operation not supported by this card yet */
#define XXCAP_TF_DMA_RANGE	8	/* DMA transfer outside card RAM or invalid length */
#define XXCAP_TF_DMA_FAULT	9	/* DMA transfer touched memory the caller does not own */
#define XXCAP_TF_DEVICE	10	/* internal device error */
#define XXCAP_TF_BUSY	11	/* register cannot change while capture runs */
#define XXCAP_TF_CANCELLED	12	/* request cancelled before it ran */
#define XXCAP_TF_REFUSED	13	/* op not accepted on this path (raw-address DMA on the ring) */

/*
 * Card identity: the device config-space layout (little-endian on the
 * device side) and the result of XXCAP_IOC_GET_INFO.
 */
struct xxcap_identity {
	__u32 magic;	/* XXCAP_MAGIC */
	__u32 abi_version;	/* XXCAP_ABI_VERSION of the card */
	__u32 model;	/* XXCAP_MODEL_DOUBLE_X */
	__u32 revision;	/* hardware revision */
	__u32 capabilities;	/* XXCAP_CAP_* bits */
	__u32 max_commands;	/* most commands per task file */
	__u64 card_ram_size;	/* card RAM in bytes */
	__u32 status;	/* XXCAP_STATUS_* bits at the time of reading */
	__u32 reserved0;	/* zero */
	__u8 serial[16];	/* NUL-padded serial number */
	__u8 name[32];	/* NUL-padded product name */
	__u32 reserved1[2];	/* zero */
};

/*
 * Task-file header, followed by `count` struct xxcap_cmd.
 */
struct xxcap_tf_header {
	__u32 error;	/* out: XXCAP_TF_* error code */
	__u32 count;	/* in: number of commands; out: index of the failing command */
	__u32 flags;	/* in: zero */
	__u32 reserved;	/* in: zero */
};

/*
 * One task-file command. Register ops use reg/value/mask; DMA ops use
 * reg as the direction, value as the buffer address, mask as the card-RAM
 * offset and length as the byte count (out: bytes transferred).
 * XXCAP_OP_DMA_BUFFER: flags is a registered buffer's id, value the offset
 * in it. Unused fields must be zero.
 */
struct xxcap_cmd {
	__u16 op;	/* XXCAP_OP_* */
	__u16 reg;	/* XXCAP_REG_* offset, or XXCAP_DMA_* direction */
	__u32 flags;	/* zero; DMA_BUFFER: registered buffer id */
	__u64 value;	/* in/out value, or DMA buffer address */
	__u64 mask;	/* SET_TO_REGISTER mask, or DMA card-RAM offset */
	__u64 length;	/* DMA byte count; zero otherwise */
};

/*
 * Argument of XXCAP_IOC_EXEC: the task file is executed in place.
 */
struct xxcap_exec {
	__u64 task_file;	/* user address of the task file */
	__u32 size;	/* its size in bytes: header + count * command */
	__u32 flags;	/* zero */
};

/*
 * Argument of XXCAP_IOC_SUBMIT: the task file runs asynchronously; its
 * completion is an XXCAP_IRQ_DMA_DONE (no error) or XXCAP_IRQ_DMA_ERROR
 * event record carrying refcon and request_id. Results of GET ops are not
 * returned.
 */
struct xxcap_submit {
	__u64 task_file;	/* user address of the task file */
	__u32 size;	/* its size in bytes */
	__u32 flags;	/* zero */
	__u64 refcon;	/* caller's reference, echoed in the event */
	__u64 request_id;	/* out: id echoed in the event */
};

/*
 * Argument of XXCAP_IOC_QUEUE_BUFFER: a capture buffer, pinned until a
 * frame fills it (an XXCAP_IRQ_FRAME_DONE event record) or it is
 * cancelled (the same record with status XXCAP_TF_CANCELLED).
 */
struct xxcap_queue_buffer {
	__u64 addr;	/* user address of the buffer */
	__u64 length;	/* its length in bytes */
	__u64 refcon;	/* caller's reference, echoed in the event */
	__u64 request_id;	/* out: id echoed in the event */
	__u32 flags;	/* zero */
	__u32 reserved;	/* zero */
};

/*
 * Argument of XXCAP_IOC_SUBSCRIBE: the XXCAP_IRQ_* causes this open
 * receives from the event queue (out: the previous mask).
 */
struct xxcap_subscribe {
	__u32 mask;	/* in: new mask; out: previous mask */
	__u32 flags;	/* zero */
};

/*
 * Argument of XXCAP_IOC_REGISTER_BUFFER: a buffer pinned and described
 * to the card once, until XXCAP_IOC_UNREGISTER_BUFFER or close.
 * XXCAP_OP_DMA_BUFFER commands of the same open name it by id (in flags)
 * and an offset (in value).
 */
struct xxcap_register_buffer {
	__u64 addr;	/* user address of the buffer */
	__u64 length;	/* its length in bytes */
	__u32 flags;	/* zero */
	__u32 id;	/* out: the buffer's id */
};

/*
 * Argument of XXCAP_IOC_ABORT: cancels one outstanding request of this
 * open, or with XXCAP_ABORT_ALL all of them. Each cancelled request
 * completes once, with status XXCAP_TF_CANCELLED.
 */
struct xxcap_abort {
	__u64 request_id;	/* id from SUBMIT or QUEUE_BUFFER; 0 with ALL */
	__u32 flags;	/* XXCAP_ABORT_* */
	__u32 reserved;	/* zero */
};

/*
 * One event record, as read() returns it (and, little-endian, as the
 * device writes it on the event queue).
 */
struct xxcap_event {
	__u32 cause;	/* one XXCAP_IRQ_* bit, or XXCAP_EVENT_LOST */
	__u32 status;	/* completions: XXCAP_TF_* of the request */
	__u64 sequence;	/* device events: device event number since reset */
	__u64 frame_number;	/* FRAME_DONE, OVERFLOW: the frame */
	__u64 request_id;	/* completions: id from SUBMIT or QUEUE_BUFFER */
	__u64 refcon;	/* completions: the caller's reference */
	__u64 device_time_ns;	/* device clock when the cause occurred */
	__u64 guest_time_ns;	/* CLOCK_MONOTONIC when the driver took it */
	__u32 count;	/* LOST: records lost; FRAME_DONE: bytes; DMA: out count */
	__u32 flags;	/* XXCAP_EVENT_FLAG_* */
};

/*
 * One capture-ring slot in the status block.
 */
struct xxcap_slot_info {
	__u64 frame_number;	/* frame in the slot when state is FULL */
	__u64 timestamp_ns;	/* device time the frame completed */
	__u32 state;	/* XXCAP_SLOT_* */
	__u32 size;	/* bytes of frame data */
	__u64 reserved;	/* zero */
};

/*
 * Status block, kept current by the card in shared memory; mmap it
 * read-only at offset XXCAP_MMAP_OFFSET_STATUS. Sequence lock: seq is odd
 * while the card writes; copy, and retry if seq was odd or changed.
 */
struct xxcap_status_block {
	__u32 magic;	/* XXCAP_STATUS_MAGIC */
	__u32 version;	/* 1 */
	__u32 seq;	/* sequence lock */
	__u32 status;	/* XXCAP_STATUS_* bits */
	__u64 frame_counter;	/* frames completed since capture start */
	__u64 dropped;	/* frames the card dropped */
	__u64 errors;	/* capture errors */
	__u64 device_time_ns;	/* device time of the last update */
	__u64 ring_offset;	/* card-RAM offset of slot 0 */
	__u32 ring_slots;	/* slots in the ring; frame N is in slot N % ring_slots */
	__u32 slot_size;	/* bytes per slot */
	__u32 format;	/* XXCAP_FORMAT_* */
	__u32 width;	/* pixels */
	__u32 height;	/* pixels */
	__u32 fps;	/* frames per second; 0 free-running */
	__u32 frame_size;	/* bytes of one frame */
	__u32 reserved0;	/* zero */
	__u64 reserved1[3];	/* zero */
	struct xxcap_slot_info slots[64];	/* per-slot state */
};

/*
 * Argument of XXCAP_IOC_RING_SETUP: sets up the submission and
 * completion rings for the controlling open, once per open.
 */
struct xxcap_ring_setup {
	__u32 flags;	/* XXCAP_RING_SETUP_* */
	__u32 sq_idle_us;	/* SQ poller idle time (0: default) */
	__u32 area_size;	/* out: bytes to map at XXCAP_MMAP_OFFSET_RING */
	__u32 reserved;	/* zero */
};

/*
 * Header page of the ring area (mmap at XXCAP_MMAP_OFFSET_RING after
 * XXCAP_IOC_RING_SETUP). Indices run free and are masked by the entry
 * count. The card writes the geometry, sq_head, sq_flags, cq_tail,
 * cq_lost and the statistics; the application writes sq_tail, cq_head,
 * cq_flags and event_mask.
 */
struct xxcap_ring_header {
	__u32 magic;	/* XXCAP_RING_MAGIC */
	__u32 version;	/* XXCAP_RING_VERSION */
	__u32 sq_entries;	/* SQ entries */
	__u32 cq_entries;	/* CQ entries */
	__u32 sq_offset;	/* SQ array, bytes into the area */
	__u32 cq_offset;	/* CQ array (struct xxcap_event) */
	__u32 arena_offset;	/* task-file arena */
	__u32 arena_size;	/* its size in bytes */
	__u32 setup_flags;	/* XXCAP_RING_SETUP_* granted */
	__u32 sq_idle_us;	/* SQ poller idle time */
	__u32 reserved0[6];	/* zero */
	__u32 sq_head;	/* card: next SQ index consumed */
	__u32 sq_flags;	/* card: XXCAP_RING_SQ_* */
	__u32 cq_tail;	/* card: next CQ index written */
	__u32 cq_lost;	/* card: device events dropped, CQ full */
	__u32 reserved1[12];	/* zero */
	__u32 sq_tail;	/* application: next SQ index written */
	__u32 cq_head;	/* application: next CQ index consumed */
	__u32 cq_flags;	/* application: XXCAP_RING_CQ_* */
	__u32 event_mask;	/* application: XXCAP_IRQ_* routed to the CQ */
	__u32 reserved2[12];	/* zero */
	__u64 sqes;	/* card: SQ entries consumed */
	__u64 kicks;	/* card: RING_ENTER kicks received */
	__u64 wakeups;	/* card: RING_WAKE interrupts sent */
	__u64 poll_cpu_ns;	/* card: SQ poller CPU time */
	__u64 poll_awake_ns;	/* card: SQ poller time awake */
	__u64 poll_sleeps;	/* card: times the SQ poller slept */
	__u64 reserved3[2];	/* zero */
};

/*
 * One submission-ring entry: a task file in the arena.
 */
struct xxcap_sq_entry {
	__u32 offset;	/* task file, bytes into the arena */
	__u32 size;	/* header and whole command blocks */
	__u64 user_data;	/* returned as the completion's refcon */
};

/* ioctls on /dev/xxcaptureN */
#define XXCAP_IOC_TYPE	'x'
#define XXCAP_IOC_NOP	_IO(XXCAP_IOC_TYPE, 0x00)
#define XXCAP_IOC_GET_INFO	_IOR(XXCAP_IOC_TYPE, 0x01, struct xxcap_identity)
#define XXCAP_IOC_EXEC	_IOWR(XXCAP_IOC_TYPE, 0x02, struct xxcap_exec)
#define XXCAP_IOC_SUBMIT	_IOWR(XXCAP_IOC_TYPE, 0x03, struct xxcap_submit)
#define XXCAP_IOC_QUEUE_BUFFER	_IOWR(XXCAP_IOC_TYPE, 0x04, struct xxcap_queue_buffer)
#define XXCAP_IOC_SUBSCRIBE	_IOWR(XXCAP_IOC_TYPE, 0x05, struct xxcap_subscribe)
#define XXCAP_IOC_FLUSH_BUFFERS	_IO(XXCAP_IOC_TYPE, 0x06)
#define XXCAP_IOC_REGISTER_BUFFER	_IOWR(XXCAP_IOC_TYPE, 0x07, struct xxcap_register_buffer)
#define XXCAP_IOC_UNREGISTER_BUFFER	_IOW(XXCAP_IOC_TYPE, 0x08, __u32)
#define XXCAP_IOC_ABORT	_IOW(XXCAP_IOC_TYPE, 0x10, struct xxcap_abort)
#define XXCAP_IOC_RING_SETUP	_IOWR(XXCAP_IOC_TYPE, 0x11, struct xxcap_ring_setup)
#define XXCAP_IOC_RING_ENTER	_IO(XXCAP_IOC_TYPE, 0x12)

#endif /* _UAPI_LINUX_XXCAPTURE_H */
