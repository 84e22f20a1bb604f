// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: requests and the command queue. Allocation and mapping of a
 * request, its submission (waiting for room), the waits for its return
 * (sleeping or polled), the command-queue callback, the per-open quotas,
 * and the reset that takes every request back from the device.
 */

#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/vmalloc.h>

#include "xxcap_drv.h"

/* Process context only: unpinning may sleep. */
void xxcap_req_free(struct xxcap_req *req)
{
	unsigned int i;

	xxcap_unpin(req);
	for (i = 0; i < req->n_rbufs; i++)
		xxcap_regbuf_put(req->rbufs[i]);
	kvfree(req->rbufs);
	kvfree(req->pages);
	kvfree(req->dma);
	kvfree(req->sg_in);
	kvfree(req->sgt);
	kvfree(req->out);
	kvfree(req->in);
	kfree(req);
}

/*
 * A request with @in_len readable bytes (vq_request first) and @out_len
 * writable ones, zeroed: no stale byte reaches the device or user space.
 * It gets a new id, which is also its wire tag.
 */
struct xxcap_req *xxcap_req_alloc(struct xxcap_card *card,
				  enum xxcap_req_kind kind,
				  size_t in_len, size_t out_len)
{
	struct xxcap_vq_request *vreq;
	struct xxcap_req *req;

	req = kzalloc(sizeof(*req), GFP_KERNEL_ACCOUNT);
	if (!req)
		return NULL;
	init_completion(&req->done);
	INIT_LIST_HEAD(&req->node);
	INIT_LIST_HEAD(&req->client_node);
	req->card = card;
	req->kind = kind;
	req->id = atomic64_inc_return(&card->next_id);
	req->in_len = in_len;
	req->out_len = out_len;
	req->in = kvzalloc(in_len, GFP_KERNEL_ACCOUNT);
	req->out = kvzalloc(out_len, GFP_KERNEL_ACCOUNT);
	if (!req->in || !req->out) {
		xxcap_req_free(req);
		return NULL;
	}
	vreq = req->in;
	vreq->tag = cpu_to_le64(req->id);
	return req;
}

/* Scatterlist entries @len bytes at @buf may need (one per page touched). */
static unsigned int xxcap_sg_pages(const void *buf, size_t len)
{
	return len ? DIV_ROUND_UP(offset_in_page(buf) + len, PAGE_SIZE) : 0;
}

/*
 * Appends @len bytes at @buf (kmalloc or vmalloc memory) to @sg, which holds
 * @n entries, merging physically contiguous pages. Returns the new count.
 */
static unsigned int xxcap_sg_add(struct scatterlist *sg, unsigned int n,
				 void *buf, size_t len)
{
	while (len) {
		size_t off = offset_in_page(buf);
		size_t chunk = min_t(size_t, len, PAGE_SIZE - off);
		struct page *page = is_vmalloc_addr(buf) ?
			vmalloc_to_page(buf) : virt_to_page(buf);
		struct scatterlist *last = n ? &sg[n - 1] : NULL;

		if (last && sg_phys(last) + last->length ==
			    page_to_phys(page) + off)
			last->length += chunk;
		else
			sg_set_page(&sg[n++], page, chunk, off);
		buf += chunk;
		len -= chunk;
	}
	return n;
}

/* Builds the scatterlists of @req once its buffers are final. */
int xxcap_req_map(struct xxcap_req *req)
{
	size_t sgt_len = req->n_sgt * sizeof(*req->sgt);
	unsigned int max, n;

	max = xxcap_sg_pages(req->in, req->in_len) +
	      xxcap_sg_pages(req->sgt, sgt_len);
	req->sg_in = kvmalloc_array(max, sizeof(*req->sg_in),
				    GFP_KERNEL_ACCOUNT);
	if (!req->sg_in)
		return -ENOMEM;
	sg_init_table(req->sg_in, max);
	n = xxcap_sg_add(req->sg_in, 0, req->in, req->in_len);
	n = xxcap_sg_add(req->sg_in, n, req->sgt, sgt_len);
	sg_mark_end(&req->sg_in[n - 1]);

	sg_init_table(req->sg_out, XXCAP_MAX_SG);
	n = xxcap_sg_add(req->sg_out, 0, req->out, req->out_len);
	sg_mark_end(&req->sg_out[n - 1]);
	return 0;
}

/*
 * @req came back from the card with @len bytes written (@result 0), or was
 * taken back after a reset (@result -ENODEV). Wakes its waiter, or puts it
 * on @reap for xxcap_retire(). Under card->lock.
 */
