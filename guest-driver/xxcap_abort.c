// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: ABORT. Cancels task files an open submitted and capture
 * buffers it queued that the card has not started: the driver names them
 * by their request ids (the wire tags) in one ABORT request, and the card
 * returns each one it still holds with CANCELLED before it answers. Every
 * request then completes exactly once through the usual path (unpin,
 * completion record in the slot its ioctl reserved): cancelled, or with
 * its own result when it had already started.
 */

#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "xxcap_drv.h"

/* Requests one open can have outstanding: submitted task files, buffers */
#define XXCAP_ABORT_TAGS	(XXCAP_MAX_SUBMITTED + XXCAP_MAX_QUEUED_BUFFERS)

static_assert(XXCAP_ABORT_TAGS <= XXCAP_MAX_ABORT_TAGS);

/*
 * Puts the ids of @client's outstanding requests (all, or the one with
 * @id) into @tags, at most XXCAP_ABORT_TAGS. Returns how many.
 */
static unsigned int xxcap_abort_collect(struct xxcap_client *client, u64 id,
					bool all, __le64 *tags)
{
	struct xxcap_card *card = client->card;
	struct xxcap_req *req;
	unsigned int n = 0;

	spin_lock_irq(&card->lock);
	list_for_each_entry(req, &client->reqs, client_node) {
		if (n == XXCAP_ABORT_TAGS)
			break;
		if (all || req->id == id)
			tags[n++] = cpu_to_le64(req->id);
		if (!all && n)
			break;
	}
	spin_unlock_irq(&card->lock);
	return n;
}

int xxcap_abort(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_card *card = client->card;
	struct xxcap_vq_request *vreq;
	struct xxcap_abort arg;
	struct xxcap_req *req;
	unsigned long deadline;
	unsigned int n;
	bool all;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if ((arg.flags & ~XXCAP_ABORT_ALL) || arg.reserved)
		return -EINVAL;
	all = arg.flags & XXCAP_ABORT_ALL;
	/* ALL names no request; without it, one request is named. */
	if (all != !arg.request_id)
		return -EINVAL;

	req = xxcap_req_alloc(card, XXCAP_KIND_SYNC,
			      sizeof(*vreq) + XXCAP_ABORT_TAGS * sizeof(__le64),
			      sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	n = xxcap_abort_collect(client, arg.request_id, all,
				req->in + sizeof(*vreq));
	if (!n) {
		/* Nothing outstanding; a single id is not this open's. */
		ret = all ? 0 : -ENOENT;
		goto out_free;
	}
	/* The readable part is exactly the header and the tags. */
	req->in_len = sizeof(*vreq) + n * sizeof(__le64);
	vreq->req_type = cpu_to_le32(XXCAP_REQ_ABORT);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	deadline = jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card));
	ret = xxcap_submit(card, req, 0, deadline, 0);
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		goto out_free;
	}
	ret = xxcap_wait(card, req, deadline, true);
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		return ret;	/* orphaned: freed when the card gives it back */
	}
	ret = xxcap_short_status(card, req, "abort");
out_free:
	xxcap_req_free(req);
	return ret;
}
