// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: virtio driver for the emulated "Double X" video-capture card.
 *
 * Each card gets a char device /dev/xxcaptureN. User space sends task
 * files (batches of register commands) with XXCAP_IOC_EXEC (synchronous)
 * or XXCAP_IOC_SUBMIT (asynchronous); the driver validates them against the
 * register table and passes each one to the card as a single request on the
 * command virtqueue. Capture buffers (XXCAP_IOC_QUEUE_BUFFER) go to the
 * stream virtqueue, one request each. The card reports interrupt causes as
 * event records on the event virtqueue; read() on a file returns the
 * records it subscribed to and the completions of its own requests.
 *
 * Request ownership: a request belongs to the thread that submitted it
 * until the device has taken it (virtqueue_add_sgs). From then on the
 * device owns the buffers until a queue callback gets them back
 * (virtqueue_get_buf) or remove() takes them back after a reset
 * (virtqueue_detach_unused_buf). A synchronous waiter that gives up
 * (signal, timeout) does not free the request: it marks it orphaned under
 * card->lock, and whoever takes it back from the device frees it.
 * Asynchronous requests (SUBMIT, QUEUE_BUFFER) always come back to the
 * driver: the reap work unpins their pages, then turns them into a
 * completion record for the file that started them, unless that file was
 * closed meanwhile (req->client is then NULL and the record is dropped).
 * All ownership decisions are made under card->lock.
 *
 * DMA: the pages of a DMA command's user buffer (or of a capture buffer)
 * are pinned before the request is sent and belong to the request: they are
 * unpinned exactly once, by xxcap_unpin(), before the request is freed, in
 * process context. So the device can never write to a page that has been
 * given back to the system.
 *
 * Events: each file has a FIFO of records, filled under card->lock (queue
 * callbacks, reap work) and emptied by one reader at a time (read_mutex)
 * without the lock, as kfifo allows for one producer and one consumer.
 *
 * Card RAM and the status block live in a virtio shared-memory region (a
 * PCI BAR). User mappings of it are filled on fault, under map_rwsem; all
 * files of a card share one address_space (an anonymous inode of the card),
 * so remove() can zap every mapping after making later faults fail with
 * SIGBUS.
 */

#include <linux/atomic.h>
#include <linux/bsearch.h>
#include <linux/cdev.h>
#include <linux/completion.h>
#include <linux/ctype.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/kfifo.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/poll.h>
#include <linux/pseudo_fs.h>
#include <linux/rwsem.h>
#include <linux/scatterlist.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <asm/unaligned.h>

#include "xxcapture_dev.h"

#ifdef __BIG_ENDIAN
#error "xxcapture passes task files and event records through unchanged: little-endian only"
#endif

#ifndef XXCAPTURE_VIRTIO_ID
#define XXCAPTURE_VIRTIO_ID	XXCAP_VIRTIO_ID_DEFAULT
#endif

#define XXCAP_MAX_CARDS		64
#define XXCAP_HDR_SIZE		XXCAP_TF_HEADER_SIZE
#define XXCAP_MAX_TF_SIZE	XXCAP_MAX_TASK_FILE_SIZE
/* Largest result buffer of a request: task-file result + transport status */
#define XXCAP_MAX_OUT_SIZE	(XXCAP_MAX_TF_SIZE + sizeof(struct xxcap_vq_status))
/* One entry per page touched, for any alignment of the buffer */
#define XXCAP_MAX_SG		(DIV_ROUND_UP(XXCAP_MAX_OUT_SIZE, PAGE_SIZE) + 1)
/*
 * Command-queue requests the device owns at once, orphans included: room
 * for one open's XXCAP_MAX_SUBMITTED plus synchronous callers, within the
 * 256 ring slots QEMU is given (one slot per request with indirect
 * descriptors).
 */
#define XXCAP_MAX_INFLIGHT	128
/* Task files one open may have submitted and not seen complete */
#define XXCAP_MAX_SUBMITTED	64
/* Capture buffers the device holds at once: one open's, plus one set of orphans */
#define XXCAP_MAX_STREAM_INFLIGHT	(2 * XXCAP_MAX_QUEUED_BUFFERS)
/* Event-queue buffers kept posted: 16 * 64 records */
#define XXCAP_EVENT_BUFFERS	16
/* Absolute limit of the bytes one task file may pin, whatever the card RAM */
#define XXCAP_MAX_DMA_BYTES	SZ_1G
/* Longest scatter-gather entry */
#define XXCAP_MAX_SG_LEN	U32_MAX
/* Causes an open may subscribe to */
#define XXCAP_IRQ_CAUSES	(XXCAP_IRQ_FRAME_DONE | XXCAP_IRQ_DMA_DONE | \
				 XXCAP_IRQ_DMA_ERROR | XXCAP_IRQ_OVERFLOW | \
				 XXCAP_IRQ_TEST)

#define XXCAP_MMAP_PGOFF_RAM	(XXCAP_MMAP_OFFSET_CARD_RAM >> PAGE_SHIFT)
#define XXCAP_MMAP_PGOFF_STATUS	(XXCAP_MMAP_OFFSET_STATUS >> PAGE_SHIFT)
#define XXCAP_STATUS_MAP_SIZE	PAGE_ALIGN(XXCAP_STATUS_BLOCK_SIZE)

/* Magic of the pseudo file system holding the cards' address_spaces */
#define XXCAP_FS_MAGIC		0x78786366

#define XXCAP_TIMEOUT_MAX_MS	3600000U
#define XXCAP_DEPTH_MIN		16U
#define XXCAP_DEPTH_MAX		65536U

static unsigned int timeout_ms = 5000;

static int xxcap_timeout_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, 1, XXCAP_TIMEOUT_MAX_MS);
}

static const struct kernel_param_ops xxcap_timeout_ops = {
	.set = xxcap_timeout_set,
	.get = param_get_uint,
};

module_param_cb(timeout_ms, &xxcap_timeout_ops, &timeout_ms, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "Time limit of one task file in milliseconds (1..3600000, default 5000)");

static unsigned int event_queue_depth = 4096;

static int xxcap_depth_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, XXCAP_DEPTH_MIN, XXCAP_DEPTH_MAX);
}

static const struct kernel_param_ops xxcap_depth_ops = {
	.set = xxcap_depth_set,
	.get = param_get_uint,
};

module_param_cb(event_queue_depth, &xxcap_depth_ops, &event_queue_depth, 0644);
MODULE_PARM_DESC(event_queue_depth,
		 "Event records queued per open file (16..65536, default 4096; applies to later opens)");

static dev_t xxcap_devt;
static struct class *xxcap_class;
static struct vfsmount *xxcap_mnt;
static DEFINE_IDA(xxcap_ida);

enum {
	XXCAP_FLAG_WRITER,	/* a controlling (writable) open exists */
};

struct xxcap_card {
	struct device dev;		/* class device; its release frees us */
	struct cdev cdev;
	struct virtio_device *vdev;	/* not to be used once gone */
	struct virtqueue *cmd_vq;
	struct virtqueue *evt_vq;
	struct virtqueue *stream_vq;
	struct xxcap_identity id;	/* read once at probe, CPU byte order */
	int minor;
	unsigned long flags;
	bool dma;			/* DMA commands are passed to the card */
	struct inode *inode;		/* its i_mapping holds every user mapping */

	/* Card RAM + status block (virtio shared memory), set at probe */
	phys_addr_t shm_phys;
	u64 shm_len;
	void *shm_virt;			/* kernel mapping: reserves the memtype */
	bool shm_wc;			/* write-combining, not write-back */
	struct rw_semaphore map_rwsem;	/* protects shm_mapped */
	bool shm_mapped;		/* user mappings may be filled */

