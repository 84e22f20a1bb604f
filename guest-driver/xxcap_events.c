// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: event records and completions. The event queue (its buffers
 * and callback), the per-open record queue, the completion records of
 * asynchronous requests, and read(), poll() and SUBSCRIBE.
 */

#include <linux/kfifo.h>
#include <linux/ktime.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>

#include "xxcap_drv.h"

/* Whether read() has a record for @client (ring entries are not records). */
static bool xxcap_client_readable(struct xxcap_client *client)
{
	return !kfifo_is_empty(&client->fifo) || READ_ONCE(client->lost);
}

/* Completion records in @client's queue, which do not count against depth */
static unsigned int xxcap_client_unread(const struct xxcap_client *client)
{
	return client->unread_submits + client->unread_buffers;
}

/*
 * Queues the device event @ev for @client, or drops it when the client
 * already holds depth device events. The first event queued after drops is
 * a LOST record counting them, so that it stands where they would have
 * been. Under card->lock.
 */
void xxcap_client_push(struct xxcap_card *card,
		       struct xxcap_client *client,
		       const struct xxcap_event *ev)
{
	unsigned int need = client->lost ? 2 : 1;
	unsigned int events;

	lockdep_assert_held(&card->lock);
	events = kfifo_len(&client->fifo) - xxcap_client_unread(client);
	if (events + need > client->depth) {
		if (client->lost < U32_MAX)
			WRITE_ONCE(client->lost, client->lost + 1);
		atomic64_inc(&card->events_dropped);
	} else {
		if (client->lost) {
			struct xxcap_event lost = {
				.cause = XXCAP_EVENT_LOST,
				.guest_time_ns = ev->guest_time_ns,
				.count = client->lost,
			};

			kfifo_put(&client->fifo, lost);
			WRITE_ONCE(client->lost, 0);
		}
		kfifo_put(&client->fifo, *ev);
	}
	/* Also for a drop: a buffer flush may wait on its counters. */
	wake_up(&client->wq);
}

/*
 * Queues the completion record @ev for @client. It always fits: the
 * request held a completion slot (xxcap_reserve()) since its ioctl, which
 * read() gives back when it takes the record. A LOST record still owed
 * stays owed: it counts device events only, and precedes the next one.
 * Under card->lock.
 */
void xxcap_client_complete(struct xxcap_card *card,
			   struct xxcap_client *client,
			   const struct xxcap_event *ev)
{
	lockdep_assert_held(&card->lock);
	if (WARN_ON_ONCE(!kfifo_put(&client->fifo, *ev)))
		atomic64_inc(&card->events_dropped);
	else if (ev->cause == XXCAP_IRQ_FRAME_DONE)
		client->unread_buffers++;
	else
		client->unread_submits++;
	wake_up(&client->wq);
}

/* The completion record of @req, which the card gave back (or reset took). */
static void xxcap_req_event(struct xxcap_card *card, struct xxcap_req *req,
			    struct xxcap_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->flags = XXCAP_EVENT_FLAG_COMPLETION;
	ev->request_id = req->id;
	ev->refcon = req->refcon;
	ev->guest_time_ns = ktime_get_ns();

	if (req->kind == XXCAP_KIND_BUFFER || req->kind == XXCAP_KIND_VB2) {
		const struct xxcap_stream_result *res = req->out;

		ev->cause = XXCAP_IRQ_FRAME_DONE;
		if (req->result) {
			/* Taken back at reset, which cancels held buffers */
			ev->status = XXCAP_TF_CANCELLED;
		} else if (req->used_len != sizeof(*res) ||
			   le32_to_cpu(res->status) != XXCAP_VQ_OK) {
			dev_err_ratelimited(&card->dev,
					    "capture buffer refused: %u bytes, status %u\n",
					    req->used_len, le32_to_cpu(res->status));
			ev->status = XXCAP_TF_DEVICE;
		} else {
			ev->status = le32_to_cpu(res->error);
			ev->frame_number = le64_to_cpu(res->frame_number);
			ev->device_time_ns = le64_to_cpu(res->device_time_ns);
			ev->count = le32_to_cpu(res->bytes);
		}
		return;
	}

	/* A submitted task file: its header and the transport status */
	if (req->result) {
		ev->status = XXCAP_TF_DEVICE;
	} else {
		const struct xxcap_tf_header *hdr = req->out;
		const struct xxcap_vq_status *vst =
			req->out + req->out_len - sizeof(*vst);
		u32 status = le32_to_cpu(vst->status);

		if (req->used_len == req->out_len && status == XXCAP_VQ_OK) {
			xxcap_dma_finish(card, req);
			ev->status = hdr->error;
			ev->count = hdr->count;
			ev->device_time_ns = le64_to_cpu(vst->device_time_ns);
		} else {
			dev_err_ratelimited(&card->dev,
					    "submitted request refused: %u bytes, status %u\n",
					    req->used_len, status);
			ev->status = XXCAP_TF_DEVICE;
		}
	}
	ev->cause = ev->status == XXCAP_TF_OK ? XXCAP_IRQ_DMA_DONE :
						XXCAP_IRQ_DMA_ERROR;
}