void xxcap_req_returned(struct xxcap_card *card, struct xxcap_req *req,
			u32 len, int result, struct list_head *reap)
{
	req->used_len = len;
	req->result = result;
	req->completed = true;
	if (!result)
		card->stalled = false;	/* the card answers again */
	if (req->kind == XXCAP_KIND_SYNC) {
		req->done_ns = ktime_get_ns();
		if (!req->orphan) {
			complete(&req->done);
			return;
		}
	} else if (req->kind == XXCAP_KIND_KICK) {
		/* Nobody waits: the reap work frees it. */
		xxcap_ring_kick_done(card, req);
	} else if (!req->n_dma && !card->n_unrecorded) {
		/* Nothing to unpin, nothing before it: record it now. */
		xxcap_req_record(card, req);
	} else {
		card->n_unrecorded++;
	}
	list_add_tail(&req->node, reap);
}

/* Takes back what the card returned on the command queue. Under card->lock. */
static bool xxcap_cmd_drain(struct xxcap_card *card)
{
	struct xxcap_req *req;
	unsigned int len;
	bool any = false;

	while ((req = virtqueue_get_buf(card->cmd_vq, &len))) {
		card->n_inflight--;
		xxcap_req_returned(card, req, len, 0, &card->reap_list);
		any = true;
	}
	if (any)
		WRITE_ONCE(card->done_seq, card->done_seq + 1);
	return any;
}

/*
 * Starts the reap work if it has something to do. Under card->lock, so that
 * it is never queued after remove() has cancelled it for good.
 */
void xxcap_reap_kick(struct xxcap_card *card)
{
	lockdep_assert_held(&card->lock);
	if (!card->gone && !list_empty(&card->reap_list))
		queue_work(system_highpri_wq, &card->reap_work);
}

/* Command-queue callback (interrupt context). */
void xxcap_cmd_done(struct virtqueue *vq)
{
	struct xxcap_card *card = vq->vdev->priv;
	unsigned long flags;
	bool any = false;

	spin_lock_irqsave(&card->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		any |= xxcap_cmd_drain(card);
		if (unlikely(virtqueue_is_broken(vq)))
			break;
		/* While an EXEC_POLL caller spins, it drains: callbacks stay off. */
	} while (!card->pollers && !virtqueue_enable_cb(vq));
	xxcap_reap_kick(card);
	spin_unlock_irqrestore(&card->lock, flags);

	if (any)
		wake_up_all(&card->slot_wq);
}

/* A request came back (or the card went away) since @seq was read. */
static bool xxcap_slot_news(struct xxcap_card *card, unsigned long seq)
{
	return READ_ONCE(card->done_seq) != seq || READ_ONCE(card->gone);
}

/* @req was just given to the card: its client tracks it. Under card->lock. */
void xxcap_req_sent(struct xxcap_req *req)
{
	if (req->client)
		list_add_tail(&req->client_node, &req->client->reqs);
}

/*
 * Hands @req to the device's command queue. Waits (until @deadline; @how)
 * while the queue is full. On success the device owns @req. @count:
 * commands in it.
 */
int xxcap_submit(struct xxcap_card *card, struct xxcap_req *req,
		 u32 count, unsigned long deadline, unsigned int how)
{
	struct scatterlist *sgs[2] = { req->sg_in, req->sg_out };
	unsigned long seq;
	long left;
	int ret;

	for (;;) {
		spin_lock_irq(&card->lock);
		if (card->gone) {
			ret = -ENODEV;
		} else if (card->n_inflight >= XXCAP_MAX_INFLIGHT) {
			ret = -ENOSPC;
		} else {
			ret = virtqueue_add_sgs(card->cmd_vq, sgs, 1, 1, req,
						GFP_ATOMIC);
		}
		if (!ret) {
			card->n_inflight++;
			xxcap_req_sent(req);
			/* The kick is part of the round trip (a VM exit). */
			req->kick_ns = ktime_get_ns();
			/* Under the lock: remove() may delete the queue. */
			virtqueue_kick(card->cmd_vq);
		} else if (ret == -ENOSPC && !card->n_inflight) {
			/* Will never fit: the ring is smaller than the request. */
			ret = -EIO;
			dev_err_ratelimited(&card->dev,
					    "request does not fit the command queue\n");
		}
		seq = card->done_seq;
		spin_unlock_irq(&card->lock);

		if (!ret) {
			atomic64_inc(&card->requests);
			atomic64_add(count, &card->commands);
			return 0;
		}
		if (ret != -ENOSPC)
			return ret;
		if (how & XXCAP_SUBMIT_NONBLOCK)
			return -EAGAIN;

		left = (long)(deadline - jiffies);
		if (left <= 0)
			return -ETIMEDOUT;
		if (how & XXCAP_SUBMIT_UNINTR)
			left = wait_event_timeout(card->slot_wq,
						  xxcap_slot_news(card, seq),
						  left);
		else
			left = wait_event_interruptible_timeout(card->slot_wq,
								xxcap_slot_news(card, seq),
								left);
		if (left < 0)
			return -ERESTARTSYS;	/* nothing sent yet: restartable */
		if (left == 0)
			return -ETIMEDOUT;
	}
}