	spinlock_t lock;		/* protects the fields below */
	bool gone;			/* removed: no new requests */
	unsigned int n_inflight;	/* command-queue requests the device owns */
	unsigned int n_stream;		/* capture buffers the device owns */
	unsigned int pollers;		/* EXEC_POLL callers: callbacks off */
	unsigned int n_unrecorded;	/* async requests waiting for the work */
	unsigned long done_seq;		/* bumped whenever a request comes back */
	struct list_head reap_list;	/* returned orphans and async requests */
	struct list_head clients;	/* open files, for event routing */

	wait_queue_head_t slot_wq;	/* waiting for room in the queue */
	struct work_struct reap_work;	/* retires reap_list */

	atomic64_t next_id;		/* request ids (and wire tags) */
	atomic64_t requests;
	atomic64_t commands;
	atomic64_t rejected;
	atomic64_t timeouts;
	atomic64_t pinned_pages;
	atomic64_t dma_bytes;
	atomic64_t events;		/* records received from the card */
	atomic64_t events_dropped;	/* records a full open queue dropped */
	atomic64_t completions;		/* completion records made */
};

/* One open file of a card */
struct xxcap_client {
	struct xxcap_card *card;
	bool writer;			/* the controlling open */
	struct mutex read_mutex;	/* one consumer of fifo at a time */
	wait_queue_head_t wq;		/* readers, pollers, buffer flushes */
	struct xxcap_event *ring;	/* storage of fifo */
	unsigned int depth;		/* records fifo may hold */
	DECLARE_KFIFO_PTR(fifo, struct xxcap_event);

	/* Under card->lock (fifo: its producer side) */
	struct list_head node;		/* on card->clients */
	struct list_head reqs;		/* its async requests the card owns */
	u32 mask;			/* subscribed XXCAP_IRQ_* causes */
	u32 lost;			/* records dropped since the last LOST */
	unsigned int n_submitted;	/* SUBMITs without a record yet */
	unsigned int n_buffers;		/* capture buffers without a record yet */
	u64 bufs_queued;		/* capture buffers queued, ever */
	u64 bufs_done;			/* ... and retired */
};

/* A DMA command of a request and the user pages it pinned */
struct xxcap_dma {
	u32 index;			/* of the command in the task file */
	bool to_user;			/* FROM_CARD: the card writes the pages */
	u64 user_value;			/* buffer address, restored in the result */
	u64 length;
	unsigned long first_page;	/* in xxcap_req.pages */
	unsigned long n_pages;		/* pages the buffer spans */
	unsigned long n_pinned;		/* pinned so far */
};

enum xxcap_req_kind {
	XXCAP_KIND_SYNC,		/* EXEC, ATTACH, FLUSH: a thread waits */
	XXCAP_KIND_SUBMIT,		/* SUBMIT: completes as a record */
	XXCAP_KIND_BUFFER,		/* capture buffer: completes as a record */
};

/*
 * Device-readable: in (vq_request [+ task file]) then sgt (SG table);
 * device-writable: out ([task-file result +] vq_status, or stream result).
 */
struct xxcap_req {
	struct list_head node;		/* on card->reap_list */
	struct completion done;
	struct xxcap_card *card;
	enum xxcap_req_kind kind;
	u64 id;				/* request_id, and the wire tag */
	u64 refcon;			/* SUBMIT, BUFFER: echoed in the record */
	struct xxcap_client *client;	/* SUBMIT, BUFFER; NULL once orphaned */
	struct list_head client_node;	/* on client->reqs, under card->lock */
	void *in;
	size_t in_len;
	struct xxcap_sg_entry *sgt;	/* NULL without DMA commands */
	unsigned int n_sgt;
	void *out;
	size_t out_len;
	struct xxcap_dma *dma;		/* DMA commands, in command order */
	unsigned int n_dma;
	struct page **pages;		/* their pinned pages */
	u32 used_len;
	int result;			/* 0: returned by the device; or -ENODEV */
	bool completed;			/* under card->lock */
	bool orphan;			/* SYNC: the waiter left; under card->lock */
	bool recorded;			/* SUBMIT, BUFFER: record made */
	struct scatterlist *sg_in;	/* kvmalloc'd, for in + sgt */
	struct scatterlist sg_out[XXCAP_MAX_SG];
};

static inline struct xxcap_card *to_xxcap_card(struct device *dev)
{
	return container_of(dev, struct xxcap_card, dev);
}

/* ---- Task-file validation (mirrors the card's checks) ---- */

static int xxcap_reg_cmp(const void *key, const void *elt)
{
	u16 offset = *(const u16 *)key;
	const struct xxcap_reg_desc *desc = elt;

	if (offset < desc->offset)
		return -1;
	return offset > desc->offset;
}

/*
 * Every command of a task file looks its register up, so a lookup is worth
 * a table: slot offset / 4 holds the register's index in xxcap_regs[] plus
 * one (0: none). Built at module load; offsets beyond it use bsearch.
 */
#define XXCAP_REG_SLOTS 256
static u8 xxcap_reg_slot[XXCAP_REG_SLOTS];

static void xxcap_index_regs(void)
{
	unsigned int i, slot;

	BUILD_BUG_ON(ARRAY_SIZE(xxcap_regs) >= U8_MAX);
	for (i = 0; i < ARRAY_SIZE(xxcap_regs); i++) {
		slot = xxcap_regs[i].offset / 4;
		if (!(xxcap_regs[i].offset & 3) && slot < XXCAP_REG_SLOTS)
			xxcap_reg_slot[slot] = i + 1;
	}
}

static const struct xxcap_reg_desc *xxcap_find_reg(u16 offset)
{
	unsigned int slot = offset / 4;

	if (slot < XXCAP_REG_SLOTS) {
		if ((offset & 3) || !xxcap_reg_slot[slot])
			return NULL;
		return &xxcap_regs[xxcap_reg_slot[slot] - 1];
	}
	return bsearch(&offset, xxcap_regs, ARRAY_SIZE(xxcap_regs),
		       sizeof(xxcap_regs[0]), xxcap_reg_cmp);
}

static bool xxcap_value_allowed(const struct xxcap_card *card,
				const struct xxcap_reg_desc *desc, u64 value)
{
	unsigned int i;

	switch (desc->rule) {
	case XXCAP_RULE_ANY:
		return true;
	case XXCAP_RULE_ONE_OF:
		for (i = 0; i < desc->n_one_of; i++)
			if (value == desc->one_of[i])
				return true;
		return false;
	case XXCAP_RULE_EVEN_RANGE:
		if (value & 1)
			return false;
		fallthrough;
	case XXCAP_RULE_RANGE:
		return value >= desc->min && value <= desc->max;
	case XXCAP_RULE_CARD_RAM_OFFSET:
		return value < card->id.card_ram_size;
	default:
		/* A rule this driver does not know: leave it to the card. */
		return true;
	}
}

