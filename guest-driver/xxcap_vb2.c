// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: the vb2 queue of the V4L2 node. Each vb2 buffer (dma-sg) is
 * one STREAM_BUFFER request on the card's stream queue, built like a
 * QUEUE_BUFFER one; the card writes frames straight into its pages.
 * Streaming owns the card's capture: start programs source, format, size,
 * rate and CONTROL.CAPTURE | STREAM in one task file, stop clears them,
 * flushes and waits for every buffer.
 */

#include <linux/highmem.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/slab.h>
#include <media/videobuf2-dma-sg.h>

#include "xxcap_v4l2.h"

static struct xxcap_vbuf *to_xxcap_vbuf(struct vb2_buffer *vb)
{
	return container_of(to_vb2_v4l2_buffer(vb), struct xxcap_vbuf, vb);
}

/*
 * Sequence numbers that count the frames the card dropped (V4L2's
 * convention). Off by default: the card drops every frame that finds no
 * buffer, so a guest that falls behind (under TCG on a loaded host) makes
 * v4l2-compliance warn about each gap. Read at STREAMON.
 */
/* How often a stop waiting for its buffers looks at the used ring. */
#define XXCAP_RECLAIM_POLL_MS	100

static bool sequence_gaps;
module_param(sequence_gaps, bool, 0644);
MODULE_PARM_DESC(sequence_gaps,
		 "V4L2 sequence numbers count the frames the card dropped (default: off)");

static int xxcap_queue_setup(struct vb2_queue *q, unsigned int *nbuffers,
			     unsigned int *nplanes, unsigned int sizes[],
			     struct device *alloc_devs[])
{
	struct xxcap_v4l2 *v = vb2_get_drv_priv(q);
	unsigned int size = v->fmt.sizeimage;

	if (*nplanes)
		return *nplanes != 1 || sizes[0] < size ? -EINVAL : 0;
	*nplanes = 1;
	sizes[0] = size;
	return 0;
}

static int xxcap_buf_prepare(struct vb2_buffer *vb)
{
	struct xxcap_v4l2 *v = vb2_get_drv_priv(vb->vb2_queue);

	if (vb2_plane_size(vb, 0) < v->fmt.sizeimage)
		return -EINVAL;
	vb2_set_plane_payload(vb, 0, v->fmt.sizeimage);
	return 0;
}