/*
 * The waiter of @req gives up with @err: unless the request came back
 * meanwhile (then 0), it is left to the device as an orphan and the caller
 * must forget it.
 */
static int xxcap_orphan(struct xxcap_card *card, struct xxcap_req *req,
			int err)
{
	bool orphaned = false;

	spin_lock_irq(&card->lock);
	if (!req->completed) {
		req->orphan = true;
		orphaned = true;
		if (err == -ETIMEDOUT)
			card->stalled = true;
	}
	spin_unlock_irq(&card->lock);
	return orphaned ? err : 0;
}

/*
 * Waits for @req (interruptibly if @intr). Returns 0 when the request came
 * back (or was failed by remove()) and the caller owns it again; otherwise
 * the request is left to the device as an orphan and the caller must forget
 * it.
 */
int xxcap_wait(struct xxcap_card *card, struct xxcap_req *req,
	       unsigned long deadline, bool intr)
{
	long left = max_t(long, (long)(deadline - jiffies), 1);

	if (intr)
		left = wait_for_completion_interruptible_timeout(&req->done,
								 left);
	else
		left = wait_for_completion_timeout(&req->done, left);
	if (left > 0)
		return 0;
	/*
	 * Not restartable: the device may still execute the task file, and a
	 * restarted ioctl would execute it a second time.
	 */
	return xxcap_orphan(card, req, left < 0 ? -EINTR : -ETIMEDOUT);
}

/*
 * An EXEC_POLL caller is about to submit: command-queue callbacks off
 * before the kick, or a quick card would still interrupt.
 */
void xxcap_poll_begin(struct xxcap_card *card)
{
	spin_lock_irq(&card->lock);
	if (!card->pollers++ && !card->gone)
		virtqueue_disable_cb(card->cmd_vq);
	spin_unlock_irq(&card->lock);
}

/* The last poller turns the callbacks back on, leaving nothing behind. */
void xxcap_poll_end(struct xxcap_card *card, bool any)
{
	spin_lock_irq(&card->lock);
	if (!--card->pollers && !card->gone) {
		while (!virtqueue_enable_cb(card->cmd_vq)) {
			virtqueue_disable_cb(card->cmd_vq);
			any |= xxcap_cmd_drain(card);
			if (unlikely(virtqueue_is_broken(card->cmd_vq)))
				break;
		}
	}
	xxcap_reap_kick(card);
	spin_unlock_irq(&card->lock);
	if (any)
		wake_up_all(&card->slot_wq);
}

/*
 * As xxcap_wait(), but polls the command queue with its callbacks off
 * (since xxcap_poll_begin(); ends with xxcap_poll_end()) instead of
 * sleeping until the interrupt: the difference between the two is what the
 * interrupt costs. Polls until ktime_get_ns() reaches @spin_until (U64_MAX:
 * until the request is back), then turns the callbacks back on and sleeps:
 * xxcap_poll_end() drains what came back meanwhile, so no completion is
 * missed. *@caught: the request was back before the caller slept.
 */