/*
 * Turns the async request @req, back from the card, into a completion
 * record for the file that started it, unless that was closed; a vb2
 * buffer goes back to the V4L2 node. Under card->lock.
 */
void xxcap_req_record(struct xxcap_card *card, struct xxcap_req *req)
{
	struct xxcap_client *client = req->client;
	struct xxcap_event ev;

	lockdep_assert_held(&card->lock);
	req->recorded = true;
	xxcap_req_event(card, req, &ev);
	if (req->kind == XXCAP_KIND_VB2) {
		card->n_vb2--;
		xxcap_vb2_done(card, req, &ev);
		return;
	}
	if (!client)
		return;		/* its file was closed: nobody reads it */

	list_del_init(&req->client_node);
	req->client = NULL;
	if (req->kind == XXCAP_KIND_SUBMIT) {
		client->n_submitted--;
	} else {
		client->n_buffers--;
		WRITE_ONCE(client->bufs_done, client->bufs_done + 1);
	}
	atomic64_inc(&card->completions);
	xxcap_client_complete(card, client, &ev);
}

/*
 * Retires requests the card gave back: unpins their pages, makes the
 * completion records still owed (in the order the card returned them) and
 * frees them. Process context.
 */
void xxcap_retire(struct xxcap_card *card, struct list_head *list)
{
	struct xxcap_req *req, *tmp;

	list_for_each_entry_safe(req, tmp, list, node) {
		list_del(&req->node);
		/* Unpinned first: whoever reads the record finds them free. */
		xxcap_unpin(req);
		if (xxcap_req_recorded_kind(req) && !req->recorded) {
			spin_lock_irq(&card->lock);
			xxcap_req_record(card, req);
			card->n_unrecorded--;
			spin_unlock_irq(&card->lock);
		}
		xxcap_req_free(req);
	}
}

void xxcap_reap_work(struct work_struct *work)
{
	struct xxcap_card *card = container_of(work, struct xxcap_card,
					       reap_work);
	LIST_HEAD(list);

	spin_lock_irq(&card->lock);
	list_splice_init(&card->reap_list, &list);
	spin_unlock_irq(&card->lock);
	xxcap_retire(card, &list);
}

/*
 * Hands the records of one event buffer (@len bytes written) to every open
 * that subscribed to their cause; LOST records go to every open that
 * subscribed to anything. A record equal to the one before it is dropped:
 * the card numbers its records (a LOST record too), so no two in a row are
 * equal unless one was written twice, and passing it on would show one
 * event twice (a V4L2 node counting drops would count one drop twice).
 * Under card->lock.
 */
static void xxcap_evt_deliver(struct xxcap_card *card, const void *buf,
			      unsigned int len)
{
	struct xxcap_client *client;
	struct xxcap_event ev;
	unsigned int off;
	u64 now;

	if (len % XXCAP_EVENT_SIZE || len > XXCAP_EVENT_BUFFER_SIZE) {
		dev_warn_ratelimited(&card->dev,
				     "event buffer of %u bytes dropped\n", len);
		return;
	}
	now = ktime_get_ns();
	for (off = 0; off < len; off += XXCAP_EVENT_SIZE) {
		memcpy(&ev, buf + off, sizeof(ev));
		atomic64_inc(&card->events);
		if (ev.cause == XXCAP_EVENT_RING_WAKE) {
			/* A wake-up for the ring's owner, not a record */
			xxcap_ring_wake(card);
			continue;
		}
		if (!memcmp(&ev, &card->evt_last, sizeof(ev))) {
			atomic64_inc(&card->events_repeated);
			continue;
		}
		card->evt_last = ev;
		ev.guest_time_ns = now;
		if (card->v4l2_drops)
			xxcap_vb2_event(card, &ev);
		list_for_each_entry(client, &card->clients, node) {
			u32 want = ev.cause == XXCAP_EVENT_LOST ?
				   client->mask : client->mask & ev.cause;

			if (want)
				xxcap_client_push(card, client, &ev);
		}
	}
}

