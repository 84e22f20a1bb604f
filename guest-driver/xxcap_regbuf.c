// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: registered buffers. REGISTER_BUFFER pins a user buffer once,
 * describes it to the card once (a REGISTER_BUFFER request carrying its SG
 * table) and gives it an id; XXCAP_OP_DMA_BUFFER commands of the same open
 * then name it by id and offset, and carry no SG entries of their own.
 *
 * Lifetime: a buffer is referenced by its open (until UNREGISTER_BUFFER or
 * close) and by every request whose task file names it. Its pages and its
 * id are given back when the last reference goes, so an id is never reused
 * while a request that names it may still reach the card. Before the
 * open's reference goes, the card is told to forget the buffer; the card
 * executes command-queue requests in order, so once that request is back,
 * no earlier one can still use the pages. If it does not come back (the
 * card hangs), the buffer stays pinned on card->lost_regbufs until the
 * reset of remove() guarantees the card touches nothing.
 */

#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "xxcap_drv.h"

/* Last reference gone: unpin, give back the id and the card's quota. */
static void xxcap_regbuf_free(struct kref *ref)
{
	struct xxcap_regbuf *rb = container_of(ref, struct xxcap_regbuf, ref);
	struct xxcap_card *card = rb->card;

	if (rb->n_pinned) {
		unpin_user_pages_dirty_lock(rb->pages, rb->n_pinned, true);
		atomic64_sub(rb->n_pinned, &card->pinned_pages);
	}
	kvfree(rb->pages);
	spin_lock_irq(&card->lock);
	card->n_regbufs--;
	card->regbuf_bytes -= rb->length;
	spin_unlock_irq(&card->lock);
	ida_free(&card->regbuf_ida, rb->id);
	kfree(rb);
	put_device(&card->dev);
}

/* Process context only: the last put unpins. */
void xxcap_regbuf_put(struct xxcap_regbuf *rb)
{
	kref_put(&rb->ref, xxcap_regbuf_free);
}

/*
 * Sends REGISTER_BUFFER (with the entries in @req->sgt) or
 * UNREGISTER_BUFFER for @rb and waits, uninterruptibly, up to timeout_ms.
 * Returns 0 when the card answered OK, -EIO when it refused, -ENODEV when
 * the card went away (it holds nothing then), or -ETIMEDOUT / -ENOMEM with
 * the request orphaned or never sent.
 */
static int xxcap_regbuf_send(struct xxcap_card *card, struct xxcap_req *req,
			     struct xxcap_regbuf *rb, bool reg)
{
	struct xxcap_vq_request *vreq = req->in;
	struct xxcap_buffer_desc *desc = req->in + sizeof(*vreq);
	unsigned long deadline;
	int ret;

	vreq->req_type = cpu_to_le32(reg ? XXCAP_REQ_REGISTER_BUFFER :
				      XXCAP_REQ_UNREGISTER_BUFFER);
	vreq->sg_count = cpu_to_le32(req->n_sgt);
	desc->id = cpu_to_le32(rb->id);
	desc->owner = cpu_to_le32(reg ? rb->owner : 0);
	desc->length = cpu_to_le64(reg ? rb->length : 0);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	deadline = jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card));
	ret = xxcap_submit(card, req, 0, deadline, XXCAP_SUBMIT_UNINTR);
	if (ret)
		goto out_free;
	ret = xxcap_wait(card, req, deadline, false);
	if (ret) {
		atomic64_inc(&card->timeouts);
		return ret;	/* orphaned: freed when the card gives it back */
	}
	ret = xxcap_short_status(card, req, reg ? "REGISTER_BUFFER" :
				 "UNREGISTER_BUFFER");
out_free:
	xxcap_req_free(req);
	return ret;
}

static struct xxcap_req *xxcap_regbuf_req(struct xxcap_card *card)
{
	return xxcap_req_alloc(card, XXCAP_KIND_SYNC,
			       sizeof(struct xxcap_vq_request) +
			       sizeof(struct xxcap_buffer_desc),
			       sizeof(struct xxcap_vq_status));
}

/*
 * The card is told to forget @rb (unless it went away), then the open's
 * reference goes. A buffer the card may still hold stays pinned until
 * remove(). A card that let a request outlive the time limit and has not
 * answered since (a dead backend, or one far behind) is not asked: the
 * UNREGISTER_BUFFER would wait the whole limit again, in close() too.
 */
static void xxcap_regbuf_drop(struct xxcap_card *card, struct xxcap_regbuf *rb)
{
	struct xxcap_req *req;
	int ret = -ENODEV;

	if (!READ_ONCE(card->gone)) {
		if (READ_ONCE(card->stalled)) {
			ret = -ETIMEDOUT;
		} else {
			req = xxcap_regbuf_req(card);
			ret = req ? xxcap_regbuf_send(card, req, rb, false) :
				    -ENOMEM;
		}
	}
	/* -EIO: the card refused, it does not hold the buffer (reset). */
	if (ret && ret != -EIO && ret != -ENODEV) {
		dev_warn_ratelimited(&card->dev,
				     "buffer %u kept pinned until remove: %d\n",
				     rb->id, ret);
		spin_lock_irq(&card->lock);
		list_add_tail(&rb->node, &card->lost_regbufs);
		spin_unlock_irq(&card->lock);
		return;
	}
	xxcap_regbuf_put(rb);
}