int xxcap_wait_polled(struct xxcap_card *card, struct xxcap_req *req,
		      unsigned long deadline, u64 spin_until, bool *caught)
{
	bool any = false, done, gone;
	int ret = 0;

	for (;;) {
		spin_lock_irq(&card->lock);
		gone = card->gone;
		if (!req->completed && !gone && xxcap_cmd_drain(card)) {
			any = true;
			xxcap_reap_kick(card);
		}
		done = req->completed;
		spin_unlock_irq(&card->lock);
		if (done || gone)
			break;
		if (signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		if (time_after_eq(jiffies, deadline)) {
			ret = -ETIMEDOUT;
			break;
		}
		if (spin_until != U64_MAX && ktime_get_ns() >= spin_until)
			break;
		cond_resched();
		cpu_relax();
	}

	xxcap_poll_end(card, any);

	if (ret)
		return xxcap_orphan(card, req, ret);
	spin_lock_irq(&card->lock);
	*caught = req->completed;
	spin_unlock_irq(&card->lock);
	/*
	 * Back; or the card is going away and its reset will hand req back;
	 * or the spin is over and the interrupt will.
	 */
	return xxcap_wait(card, req, deadline, true);
}

/*
 * Transport status of an ATTACH or FLUSH_BUFFERS reply: the status word
 * with (§9) or without the device time.
 */
int xxcap_short_status(struct xxcap_card *card, struct xxcap_req *req,
		       const char *what)
{
	const struct xxcap_vq_status *vst = req->out;
	u32 status;

	if (req->result)
		return req->result;
	status = le32_to_cpu(vst->status);
	if (req->used_len < offsetof(struct xxcap_vq_status, device_time_ns) ||
	    req->used_len > sizeof(*vst) || status != XXCAP_VQ_OK) {
		dev_dbg(&card->dev, "%s: %u bytes, status %u\n", what,
			req->used_len, status);
		return -EIO;
	}
	return 0;
}

/*
 * Sends a command-queue request of @type that carries no payload (ATTACH,
 * FLUSH_BUFFERS) and waits until @deadline (interruptibly if @intr) for
 * its transport status; @what names it in the log.
 */
int xxcap_send_plain(struct xxcap_card *card, u32 type, const char *what,
		     unsigned long deadline, bool intr)
{
	struct xxcap_vq_request *vreq;
	struct xxcap_req *req;
	int ret;

	req = xxcap_req_alloc(card, XXCAP_KIND_SYNC, sizeof(*vreq),
			      sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	vreq->req_type = cpu_to_le32(type);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	ret = xxcap_submit(card, req, 0, deadline,
			   intr ? 0 : XXCAP_SUBMIT_UNINTR);
	if (ret)
		goto out_free;
	ret = xxcap_wait(card, req, deadline, intr);
	if (ret)
		return ret;	/* orphaned: freed when the card gives it back */
	ret = xxcap_short_status(card, req, what);
out_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * Takes one of @client's @limit slots counted by *@n (n_submitted or
 * n_buffers) and *@unread (their completion records not read yet): a slot
 * is given back when read() takes the completion record, so the queue
 * always has room for the completions an open can be owed.
 */
int xxcap_reserve(struct xxcap_card *card, unsigned int *n,
		  const unsigned int *unread, unsigned int limit)
{
	int ret = 0;

	spin_lock_irq(&card->lock);
	if (*n + *unread >= limit)
		ret = -ENOSPC;
	else
		(*n)++;
	spin_unlock_irq(&card->lock);
	return ret;
}

void xxcap_unreserve(struct xxcap_card *card, unsigned int *n)
{
	spin_lock_irq(&card->lock);
	(*n)--;
	spin_unlock_irq(&card->lock);
}

/*
 * Resets the device and takes every request back: waiters get -ENODEV,
 * async requests become records (DMA_ERROR with status DEVICE, or
 * FRAME_DONE with status CANCELLED) for the files still open, and every
 * page is unpinned. Then deletes the queues.
 */
void xxcap_shutdown(struct xxcap_card *card)
{
	struct virtio_device *vdev = card->vdev;
	struct xxcap_req *req;
	LIST_HEAD(free_list);
	void *buf;

	/* After the reset the device touches no buffer and no callback runs. */
	virtio_reset_device(vdev);

	spin_lock_irq(&card->lock);
	WRITE_ONCE(card->gone, true);
	while ((req = virtqueue_detach_unused_buf(card->cmd_vq))) {
		card->n_inflight--;
		xxcap_req_returned(card, req, 0, -ENODEV, &free_list);
	}
	while ((req = virtqueue_detach_unused_buf(card->stream_vq))) {
		card->n_stream--;
		xxcap_req_returned(card, req, 0, -ENODEV, &free_list);
	}
	while ((buf = virtqueue_detach_unused_buf(card->evt_vq)))
		kfree(buf);
	WARN_ON(card->n_inflight || card->n_stream);
	WRITE_ONCE(card->done_seq, card->done_seq + 1);
	spin_unlock_irq(&card->lock);

	vdev->config->del_vqs(vdev);

	/* The callbacks can no longer queue work: finish the reaping here. */
	cancel_work_sync(&card->reap_work);
	spin_lock_irq(&card->lock);
	/* Returned before the reset: retired first, records in order */
	list_splice_init(&card->reap_list, &free_list);
	card->cmd_vq = NULL;
	card->evt_vq = NULL;
	card->stream_vq = NULL;
	card->vdev = NULL;
	spin_unlock_irq(&card->lock);
	xxcap_retire(card, &free_list);
	WARN_ON(card->n_unrecorded);
}
