// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: capture-buffer streaming. QUEUE_BUFFER hands a pinned buffer
 * to the stream queue; the card fills it with a frame and gives it back;
 * FLUSH_BUFFERS (and the last close) has it return every buffer it holds.
 */

#include <linux/jiffies.h>
#include <linux/overflow.h>
#include <linux/sched.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>

#include "xxcap_drv.h"

/* Takes the capture buffers the card gave back. Under card->lock. */
static void xxcap_stream_drain(struct xxcap_card *card, struct virtqueue *vq)
{
	struct xxcap_req *req;
	unsigned int len;

	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len))) {
			card->n_stream--;
			/* The frame's OVERFLOW records before the frame */
			if (card->v4l2_drops)
				xxcap_evt_poll(card);
			xxcap_req_returned(card, req, len, 0, &card->reap_list);
		}
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	xxcap_reap_kick(card);
}

/* Stream-queue callback (interrupt context): capture buffers came back. */
void xxcap_stream_done(struct virtqueue *vq)
{
	struct xxcap_card *card = vq->vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&card->lock, flags);
	xxcap_stream_drain(card, vq);
	spin_unlock_irqrestore(&card->lock, flags);
}

/*
 * Looks at the stream queue's used ring without waiting for its
 * interrupt, for a waiter that must not depend on one notification.
 * Does nothing once the card is gone (its queues may be deleted).
 */
void xxcap_stream_poll(struct xxcap_card *card)
{
	spin_lock_irq(&card->lock);
	if (!card->gone)
		xxcap_stream_drain(card, card->stream_vq);
	spin_unlock_irq(&card->lock);
}

/*
 * Hands the capture buffer @req to the device's stream queue. While the
 * V4L2 node streams, it owns the queue: buffers of open files get -EBUSY.
 */
static int xxcap_queue_stream(struct xxcap_card *card, struct xxcap_req *req)
{
	struct scatterlist *sgs[2] = { req->sg_in, req->sg_out };
	bool vb2 = req->kind == XXCAP_KIND_VB2;
	int ret;

	spin_lock_irq(&card->lock);
	if (card->gone)
		ret = -ENODEV;
	else if (!vb2 && card->v4l2_streaming)
		ret = -EBUSY;
	else if (card->n_stream >= XXCAP_MAX_STREAM_INFLIGHT)
		ret = -ENOSPC;
	else
		ret = virtqueue_add_sgs(card->stream_vq, sgs, 1, 1, req,
					GFP_ATOMIC);
	if (!ret) {
		card->n_stream++;
		if (vb2)
			card->n_vb2++;
		else
			req->client->bufs_queued++;
		xxcap_req_sent(req);
		virtqueue_kick(card->stream_vq);
	}
	spin_unlock_irq(&card->lock);
	return ret;
}

/* A stream-queue request of @kind, its SG table still to be added. */
struct xxcap_req *xxcap_stream_req_alloc(struct xxcap_card *card,
					 enum xxcap_req_kind kind)
{
	return xxcap_req_alloc(card, kind, sizeof(struct xxcap_vq_request),
			       sizeof(struct xxcap_stream_result));
}

/*
 * Sends @req, whose SG table describes a capture buffer, as one
 * STREAM_BUFFER request. On success the card owns @req; on failure the
 * caller still does.
 */
int xxcap_stream_send(struct xxcap_card *card, struct xxcap_req *req)
{
	struct xxcap_vq_request *vreq = req->in;
	int ret;

	vreq->req_type = cpu_to_le32(XXCAP_REQ_STREAM_BUFFER);
	vreq->sg_count = cpu_to_le32(req->n_sgt);
	ret = xxcap_req_map(req);
	if (ret)
		return ret;
	return xxcap_queue_stream(card, req);
}

/* Capture buffers need the stream queue and guest-physical SG entries. */
static bool xxcap_can_stream(const struct xxcap_card *card)
{
	return (card->id.capabilities & XXCAP_CAP_STREAMING) && card->dma;
}

/* QUEUE_BUFFER: pins a capture buffer and gives it to the card. */
int xxcap_queue_buffer(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_queue_buffer __user *uarg = argp;
	struct xxcap_card *card = client->card;
	struct xxcap_queue_buffer arg;
	struct xxcap_req *req;
	u64 end;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags || arg.reserved || !arg.length ||
	    arg.length > XXCAP_MAX_BUFFER_SIZE)
		return -EINVAL;
	if (!xxcap_can_stream(card))
		return -EOPNOTSUPP;
	/* The buffer must not wrap around the address space. */
	if (check_add_overflow(arg.addr, arg.length, &end))
		return -EFAULT;

	ret = xxcap_reserve(card, &client->n_buffers, &client->unread_buffers,
			    XXCAP_MAX_QUEUED_BUFFERS);
	if (ret)
		return ret;
	req = xxcap_stream_req_alloc(card, XXCAP_KIND_BUFFER);
	if (!req) {
		ret = -ENOMEM;
		goto out_unreserve;
	}
	req->refcon = arg.refcon;
	ret = xxcap_buffer_prepare(card, req, arg.addr, arg.length);
	if (ret)
		goto out_free;
	if (put_user(req->id, &uarg->request_id)) {
		ret = -EFAULT;
		goto out_free;
	}

	req->client = client;
	ret = xxcap_stream_send(card, req);
	if (!ret)
		return 0;	/* the card owns req; its record frees the slot */

out_free:
	xxcap_req_free(req);
out_unreserve:
	xxcap_unreserve(card, &client->n_buffers);
	return ret;
}

/* Every capture buffer @client queued up to @target was retired (or gone). */
static bool xxcap_flushed(struct xxcap_client *client, u64 target)
{
	return READ_ONCE(client->bufs_done) >= target ||
	       READ_ONCE(client->card->gone);
}

/*
 * Sends FLUSH_BUFFERS and waits (until @deadline; interruptibly if @intr)
 * for the card's answer, by which time it has returned every buffer it
 * held. The buffers' own completions may still be on their way.
 */
int xxcap_flush_card(struct xxcap_card *card, unsigned long deadline,
		     bool intr)
{
	int ret = xxcap_send_plain(card, XXCAP_REQ_FLUSH_BUFFERS,
				   "FLUSH_BUFFERS", deadline, intr);

	if (ret == -EIO)
		dev_err_ratelimited(&card->dev, "FLUSH_BUFFERS refused\n");
	return ret;
}

/*
 * Has the card return every capture buffer it holds (as CANCELLED), then
 * waits until those of @client are retired. @intr: signals end the waits
 * (the ioctl), or not (release of a dying process).
 */
int xxcap_flush(struct xxcap_client *client, bool intr)
{
	struct xxcap_card *card = client->card;
	unsigned long deadline;
	u64 target;
	long left;
	int ret;

	if (!xxcap_can_stream(card))
		return -EOPNOTSUPP;

	spin_lock_irq(&card->lock);
	target = client->bufs_queued;
	spin_unlock_irq(&card->lock);

	deadline = jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card));
	ret = xxcap_flush_card(card, deadline, intr);
	if (ret)
		return ret;

	/*
	 * The card returned the buffers before it answered: they are on
	 * their way through the reap work.
	 */
	left = max_t(long, (long)(deadline - jiffies), 1);
	if (intr)
		left = wait_event_interruptible_timeout(client->wq,
							xxcap_flushed(client, target),
							left);
	else
		left = wait_event_timeout(client->wq,
					  xxcap_flushed(client, target), left);
	if (left < 0)
		return -EINTR;
	if (READ_ONCE(client->bufs_done) >= target)
		return 0;
	return left ? -ENODEV : -ETIMEDOUT;
}