/* remove(), after the reset: the card holds no buffer any more. */
void xxcap_regbuf_reclaim(struct xxcap_card *card)
{
	struct xxcap_regbuf *rb, *tmp;
	LIST_HEAD(list);

	spin_lock_irq(&card->lock);
	list_splice_init(&card->lost_regbufs, &list);
	spin_unlock_irq(&card->lock);
	list_for_each_entry_safe(rb, tmp, &list, node) {
		list_del(&rb->node);
		xxcap_regbuf_put(rb);
	}
}

/* Pins all of @rb's pages for the card to read and write, or fails. */
static int xxcap_regbuf_pin(struct xxcap_card *card, struct xxcap_regbuf *rb)
{
	unsigned long addr = rb->addr & PAGE_MASK;
	int ret;

	while (rb->n_pinned < rb->n_pages) {
		unsigned long left = rb->n_pages - rb->n_pinned;

		ret = pin_user_pages_fast(addr + rb->n_pinned * PAGE_SIZE,
					  min_t(unsigned long, left, INT_MAX),
					  FOLL_WRITE | FOLL_LONGTERM,
					  rb->pages + rb->n_pinned);
		if (ret <= 0)
			return ret == -ENOMEM ? -ENOMEM : -EFAULT;
		rb->n_pinned += ret;
		atomic64_add(ret, &card->pinned_pages);
	}
	return 0;
}

/* The SG table of @rb's pinned pages, contiguous pages merged, into @req. */
static int xxcap_regbuf_build_sg(struct xxcap_req *req, struct xxcap_regbuf *rb)
{
	unsigned int max = min_t(unsigned long, rb->n_pages,
				 XXCAP_MAX_SG_ENTRIES);
	size_t off = offset_in_page(rb->addr);
	u64 left = rb->length, len = 0;
	phys_addr_t addr = 0;
	unsigned long p;
	int ret;

	req->sgt = kvmalloc_array(max, sizeof(*req->sgt), GFP_KERNEL_ACCOUNT);
	if (!req->sgt)
		return -ENOMEM;
	for (p = 0; p < rb->n_pages; p++) {
		phys_addr_t pa = page_to_phys(rb->pages[p]) + off;
		u64 chunk = min_t(u64, left, PAGE_SIZE - off);

		ret = xxcap_sg_grow(req, max, &addr, &len, pa, chunk);
		if (ret)
			return -E2BIG;	/* more entries than one request holds */
		left -= chunk;
		off = 0;
	}
	return xxcap_sg_emit(req, max, addr, len) ? -E2BIG : 0;
}

/* Takes one of the open's and of the card's registered-buffer slots. */
static int xxcap_regbuf_reserve(struct xxcap_client *client, u64 length)
{
	struct xxcap_card *card = client->card;
	int ret = 0;

	spin_lock_irq(&card->lock);
	if (client->n_regbufs >= XXCAP_MAX_REGISTERED_PER_OPEN ||
	    card->n_regbufs >= XXCAP_MAX_REGISTERED_PER_CARD ||
	    card->regbuf_bytes + length > XXCAP_MAX_REGISTERED_BYTES) {
		ret = -ENOSPC;
	} else {
		client->n_regbufs++;
		card->n_regbufs++;
		card->regbuf_bytes += length;
	}
	spin_unlock_irq(&card->lock);
	return ret;
}

static void xxcap_regbuf_unreserve(struct xxcap_client *client)
{
	spin_lock_irq(&client->card->lock);
	client->n_regbufs--;
	spin_unlock_irq(&client->card->lock);
}