/* Gives @buf to the card as one stream-queue request. */
static int xxcap_vb2_send(struct xxcap_v4l2 *v, struct xxcap_vbuf *buf)
{
	struct sg_table *sgt = vb2_dma_sg_plane_desc(&buf->vb.vb2_buf, 0);
	struct xxcap_req *req;
	int ret;

	req = xxcap_stream_req_alloc(v->card, XXCAP_KIND_VB2);
	if (!req)
		return -ENOMEM;
	req->vbuf = buf;
	ret = xxcap_buffer_from_sgt(req, sgt);
	if (ret)
		goto err_free;
	ret = xxcap_stream_send(v->card, req);
	if (ret)
		goto err_free;
	return 0;	/* the card owns req: xxcap_vb2_done() returns buf */

err_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * Buffers wait on pending until xxcap_vb2_send_pending(): while streaming,
 * the QBUF and read() paths send them once vb2 has reported the buffer to
 * the caller, or a quick card could complete one before QBUF returns.
 */
static void xxcap_buf_queue(struct vb2_buffer *vb)
{
	struct xxcap_v4l2 *v = vb2_get_drv_priv(vb->vb2_queue);
	struct xxcap_vbuf *buf = to_xxcap_vbuf(vb);

	list_add_tail(&buf->node, &v->pending);
}

/*
 * Sends the pending buffers to the card, while streaming; one that cannot
 * be sent goes back to vb2 in error. Under v->lock.
 */
void xxcap_vb2_send_pending(struct xxcap_v4l2 *v)
{
	struct xxcap_vbuf *buf, *tmp;

	lockdep_assert_held(&v->lock);
	if (!v->sending)
		return;
	list_for_each_entry_safe(buf, tmp, &v->pending, node) {
		list_del(&buf->node);
		if (xxcap_vb2_send(v, buf))
			vb2_buffer_done(&buf->vb.vb2_buf, VB2_BUF_STATE_ERROR);
	}
}

/* Gives the buffers not sent to the card back to vb2 in @state. */
static void xxcap_return_pending(struct xxcap_v4l2 *v,
				 enum vb2_buffer_state state)
{
	struct xxcap_vbuf *buf, *tmp;

	list_for_each_entry_safe(buf, tmp, &v->pending, node) {
		list_del(&buf->node);
		vb2_buffer_done(&buf->vb.vb2_buf, state);
	}
}

/*
 * Has the card give back every buffer it holds, and waits until they have
 * all been returned to vb2. A card that does not answer within timeout_ms
 * keeps them until its removal gives them back: the node cannot let vb2
 * free pages the card may still write.
 */
static void xxcap_vb2_reclaim(struct xxcap_v4l2 *v)
{
	struct xxcap_card *card = v->card;
	unsigned long timeout = msecs_to_jiffies(xxcap_card_timeout_ms(card));
	unsigned long deadline = jiffies + timeout;
	bool warned = false;
	int ret;

	ret = xxcap_flush_card(card, deadline, false);
	if (ret && ret != -ENODEV)
		dev_warn(&card->dev, "V4L2: flush failed: %d\n", ret);
	/*
	 * The buffers come back through the stream queue's interrupt; its
	 * used ring is also looked at every XXCAP_RECLAIM_POLL_MS, so that
	 * the stop does not hang on one notification that never came.
	 */
	while (!wait_event_timeout(v->wq, !READ_ONCE(card->n_vb2),
				   msecs_to_jiffies(XXCAP_RECLAIM_POLL_MS))) {
		xxcap_stream_poll(card);
		if (!warned && time_after(jiffies, deadline)) {
			dev_err(&card->dev,
				"V4L2: the card holds %u buffers (%u in the stream queue); waiting for them\n",
				READ_ONCE(card->n_vb2),
				READ_ONCE(card->n_stream));
			warned = true;
		}
	}
}

/*
 * Ends the node's claim on the card's capture; the buffers the card gave
 * back during a failed start go back to vb2 as queued.
 */
static void xxcap_vb2_unclaim(struct xxcap_v4l2 *v)
{
	struct xxcap_card *card = v->card;
	struct xxcap_vbuf *buf, *tmp;

	spin_lock_irq(&card->lock);
	card->v4l2_streaming = false;
	card->v4l2_drops = false;
	v->starting = false;
	list_for_each_entry_safe(buf, tmp, &v->early, node) {
		list_del(&buf->node);
		vb2_buffer_done(&buf->vb.vb2_buf, VB2_BUF_STATE_QUEUED);
	}
	spin_unlock_irq(&card->lock);
}

/* Hands @buf back to vb2 in @state, its timestamp on the guest's clock. */
static void xxcap_vb2_finish(struct xxcap_v4l2 *v, struct xxcap_vbuf *buf,
			     enum vb2_buffer_state state)
{
	buf->vb.vb2_buf.timestamp = buf->device_time_ns + v->time_offset;
	vb2_buffer_done(&buf->vb.vb2_buf, state);
}

/*
 * Writes CONTROL = ENABLE: capture off, STREAM clear; INT_MASK's OVERFLOW
 * bit back to what it was before STREAMON (when the node counts drops).
 */
static int xxcap_vb2_capture_off(struct xxcap_v4l2 *v, u32 *err)
{
	struct xxcap_cmd cmds[] = {
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_CONTROL,
		  .value = XXCAP_CONTROL_ENABLE },
		{ .op = XXCAP_OP_SET_TO_REGISTER, .reg = XXCAP_REG_INT_MASK,
		  .value = v->int_mask & XXCAP_IRQ_OVERFLOW,
		  .mask = v->card->v4l2_drops ? XXCAP_IRQ_OVERFLOW : 0 },
	};
	u64 t;

	return xxcap_exec_kernel(v->card, cmds, ARRAY_SIZE(cmds), err, &t);
}

