/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xxcapture: the V4L2 capture node of a card, shared by xxcap_v4l2.c
 * (device node, formats, inputs, controls) and xxcap_vb2.c (the vb2 queue
 * and streaming through the card's stream queue).
 */
#ifndef _XXCAP_V4L2_H
#define _XXCAP_V4L2_H

#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/wait.h>
#include <media/v4l2-ctrls.h>
#include <media/v4l2-dev.h>
#include <media/v4l2-device.h>
#include <media/videobuf2-v4l2.h>

#include "xxcap_drv.h"

/* Inputs: the card's FRAME_SOURCE values */
#define XXCAP_INPUT_PATTERN	0
#define XXCAP_INPUT_FILE	1

/* Frame sizes the card accepts (FRAME_WIDTH, FRAME_HEIGHT): even */
#define XXCAP_MIN_WIDTH		320
#define XXCAP_MAX_WIDTH		3840
#define XXCAP_MIN_HEIGHT	240
#define XXCAP_MAX_HEIGHT	2160
/* Frame rates (FRAME_RATE): the node never selects 0, free-running */
#define XXCAP_MIN_FPS		1
#define XXCAP_MAX_FPS		1000

/* Gaps in frame numbers (dropped frames) not yet reached by a completion */
#define XXCAP_DROPS_AHEAD	32

/* The frame stamp at byte 0 of every frame */
#define XXCAP_STAMP_MAGIC	0x52465858	/* "XXFR" little-endian */
#define XXCAP_STAMP_VERSION	1
#define XXCAP_STAMP_SIZE	32

struct xxcap_v4l2 {
	struct xxcap_card *card;	/* a reference, dropped at release */
	struct v4l2_device v4l2_dev;	/* its release frees this */
	struct video_device vdev;
	struct vb2_queue queue;
	struct v4l2_ctrl_handler ctrls;
	struct v4l2_ctrl *source;	/* V4L2_CID_TEST_PATTERN */
	char bus_info[32];

	/* The file source, as probed at registration */
	bool has_file;
	u32 file_code;			/* card format code */
	u32 file_width;
	u32 file_height;

	struct mutex lock;		/* ioctls, vb2 and the fields below */
	struct v4l2_pix_format fmt;
	u32 code;			/* card format code of fmt */
	u32 fps;
	u32 input;
	bool sending;			/* streaming: buffers go to the card */
	bool hold_start;		/* a nonblocking read() is starting */
	struct list_head pending;	/* buffers queued before streaming */

	/* Under card->lock */
	bool starting;			/* completions wait on early */
	struct list_head early;		/* buffers back during the start */
	s64 time_offset;		/* CLOCK_MONOTONIC - device clock, ns */
	wait_queue_head_t wq;		/* card->n_vb2 going down */
	/*
	 * Frames the card dropped since STREAMON (its OVERFLOW records), for
	 * sequence numbers that count them: @drops before the last frame
	 * completed, and per later frame number the drops before it.
	 */
	u32 drops;
	struct {
		u64 next;		/* the frame number after the gap */
		u32 count;
	} ahead[XXCAP_DROPS_AHEAD];
	unsigned int ahead_first, n_ahead;
	bool events_lost;		/* a LOST record: drops may be missing */

	u32 int_mask;			/* INT_MASK before STREAMON */
};

/* A vb2 buffer of the node */
struct xxcap_vbuf {
	struct vb2_v4l2_buffer vb;	/* first: vb2 allocates the whole */
	struct list_head node;		/* on pending, or early */
	u64 device_time_ns;		/* of its frame */
	enum vb2_buffer_state state;	/* its outcome, while on early */
};

/* xxcap_v4l2.c */
u32 xxcap_v4l2_bpl(u32 code, u32 width);
u32 xxcap_v4l2_size(u32 code, u32 width, u32 height);

/* xxcap_vb2.c */
int xxcap_vb2_init(struct xxcap_v4l2 *v);
void xxcap_vb2_send_pending(struct xxcap_v4l2 *v);

#endif /* _XXCAP_V4L2_H */