/*
 * Delivers the event buffers the card has filled and reposts them. Returns
 * whether the queue needs a kick. Under card->lock.
 */
static bool xxcap_evt_drain(struct xxcap_card *card)
{
	struct virtqueue *vq = card->evt_vq;
	struct scatterlist sg;
	unsigned int len;
	bool kick = false;
	void *buf;

	while ((buf = virtqueue_get_buf(vq, &len))) {
		xxcap_evt_deliver(card, buf, len);
		sg_init_one(&sg, buf, XXCAP_EVENT_BUFFER_SIZE);
		if (virtqueue_add_inbuf(vq, &sg, 1, buf, GFP_ATOMIC)) {
			/* Not expected: its own slot was just freed. */
			dev_warn_ratelimited(&card->dev,
					     "cannot repost an event buffer\n");
			kfree(buf);
			continue;
		}
		kick = true;
	}
	return kick;
}

/* Event-queue callback (interrupt context): delivers, then reposts. */
void xxcap_evt_done(struct virtqueue *vq)
{
	struct xxcap_card *card = vq->vdev->priv;
	unsigned long flags;
	bool kick = false;

	spin_lock_irqsave(&card->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		kick |= xxcap_evt_drain(card);
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	if (kick)
		virtqueue_kick(vq);
	spin_unlock_irqrestore(&card->lock, flags);
}

/*
 * Takes the records the card has already delivered, from any context that
 * holds card->lock: the stream queue's callback calls it for each buffer
 * it takes back, so that the records the card made before that buffer's
 * frame (its OVERFLOW records) are seen first, whichever queue's
 * interrupt is handled first.
 */
void xxcap_evt_poll(struct xxcap_card *card)
{
	lockdep_assert_held(&card->lock);
	if (xxcap_evt_drain(card))
		virtqueue_kick(card->evt_vq);
}

/* Posts the buffers the card writes event records into. */
void xxcap_evt_fill(struct xxcap_card *card)
{
	void *bufs[XXCAP_EVENT_BUFFERS];
	struct scatterlist sg;
	unsigned int i, n;

	for (n = 0; n < XXCAP_EVENT_BUFFERS; n++) {
		/* Zeroed: a short write by the card leaks nothing. */
		bufs[n] = kzalloc(XXCAP_EVENT_BUFFER_SIZE, GFP_KERNEL);
		if (!bufs[n])
			break;
	}

	spin_lock_irq(&card->lock);
	for (i = 0; i < n; i++) {
		sg_init_one(&sg, bufs[i], XXCAP_EVENT_BUFFER_SIZE);
		if (virtqueue_add_inbuf(card->evt_vq, &sg, 1, bufs[i],
					GFP_ATOMIC))
			break;
	}
	if (i)
		virtqueue_kick(card->evt_vq);
	spin_unlock_irq(&card->lock);

	if (i < XXCAP_EVENT_BUFFERS)
		dev_warn(&card->dev, "%u of %u event buffers posted\n", i,
			 XXCAP_EVENT_BUFFERS);
	for (; i < n; i++)
		kfree(bufs[i]);
}

/*
 * Moves whole records from @client's queue to @buf, in batches through the
 * bounce buffer so that completions can be counted as read (giving their
 * slots back), and so that a fault loses no record. Returns 0 or -EFAULT;
 * *@copied grows by the bytes moved. Under read_mutex.
 */
static int xxcap_read_records(struct xxcap_client *client, char __user *buf,
			      size_t count, unsigned int *copied)
{
	struct xxcap_card *card = client->card;
	const size_t size = sizeof(struct xxcap_event);

	while (count - *copied >= size) {
		unsigned int want = min_t(size_t, (count - *copied) / size,
					  XXCAP_READ_BATCH);
		unsigned int n, i, submits = 0, buffers = 0;

		n = kfifo_out_peek(&client->fifo, client->bounce, want);
		if (!n)
			break;
		if (copy_to_user(buf + *copied, client->bounce, n * size))
			return -EFAULT;
		/* Taken only now that user space has them (one consumer). */
		for (i = 0; i < n; i++)
			kfifo_skip(&client->fifo);
		*copied += n * size;
		for (i = 0; i < n; i++) {
			const struct xxcap_event *ev = &client->bounce[i];

			if (!(ev->flags & XXCAP_EVENT_FLAG_COMPLETION))
				continue;
			if (ev->cause == XXCAP_IRQ_FRAME_DONE)
				buffers++;
			else
				submits++;
		}
		if (submits || buffers) {
			spin_lock_irq(&card->lock);
			client->unread_submits -= submits;
			client->unread_buffers -= buffers;
			spin_unlock_irq(&card->lock);
		}
	}
	return 0;
}

/*
 * Whole records, at least one: blocks until one is queued. A LOST record
 * still owed once the queue is empty follows the last record. The ring's
 * owner does not block while its CQ holds entries, nor after a RING_WAKE
 * (-EAGAIN instead, as there is no record to return).
 */
ssize_t xxcap_read(struct file *file, char __user *buf, size_t count,
		   loff_t *ppos)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	struct xxcap_event lost = { .cause = XXCAP_EVENT_LOST };
	unsigned int copied = 0;
	ssize_t ret;

	if (count < sizeof(struct xxcap_event))
		return -EINVAL;
	/* More than the queue can hold is never needed. */
	count = min_t(size_t, count,
		      (size_t)(kfifo_size(&client->fifo) + 1) *
		      sizeof(struct xxcap_event));
	count = rounddown(count, sizeof(struct xxcap_event));

	if (mutex_lock_interruptible(&client->read_mutex))
		return -ERESTARTSYS;
	while (!xxcap_client_readable(client)) {
		if (READ_ONCE(card->gone)) {
			ret = -ENODEV;
			goto out;
		}
		if ((file->f_flags & O_NONBLOCK) ||
		    xxcap_ring_ready(client, true)) {
			ret = -EAGAIN;
			goto out;
		}
		/* Nothing taken yet: a signal loses nothing. */
		ret = wait_event_interruptible(client->wq,
					       xxcap_client_readable(client) ||
					       READ_ONCE(card->gone) ||
					       xxcap_ring_ready(client, false));
		if (ret)
			goto out;
	}

	/* Lock-free: the producers only add, under card->lock. */
	ret = xxcap_read_records(client, buf, count, &copied);
	if (!ret && count - copied >= sizeof(lost)) {
		spin_lock_irq(&card->lock);
		if (kfifo_is_empty(&client->fifo)) {
			lost.count = client->lost;
			WRITE_ONCE(client->lost, 0);
		}
		spin_unlock_irq(&card->lock);
		if (lost.count) {
			lost.guest_time_ns = ktime_get_ns();
			if (copy_to_user(buf + copied, &lost, sizeof(lost)))
				ret = -EFAULT;
			else
				copied += sizeof(lost);
		}
	}
	if (copied)
		ret = copied;
out:
	mutex_unlock(&client->read_mutex);
	return ret;
}

__poll_t xxcap_poll(struct file *file, poll_table *wait)
{
	struct xxcap_client *client = file->private_data;
	__poll_t mask = 0;

	poll_wait(file, &client->wq, wait);
	if (xxcap_client_readable(client) || xxcap_ring_ready(client, true))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (READ_ONCE(client->card->gone))
		mask |= EPOLLHUP | EPOLLERR;
	return mask;
}

/* SUBSCRIBE: which device causes this open receives; returns the old mask. */
int xxcap_subscribe(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_card *card = client->card;
	struct xxcap_subscribe arg;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags || (arg.mask & ~XXCAP_IRQ_CAUSES))
		return -EINVAL;
	if (arg.mask && !(card->id.capabilities & XXCAP_CAP_EVENTS))
		return -EOPNOTSUPP;

	spin_lock_irq(&card->lock);
	swap(arg.mask, client->mask);
	spin_unlock_irq(&card->lock);
	return copy_to_user(argp, &arg, sizeof(arg)) ? -EFAULT : 0;
}