static u32 xxcap_check_cmd(const struct xxcap_card *card,
			   const struct xxcap_cmd *cmd)
{
	const struct xxcap_reg_desc *desc;
	bool addr_op;

	if (cmd->op > XXCAP_OP_DMA_TRANSFER_NONBLOCK)
		return XXCAP_TF_BAD_OP;
	if (cmd->flags)
		return XXCAP_TF_RESERVED;
	if (cmd->op == XXCAP_OP_DMA_TRANSFER_BLOCK ||
	    cmd->op == XXCAP_OP_DMA_TRANSFER_NONBLOCK) {
		u64 end;

		if (!card->dma)
			return XXCAP_TF_NOT_SUPPORTED;
		if (cmd->reg != XXCAP_DMA_TO_CARD &&
		    cmd->reg != XXCAP_DMA_FROM_CARD)
			return XXCAP_TF_BAD_VALUE;
		if (!cmd->length ||
		    check_add_overflow(cmd->mask, cmd->length, &end) ||
		    end > card->id.card_ram_size)
			return XXCAP_TF_DMA_RANGE;
		/* The buffer (value) is checked when its pages are pinned. */
		return XXCAP_TF_OK;
	}

	desc = xxcap_find_reg(cmd->reg);
	if (!desc)
		return XXCAP_TF_BAD_REGISTER;
	addr_op = cmd->op == XXCAP_OP_GET_ADDRESS ||
		  cmd->op == XXCAP_OP_SET_ADDRESS;
	if (desc->width != (addr_op ? 64 : 32))
		return XXCAP_TF_BAD_REGISTER;

	if (cmd->length)
		return XXCAP_TF_RESERVED;
	if (cmd->mask && cmd->op != XXCAP_OP_SET_TO_REGISTER)
		return XXCAP_TF_RESERVED;
	if (cmd->value && cmd->op == XXCAP_OP_CLEAR_REGISTER)
		return XXCAP_TF_RESERVED;

	/* The input value of a get is ignored: it is an output. */
	if (cmd->op == XXCAP_OP_GET_ADDRESS || cmd->op == XXCAP_OP_GET_REGISTER)
		return XXCAP_TF_OK;

	if (desc->access == XXCAP_ACCESS_RO)
		return XXCAP_TF_READ_ONLY;

	switch (cmd->op) {
	case XXCAP_OP_SET_REGISTER:
		if (cmd->value > U32_MAX)
			return XXCAP_TF_BAD_VALUE;
		if (cmd->value & ~desc->writable)
			return XXCAP_TF_READ_ONLY;
		break;
	case XXCAP_OP_SET_ADDRESS:
		if (cmd->value & ~desc->writable)
			return XXCAP_TF_READ_ONLY;
		break;
	case XXCAP_OP_SET_TO_REGISTER:
		if (cmd->mask > U32_MAX || cmd->value > U32_MAX)
			return XXCAP_TF_BAD_VALUE;
		if (cmd->mask & ~desc->writable)
			return XXCAP_TF_READ_ONLY;
		/* The result depends on the current value: the card checks. */
		return XXCAP_TF_OK;
	default:
		/* CLEAR_REGISTER: as above, the card checks the result. */
		return XXCAP_TF_OK;
	}

	if (desc->access == XXCAP_ACCESS_RW &&
	    !xxcap_value_allowed(card, desc, cmd->value))
		return XXCAP_TF_BAD_VALUE;
	return XXCAP_TF_OK;
}

/*
 * Validates a task file of @size bytes. Returns XXCAP_TF_OK, or an error
 * code with the index of the failing command in @index.
 */
static u32 xxcap_validate(const struct xxcap_card *card, const void *tf,
			  size_t size, u32 *index)
{
	const struct xxcap_tf_header *hdr = tf;
	const struct xxcap_cmd *cmds = tf + XXCAP_HDR_SIZE;
	u32 i, err;

	*index = 0;
	if (hdr->flags || hdr->reserved)
		return XXCAP_TF_RESERVED;
	if (hdr->count == 0 || hdr->count > XXCAP_MAX_COMMANDS ||
	    size != XXCAP_HDR_SIZE + (size_t)hdr->count * XXCAP_CMD_SIZE)
		return XXCAP_TF_BAD_COUNT;

	for (i = 0; i < hdr->count; i++) {
		err = xxcap_check_cmd(card, &cmds[i]);
		if (err != XXCAP_TF_OK) {
			*index = i;
			return err;
		}
	}
	return XXCAP_TF_OK;
}

/* ---- Requests ---- */

/* Gives back the pinned pages of @req (those the card wrote dirtied). */
static void xxcap_unpin(struct xxcap_req *req)
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

