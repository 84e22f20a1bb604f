/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xxcapture: device-facing ABI (virtio transport, register table).
 *
 * Generated from device-model/abi by
 *   cargo run -p xxcapture-abi --bin xxcap-gen-headers
 * Do not edit: change the Rust definitions and regenerate. A test fails
 * when this file and the Rust definitions differ.
 */
#ifndef _XXCAPTURE_DEV_H
#define _XXCAPTURE_DEV_H

#include <linux/kernel.h>
#include <linux/types.h>
#include <uapi/linux/xxcapture.h>

/* Default virtio device id: override with XXCAPTURE_VIRTIO_ID=N at build */
#define XXCAP_VIRTIO_ID_DEFAULT	31
#define XXCAP_ABI_VERSION_MAJOR	2
#define XXCAP_CONFIG_SIZE	96

#define XXCAP_VQ_COMMAND	0
#define XXCAP_VQ_EVENT	1
#define XXCAP_VQ_STREAM	2
#define XXCAP_VQ_COUNT	3

#define XXCAP_REQ_EXEC_TASK_FILE	1
#define XXCAP_REQ_ATTACH	2
#define XXCAP_REQ_STREAM_BUFFER	3
#define XXCAP_REQ_FLUSH_BUFFERS	4
#define XXCAP_REQ_REGISTER_BUFFER	5
#define XXCAP_REQ_UNREGISTER_BUFFER	6
#define XXCAP_REQ_ABORT	7
#define XXCAP_REQ_RING_SETUP	8
#define XXCAP_REQ_RING_KICK	9
#define XXCAP_VQ_FLAG_ASYNC	1
#define XXCAP_MAX_ABORT_TAGS	1024
#define XXCAP_MAX_REGISTERED_CARD	256
#define XXCAP_EVENT_BUFFER_SIZE	4096
#define XXCAP_SHM_ID_CARD_RAM	0
#define XXCAP_VQ_OK	0
#define XXCAP_VQ_BAD_REQUEST	1
#define XXCAP_VQ_UNSUPPORTED	2
#define XXCAP_VQ_DEVICE_ERROR	3
#define XXCAP_MAX_SG_ENTRIES	65536

/*
 * Start of every command-queue request (device-readable); the task
 * file follows.
 */
struct xxcap_vq_request {
	__le32 req_type;	/* XXCAP_REQ_* */
	__le32 flags;	/* zero */
	__le64 tag;	/* driver's request tag, echoed nowhere, for tracing */
	__le32 sg_count;	/* struct xxcap_sg_entry after the task file */
	__le32 reserved;	/* zero */
};

/*
 * End of every command-queue request (device-writable), after the
 * task-file result.
 */
struct xxcap_vq_status {
	__le32 status;	/* XXCAP_VQ_* transport status */
	__le32 reserved;	/* zero */
	__le64 device_time_ns;	/* device clock at completion */
};

/*
 * One piece of a DMA buffer: guest-physical address and length of
 * pinned memory of the caller. A DMA command's value field holds the index
 * of its first entry; its entries cover exactly its length.
 */
struct xxcap_sg_entry {
	__le64 addr;	/* guest-physical address */
	__le32 len;	/* bytes */
	__le32 reserved;	/* zero */
};

/*
 * End of a stream-queue request (device-writable): how the capture
 * buffer was used.
 */
struct xxcap_stream_result {
	__le32 status;	/* XXCAP_VQ_* transport status */
	__le32 error;	/* XXCAP_TF_OK, DMA_RANGE, DMA_FAULT or CANCELLED */
	__le64 frame_number;	/* frame written into the buffer */
	__le64 device_time_ns;	/* device clock at completion or cancellation */
	__le32 bytes;	/* bytes of frame data written */
	__le32 reserved;	/* zero */
};

/*
 * Follows the request header of XXCAP_REQ_REGISTER_BUFFER (then
 * sg_count entries) and XXCAP_REQ_UNREGISTER_BUFFER.
 */
struct xxcap_buffer_desc {
	__le32 id;	/* 1..XXCAP_MAX_REGISTERED_CARD, the driver's choice */
	__le32 owner;	/* REGISTER: the open's nonzero owner tag; UNREGISTER: 0 */
	__le64 length;	/* REGISTER: sum of the entries; UNREGISTER: 0 */
};

/*
 * Follows the request header of XXCAP_REQ_RING_SETUP.
 */
struct xxcap_ring_setup_req {
	__le32 owner;	/* owner tag of the controlling open; 0 tears down */
	__le32 flags;	/* XXCAP_RING_SETUP_* */
	__le32 sq_idle_us;	/* SQ poller idle time (0: default) */
	__le32 reserved;	/* zero */
};

enum xxcap_access {
	XXCAP_ACCESS_RO,
	XXCAP_ACCESS_RW,
	XXCAP_ACCESS_W1C,
	XXCAP_ACCESS_W1S,
};

enum xxcap_rule {
	XXCAP_RULE_ANY,
	XXCAP_RULE_ONE_OF,
	XXCAP_RULE_EVEN_RANGE,
	XXCAP_RULE_RANGE,
	XXCAP_RULE_CARD_RAM_OFFSET,
};

