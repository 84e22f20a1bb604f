// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: task files. EXEC runs one and waits for its result;
 * SUBMIT starts one and returns, its completion arriving as a record.
 */

#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/uaccess.h>

#include "xxcap_drv.h"

/* Registers the V4L2 node programs: task files may not write them while it streams. */
static bool xxcap_capture_reg(u16 reg)
{
	switch (reg) {
	case XXCAP_REG_CONTROL:
	case XXCAP_REG_FRAME_FORMAT:
	case XXCAP_REG_FRAME_WIDTH:
	case XXCAP_REG_FRAME_HEIGHT:
	case XXCAP_REG_FRAME_RATE:
	case XXCAP_REG_FRAME_SOURCE:
	case XXCAP_REG_RING_RELEASE:
		return true;
	default:
		return false;
	}
}

/* The (validated) task file @hdr writes a capture register. */
static bool xxcap_tf_writes_capture(const struct xxcap_tf_header *hdr)
{
	const struct xxcap_cmd *cmds = (const void *)hdr + XXCAP_HDR_SIZE;
	u32 i;

	for (i = 0; i < hdr->count; i++) {
		switch (cmds[i].op) {
		case XXCAP_OP_SET_ADDRESS:
		case XXCAP_OP_SET_REGISTER:
		case XXCAP_OP_CLEAR_REGISTER:
		case XXCAP_OP_SET_TO_REGISTER:
			if (xxcap_capture_reg(cmds[i].reg))
				return true;
			break;
		default:
			break;
		}
	}
	return false;
}

/*
 * Validates the task file of @size bytes already in @req and, if it passes,
 * checks that its registered buffers are @client's, pins its DMA buffers
 * and maps the request (no DMA for the driver's own task files: @client
 * NULL). A task file refused by validation keeps its request, with *@err
 * and the failing index in its header, and nothing pinned. On error the
 * caller frees @req.
 */
static int xxcap_tf_prepare(struct xxcap_card *card, struct xxcap_req *req,
			    u32 size, struct xxcap_client *client, u32 *err)
{
	struct xxcap_vq_request *vreq = req->in;
	struct xxcap_tf_header *hdr = req->in + sizeof(*vreq);
	bool async = req->kind == XXCAP_KIND_SUBMIT;
	u32 index;
	int ret;

	*err = xxcap_validate(card, hdr, size, async, &index);
	if (*err == XXCAP_TF_OK && client && card->dma) {
		ret = xxcap_regbuf_resolve(client, req,
					   (void *)hdr + XXCAP_HDR_SIZE,
					   hdr->count, err, &index);
		if (ret)
			return ret;
	}
	if (*err != XXCAP_TF_OK) {
		atomic64_inc(&card->rejected);
		hdr->error = *err;
		hdr->count = index;
		return 0;
	}

	if (client && card->dma) {
		ret = xxcap_dma_prepare(card, req, (void *)hdr + XXCAP_HDR_SIZE,
					hdr->count);
		if (ret)
			return ret;
	}

	/* reserved: zero (kvzalloc); tag: the request id */
	vreq->req_type = cpu_to_le32(XXCAP_REQ_EXEC_TASK_FILE);
	if (async)
		vreq->flags = cpu_to_le32(XXCAP_VQ_FLAG_ASYNC);
	vreq->sg_count = cpu_to_le32(req->n_sgt);
	return xxcap_req_map(req);
}

static struct xxcap_req *xxcap_tf_alloc(struct xxcap_card *card,
					enum xxcap_req_kind kind, u32 size)
{
	return xxcap_req_alloc(card, kind,
			       sizeof(struct xxcap_vq_request) + size,
			       size + sizeof(struct xxcap_vq_status));
}

/*
 * Reads the task file of @size bytes at @utf into a new request of @kind
 * and prepares it (xxcap_tf_prepare()). While the V4L2 node streams, a
 * task file that writes a capture register is refused with -EBUSY.
 */
