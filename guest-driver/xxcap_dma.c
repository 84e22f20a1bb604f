// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: DMA. Pinning of the user buffers of DMA commands and of
 * capture buffers, the guest-physical SG tables that describe them to the
 * card, and their release.
 */

#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/slab.h>

#include "xxcap_drv.h"

/* Gives back the pinned pages of @req (those the card wrote dirtied). */
void xxcap_unpin(struct xxcap_req *req)
{
	unsigned long total = 0;
	unsigned int i;

	for (i = 0; i < req->n_dma; i++) {
		struct xxcap_dma *d = &req->dma[i];
		struct page **pages = req->pages + d->first_page;

		if (!d->n_pinned)
			continue;
		if (d->to_user)
			unpin_user_pages_dirty_lock(pages, d->n_pinned, true);
		else
			unpin_user_pages(pages, d->n_pinned);
		total += d->n_pinned;
		d->n_pinned = 0;
	}
	if (total)
		atomic64_sub(total, &req->card->pinned_pages);
}

static bool xxcap_is_dma(const struct xxcap_cmd *cmd)
{
	return cmd->op == XXCAP_OP_DMA_TRANSFER_BLOCK ||
	       cmd->op == XXCAP_OP_DMA_TRANSFER_NONBLOCK;
}

/* Most bytes the DMA commands of one task file may pin together. */
static u64 xxcap_dma_limit(const struct xxcap_card *card)
{
	u64 size = card->id.card_ram_size;

	return min_t(u64, size > U64_MAX / 2 ? U64_MAX : size * 2,
		     XXCAP_MAX_DMA_BYTES);
}

/*
 * Records the DMA commands of the (validated) task file of @req and the pages
 * their buffers span. Returns the number of pages, or a negative error.
 */
static long xxcap_dma_collect(struct xxcap_card *card, struct xxcap_req *req,
			      const struct xxcap_cmd *cmds, u32 count)
{
	u64 limit = xxcap_dma_limit(card), total = 0, end;
	unsigned long pages = 0;
	unsigned int i, n = 0;

	for (i = 0; i < count; i++)
		n += xxcap_is_dma(&cmds[i]);
	if (!n)
		return 0;
	req->dma = kvcalloc(n, sizeof(*req->dma), GFP_KERNEL_ACCOUNT);
	if (!req->dma)
		return -ENOMEM;

	for (i = 0; i < count; i++) {
		const struct xxcap_cmd *cmd = &cmds[i];
		struct xxcap_dma *d;

		if (!xxcap_is_dma(cmd))
			continue;
		/* The buffer must not wrap around the address space. */
		if (check_add_overflow(cmd->value, cmd->length, &end))
			return -EFAULT;
		/* Bounded, so that user space cannot pin unbounded memory. */
		if (check_add_overflow(total, cmd->length, &total) ||
		    total > limit)
			return -EINVAL;
		d = &req->dma[req->n_dma++];
		d->index = i;
		d->to_user = cmd->reg == XXCAP_DMA_FROM_CARD;
		d->user_value = cmd->value;
		d->length = cmd->length;
		d->first_page = pages;
		d->n_pages = DIV_ROUND_UP(offset_in_page(cmd->value) +
					  cmd->length, PAGE_SIZE);
		pages += d->n_pages;
	}
	return pages;
}

/*
 * Pins the buffers of the DMA commands: all of every one, or -EFAULT.
 * @gup_flags: added to FOLL_WRITE for the buffers the card writes.
 */
static int xxcap_dma_pin(struct xxcap_card *card, struct xxcap_req *req,
			 unsigned int gup_flags)
{
	unsigned int i;
	int ret;

	for (i = 0; i < req->n_dma; i++) {
		struct xxcap_dma *d = &req->dma[i];

		/* n_pages fits an int: bounded by XXCAP_MAX_DMA_BYTES. */
		ret = pin_user_pages_fast(d->user_value, d->n_pages,
					  gup_flags | (d->to_user ? FOLL_WRITE : 0),
					  req->pages + d->first_page);
		if (ret > 0) {
			/* Owned by the request from here: see xxcap_unpin(). */
			d->n_pinned = ret;
			atomic64_add(ret, &card->pinned_pages);
		}
		if (ret != d->n_pages)
			return ret == -ENOMEM ? -ENOMEM : -EFAULT;
	}
	return 0;
}

int xxcap_sg_emit(struct xxcap_req *req, unsigned int max,
		  phys_addr_t addr, u64 len)
{
	struct xxcap_sg_entry *e;

	if (req->n_sgt >= max)
		return -EINVAL;
	e = &req->sgt[req->n_sgt++];
	e->addr = cpu_to_le64(addr);
	e->len = cpu_to_le32(len);
	e->reserved = 0;
	return 0;
}

/*
 * Adds the physically contiguous piece [@pa, @pa + @chunk) to the run
 * (*@addr, *@len), emitting the run when the piece does not extend it.
 */
int xxcap_sg_grow(struct xxcap_req *req, unsigned int max,
		  phys_addr_t *addr, u64 *len, phys_addr_t pa, u64 chunk)
{
	int ret;

	if (*len && *addr + *len == pa && *len + chunk <= XXCAP_MAX_SG_LEN) {
		*len += chunk;
		return 0;
	}
	if (*len) {
		ret = xxcap_sg_emit(req, max, *addr, *len);
		if (ret)
			return ret;
	}
	*addr = pa;
	*len = chunk;
	return 0;
}