/* Process context only: unpinning may sleep. */
static void xxcap_req_free(struct xxcap_req *req)
{
	xxcap_unpin(req);
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
static struct xxcap_req *xxcap_req_alloc(struct xxcap_card *card,
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
static int xxcap_req_map(struct xxcap_req *req)
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

/* ---- DMA ---- */

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

static int xxcap_sg_emit(struct xxcap_req *req, unsigned int max,
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

			if (len && addr + len == pa &&
			    len + chunk <= XXCAP_MAX_SG_LEN) {
				len += chunk;
			} else {
				if (len) {
					ret = xxcap_sg_emit(req, max, addr, len);
					if (ret)
						return ret;
				}
				addr = pa;
				len = chunk;
			}
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

/* Pins the DMA buffers of the task file in @req and adds its SG table. */
static int xxcap_dma_prepare(struct xxcap_card *card, struct xxcap_req *req,
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
static int xxcap_buffer_prepare(struct xxcap_card *card, struct xxcap_req *req,
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
static void xxcap_dma_finish(struct xxcap_card *card, struct xxcap_req *req)
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

/* ---- Event records and completions ---- */

/* Whether read() has a record for @client. */
static bool xxcap_client_readable(struct xxcap_client *client)
{
	return !kfifo_is_empty(&client->fifo) || READ_ONCE(client->lost);
}

/*
 * Queues @ev for @client, or drops it when the client's queue is full.
 * The first record queued after drops is a LOST record counting them, so
 * that it stands where they would have been. Under card->lock.
 */
static void xxcap_client_push(struct xxcap_card *card,
			      struct xxcap_client *client,
			      const struct xxcap_event *ev)
{
	unsigned int need = client->lost ? 2 : 1;

	lockdep_assert_held(&card->lock);
	if (kfifo_len(&client->fifo) + need > client->depth) {
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

/* The completion record of @req, which the card gave back (or reset took). */
static void xxcap_req_event(struct xxcap_card *card, struct xxcap_req *req,
			    struct xxcap_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->flags = XXCAP_EVENT_FLAG_COMPLETION;
	ev->request_id = req->id;
	ev->refcon = req->refcon;
	ev->guest_time_ns = ktime_get_ns();

	if (req->kind == XXCAP_KIND_BUFFER) {
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
 * record for the file that started it, unless that was closed. Under
 * card->lock.
 */
static void xxcap_req_record(struct xxcap_card *card, struct xxcap_req *req)
{
	struct xxcap_client *client = req->client;
	struct xxcap_event ev;

	lockdep_assert_held(&card->lock);
	req->recorded = true;
	xxcap_req_event(card, req, &ev);
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
	xxcap_client_push(card, client, &ev);
}

/*
 * Retires requests the card gave back: unpins their pages, makes the
 * completion records still owed (in the order the card returned them) and
 * frees them. Process context.
 */
static void xxcap_retire(struct xxcap_card *card, struct list_head *list)
{
	struct xxcap_req *req, *tmp;

	list_for_each_entry_safe(req, tmp, list, node) {
		list_del(&req->node);
		/* Unpinned first: whoever reads the record finds them free. */
		xxcap_unpin(req);
		if (req->kind != XXCAP_KIND_SYNC && !req->recorded) {
			spin_lock_irq(&card->lock);
			xxcap_req_record(card, req);
			card->n_unrecorded--;
			spin_unlock_irq(&card->lock);
		}
		xxcap_req_free(req);
	}
}

static void xxcap_reap_work(struct work_struct *work)
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
 * @req came back from the card with @len bytes written (@result 0), or was
 * taken back after a reset (@result -ENODEV). Wakes its waiter, or puts it
 * on @reap for xxcap_retire(). Under card->lock.
 */
static void xxcap_req_returned(struct xxcap_card *card, struct xxcap_req *req,
			       u32 len, int result, struct list_head *reap)
{
	req->used_len = len;
	req->result = result;
	req->completed = true;
	if (req->kind == XXCAP_KIND_SYNC) {
		if (!req->orphan) {
			complete(&req->done);
			return;
		}
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
static void xxcap_reap_kick(struct xxcap_card *card)
{
	lockdep_assert_held(&card->lock);
	if (!card->gone && !list_empty(&card->reap_list))
		queue_work(system_highpri_wq, &card->reap_work);
}

/* Command-queue callback (interrupt context). */
static void xxcap_cmd_done(struct virtqueue *vq)
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

/* Stream-queue callback (interrupt context): capture buffers came back. */
static void xxcap_stream_done(struct virtqueue *vq)
{
	struct xxcap_card *card = vq->vdev->priv;
	struct xxcap_req *req;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&card->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len))) {
			card->n_stream--;
			xxcap_req_returned(card, req, len, 0, &card->reap_list);
		}
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	xxcap_reap_kick(card);
	spin_unlock_irqrestore(&card->lock, flags);
}

/*
 * Hands the records of one event buffer (@len bytes written) to every open
 * that subscribed to their cause; LOST records go to every open that
 * subscribed to anything. Under card->lock.
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
		ev.guest_time_ns = now;
		atomic64_inc(&card->events);
		list_for_each_entry(client, &card->clients, node) {
			u32 want = ev.cause == XXCAP_EVENT_LOST ?
				   client->mask : client->mask & ev.cause;

			if (want)
				xxcap_client_push(card, client, &ev);
		}
	}
}

/* Event-queue callback (interrupt context): delivers, then reposts. */
static void xxcap_evt_done(struct virtqueue *vq)
{
	struct xxcap_card *card = vq->vdev->priv;
	struct scatterlist sg;
	unsigned long flags;
	unsigned int len;
	bool kick = false;
	void *buf;

	spin_lock_irqsave(&card->lock, flags);
	do {
		virtqueue_disable_cb(vq);
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
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	if (kick)
		virtqueue_kick(vq);
	spin_unlock_irqrestore(&card->lock, flags);
}

/* Posts the buffers the card writes event records into. */
static void xxcap_evt_fill(struct xxcap_card *card)
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

/* ---- Submission and waiting ---- */

/* A request came back (or the card went away) since @seq was read. */
static bool xxcap_slot_news(struct xxcap_card *card, unsigned long seq)
{
	return READ_ONCE(card->done_seq) != seq || READ_ONCE(card->gone);
}

/* How xxcap_submit() waits for room in the command queue */
enum {
	XXCAP_SUBMIT_NONBLOCK = BIT(0),	/* -EAGAIN instead of waiting */
	XXCAP_SUBMIT_UNINTR = BIT(1),	/* signals do not end the wait */
};

/* @req was just given to the card: its client tracks it. Under card->lock. */
static void xxcap_req_sent(struct xxcap_req *req)
{
	if (req->client)
		list_add_tail(&req->client_node, &req->client->reqs);
}

/*
 * Hands @req to the device's command queue. Waits (until @deadline; @how)
 * while the queue is full. On success the device owns @req. @count:
 * commands in it.
 */
static int xxcap_submit(struct xxcap_card *card, struct xxcap_req *req,
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

/* Hands the capture buffer @req to the device's stream queue. */
static int xxcap_queue_stream(struct xxcap_card *card, struct xxcap_req *req)
{
	struct scatterlist *sgs[2] = { req->sg_in, req->sg_out };
	int ret;

	spin_lock_irq(&card->lock);
	if (card->gone)
		ret = -ENODEV;
	else if (card->n_stream >= XXCAP_MAX_STREAM_INFLIGHT)
		ret = -ENOSPC;
	else
		ret = virtqueue_add_sgs(card->stream_vq, sgs, 1, 1, req,
					GFP_ATOMIC);
	if (!ret) {
		card->n_stream++;
		req->client->bufs_queued++;
		xxcap_req_sent(req);
		virtqueue_kick(card->stream_vq);
	}
	spin_unlock_irq(&card->lock);
	return ret;
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
static int xxcap_wait(struct xxcap_card *card, struct xxcap_req *req,
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
static void xxcap_poll_begin(struct xxcap_card *card)
{
	spin_lock_irq(&card->lock);
	if (!card->pollers++ && !card->gone)
		virtqueue_disable_cb(card->cmd_vq);
	spin_unlock_irq(&card->lock);
}

/* The last poller turns the callbacks back on, leaving nothing behind. */
static void xxcap_poll_end(struct xxcap_card *card, bool any)
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
 * interrupt costs.
 */
static int xxcap_wait_polled(struct xxcap_card *card, struct xxcap_req *req,
			     unsigned long deadline)
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
		cond_resched();
		cpu_relax();
	}

	xxcap_poll_end(card, any);

	if (ret)
		return xxcap_orphan(card, req, ret);
	/* Back; or the card is going away and its reset will hand req back. */
	return xxcap_wait(card, req, deadline, true);
}

/*
 * Transport status of an ATTACH or FLUSH_BUFFERS reply: the status word
 * with (§9) or without the device time.
 */
static int xxcap_short_status(struct xxcap_card *card, struct xxcap_req *req,
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

/* ---- Task files ---- */

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

static int xxcap_exec(struct xxcap_card *card, void __user *argp)
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

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(timeout_ms));
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
 * Takes one of @client's @limit slots counted by *@n (n_submitted or
 * n_buffers); the completion record gives it back.
 */
static int xxcap_reserve(struct xxcap_card *card, unsigned int *n,
			 unsigned int limit)
{
	int ret = 0;

	spin_lock_irq(&card->lock);
	if (*n >= limit)
		ret = -ENOSPC;
	else
		(*n)++;
	spin_unlock_irq(&card->lock);
	return ret;
}

static void xxcap_unreserve(struct xxcap_card *card, unsigned int *n)
{
	spin_lock_irq(&card->lock);
	(*n)--;
	spin_unlock_irq(&card->lock);
}

/*
 * SUBMIT: starts a task file and returns; its completion is a record. A
 * task file refused by validation completes at once.
 */
static int xxcap_submit_tf(struct xxcap_client *client, struct file *file,
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

	ret = xxcap_reserve(card, &client->n_submitted, XXCAP_MAX_SUBMITTED);
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
		xxcap_client_push(card, client, &ev);
		spin_unlock_irq(&card->lock);
		xxcap_req_free(req);
		return 0;
	}

	req->client = client;
	deadline = jiffies + msecs_to_jiffies(READ_ONCE(timeout_ms));
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

/* Capture buffers need the stream queue and guest-physical SG entries. */
static bool xxcap_can_stream(const struct xxcap_card *card)
{
	return (card->id.capabilities & XXCAP_CAP_STREAMING) && card->dma;
}

/* QUEUE_BUFFER: pins a capture buffer and gives it to the card. */
static int xxcap_queue_buffer(struct xxcap_client *client, void __user *argp)
{
	struct xxcap_queue_buffer __user *uarg = argp;
	struct xxcap_card *card = client->card;
	struct xxcap_queue_buffer arg;
	struct xxcap_vq_request *vreq;
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

	ret = xxcap_reserve(card, &client->n_buffers,
			    XXCAP_MAX_QUEUED_BUFFERS);
	if (ret)
		return ret;
	req = xxcap_req_alloc(card, XXCAP_KIND_BUFFER, sizeof(*vreq),
			      sizeof(struct xxcap_stream_result));
	if (!req) {
		ret = -ENOMEM;
		goto out_unreserve;
	}
	req->refcon = arg.refcon;
	ret = xxcap_buffer_prepare(card, req, arg.addr, arg.length);
	if (ret)
		goto out_free;
	vreq = req->in;
	vreq->req_type = cpu_to_le32(XXCAP_REQ_STREAM_BUFFER);
	vreq->sg_count = cpu_to_le32(req->n_sgt);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;
	if (put_user(req->id, &uarg->request_id)) {
		ret = -EFAULT;
		goto out_free;
	}

	req->client = client;
	ret = xxcap_queue_stream(card, req);
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
 * Has the card return every capture buffer it holds (as CANCELLED), then
 * waits until those of @client are retired. @intr: signals end the waits
 * (the ioctl), or not (release of a dying process).
 */
static int xxcap_flush(struct xxcap_client *client, bool intr)
{
	struct xxcap_card *card = client->card;
	struct xxcap_vq_request *vreq;
	struct xxcap_req *req;
	unsigned long deadline;
	u64 target;
	long left;
	int ret;

	if (!xxcap_can_stream(card))
		return -EOPNOTSUPP;

	spin_lock_irq(&card->lock);
	target = client->bufs_queued;
	spin_unlock_irq(&card->lock);

	req = xxcap_req_alloc(card, XXCAP_KIND_SYNC, sizeof(*vreq),
			      sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	vreq->req_type = cpu_to_le32(XXCAP_REQ_FLUSH_BUFFERS);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(timeout_ms));
	ret = xxcap_submit(card, req, 0, deadline,
			   intr ? 0 : XXCAP_SUBMIT_UNINTR);
	if (ret)
		goto out_free;
	ret = xxcap_wait(card, req, deadline, intr);
	if (ret)
		return ret;	/* orphaned: freed when the card gives it back */
	ret = xxcap_short_status(card, req, "FLUSH_BUFFERS");
	if (ret) {
		if (ret == -EIO)
			dev_err_ratelimited(&card->dev,
					    "FLUSH_BUFFERS refused\n");
		goto out_free;
	}
	xxcap_req_free(req);

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

out_free:
	xxcap_req_free(req);
	return ret;
}

/* SUBSCRIBE: which device causes this open receives; returns the old mask. */
static int xxcap_subscribe(struct xxcap_client *client, void __user *argp)
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

/* ---- Card RAM and status block ---- */

/*
 * Sends ATTACH: the card maps card RAM and the status block into its
 * shared-memory region. Returns 0 once it says it has.
 */
static int xxcap_send_attach(struct xxcap_card *card)
{
	struct xxcap_vq_request *vreq;
	struct xxcap_req *req;
	unsigned long deadline;
	int ret;

	req = xxcap_req_alloc(card, XXCAP_KIND_SYNC, sizeof(*vreq),
			      sizeof(struct xxcap_vq_status));
	if (!req)
		return -ENOMEM;
	vreq = req->in;
	vreq->req_type = cpu_to_le32(XXCAP_REQ_ATTACH);
	ret = xxcap_req_map(req);
	if (ret)
		goto out_free;

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(timeout_ms));
	ret = xxcap_submit(card, req, 0, deadline, 0);
	if (ret)
		goto out_free;
	ret = xxcap_wait(card, req, deadline, true);
	if (ret)
		return ret;	/* orphaned: freed when the card gives it back */
	ret = xxcap_short_status(card, req, "ATTACH");
out_free:
	xxcap_req_free(req);
	return ret;
}

/*
 * Whether PAT gave the kernel mapping at @virt the write-back type: for a
 * BAR in a range the MTRRs make uncachable (below 4 GiB, typically), a
 * write-back request silently becomes uncached-minus.
 */
static bool xxcap_mapped_wb(void *virt)
{
#ifdef CONFIG_X86
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)virt, &level);
	pteval_t mask = _PAGE_PWT | _PAGE_PCD |
			(level == PG_LEVEL_4K ? _PAGE_PAT : _PAGE_PAT_LARGE);

	return pte && !(pte_flags(*pte) & mask);
#else
	return true;
#endif
}

/*
 * Maps the region for the kernel, which also reserves its memory type:
 * user mappings get the same one (PAT looks it up on each inserted page).
 * Write-back when the platform allows it (the memory is RAM on the host),
 * else write-combining, which PAT grants whatever the MTRRs say.
 */
static void *xxcap_memremap(struct xxcap_card *card, phys_addr_t addr,
			    size_t len)
{
	void *virt = memremap(addr, len, MEMREMAP_WB);

	if (virt && xxcap_mapped_wb(virt))
		return virt;
	if (virt)
		memunmap(virt);
	card->shm_wc = true;
	return memremap(addr, len, MEMREMAP_WC);
}

/*
 * Attaches card RAM at probe. A card without it still runs task files;
 * only mmap() is refused (-ENODEV).
 */
static void xxcap_attach(struct xxcap_card *card)
{
	struct virtio_shm_region region;
	bool has_shm = card->id.capabilities & XXCAP_CAP_CARD_RAM_SHM;
	const char *why;
	u64 ram = card->id.card_ram_size, need;
	int ret;

	ret = xxcap_send_attach(card);
	if (!has_shm) {
		dev_info(&card->dev, "no shared card RAM: mmap unavailable\n");
		return;
	}
	if (ret) {
		dev_warn(&card->dev, "ATTACH failed (%d): mmap unavailable\n",
			 ret);
		return;
	}

	why = "no shared-memory region";
	if (!virtio_get_shm_region(card->vdev, &region, XXCAP_SHM_ID_CARD_RAM))
		goto fail;
	why = "shared-memory region too small";
	if (check_add_overflow(ram, (u64)XXCAP_STATUS_MAP_SIZE, &need) ||
	    region.len < need)
		goto fail;
	why = "card RAM not page aligned";
	if (!ram || !PAGE_ALIGNED(ram) || !PAGE_ALIGNED(region.addr))
		goto fail;
	/* Its mmap offsets must stay below the status block's. */
	why = "card RAM too large to map";
	if (ram > XXCAP_MMAP_OFFSET_STATUS)
		goto fail;
	why = "shared-memory region busy";
	if (!request_mem_region(region.addr, need, dev_name(&card->dev)))
		goto fail;
	card->shm_virt = xxcap_memremap(card, region.addr, need);
	if (!card->shm_virt) {
		release_mem_region(region.addr, need);
		why = "cannot map the shared-memory region";
		goto fail;
	}
	card->shm_phys = region.addr;
	card->shm_len = need;
	card->shm_mapped = true;	/* no user yet: no lock needed */
	return;

fail:
	dev_warn(&card->dev, "%s: mmap unavailable\n", why);
}

/* Makes every later fault fail, then zaps every user mapping of the card. */
static void xxcap_zap_mappings(struct xxcap_card *card)
{
	down_write(&card->map_rwsem);
	card->shm_mapped = false;
	up_write(&card->map_rwsem);
	unmap_mapping_range(card->inode->i_mapping, 0, 0, 1);
}

static void xxcap_detach(struct xxcap_card *card)
{
	if (!card->shm_virt)
		return;
	memunmap(card->shm_virt);
	release_mem_region(card->shm_phys, card->shm_len);
	card->shm_virt = NULL;
}

static vm_fault_t xxcap_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct xxcap_card *card = vma->vm_private_data;
	unsigned long ram_pages = card->id.card_ram_size >> PAGE_SHIFT;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	phys_addr_t phys;

	down_read(&card->map_rwsem);
	if (!card->shm_mapped)
		goto out;	/* the card is gone */
	if (vmf->pgoff < ram_pages)
		phys = card->shm_phys + ((phys_addr_t)vmf->pgoff << PAGE_SHIFT);
	else if (vmf->pgoff == XXCAP_MMAP_PGOFF_STATUS &&
		 !(vma->vm_flags & VM_WRITE))
		phys = card->shm_phys + card->id.card_ram_size;
	else
		goto out;
	ret = vmf_insert_pfn(vma, vmf->address, PHYS_PFN(phys));
out:
	up_read(&card->map_rwsem);
	return ret;
}

static const struct vm_operations_struct xxcap_vm_ops = {
	.fault = xxcap_vm_fault,
};

/*
 * Offset 0: card RAM (writable by the controlling open only); offset
 * XXCAP_MMAP_OFFSET_STATUS: the status block (read-only). Pages are mapped
 * on fault, so that remove() can revoke every mapping.
 */
static int xxcap_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	unsigned long len = vma->vm_end - vma->vm_start;
	bool writable;
	bool mapped;

	down_read(&card->map_rwsem);
	mapped = card->shm_mapped;
	up_read(&card->map_rwsem);
	if (!mapped || READ_ONCE(card->gone))
		return -ENODEV;

	if (vma->vm_pgoff == XXCAP_MMAP_PGOFF_RAM) {
		if (len > card->id.card_ram_size)
			return -EINVAL;
		writable = file->f_mode & FMODE_WRITE;
	} else if (vma->vm_pgoff == XXCAP_MMAP_PGOFF_STATUS) {
		if (len > XXCAP_STATUS_MAP_SIZE)
			return -EINVAL;
		writable = false;
	} else {
		return -EINVAL;
	}

	/* No private copies of card memory. */
	if (!(vma->vm_flags & VM_SHARED)) {
		if (vma->vm_flags & VM_WRITE)
			return -EINVAL;
		writable = false;
	}
	if (!writable) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		/* Nor later with mprotect(); also keeps it from being COW. */
		vma->vm_flags &= ~VM_MAYWRITE;
	}

	vma->vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_ops = &xxcap_vm_ops;
	/* The file, which the vma pins, holds a reference on the card. */
	vma->vm_private_data = card;
	return 0;
}

/* ---- Char device ---- */

static int xxcap_open(struct inode *inode, struct file *file)
{
	struct xxcap_card *card = container_of(inode->i_cdev,
					       struct xxcap_card, cdev);
	unsigned int depth = READ_ONCE(event_queue_depth);
	unsigned int slots = roundup_pow_of_two(depth);
	bool writer = file->f_mode & FMODE_WRITE;
	struct xxcap_client *client;
	int ret;

	if (READ_ONCE(card->gone))
		return -ENODEV;
	if (writer && test_and_set_bit(XXCAP_FLAG_WRITER, &card->flags))
		return -EBUSY;

	ret = -ENOMEM;
	client = kzalloc(sizeof(*client), GFP_KERNEL_ACCOUNT);
	if (!client)
		goto err_writer;
	client->ring = kvmalloc_array(slots, sizeof(*client->ring),
				      GFP_KERNEL_ACCOUNT);
	if (!client->ring)
		goto err_client;
	ret = kfifo_init(&client->fifo, client->ring,
			 slots * sizeof(*client->ring));
	if (ret)
		goto err_ring;
	client->depth = depth;
	client->card = card;
	client->writer = writer;
	mutex_init(&client->read_mutex);
	init_waitqueue_head(&client->wq);
	INIT_LIST_HEAD(&client->reqs);

	spin_lock_irq(&card->lock);
	if (card->gone) {
		spin_unlock_irq(&card->lock);
		ret = -ENODEV;
		goto err_ring;
	}
	list_add_tail(&client->node, &card->clients);
	spin_unlock_irq(&card->lock);

	get_device(&card->dev);
	file->private_data = client;
	/* One address_space per card, whatever node it was opened through. */
	file->f_mapping = card->inode->i_mapping;
	return stream_open(inode, file);

err_ring:
	kvfree(client->ring);
err_client:
	kfree(client);
err_writer:
	if (writer)
		clear_bit(XXCAP_FLAG_WRITER, &card->flags);
	return ret;
}

/*
 * Last close (also of a killed process): the card returns this open's
 * capture buffers before the next controlling open may queue its own (or a
 * late flush would cancel those); the wait is bounded by timeout_ms. Its
 * submitted task files finish in the background, without records.
 */
static int xxcap_release(struct inode *inode, struct file *file)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	struct xxcap_req *req, *tmp;
	bool flush;
	int ret;

	spin_lock_irq(&card->lock);
	flush = client->n_buffers && !card->gone;
	spin_unlock_irq(&card->lock);
	if (flush) {
		ret = xxcap_flush(client, false);
		if (ret)
			dev_warn_ratelimited(&card->dev,
					     "buffers not returned at close: %d\n",
					     ret);
	}

	spin_lock_irq(&card->lock);
	list_del(&client->node);
	list_for_each_entry_safe(req, tmp, &client->reqs, client_node) {
		list_del_init(&req->client_node);
		req->client = NULL;
	}
	spin_unlock_irq(&card->lock);

	kvfree(client->ring);
	if (client->writer)
		clear_bit(XXCAP_FLAG_WRITER, &card->flags);
	kfree(client);
	put_device(&card->dev);
	return 0;
}

/*
 * Whole records, at least one: blocks until one is queued. A LOST record
 * still owed once the queue is empty follows the last record.
 */
static ssize_t xxcap_read(struct file *file, char __user *buf, size_t count,
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
		      (size_t)(client->depth + 1) * sizeof(struct xxcap_event));
	count = rounddown(count, sizeof(struct xxcap_event));

	if (mutex_lock_interruptible(&client->read_mutex))
		return -ERESTARTSYS;
	while (!xxcap_client_readable(client)) {
		if (READ_ONCE(card->gone)) {
			ret = -ENODEV;
			goto out;
		}
		if (file->f_flags & O_NONBLOCK) {
			ret = -EAGAIN;
			goto out;
		}
		/* Nothing taken yet: a signal loses nothing. */
		ret = wait_event_interruptible(client->wq,
					       xxcap_client_readable(client) ||
					       READ_ONCE(card->gone));
		if (ret)
			goto out;
	}

	/* Lock-free: the producers only add, under card->lock. */
	ret = kfifo_to_user(&client->fifo, buf, count, &copied);
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

static __poll_t xxcap_poll(struct file *file, poll_table *wait)
{
	struct xxcap_client *client = file->private_data;
	__poll_t mask = 0;

	poll_wait(file, &client->wq, wait);
	if (xxcap_client_readable(client))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (READ_ONCE(client->card->gone))
		mask |= EPOLLHUP | EPOLLERR;
	return mask;
}

static long xxcap_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	void __user *argp = (void __user *)arg;

	if (READ_ONCE(card->gone))
		return -ENODEV;

	/* Observers: anything that changes nothing on the card */
	switch (cmd) {
	case XXCAP_IOC_NOP:
		return 0;
	case XXCAP_IOC_GET_INFO:
		if (copy_to_user(argp, &card->id, sizeof(card->id)))
			return -EFAULT;
		return 0;
	case XXCAP_IOC_SUBSCRIBE:
		return xxcap_subscribe(client, argp);
	case XXCAP_IOC_EXEC:
	case XXCAP_IOC_SUBMIT:
	case XXCAP_IOC_QUEUE_BUFFER:
	case XXCAP_IOC_FLUSH_BUFFERS:
		break;
	default:
		return -ENOTTY;
	}

	/* The controlling open only */
	if (!(file->f_mode & FMODE_WRITE))
		return -EBADF;
	switch (cmd) {
	case XXCAP_IOC_EXEC:
		return xxcap_exec(card, argp);
	case XXCAP_IOC_SUBMIT:
		return xxcap_submit_tf(client, file, argp);
	case XXCAP_IOC_QUEUE_BUFFER:
		return xxcap_queue_buffer(client, argp);
	default:
		return xxcap_flush(client, true);
	}
}

static const struct file_operations xxcap_fops = {
	.owner = THIS_MODULE,
	.open = xxcap_open,
	.release = xxcap_release,
	.read = xxcap_read,
	.poll = xxcap_poll,
	.unlocked_ioctl = xxcap_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = xxcap_mmap,
	.llseek = no_llseek,
};

/* ---- sysfs ---- */

/* Length of the printable prefix of a NUL-padded identity string. */
static size_t xxcap_str_len(const u8 *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n] && isprint(s[n]))
		n++;
	return n;
}

