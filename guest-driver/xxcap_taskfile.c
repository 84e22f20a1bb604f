// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: task files. EXEC runs one and waits for its result;
 * SUBMIT starts one and returns, its completion arriving as a record.
 */

#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/uaccess.h>

#include "xxcap_drv.h"

/*
 * Reads the task file of @size bytes at @utf into a new request of @kind,
 * validates it and, if it passes, pins its DMA buffers and maps the
 * request. A task file refused by validation still gets its request, with
 * *@err and the failing index in its header, and nothing pinned.
 */
static int xxcap_tf_build(struct xxcap_card *card, enum xxcap_req_kind kind,
			  void __user *utf, u32 size, struct xxcap_req **reqp,
			  u32 *err)
{
	struct xxcap_vq_request *vreq;
	struct xxcap_tf_header *hdr;
	struct xxcap_req *req;
	u32 index;
	int ret;

	req = xxcap_req_alloc(card, kind, sizeof(*vreq) + size,
			      size + sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	hdr = req->in + sizeof(*vreq);
	if (copy_from_user(hdr, utf, size)) {
		ret = -EFAULT;
		goto err_free;
	}

	*err = xxcap_validate(card, hdr, size, &index);
	if (*err != XXCAP_TF_OK) {
		atomic64_inc(&card->rejected);
		hdr->error = *err;
		hdr->count = index;
		*reqp = req;
		return 0;
	}

	if (card->dma) {
		ret = xxcap_dma_prepare(card, req, (void *)hdr + XXCAP_HDR_SIZE,
					hdr->count);
		if (ret)
			goto err_free;
	}

	/* flags, reserved: zero (kvzalloc); tag: the request id */
	vreq->req_type = cpu_to_le32(XXCAP_REQ_EXEC_TASK_FILE);
	vreq->sg_count = cpu_to_le32(req->n_sgt);
	ret = xxcap_req_map(req);
	if (ret)
		goto err_free;
	*reqp = req;
	return 0;

err_free:
	xxcap_req_free(req);
	return ret;
}

int xxcap_exec(struct xxcap_card *card, void __user *argp)
{
	const struct xxcap_vq_status *vst;
	struct xxcap_tf_header *hdr;
	struct xxcap_exec arg;
	struct xxcap_req *req;
	void __user *utf;
	unsigned long deadline;
	u32 err, status;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags & ~XXCAP_EXEC_POLL)
		return -EINVAL;
	if (arg.size < XXCAP_HDR_SIZE || arg.size > XXCAP_MAX_TF_SIZE)
		return -EINVAL;
	utf = u64_to_user_ptr(arg.task_file);

	ret = xxcap_tf_build(card, XXCAP_KIND_SYNC, utf, arg.size, &req, &err);
	if (ret)
		return ret;
	hdr = req->in + sizeof(struct xxcap_vq_request);
	if (err != XXCAP_TF_OK) {
		ret = copy_to_user(utf, hdr, XXCAP_HDR_SIZE) ? -EFAULT : 0;
		goto out_free;
	}

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(xxcap_timeout_ms));
	if (arg.flags & XXCAP_EXEC_POLL)
		xxcap_poll_begin(card);
	ret = xxcap_submit(card, req, hdr->count, deadline, 0);
	if (ret) {
		if (arg.flags & XXCAP_EXEC_POLL)
			xxcap_poll_end(card, false);
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		goto out_free;
	}

	if (arg.flags & XXCAP_EXEC_POLL)
		ret = xxcap_wait_polled(card, req, deadline);	/* ends polling */
	else
		ret = xxcap_wait(card, req, deadline, true);
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		return ret;	/* orphaned: the device still owns req and its pins */
	}

	/* Back from the device: req is ours again. */
	if (req->result) {
		ret = req->result;
		goto out_free;
	}
	if (req->used_len != req->out_len) {
		dev_err_ratelimited(&card->dev,
				    "reply of %u bytes, expected %zu\n",
				    req->used_len, req->out_len);
		ret = -EIO;
		goto out_free;
	}
	vst = req->out + arg.size;
	status = le32_to_cpu(vst->status);
	if (status != XXCAP_VQ_OK) {
		dev_err_ratelimited(&card->dev, "request refused, status %u\n",
				    status);
		ret = -EIO;
		goto out_free;
	}
	xxcap_dma_finish(card, req);
	ret = copy_to_user(utf, req->out, arg.size) ? -EFAULT : 0;

out_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * SUBMIT: starts a task file and returns; its completion is a record. A
 * task file refused by validation completes at once.
 */
int xxcap_submit_tf(struct xxcap_client *client, struct file *file,
		    void __user *argp)
{
	struct xxcap_submit __user *uarg = argp;
	struct xxcap_card *card = client->card;
	struct xxcap_tf_header *hdr;
	struct xxcap_submit arg;
	struct xxcap_req *req;
	unsigned long deadline;
	u32 err;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags)
		return -EINVAL;
	if (arg.size < XXCAP_HDR_SIZE || arg.size > XXCAP_MAX_TF_SIZE)
		return -EINVAL;

	ret = xxcap_reserve(card, &client->n_submitted,
			    &client->unread_submits, XXCAP_MAX_SUBMITTED);
	if (ret)
		return ret;
	ret = xxcap_tf_build(card, XXCAP_KIND_SUBMIT,
			     u64_to_user_ptr(arg.task_file), arg.size, &req,
			     &err);
	if (ret)
		goto out_unreserve;
	req->refcon = arg.refcon;
	if (put_user(req->id, &uarg->request_id)) {
		ret = -EFAULT;
		goto out_free;
	}

	hdr = req->in + sizeof(struct xxcap_vq_request);
	if (err != XXCAP_TF_OK) {
		struct xxcap_event ev = {
			.cause = XXCAP_IRQ_DMA_ERROR,
			.status = hdr->error,
			.request_id = req->id,
			.refcon = req->refcon,
			.guest_time_ns = ktime_get_ns(),
			.count = hdr->count,
			.flags = XXCAP_EVENT_FLAG_COMPLETION,
		};

		spin_lock_irq(&card->lock);
		client->n_submitted--;
		atomic64_inc(&card->completions);
		xxcap_client_complete(card, client, &ev);
		spin_unlock_irq(&card->lock);
		xxcap_req_free(req);
		return 0;
	}

	req->client = client;
	deadline = jiffies + msecs_to_jiffies(READ_ONCE(xxcap_timeout_ms));
	ret = xxcap_submit(card, req, hdr->count, deadline,
			   file->f_flags & O_NONBLOCK ?
			   XXCAP_SUBMIT_NONBLOCK : 0);
	if (!ret)
		return 0;	/* the card owns req; its record frees the slot */
	if (ret == -ETIMEDOUT)
		atomic64_inc(&card->timeouts);

out_free:
	xxcap_req_free(req);
out_unreserve:
	xxcap_unreserve(card, &client->n_submitted);
	return ret;
}