struct xxcap_reg_desc {
	const char *name;
	u16 offset;
	u8 width;		/* 32 or 64 bits */
	u8 access;		/* enum xxcap_access */
	u64 writable;		/* bits a write may change */
	u8 rule;		/* enum xxcap_rule */
	u32 min;
	u32 max;
	const u32 *one_of;
	unsigned int n_one_of;
};

static const u32 xxcap_frame_format_values[] __maybe_unused = { 1, 2, 3 };
static const u32 xxcap_frame_source_values[] __maybe_unused = { 0, 1 };

/* Sorted by offset; used by the validation code only */
static const struct xxcap_reg_desc xxcap_regs[] __maybe_unused = {
	{ "ID", XXCAP_REG_ID, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "VERSION", XXCAP_REG_VERSION, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "CAPS", XXCAP_REG_CAPS, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "CONTROL", XXCAP_REG_CONTROL, 32, XXCAP_ACCESS_RW, 0xfULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "STATUS", XXCAP_REG_STATUS, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "INT_STATUS", XXCAP_REG_INT_STATUS, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "INT_MASK", XXCAP_REG_INT_MASK, 32, XXCAP_ACCESS_RW, 0x1fULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "INT_ACK", XXCAP_REG_INT_ACK, 32, XXCAP_ACCESS_W1C, 0x1fULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "INT_RAISE", XXCAP_REG_INT_RAISE, 32, XXCAP_ACCESS_W1S, 0x10ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "INT_COALESCE_COUNT", XXCAP_REG_INT_COALESCE_COUNT, 32, XXCAP_ACCESS_RW, 0xffffULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "INT_COALESCE_USEC", XXCAP_REG_INT_COALESCE_USEC, 32, XXCAP_ACCESS_RW, 0xfffffULL, XXCAP_RULE_RANGE, 0, 1000000, NULL, 0 },
	{ "DMA_LENGTH", XXCAP_REG_DMA_LENGTH, 32, XXCAP_ACCESS_RW, 0xffffffffULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "DMA_DIRECTION", XXCAP_REG_DMA_DIRECTION, 32, XXCAP_ACCESS_RW, 0x1ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "DMA_TRANSFERRED", XXCAP_REG_DMA_TRANSFERRED, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "FRAME_FORMAT", XXCAP_REG_FRAME_FORMAT, 32, XXCAP_ACCESS_RW, 0xffULL, XXCAP_RULE_ONE_OF, 0, 0, xxcap_frame_format_values, ARRAY_SIZE(xxcap_frame_format_values) },
	{ "FRAME_WIDTH", XXCAP_REG_FRAME_WIDTH, 32, XXCAP_ACCESS_RW, 0x1fffULL, XXCAP_RULE_EVEN_RANGE, 320, 3840, NULL, 0 },
	{ "FRAME_HEIGHT", XXCAP_REG_FRAME_HEIGHT, 32, XXCAP_ACCESS_RW, 0x1fffULL, XXCAP_RULE_EVEN_RANGE, 240, 2160, NULL, 0 },
	{ "FRAME_RATE", XXCAP_REG_FRAME_RATE, 32, XXCAP_ACCESS_RW, 0x3ffULL, XXCAP_RULE_RANGE, 0, 1000, NULL, 0 },
	{ "FRAME_COUNTER", XXCAP_REG_FRAME_COUNTER, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "CARD_RAM_PAGES", XXCAP_REG_CARD_RAM_PAGES, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "SCRATCH", XXCAP_REG_SCRATCH, 32, XXCAP_ACCESS_RW, 0xffffffffULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "REQUEST_COUNT", XXCAP_REG_REQUEST_COUNT, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "COMMAND_COUNT", XXCAP_REG_COMMAND_COUNT, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "RING_SLOTS", XXCAP_REG_RING_SLOTS, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "RING_SLOT_SIZE", XXCAP_REG_RING_SLOT_SIZE, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "FRAME_SOURCE", XXCAP_REG_FRAME_SOURCE, 32, XXCAP_ACCESS_RW, 0x1ULL, XXCAP_RULE_ONE_OF, 0, 0, xxcap_frame_source_values, ARRAY_SIZE(xxcap_frame_source_values) },
	{ "DROPPED_FRAMES", XXCAP_REG_DROPPED_FRAMES, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "RING_RELEASE", XXCAP_REG_RING_RELEASE, 32, XXCAP_ACCESS_RW, 0xffffffffULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "EVENT_COUNT", XXCAP_REG_EVENT_COUNT, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "EVENTS_LOST", XXCAP_REG_EVENTS_LOST, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "FAULTS_INJECTED", XXCAP_REG_FAULTS_INJECTED, 32, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "DMA_CARD_ADDR", XXCAP_REG_DMA_CARD_ADDR, 64, XXCAP_ACCESS_RW, 0xffffffffffffffffULL, XXCAP_RULE_CARD_RAM_OFFSET, 0, 0, NULL, 0 },
	{ "SCRATCH64", XXCAP_REG_SCRATCH64, 64, XXCAP_ACCESS_RW, 0xffffffffffffffffULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
	{ "DEVICE_TIME_NS", XXCAP_REG_DEVICE_TIME_NS, 64, XXCAP_ACCESS_RO, 0x0ULL, XXCAP_RULE_ANY, 0, 0, NULL, 0 },
};

#endif /* _XXCAPTURE_DEV_H */