#define XXCAP_ID_ATTR(field, fmt)					\
static ssize_t field##_show(struct device *dev,				\
			    struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, fmt "\n", to_xxcap_card(dev)->id.field);	\
}									\
static DEVICE_ATTR_RO(field)

#define XXCAP_COUNTER_ATTR(field)					\
static ssize_t field##_show(struct device *dev,				\
			    struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, "%lld\n",				\
			  atomic64_read(&to_xxcap_card(dev)->field));	\
}									\
static DEVICE_ATTR_RO(field)

#define XXCAP_STRING_ATTR(field)					\
static ssize_t field##_show(struct device *dev,				\
			    struct device_attribute *attr, char *buf)	\
{									\
	const u8 *s = to_xxcap_card(dev)->id.field;			\
	size_t len = xxcap_str_len(s, sizeof_field(struct xxcap_identity, \
						   field));		\
									\
	return sysfs_emit(buf, "%.*s\n", (int)len, s);			\
}									\
static DEVICE_ATTR_RO(field)

XXCAP_ID_ATTR(model, "0x%08x");
XXCAP_ID_ATTR(revision, "%u");
XXCAP_ID_ATTR(abi_version, "0x%08x");
XXCAP_ID_ATTR(capabilities, "0x%08x");
XXCAP_ID_ATTR(card_ram_size, "%llu");
XXCAP_ID_ATTR(max_commands, "%u");
XXCAP_STRING_ATTR(serial);
XXCAP_STRING_ATTR(name);
XXCAP_COUNTER_ATTR(requests);
XXCAP_COUNTER_ATTR(commands);
XXCAP_COUNTER_ATTR(rejected);
XXCAP_COUNTER_ATTR(timeouts);
XXCAP_COUNTER_ATTR(pinned_pages);
XXCAP_COUNTER_ATTR(dma_bytes);
XXCAP_COUNTER_ATTR(events);
XXCAP_COUNTER_ATTR(events_dropped);
XXCAP_COUNTER_ATTR(completions);

