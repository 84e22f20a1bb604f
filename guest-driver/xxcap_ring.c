// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: submission and completion rings (device SPEC section 15).
 * Owner tags of controlling opens, RING_SETUP and RING_ENTER, the ring's
 * teardown at close, the wake-ups the card asks for, and the CQ state
 * poll() and read() look at.
 *
 * The card reads the ring's task files from the ring area and runs them
 * itself: the driver never sees them. What it controls is who owns the
 * ring: the controlling open that set it up, named to the card by its
 * owner tag, which also tags that open's registered buffers, so that ring
 * task files reach no other open's memory. The ring is torn down (and
 * waited for) before the open's registered buffers are unpinned; a card
 * that does not answer keeps those buffers pinned until remove(), as it
 * would without a ring (xxcap_regbuf.c).
 */

#include <linux/jiffies.h>
#include <linux/uaccess.h>

#include "xxcap_drv.h"

/*
 * The owner tag of a new controlling open: a per-card counter that skips
 * 0. It wraps after 2^32 controlling opens of one card; by then no buffer
 * or ring of the open that had the same tag is left, unless a card that
 * stopped answering still holds them (they stay until remove()).
 */
u32 xxcap_ring_new_owner(struct xxcap_card *card)
{
	lockdep_assert_held(&card->lock);
	card->last_owner++;
	if (!card->last_owner)
		card->last_owner = 1;
	return card->last_owner;
}

/*
 * The owner tag REGISTER_BUFFER carries for @client's buffers: its own
 * with a card that offers rings; 0 (the reserved field of ABI 2.2 and
 * earlier) with one that does not, which refuses anything else.
 */
u32 xxcap_ring_buffer_owner(const struct xxcap_client *client)
{
	if (client->card->id.capabilities & XXCAP_CAP_RING)
		return client->owner;
	return 0;
}

/* The card offers rings and its ring area was mapped at probe. */
bool xxcap_ring_available(const struct xxcap_card *card)
{
	return (card->id.capabilities & XXCAP_CAP_RING) && card->ring;
}

/* The kernel's view of the ring header. Only while the card is not gone. */
static struct xxcap_ring_header *xxcap_ring_hdr(struct xxcap_card *card)
{
	return card->shm_virt + card->ring_off;
}

/* The errno of a RING_SETUP answer (the status as ATTACH places it). */
static int xxcap_ring_status(struct xxcap_card *card, struct xxcap_req *req)
{
	const struct xxcap_vq_status *vst = req->out;
	u32 status;

	if (req->result)
		return req->result;
	status = le32_to_cpu(vst->status);
	if (req->used_len < offsetof(struct xxcap_vq_status, device_time_ns) ||
	    req->used_len > sizeof(*vst)) {
		dev_dbg(&card->dev, "RING_SETUP: %u bytes\n", req->used_len);
		return -EIO;
	}
	switch (status) {
	case XXCAP_VQ_OK:
		return 0;
	case XXCAP_VQ_UNSUPPORTED:
		return -EOPNOTSUPP;
	case XXCAP_VQ_BAD_REQUEST:
		return -EINVAL;
	default:
		dev_dbg(&card->dev, "RING_SETUP: status %u\n", status);
		return -EIO;
	}
}

/*
 * Sends RING_SETUP for @owner (0: tear the ring down) and waits for the
 * answer, uninterruptibly (close runs it for a dying process too), up to
 * timeout_ms. Returns 0 when the card answered OK, the errno of another
 * answer, -ENODEV when the card went away, or -ETIMEDOUT / -ENOMEM with
 * the request orphaned or never sent.
 */
static int xxcap_ring_send(struct xxcap_card *card, u32 owner, u32 flags,
			   u32 sq_idle_us)
{
	struct xxcap_ring_setup_req *setup;
	struct xxcap_vq_request *vreq;
	struct xxcap_req *req;
	unsigned long deadline;
	int ret;

	req = xxcap_req_alloc(card, XXCAP_KIND_SYNC,
			      sizeof(*vreq) + sizeof(*setup),
			      sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	setup = req->in + sizeof(*vreq);
	vreq->req_type = cpu_to_le32(XXCAP_REQ_RING_SETUP);
	setup->owner = cpu_to_le32(owner);
	setup->flags = cpu_to_le32(flags);
	setup->sq_idle_us = cpu_to_le32(sq_idle_us);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	deadline = jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card));
	ret = xxcap_submit(card, req, 0, deadline, XXCAP_SUBMIT_UNINTR);
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		goto out_free;
	}
	ret = xxcap_wait(card, req, deadline, false);
	if (ret) {
		atomic64_inc(&card->timeouts);
		return ret;	/* orphaned: freed when the card gives it back */
	}
	ret = xxcap_ring_status(card, req);