static int xxcap_start_streaming(struct vb2_queue *q, unsigned int count)
{
	struct xxcap_v4l2 *v = vb2_get_drv_priv(q);
	struct xxcap_card *card = v->card;
	struct xxcap_cmd cmds[] = {
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_FRAME_SOURCE,
		  .value = v->input },
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_FRAME_FORMAT,
		  .value = v->code },
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_FRAME_WIDTH,
		  .value = v->fmt.width },
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_FRAME_HEIGHT,
		  .value = v->fmt.height },
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_FRAME_RATE,
		  .value = v->fps },
		/* Counting drops: each one becomes an OVERFLOW record */
		{ .op = XXCAP_OP_GET_REGISTER, .reg = XXCAP_REG_INT_MASK },
		{ .op = XXCAP_OP_SET_TO_REGISTER, .reg = XXCAP_REG_INT_MASK,
		  .value = XXCAP_IRQ_OVERFLOW },
		{ .op = XXCAP_OP_SET_REGISTER, .reg = XXCAP_REG_CONTROL,
		  .value = XXCAP_CONTROL_ENABLE | XXCAP_CONTROL_CAPTURE |
			   XXCAP_CONTROL_STREAM },
	};
	struct xxcap_vbuf *buf, *tmp;
	u64 t0, t1, dev_ns;
	bool drops = READ_ONCE(sequence_gaps);
	u32 err;
	int ret = 0;

	/* SET_TO_REGISTER with mask 0 changes nothing */
	cmds[ARRAY_SIZE(cmds) - 2].mask = drops ? XXCAP_IRQ_OVERFLOW : 0;

	/* Capture becomes the node's: task files and QUEUE_BUFFER get EBUSY. */
	spin_lock_irq(&card->lock);
	if (card->gone)
		ret = -ENODEV;
	else if (card->v4l2_streaming || card->n_stream)
		ret = -EBUSY;	/* an open file streams */
	else if (card->ring_client)
		ret = -EBUSY;	/* ring task files are not checked */
	card->v4l2_streaming = !ret;
	card->v4l2_drops = !ret && drops;
	v->starting = true;
	v->drops = 0;
	v->ahead_first = 0;
	v->n_ahead = 0;
	v->events_lost = false;
	v->int_mask = XXCAP_IRQ_OVERFLOW;	/* left alone at stop if unknown */
	spin_unlock_irq(&card->lock);
	if (ret)
		goto err_return;

	/* Held unused until capture starts with STREAM set */
	v->sending = true;
	list_for_each_entry_safe(buf, tmp, &v->pending, node) {
		if (v->hold_start)
			break;	/* xxcap_v4l2_read() sends them */
		/* Off the list first: the card may give it back at once. */
		list_del(&buf->node);
		ret = xxcap_vb2_send(v, buf);
		if (ret) {
			list_add(&buf->node, &v->pending);
			goto err_reclaim;
		}
	}

	t0 = ktime_get_ns();
	ret = xxcap_exec_kernel(card, cmds, ARRAY_SIZE(cmds), &err, &dev_ns);
	t1 = ktime_get_ns();
	if (!ret && err != XXCAP_TF_OK) {
		/* BUSY: a task file started capture */
		dev_dbg(&card->dev, "V4L2: start refused, error %u\n", err);
		ret = err == XXCAP_TF_BUSY ? -EBUSY : -EIO;
	}
	if (ret)
		goto err_reclaim;
	v->int_mask = (u32)cmds[ARRAY_SIZE(cmds) - 3].value;

	spin_lock_irq(&card->lock);
	/* The card's clock read half-way through the round trip */
	v->time_offset = (s64)(t0 + (t1 - t0) / 2) - (s64)dev_ns;
	v->starting = false;
	/* Frames that came during the start, in order, before any other */
	list_for_each_entry_safe(buf, tmp, &v->early, node) {
		list_del(&buf->node);
		xxcap_vb2_finish(v, buf, buf->state);
	}
	spin_unlock_irq(&card->lock);
	return 0;