static ssize_t card_ram_mapped_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(to_xxcap_card(dev)->shm_mapped));
}
static DEVICE_ATTR_RO(card_ram_mapped);

static struct attribute *xxcap_attrs[] = {
	&dev_attr_model.attr,
	&dev_attr_revision.attr,
	&dev_attr_abi_version.attr,
	&dev_attr_capabilities.attr,
	&dev_attr_card_ram_size.attr,
	&dev_attr_max_commands.attr,
	&dev_attr_serial.attr,
	&dev_attr_name.attr,
	&dev_attr_requests.attr,
	&dev_attr_commands.attr,
	&dev_attr_rejected.attr,
	&dev_attr_timeouts.attr,
	&dev_attr_pinned_pages.attr,
	&dev_attr_dma_bytes.attr,
	&dev_attr_events.attr,
	&dev_attr_events_dropped.attr,
	&dev_attr_completions.attr,
	&dev_attr_card_ram_mapped.attr,
	NULL,
};
ATTRIBUTE_GROUPS(xxcap);

/* ---- Probe and remove ---- */

static void xxcap_card_release(struct device *dev)
{
	struct xxcap_card *card = to_xxcap_card(dev);

	/* Last user gone: no mapping of the card is left. */
	if (card->inode)
		iput(card->inode);
	kfree(card);
}