int xxcap_register_buffer(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_register_buffer __user *uarg = argp;
	struct xxcap_card *card = client->card;
	struct xxcap_register_buffer arg;
	struct xxcap_regbuf *rb;
	struct xxcap_req *req;
	u64 end;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags || !arg.length)
		return -EINVAL;
	if (arg.length > XXCAP_MAX_REGISTERED_SIZE)
		return -E2BIG;
	if (check_add_overflow(arg.addr, arg.length, &end))
		return -EFAULT;
	if (!card->dma)
		return -EOPNOTSUPP;

	ret = xxcap_regbuf_reserve(client, arg.length);
	if (ret)
		return ret;
	ret = -ENOMEM;
	rb = kzalloc(sizeof(*rb), GFP_KERNEL_ACCOUNT);
	if (!rb)
		goto err_unreserve;
	ret = ida_alloc_range(&card->regbuf_ida, 1,
			      XXCAP_MAX_REGISTERED_PER_CARD, GFP_KERNEL);
	if (ret < 0)
		goto err_free_rb;
	/* From here on the last put gives the id and the card's quota back. */
	rb->id = ret;
	rb->card = card;
	kref_init(&rb->ref);
	INIT_LIST_HEAD(&rb->node);
	get_device(&card->dev);
	rb->owner = xxcap_ring_buffer_owner(client);
	rb->addr = arg.addr;
	rb->length = arg.length;
	rb->n_pages = DIV_ROUND_UP(offset_in_page(arg.addr) + arg.length,
				   PAGE_SIZE);

	ret = -ENOMEM;
	rb->pages = kvmalloc_array(rb->n_pages, sizeof(*rb->pages),
				   GFP_KERNEL_ACCOUNT);
	if (!rb->pages)
		goto err_put;
	ret = xxcap_regbuf_pin(card, rb);
	if (ret)
		goto err_put;

	ret = -ENOMEM;
	req = xxcap_regbuf_req(card);
	if (!req)
		goto err_put;
	ret = xxcap_regbuf_build_sg(req, rb);
	if (ret) {
		xxcap_req_free(req);
		goto err_put;
	}
	ret = xxcap_regbuf_send(card, req, rb, true);
	if (!ret && put_user(rb->id, &uarg->id))
		ret = -EFAULT;
	if (ret == -ETIMEDOUT || ret == -EFAULT)
		goto err_drop;	/* the card may hold it */
	if (ret)
		goto err_put;

	spin_lock_irq(&card->lock);
	list_add_tail(&rb->node, &client->regbufs);
	spin_unlock_irq(&card->lock);
	return 0;

err_drop:
	xxcap_regbuf_unreserve(client);
	xxcap_regbuf_drop(card, rb);
	return ret;
err_put:
	xxcap_regbuf_unreserve(client);
	xxcap_regbuf_put(rb);
	return ret;
err_free_rb:
	kfree(rb);
err_unreserve:
	spin_lock_irq(&card->lock);
	card->n_regbufs--;
	card->regbuf_bytes -= arg.length;
	spin_unlock_irq(&card->lock);
	xxcap_regbuf_unreserve(client);
	return ret;
}

/* The buffer @id of @client, or NULL. Under card->lock. */
static struct xxcap_regbuf *xxcap_regbuf_find(struct xxcap_client *client,
					      u32 id)
{
	struct xxcap_regbuf *rb;

	list_for_each_entry(rb, &client->regbufs, node)
		if (rb->id == id)
			return rb;
	return NULL;
}

int xxcap_unregister_buffer(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_card *card = client->card;
	struct xxcap_regbuf *rb;
	u32 id;

	if (get_user(id, (u32 __user *)argp))
		return -EFAULT;
	spin_lock_irq(&card->lock);
	rb = xxcap_regbuf_find(client, id);
	if (rb) {
		list_del_init(&rb->node);
		client->n_regbufs--;
	}
	spin_unlock_irq(&card->lock);
	if (!rb)
		return -EINVAL;
	xxcap_regbuf_drop(card, rb);
	return 0;
}

/* Close: every buffer of @client is forgotten and, once unused, unpinned. */
void xxcap_regbuf_release(struct xxcap_client *client)
{
	struct xxcap_card *card = client->card;
	struct xxcap_regbuf *rb, *tmp;
	LIST_HEAD(list);

	spin_lock_irq(&card->lock);
	list_splice_init(&client->regbufs, &list);
	client->n_regbufs = 0;
	spin_unlock_irq(&card->lock);
	list_for_each_entry_safe(rb, tmp, &list, node) {
		list_del_init(&rb->node);
		xxcap_regbuf_drop(card, rb);
	}
}

/*
 * The DMA_BUFFER commands of the validated task file @cmds (@count) must
 * name buffers of @client, inside them: otherwise *@err is DMA_FAULT and
 * *@index the command (the card would answer the same). On success @req
 * holds a reference to each buffer named, until it is freed.
 */
int xxcap_regbuf_resolve(struct xxcap_client *client, struct xxcap_req *req,
			 const struct xxcap_cmd *cmds, u32 count, u32 *err,
			 u32 *index)
{
	struct xxcap_card *card = client->card;
	struct xxcap_regbuf *rb;
	unsigned int n = 0;
	u32 i;
	u64 end;

	for (i = 0; i < count; i++)
		n += cmds[i].op == XXCAP_OP_DMA_BUFFER;
	if (!n)
		return 0;
	req->rbufs = kvcalloc(n, sizeof(*req->rbufs), GFP_KERNEL_ACCOUNT);
	if (!req->rbufs)
		return -ENOMEM;

	spin_lock_irq(&card->lock);
	for (i = 0; i < count; i++) {
		const struct xxcap_cmd *cmd = &cmds[i];

		if (cmd->op != XXCAP_OP_DMA_BUFFER)
			continue;
		rb = xxcap_regbuf_find(client, cmd->flags);
		if (!rb || check_add_overflow(cmd->value, cmd->length, &end) ||
		    end > rb->length) {
			*err = XXCAP_TF_DMA_FAULT;
			*index = i;
			break;
		}
		kref_get(&rb->ref);
		req->rbufs[req->n_rbufs++] = rb;
	}
	spin_unlock_irq(&card->lock);
	return 0;
}