err_reclaim:
	v->sending = false;
	xxcap_vb2_reclaim(v);
err_return:
	xxcap_vb2_unclaim(v);
	xxcap_return_pending(v, VB2_BUF_STATE_QUEUED);
	return ret;
}

static void xxcap_stop_streaming(struct vb2_queue *q)
{
	struct xxcap_v4l2 *v = vb2_get_drv_priv(q);
	struct xxcap_card *card = v->card;
	u32 err;
	int ret;

	if (v->sending) {
		v->sending = false;
		/* Stopping a streaming capture cancels the buffers held. */
		ret = xxcap_vb2_capture_off(v, &err);
		if (!ret && err != XXCAP_TF_OK)
			ret = -EIO;
		if (ret && ret != -ENODEV)
			dev_warn(&card->dev, "V4L2: stop failed: %d\n", ret);
		xxcap_vb2_reclaim(v);
		xxcap_vb2_unclaim(v);
	}
	xxcap_return_pending(v, VB2_BUF_STATE_ERROR);
}

/*
 * The frame in @vb carries the stamp of frame @number in the node's
 * format. Read from the first page through the CPU; the CRC of the whole
 * frame is not computed. Imported DMABUFs are not read.
 */
static bool xxcap_stamp_ok(struct xxcap_v4l2 *v, struct vb2_buffer *vb,
			   u64 number)
{
	struct sg_table *sgt = vb2_dma_sg_plane_desc(vb, 0);
	struct scatterlist *sg = sgt->sgl;
	u8 stamp[XXCAP_STAMP_SIZE];
	struct page *page;
	size_t off;
	void *p;

	if (vb->memory == VB2_MEMORY_DMABUF || !sg_page(sg))
		return true;
	page = xxcap_nth_page(sg_page(sg), sg->offset >> PAGE_SHIFT);
	off = offset_in_page(sg->offset);
	if (sg->length < sizeof(stamp) || off + sizeof(stamp) > PAGE_SIZE)
		return true;	/* the stamp spans pages: not checked */
	p = kmap_local_page(page);
	memcpy(stamp, p + off, sizeof(stamp));
	kunmap_local(p);

	return get_unaligned_le32(stamp) == XXCAP_STAMP_MAGIC &&
	       get_unaligned_le16(stamp + 4) == XXCAP_STAMP_VERSION &&
	       get_unaligned_le64(stamp + 8) == number &&
	       get_unaligned_le32(stamp + 16) == v->code &&
	       get_unaligned_le32(stamp + 20) == v->fmt.width &&
	       get_unaligned_le32(stamp + 24) == v->fmt.height;
}

/*
 * A record of the card's event queue while the node streams: an OVERFLOW
 * record is one dropped frame, and carries the number the next completed
 * frame gets (device-model SPEC §10, §11). Records come in the card's
 * order, so their numbers never go down. Under card->lock.
 */