/* Reads the identity from config space: the only config access ever. */
static int xxcap_read_identity(struct xxcap_card *card)
{
	struct xxcap_identity *id = &card->id;
	u8 raw[XXCAP_CONFIG_SIZE];

	BUILD_BUG_ON(sizeof(struct xxcap_identity) != XXCAP_CONFIG_SIZE);
	BUILD_BUG_ON(XXCAP_CONFIG_SIZE % sizeof(u32));
	BUILD_BUG_ON(sizeof(struct xxcap_tf_header) != XXCAP_TF_HEADER_SIZE);
	BUILD_BUG_ON(sizeof(struct xxcap_cmd) != XXCAP_CMD_SIZE);
	BUILD_BUG_ON(sizeof(struct xxcap_event) != XXCAP_EVENT_SIZE);
	BUILD_BUG_ON(XXCAP_EVENT_BUFFER_SIZE % XXCAP_EVENT_SIZE);

	/*
	 * Every config access is a round trip to the backend: read whole
	 * 32-bit words (24 accesses) rather than bytes (96). The magic comes
	 * first, so that a foreign device is left alone after one access.
	 */
	__virtio_cread_many(card->vdev, 0, raw, 1, sizeof(u32));
	id->magic = get_unaligned_le32(raw);
	if (id->magic != XXCAP_MAGIC) {
		dev_err(&card->vdev->dev, "bad magic 0x%08x\n", id->magic);
		return -ENODEV;
	}
	__virtio_cread_many(card->vdev, sizeof(u32), raw + sizeof(u32),
			    XXCAP_CONFIG_SIZE / sizeof(u32) - 1, sizeof(u32));

#define XXCAP_LE32(f) get_unaligned_le32(raw + offsetof(struct xxcap_identity, f))
	id->abi_version = XXCAP_LE32(abi_version);
	id->model = XXCAP_LE32(model);
	id->revision = XXCAP_LE32(revision);
	id->capabilities = XXCAP_LE32(capabilities);
	id->max_commands = XXCAP_LE32(max_commands);
	id->card_ram_size =
		get_unaligned_le64(raw + offsetof(struct xxcap_identity, card_ram_size));
	id->status = XXCAP_LE32(status);
	id->reserved0 = XXCAP_LE32(reserved0);
	id->reserved1[0] = XXCAP_LE32(reserved1[0]);
	id->reserved1[1] = XXCAP_LE32(reserved1[1]);
#undef XXCAP_LE32
	memcpy(id->serial, raw + offsetof(struct xxcap_identity, serial),
	       sizeof(id->serial));
	memcpy(id->name, raw + offsetof(struct xxcap_identity, name),
	       sizeof(id->name));

	if ((id->abi_version >> 16) != XXCAP_ABI_VERSION_MAJOR) {
		dev_err(&card->vdev->dev, "unsupported ABI version 0x%08x\n",
			id->abi_version);
		return -ENODEV;
	}
	return 0;
}

/*
 * Resets the device and takes every request back: waiters get -ENODEV,
 * async requests become records (DMA_ERROR with status DEVICE, or
 * FRAME_DONE with status CANCELLED) for the files still open, and every
 * page is unpinned. Then deletes the queues.
 */
static void xxcap_shutdown(struct xxcap_card *card)
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

/* Wakes every reader and poller of the card's files. */
static void xxcap_wake_clients(struct xxcap_card *card)
{
	struct xxcap_client *client;

	spin_lock_irq(&card->lock);
	list_for_each_entry(client, &card->clients, node)
		wake_up_all(&client->wq);
	spin_unlock_irq(&card->lock);
}