/*
 * Describes the pinned buffers to the card: one run of SG entries per DMA
 * command, in command order, physically contiguous pieces merged. The wire
 * copy of each DMA command (in @cmds, unless NULL) gets the index of its
 * first entry as its value.
 */
static int xxcap_dma_build_sg(struct xxcap_req *req, struct xxcap_cmd *cmds,
			      unsigned long pages)
{
	unsigned int max = min_t(unsigned long, pages, XXCAP_MAX_SG_ENTRIES);
	unsigned int i;
	int ret;

	/* Every page starts at most one entry: max entries are enough. */
	req->sgt = kvmalloc_array(max, sizeof(*req->sgt), GFP_KERNEL_ACCOUNT);
	if (!req->sgt)
		return -ENOMEM;

	for (i = 0; i < req->n_dma; i++) {
		const struct xxcap_dma *d = &req->dma[i];
		size_t off = offset_in_page(d->user_value);
		unsigned int first = req->n_sgt;
		u64 left = d->length, len = 0;
		phys_addr_t addr = 0;
		unsigned long p;

		for (p = 0; p < d->n_pages; p++) {
			phys_addr_t pa = page_to_phys(req->pages[d->first_page + p]) + off;
			u64 chunk = min_t(u64, left, PAGE_SIZE - off);

			ret = xxcap_sg_grow(req, max, &addr, &len, pa, chunk);
			if (ret)
				return ret;
			left -= chunk;
			off = 0;
		}
		ret = xxcap_sg_emit(req, max, addr, len);
		if (ret)
			return ret;
		if (cmds)
			cmds[d->index].value = first;
	}
	return 0;
}

/*
 * Describes a buffer the DMA API mapped (@sgt, a vb2 plane) to the card as
 * the SG table of @req. Its DMA addresses are guest-physical: the card is
 * used for streaming only when it needs no IOMMU (card->dma). Nothing is
 * pinned here: the buffer's owner keeps it until the request comes back.
 */
int xxcap_buffer_from_sgt(struct xxcap_req *req, struct sg_table *sgt)
{
	unsigned int max = min_t(unsigned int, sgt->nents,
				 XXCAP_MAX_SG_ENTRIES);
	struct scatterlist *sg;
	phys_addr_t addr = 0;
	u64 len = 0;
	unsigned int i;
	int ret;

	if (!max)
		return -EINVAL;
	req->sgt = kvmalloc_array(max, sizeof(*req->sgt), GFP_KERNEL_ACCOUNT);
	if (!req->sgt)
		return -ENOMEM;
	for_each_sgtable_dma_sg(sgt, sg, i) {
		ret = xxcap_sg_grow(req, max, &addr, &len, sg_dma_address(sg),
				    sg_dma_len(sg));
		if (ret)
			return ret;
	}
	return xxcap_sg_emit(req, max, addr, len);
}

/* Pins the DMA buffers of the task file in @req and adds its SG table. */
int xxcap_dma_prepare(struct xxcap_card *card, struct xxcap_req *req,
		      struct xxcap_cmd *cmds, u32 count)
{
	long pages;
	int ret;

	pages = xxcap_dma_collect(card, req, cmds, count);
	if (pages <= 0)
		return pages;
	req->pages = kvmalloc_array(pages, sizeof(*req->pages),
				    GFP_KERNEL_ACCOUNT);
	if (!req->pages)
		return -ENOMEM;
	ret = xxcap_dma_pin(card, req, 0);
	if (ret)
		return ret;
	return xxcap_dma_build_sg(req, cmds, pages);
}

/*
 * Pins the capture buffer [@addr, @addr + @len) of @req for the card to
 * write and builds its SG table. Long-term: the card may hold it for as
 * long as capture is stopped.
 */
int xxcap_buffer_prepare(struct xxcap_card *card, struct xxcap_req *req,
			 u64 addr, u64 len)
{
	struct xxcap_dma *d;
	int ret;

	req->dma = kzalloc(sizeof(*req->dma), GFP_KERNEL_ACCOUNT);
	if (!req->dma)
		return -ENOMEM;
	req->n_dma = 1;
	d = &req->dma[0];
	d->to_user = true;
	d->user_value = addr;
	d->length = len;
	/* At most XXCAP_MAX_BUFFER_SIZE / PAGE_SIZE + 1 */
	d->n_pages = DIV_ROUND_UP(offset_in_page(addr) + len, PAGE_SIZE);
	req->pages = kvmalloc_array(d->n_pages, sizeof(*req->pages),
				    GFP_KERNEL_ACCOUNT);
	if (!req->pages)
		return -ENOMEM;
	ret = xxcap_dma_pin(card, req, FOLL_LONGTERM);
	if (ret)
		return ret;
	return xxcap_dma_build_sg(req, NULL, d->n_pages);
}

/*
 * Gives the DMA commands of the result their user values back and counts
 * the bytes moved by those the card executed.
 */
void xxcap_dma_finish(struct xxcap_card *card, struct xxcap_req *req)
{
	const struct xxcap_tf_header *res = req->out;
	struct xxcap_cmd *cmds = req->out + XXCAP_HDR_SIZE;
	u64 moved = 0;
	unsigned int i;

	for (i = 0; i < req->n_dma; i++) {
		const struct xxcap_dma *d = &req->dma[i];
		struct xxcap_cmd *cmd = &cmds[d->index];

		if (res->error == XXCAP_TF_OK || d->index < res->count)
			moved += min(cmd->length, d->length);
		cmd->value = d->user_value;
	}
	atomic64_add(moved, &card->dma_bytes);
}