static int xxcap_tf_build(struct xxcap_client *client, enum xxcap_req_kind kind,
			  void __user *utf, u32 size, struct xxcap_req **reqp,
			  u32 *err)
{
	struct xxcap_card *card = client->card;
	struct xxcap_tf_header *hdr;
	struct xxcap_req *req;
	int ret;

	req = xxcap_tf_alloc(card, kind, size);
	if (!req)
		return -ENOMEM;
	hdr = req->in + sizeof(struct xxcap_vq_request);
	if (copy_from_user(hdr, utf, size)) {
		ret = -EFAULT;
		goto err_free;
	}
	ret = xxcap_tf_prepare(card, req, size, client, err);
	if (ret)
		goto err_free;
	if (*err == XXCAP_TF_OK && READ_ONCE(card->v4l2_streaming) &&
	    xxcap_tf_writes_capture(hdr)) {
		ret = -EBUSY;
		goto err_free;
	}
	*reqp = req;
	return 0;

err_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * The size class of the prepared task file in @req, for its round-trip
 * estimate: by its commands plus a kibibyte of DMA (pinned or registered
 * buffer) counted as one command, two powers of two per class.
 */
static unsigned int xxcap_tf_class(const struct xxcap_req *req)
{
	const struct xxcap_tf_header *hdr = req->in +
					    sizeof(struct xxcap_vq_request);
	const struct xxcap_cmd *cmds = (const void *)hdr + XXCAP_HDR_SIZE;
	u64 units = hdr->count;
	u32 i;

	for (i = 0; i < hdr->count; i++) {
		switch (cmds[i].op) {
		case XXCAP_OP_DMA_TRANSFER_BLOCK:
		case XXCAP_OP_DMA_TRANSFER_NONBLOCK:
		case XXCAP_OP_DMA_BUFFER:
			units += cmds[i].length >> 10;
			break;
		default:
			break;
		}
	}
	return min_t(unsigned int, fls64(units) / 2, XXCAP_EST_CLASSES - 1);
}

/*
 * Learns the round trip of @req (class @cls) that came back: a moving
 * average over about the last eight of its class. Racing updates may lose
 * a sample, which an estimate can afford.
 */
static void xxcap_tf_learn(struct xxcap_card *card, struct xxcap_req *req,
			   unsigned int cls)
{
	u64 sample = req->done_ns - req->kick_ns;
	u32 est = READ_ONCE(card->exec_est_ns[cls]);

	if (req->done_ns < req->kick_ns)
		return;
	sample = min_t(u64, sample, U32_MAX);
	if (est)
		sample = est - est / 8 + sample / 8;
	WRITE_ONCE(card->exec_est_ns[cls], max_t(u32, sample, 1));
}

/*
 * How long after the kick to spin for @req (class @cls) in @mode: 0 for
 * not at all, U64_MAX until it is back. Hybrid spins for up to twice the
 * expected round trip, and only when that is known and short: a late
 * completion costs one interrupt on top of the spin, and a long task file
 * (DMA of megabytes) would hold the CPU for nothing. An estimate learned
 * only from interrupts includes their latency, so a class just above the
 * limit is spun for now and then (one EXEC in XXCAP_HYBRID_PROBE): it
 * comes back below the limit once its task files are quick again.
 */
static u64 xxcap_tf_spin_ns(struct xxcap_card *card, enum xxcap_exec_wait mode,
			    unsigned int cls)
{
	u32 est;

	switch (mode) {
	case XXCAP_EXEC_WAIT_POLL:
		return U64_MAX;
	case XXCAP_EXEC_WAIT_HYBRID:
		est = READ_ONCE(card->exec_est_ns[cls]);
		if (!est || est > 4 * XXCAP_HYBRID_MAX_NS)
			return 0;
		if (est > XXCAP_HYBRID_MAX_NS)
			return atomic_inc_return(&card->exec_probe) %
			       XXCAP_HYBRID_PROBE ? 0 : XXCAP_HYBRID_MAX_NS;
		return min_t(u64, 2ULL * est, XXCAP_HYBRID_MAX_NS);
	default:
		return 0;
	}
}

/*
 * Runs the prepared task file @req (@count commands) and waits for it as
 * @mode says, sleeping interruptibly if @intr (always for a spin); @learn:
 * an EXEC, whose round trip is learned and whose wait is counted. Returns 0
 * with the result in req->out and @req the caller's again; otherwise @req
 * was freed, or orphaned to the card, and the caller must forget it.
 */
static int xxcap_tf_run(struct xxcap_card *card, struct xxcap_req *req,
			u32 count, enum xxcap_exec_wait mode, bool intr,
			bool learn)
{
	const struct xxcap_vq_status *vst;
	unsigned int cls = xxcap_tf_class(req);
	u64 spin = xxcap_tf_spin_ns(card, mode, cls);
	unsigned long deadline;
	bool caught = false;
	u32 status;
	int ret;

	deadline = jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card));
	if (spin)
		xxcap_poll_begin(card);
	ret = xxcap_submit(card, req, count, deadline,
			   intr ? 0 : XXCAP_SUBMIT_UNINTR);
	if (ret) {
		if (spin)
			xxcap_poll_end(card, false);
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		goto out_free;
	}

	if (spin) {
		u64 until = spin == U64_MAX ? U64_MAX : req->kick_ns + spin;

		/* ends polling */
		ret = xxcap_wait_polled(card, req, deadline, until, &caught);
	} else {
		ret = xxcap_wait(card, req, deadline, intr);
	}
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		return ret;	/* orphaned: the device still owns req and its pins */
	}

	/* Back from the device: req is ours again. */
	if (learn && !req->result) {
		xxcap_tf_learn(card, req, cls);
		if (spin)
			atomic64_inc(&card->exec_spins);
		atomic64_inc(caught ? &card->exec_polled : &card->exec_irq);
	}
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
	vst = req->out + req->out_len - sizeof(*vst);
	status = le32_to_cpu(vst->status);
	if (status != XXCAP_VQ_OK) {
		dev_err_ratelimited(&card->dev, "request refused, status %u\n",
				    status);
		ret = -EIO;
		goto out_free;
	}
	xxcap_dma_finish(card, req);
	return 0;