static int xxcap_probe(struct virtio_device *vdev)
{
	vq_callback_t *callbacks[XXCAP_VQ_COUNT] = {
		[XXCAP_VQ_COMMAND] = xxcap_cmd_done,
		[XXCAP_VQ_EVENT] = xxcap_evt_done,
		[XXCAP_VQ_STREAM] = xxcap_stream_done,
	};
	static const char * const names[XXCAP_VQ_COUNT] = {
		[XXCAP_VQ_COMMAND] = "command",
		[XXCAP_VQ_EVENT] = "event",
		[XXCAP_VQ_STREAM] = "stream",
	};
	struct virtqueue *vqs[XXCAP_VQ_COUNT];
	struct xxcap_card *card;
	int ret;

	card = kzalloc(sizeof(*card), GFP_KERNEL);
	if (!card)
		return -ENOMEM;
	card->vdev = vdev;
	spin_lock_init(&card->lock);
	init_rwsem(&card->map_rwsem);
	INIT_LIST_HEAD(&card->reap_list);
	INIT_LIST_HEAD(&card->clients);
	init_waitqueue_head(&card->slot_wq);
	INIT_WORK(&card->reap_work, xxcap_reap_work);
	atomic64_set(&card->next_id, 0);
	atomic64_set(&card->requests, 0);
	atomic64_set(&card->commands, 0);
	atomic64_set(&card->rejected, 0);
	atomic64_set(&card->timeouts, 0);
	atomic64_set(&card->pinned_pages, 0);
	atomic64_set(&card->dma_bytes, 0);
	atomic64_set(&card->events, 0);
	atomic64_set(&card->events_dropped, 0);
	atomic64_set(&card->completions, 0);

	/* From here on the last put_device() frees the card. */
	device_initialize(&card->dev);
	card->dev.release = xxcap_card_release;
	card->dev.class = xxcap_class;
	card->dev.parent = &vdev->dev;
	card->dev.groups = xxcap_groups;

	ret = xxcap_read_identity(card);
	if (ret)
		goto err_put;

	card->inode = alloc_anon_inode(xxcap_mnt->mnt_sb);
	if (IS_ERR(card->inode)) {
		ret = PTR_ERR(card->inode);
		card->inode = NULL;
		goto err_put;
	}

	/*
	 * The SG entries carry guest-physical addresses: not usable when the
	 * device sits behind an IOMMU (or needs bounce buffers).
	 */
	card->dma = card->id.capabilities & XXCAP_CAP_DMA;
	if (card->dma && virtio_has_feature(vdev, VIRTIO_F_ACCESS_PLATFORM)) {
		dev_warn(&vdev->dev, "DMA disabled: device needs the DMA API\n");
		card->dma = false;
	}

	ret = ida_alloc_max(&xxcap_ida, XXCAP_MAX_CARDS - 1, GFP_KERNEL);
	if (ret < 0) {
		dev_err(&vdev->dev, "no free minor\n");
		goto err_put;
	}
	card->minor = ret;
	card->dev.devt = MKDEV(MAJOR(xxcap_devt), card->minor);
	ret = dev_set_name(&card->dev, "xxcapture%d", card->minor);
	if (ret)
		goto err_ida;

	vdev->priv = card;
	ret = virtio_find_vqs(vdev, XXCAP_VQ_COUNT, vqs, callbacks, names,
			      NULL);
	if (ret) {
		dev_err(&vdev->dev, "cannot find virtqueues: %d\n", ret);
		goto err_ida;
	}
	card->cmd_vq = vqs[XXCAP_VQ_COMMAND];
	card->evt_vq = vqs[XXCAP_VQ_EVENT];
	card->stream_vq = vqs[XXCAP_VQ_STREAM];

	/* Ready before user space can reach the card. */
	virtio_device_ready(vdev);

	/* Records of causes the card may report from now on */
	xxcap_evt_fill(card);

	/* The card can only map its RAM once it has started. */
	xxcap_attach(card);

	cdev_init(&card->cdev, &xxcap_fops);
	card->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&card->cdev, &card->dev);
	if (ret) {
		dev_err(&vdev->dev, "cannot add char device: %d\n", ret);
		goto err_reset;
	}

	dev_info(&card->dev, "model 0x%04x rev %u serial %.*s, %llu bytes of card RAM%s%s\n",
		 card->id.model, card->id.revision,
		 (int)xxcap_str_len(card->id.serial, sizeof(card->id.serial)),
		 card->id.serial, card->id.card_ram_size,
		 !card->shm_mapped ? "" :
		 card->shm_wc ? ", mapped write-combining" : ", mapped write-back",
		 card->dma ? ", DMA" : "");
	return 0;

err_reset:
	/* No file was ever opened: nothing can be mapped or waiting. */
	xxcap_shutdown(card);
	xxcap_detach(card);
err_ida:
	vdev->priv = NULL;
	ida_free(&xxcap_ida, card->minor);
err_put:
	put_device(&card->dev);
	return ret;
}

static void xxcap_remove(struct virtio_device *vdev)
{
	struct xxcap_card *card = vdev->priv;

	/* No new requests; open files see -ENODEV from now on. */
	spin_lock_irq(&card->lock);
	WRITE_ONCE(card->gone, true);
	spin_unlock_irq(&card->lock);
	wake_up_all(&card->slot_wq);
	xxcap_wake_clients(card);

	/* Before the BAR goes: user accesses fault with SIGBUS from now on. */
	xxcap_zap_mappings(card);

	cdev_device_del(&card->cdev, &card->dev);

	xxcap_shutdown(card);
	/* Readers take the records of their reclaimed requests, then -ENODEV. */
	xxcap_wake_clients(card);
	xxcap_detach(card);

	vdev->priv = NULL;
	ida_free(&xxcap_ida, card->minor);
	/* Open files keep the card until they are closed. */
	put_device(&card->dev);
}

static const struct virtio_device_id xxcap_id_table[] = {
	{ XXCAPTURE_VIRTIO_ID, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, xxcap_id_table);

static struct virtio_driver xxcap_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = xxcap_id_table,
	.probe = xxcap_probe,
	.remove = xxcap_remove,
};

static int xxcap_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, XXCAP_FS_MAGIC) ? 0 : -ENOMEM;
}

/*
 * Holds one anonymous inode per card, whose address_space gathers the
 * card's user mappings. Never registered, so never mounted by user space;
 * no owner, or its own mount would pin the module.
 */
static struct file_system_type xxcap_fs_type = {
	.name = "xxcapture",
	.init_fs_context = xxcap_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int __init xxcap_init(void)
{
	int ret;

	xxcap_index_regs();
	xxcap_mnt = kern_mount(&xxcap_fs_type);
	if (IS_ERR(xxcap_mnt))
		return PTR_ERR(xxcap_mnt);

	ret = alloc_chrdev_region(&xxcap_devt, 0, XXCAP_MAX_CARDS, "xxcapture");
	if (ret)
		goto err_mnt;

	xxcap_class = class_create(THIS_MODULE, "xxcapture");
	if (IS_ERR(xxcap_class)) {
		ret = PTR_ERR(xxcap_class);
		goto err_region;
	}

	ret = register_virtio_driver(&xxcap_driver);
	if (ret)
		goto err_class;
	return 0;

err_class:
	class_destroy(xxcap_class);
err_region:
	unregister_chrdev_region(xxcap_devt, XXCAP_MAX_CARDS);
err_mnt:
	kern_unmount(xxcap_mnt);
	return ret;
}

static void __exit xxcap_exit(void)
{
	unregister_virtio_driver(&xxcap_driver);
	class_destroy(xxcap_class);
	unregister_chrdev_region(xxcap_devt, XXCAP_MAX_CARDS);
	ida_destroy(&xxcap_ida);
	/* Every card has been released: no inode is left on it. */
	kern_unmount(xxcap_mnt);
}

module_init(xxcap_init);
module_exit(xxcap_exit);

MODULE_DESCRIPTION("Driver for the emulated Double X video-capture card");
MODULE_LICENSE("GPL");