void xxcap_vb2_event(struct xxcap_card *card, const struct xxcap_event *ev)
{
	struct xxcap_v4l2 *v = card->v4l2;
	unsigned int last;

	if (!v)
		return;
	if (ev->cause == XXCAP_EVENT_LOST) {
		if (!v->events_lost)
			dev_warn(&card->dev,
				 "V4L2: event records lost: sequence numbers may miss dropped frames\n");
		v->events_lost = true;
		return;
	}
	if (ev->cause != XXCAP_IRQ_OVERFLOW)
		return;
	if (v->n_ahead) {
		last = (v->ahead_first + v->n_ahead - 1) % XXCAP_DROPS_AHEAD;
		/* Full: counted before the last gap's frame, a little early */
		if (v->ahead[last].next == ev->frame_number ||
		    v->n_ahead == XXCAP_DROPS_AHEAD) {
			v->ahead[last].count++;
			return;
		}
	}
	last = (v->ahead_first + v->n_ahead) % XXCAP_DROPS_AHEAD;
	v->ahead[last].next = ev->frame_number;
	v->ahead[last].count = 1;
	v->n_ahead++;
}

/*
 * The V4L2 sequence number of the card's frame @number: its number plus
 * the frames dropped before it, so that applications see drops as gaps.
 * Frames complete in order. Under card->lock.
 */
static u32 xxcap_vb2_sequence(struct xxcap_v4l2 *v, u64 number)
{
	while (v->n_ahead && v->ahead[v->ahead_first].next <= number) {
		v->drops += v->ahead[v->ahead_first].count;
		v->ahead_first = (v->ahead_first + 1) % XXCAP_DROPS_AHEAD;
		v->n_ahead--;
	}
	return (u32)number + v->drops;	/* 0 unless counting drops */
}

/*
 * The card gave back the buffer of @req, whose result is @ev (a completion
 * record as QUEUE_BUFFER would get). Under card->lock, any context.
 */
void xxcap_vb2_done(struct xxcap_card *card, struct xxcap_req *req,
		    const struct xxcap_event *ev)
{
	struct xxcap_v4l2 *v = card->v4l2;
	struct xxcap_vbuf *buf = req->vbuf;
	struct vb2_buffer *vb = &buf->vb.vb2_buf;
	enum vb2_buffer_state state = VB2_BUF_STATE_ERROR;

	lockdep_assert_held(&card->lock);
	buf->device_time_ns = ev->device_time_ns;
	if (ev->status == XXCAP_TF_OK) {
		buf->vb.sequence = xxcap_vb2_sequence(v, ev->frame_number);
		buf->vb.field = V4L2_FIELD_NONE;
		vb2_set_plane_payload(vb, 0, ev->count);
		if (ev->count == v->fmt.sizeimage &&
		    xxcap_stamp_ok(v, vb, ev->frame_number))
			state = VB2_BUF_STATE_DONE;
	}
	if (v->starting) {
		/* Until the start is known to succeed (or not) */
		buf->state = state;
		list_add_tail(&buf->node, &v->early);
	} else {
		xxcap_vb2_finish(v, buf, state);
	}
	wake_up(&v->wq);
}

static const struct vb2_ops xxcap_vb2_ops = {
	.queue_setup = xxcap_queue_setup,
	.buf_prepare = xxcap_buf_prepare,
	.buf_queue = xxcap_buf_queue,
	.start_streaming = xxcap_start_streaming,
	.stop_streaming = xxcap_stop_streaming,
	XXCAP_VB2_WAIT_OPS
};

int xxcap_vb2_init(struct xxcap_v4l2 *v)
{
	struct vb2_queue *q = &v->queue;

	q->type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	q->io_modes = VB2_MMAP | VB2_USERPTR | VB2_DMABUF | VB2_READ;
	q->drv_priv = v;
	q->buf_struct_size = sizeof(struct xxcap_vbuf);
	q->ops = &xxcap_vb2_ops;
	q->mem_ops = &vb2_dma_sg_memops;
	q->timestamp_flags = V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC |
			     V4L2_BUF_FLAG_TSTAMP_SRC_EOF;
	q->lock = &v->lock;
	/* Maps buffers for the PCI function: their DMA addresses are guest-physical. */
	q->dev = v->card->vdev->dev.parent;
	return vb2_queue_init(q);
}