out_free:
	xxcap_req_free(req);
	return ret;
}

int xxcap_exec(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_card *card = client->card;
	struct xxcap_tf_header *hdr;
	struct xxcap_exec arg;
	struct xxcap_req *req;
	void __user *utf;
	u32 err;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags & ~XXCAP_EXEC_POLL)
		return -EINVAL;
	if (arg.size < XXCAP_HDR_SIZE || arg.size > XXCAP_MAX_TF_SIZE)
		return -EINVAL;
	utf = u64_to_user_ptr(arg.task_file);

	ret = xxcap_tf_build(client, XXCAP_KIND_SYNC, utf, arg.size, &req, &err);
	if (ret)
		return ret;
	hdr = req->in + sizeof(struct xxcap_vq_request);
	if (err != XXCAP_TF_OK) {
		ret = copy_to_user(utf, hdr, XXCAP_HDR_SIZE) ? -EFAULT : 0;
		goto out_free;
	}

	ret = xxcap_tf_run(card, req, hdr->count,
			   arg.flags & XXCAP_EXEC_POLL ? XXCAP_EXEC_WAIT_POLL :
			   READ_ONCE(xxcap_exec_wait), true, true);
	if (ret)
		return ret;
	ret = copy_to_user(utf, req->out, arg.size) ? -EFAULT : 0;

out_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * Executes the register-only task file @cmds (@count commands) for the
 * driver itself, waiting uninterruptibly up to timeout_ms. On 0, *@err is
 * the task file's XXCAP_TF_* error (the driver's validation or the
 * card's), @cmds hold the results, and *@device_time_ns the card's clock
 * when it executed them (0 if refused by validation).
 */
int xxcap_exec_kernel(struct xxcap_card *card, struct xxcap_cmd *cmds,
		      u32 count, u32 *err, u64 *device_time_ns)
{
	u32 size = XXCAP_HDR_SIZE + count * sizeof(*cmds);
	const struct xxcap_vq_status *vst;
	const struct xxcap_tf_header *res;
	struct xxcap_tf_header *hdr;
	struct xxcap_req *req;
	int ret;

	if (!count || size > XXCAP_MAX_TF_SIZE)
		return -EINVAL;
	req = xxcap_tf_alloc(card, XXCAP_KIND_SYNC, size);
	if (!req)
		return -ENOMEM;
	hdr = req->in + sizeof(struct xxcap_vq_request);
	hdr->count = count;
	memcpy(hdr + 1, cmds, count * sizeof(*cmds));
	*device_time_ns = 0;
	ret = xxcap_tf_prepare(card, req, size, NULL, err);
	if (ret || *err != XXCAP_TF_OK)
		goto out_free;

	ret = xxcap_tf_run(card, req, count, XXCAP_EXEC_WAIT_INTERRUPT, false,
			   false);
	if (ret)
		return ret;
	res = req->out;
	vst = req->out + size;
	*err = res->error;
	*device_time_ns = le64_to_cpu(vst->device_time_ns);
	memcpy(cmds, res + 1, count * sizeof(*cmds));

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
	ret = xxcap_tf_build(client, XXCAP_KIND_SUBMIT,
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
	deadline = jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card));
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