out_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * RING_SETUP: makes the card set up the ring area as this open's rings.
 * Once per open (-EBUSY after that); not while the V4L2 node streams,
 * whose capture registers ring task files could change unchecked.
 */
int xxcap_ring_setup(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_ring_setup __user *uarg = argp;
	struct xxcap_card *card = client->card;
	struct xxcap_ring_setup arg;
	enum xxcap_ring_state was;
	int ret = 0;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (!xxcap_ring_available(card))
		return -EOPNOTSUPP;
	if ((arg.flags & ~XXCAP_RING_SETUP_SQPOLL) || arg.reserved ||
	    arg.sq_idle_us > XXCAP_RING_MAX_SQ_IDLE_US)
		return -EINVAL;
	/* Before anything is sent: a bad pointer changes nothing. */
	if (put_user((u32)XXCAP_RING_AREA_SIZE, &uarg->area_size))
		return -EFAULT;

	spin_lock_irq(&card->lock);
	was = client->ring_state;
	if (card->gone)
		ret = -ENODEV;
	else if (was == XXCAP_RING_SETTING || was == XXCAP_RING_ACTIVE)
		ret = -EBUSY;
	else if (card->v4l2_streaming)
		ret = -EBUSY;	/* the node owns capture */
	if (!ret) {
		WRITE_ONCE(client->ring_state, XXCAP_RING_SETTING);
		card->ring_client = client;
	}
	spin_unlock_irq(&card->lock);
	if (ret)
		return ret;

	ret = xxcap_ring_send(card, client->owner, arg.flags, arg.sq_idle_us);

	spin_lock_irq(&card->lock);
	if (!ret) {
		WRITE_ONCE(client->ring_state, XXCAP_RING_ACTIVE);
		client->ring_woken = false;
	} else if (ret == -ETIMEDOUT || was == XXCAP_RING_UNKNOWN) {
		/* The card may yet set it up: torn down at close. */
		WRITE_ONCE(client->ring_state, XXCAP_RING_UNKNOWN);
	} else {
		WRITE_ONCE(client->ring_state, XXCAP_RING_NONE);
	}
	if (client->ring_state == XXCAP_RING_NONE)
		card->ring_client = NULL;
	spin_unlock_irq(&card->lock);
	return ret;
}

/*
 * RING_ENTER: sends RING_KICK and returns at once; the request is freed
 * when the card gives it back (or remove() takes it back), whether the
 * open is still there or not.
 */
int xxcap_ring_enter(struct xxcap_client *client)
{
	struct xxcap_card *card = client->card;
	struct xxcap_vq_request *vreq;
	struct xxcap_req *req;
	int ret = 0;

	if (!xxcap_ring_available(card))
		return -EOPNOTSUPP;
	if (READ_ONCE(client->ring_state) != XXCAP_RING_ACTIVE)
		return -EINVAL;

	req = xxcap_req_alloc(card, XXCAP_KIND_KICK, sizeof(*vreq),
			      sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	vreq->req_type = cpu_to_le32(XXCAP_REQ_RING_KICK);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	spin_lock_irq(&card->lock);
	if (card->n_kicks >= XXCAP_MAX_RING_KICKS)
		ret = -EAGAIN;
	else
		card->n_kicks++;
	spin_unlock_irq(&card->lock);
	if (ret)
		goto out_free;

	ret = xxcap_submit(card, req, 0, jiffies, XXCAP_SUBMIT_NONBLOCK);
	if (!ret) {
		atomic64_inc(&card->ring_kicks);
		return 0;	/* the card owns req now */
	}
	spin_lock_irq(&card->lock);
	card->n_kicks--;
	spin_unlock_irq(&card->lock);
out_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * A RING_KICK came back (@req->result 0) or was taken back at reset. A
 * refusal is counted: nobody waits for the answer. Under card->lock.
 */
void xxcap_ring_kick_done(struct xxcap_card *card, struct xxcap_req *req)
{
	const struct xxcap_vq_status *vst = req->out;

	lockdep_assert_held(&card->lock);
	card->n_kicks--;
	if (req->result)
		return;
	if (req->used_len < offsetof(struct xxcap_vq_status, device_time_ns) ||
	    req->used_len > sizeof(*vst) ||
	    le32_to_cpu(vst->status) != XXCAP_VQ_OK) {
		atomic64_inc(&card->ring_kick_errors);
		dev_dbg_ratelimited(&card->dev, "RING_KICK: %u bytes, status %u\n",
				    req->used_len, le32_to_cpu(vst->status));
	}
}

/*
 * Close: tears down the ring @client holds (or may hold) and waits, so
 * that no ring task file can use the registered buffers released next.
 * Not sent to a card that is gone (its reset tore the ring down) or
 * stalled (see xxcap_regbuf_drop(): it would wait the whole time limit
 * again; the buffers then stay pinned until remove()).
 */
void xxcap_ring_release(struct xxcap_client *client)
{
	struct xxcap_card *card = client->card;
	enum xxcap_ring_state state;
	int ret = -ENODEV;

	spin_lock_irq(&card->lock);
	state = client->ring_state;
	spin_unlock_irq(&card->lock);

	if (state != XXCAP_RING_NONE && !READ_ONCE(card->gone)) {
		if (READ_ONCE(card->stalled))
			ret = -ETIMEDOUT;
		else
			ret = xxcap_ring_send(card, 0, 0, 0);
		if (ret && ret != -ENODEV)
			dev_warn_ratelimited(&card->dev,
					     "ring of owner %u not torn down at close: %d\n",
					     client->owner, ret);
	}

	spin_lock_irq(&card->lock);
	WRITE_ONCE(client->ring_state, XXCAP_RING_NONE);
	if (card->ring_client == client)
		card->ring_client = NULL;
	spin_unlock_irq(&card->lock);
}

/*
 * A RING_WAKE record: the card posted a CQ entry while the owner had
 * armed its CQ. Wakes the owner's readers and pollers, and makes the next
 * poll() or read() of the owner return to user space even if the CQ is
 * empty by then; keeps no record. Under card->lock.
 *
 * Why the wake-up is kept: the card clears ARMED before it sends the
 * record, and that clear can land after the application armed again for
 * its next sleep (arming an ARMED CQ changes nothing the card can see).
 * Swallowed inside a poll() that finds the CQ empty, the wake-up would
 * leave the application asleep with ARMED clear, and no later entry would
 * wake it. Returned to user space, it has the application arm again.
 */
void xxcap_ring_wake(struct xxcap_card *card)
{
	struct xxcap_client *client = card->ring_client;

	lockdep_assert_held(&card->lock);
	atomic64_inc(&card->ring_wakeups);
	if (!client)
		return;
	client->ring_woken = true;
	wake_up(&client->wq);
}

/*
 * Whether @client has something of its ring to look at: a RING_WAKE not
 * reported yet (taken if @consume), or CQ entries not consumed (cq_tail,
 * which the card writes, differs from cq_head, which the application
 * writes). Any context: the wait condition of read() runs it too. Called
 * after the caller joined client->wq; the full barrier orders that before
 * the loads of the indices, pairing with the card's barrier between
 * posting an entry and reading cq_flags (SPEC 15), so that an entry the
 * loads miss comes with a RING_WAKE that finds the caller on the queue.
 */
bool xxcap_ring_ready(struct xxcap_client *client, bool consume)
{
	struct xxcap_card *card = client->card;
	const struct xxcap_ring_header *hdr;
	unsigned long flags;
	bool ready = false;

	if (READ_ONCE(client->ring_state) != XXCAP_RING_ACTIVE)
		return false;
	/* Wait-queue entry before the index loads (see above) */
	smp_mb();
	spin_lock_irqsave(&card->lock, flags);
	/* The mapping goes after remove() has set gone under the lock. */
	if (!card->gone && client->ring_state == XXCAP_RING_ACTIVE) {
		hdr = xxcap_ring_hdr(card);
		ready = client->ring_woken ||
			READ_ONCE(hdr->cq_tail) != READ_ONCE(hdr->cq_head);
		if (consume)
			client->ring_woken = false;
	}
	spin_unlock_irqrestore(&card->lock, flags);
	return ready;
}

/* The owner tag of the open whose ring is set up, or 0 (sysfs). */
u32 xxcap_ring_owner(struct xxcap_card *card)
{
	struct xxcap_client *client;
	u32 owner = 0;

	spin_lock_irq(&card->lock);
	client = card->ring_client;
	if (client && client->ring_state == XXCAP_RING_ACTIVE)
		owner = client->owner;
	spin_unlock_irq(&card->lock);
	return owner;
}
