// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: virtio driver for the emulated "Double X" video-capture card.
 *
 * Each card gets a char device /dev/xxcaptureN. User space sends task
 * files (batches of register commands) with XXCAP_IOC_EXEC; the driver
 * validates them against the register table and passes each one to the
 * card as a single request on the command virtqueue.
 *
 * Request ownership: a request belongs to the thread that submitted it
 * until the device has taken it (virtqueue_add_sgs). From then on the
 * device owns the buffers until the command-queue callback gets them back
 * (virtqueue_get_buf) or remove() takes them back after a reset
 * (virtqueue_detach_unused_buf). A waiter that gives up (signal, timeout)
 * does not free the request: it marks it orphaned under card->lock, and
 * whoever takes it back from the device frees it. All ownership decisions
 * are made under card->lock.
 */

#include <linux/atomic.h>
#include <linux/bsearch.h>
#include <linux/cdev.h>
#include <linux/completion.h>
#include <linux/ctype.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/scatterlist.h>
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
#error "xxcapture passes task files through unchanged: little-endian only"
#endif

#ifndef XXCAPTURE_VIRTIO_ID
#define XXCAPTURE_VIRTIO_ID	XXCAP_VIRTIO_ID_DEFAULT
#endif

#define XXCAP_MAX_CARDS		64
#define XXCAP_HDR_SIZE		XXCAP_TF_HEADER_SIZE
#define XXCAP_MAX_TF_SIZE	XXCAP_MAX_TASK_FILE_SIZE
/* Largest buffer in a request: request header + task file */
#define XXCAP_MAX_BUF_SIZE	(sizeof(struct xxcap_vq_request) + XXCAP_MAX_TF_SIZE)
/* One entry per page touched, for any alignment of the buffer */
#define XXCAP_MAX_SG		(DIV_ROUND_UP(XXCAP_MAX_BUF_SIZE, PAGE_SIZE) + 1)
/* Requests owned by the device at once, orphans included */
#define XXCAP_MAX_INFLIGHT	16

#define XXCAP_TIMEOUT_MAX_MS	3600000U

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

static dev_t xxcap_devt;
static struct class *xxcap_class;
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
	struct xxcap_identity id;	/* read once at probe, CPU byte order */
	int minor;
	unsigned long flags;

	spinlock_t lock;		/* protects the fields below */
	bool gone;			/* removed: no new requests */
	unsigned int n_inflight;	/* requests the device owns */
	unsigned long done_seq;		/* bumped whenever a request comes back */
	u64 next_tag;
	struct list_head reap_list;	/* returned orphans, to be freed */

	wait_queue_head_t slot_wq;	/* waiting for room in the queue */
	struct work_struct reap_work;	/* frees returned orphans */

	atomic64_t requests;
	atomic64_t commands;
	atomic64_t rejected;
	atomic64_t timeouts;
};

struct xxcap_req {
	struct list_head node;		/* on card->reap_list */
	struct completion done;
	void *in;			/* vq_request + task file (device-readable) */
	void *out;			/* result + vq_status (device-writable) */
	u32 used_len;
	int result;			/* 0: returned by the device; or -ENODEV */
	bool completed;			/* under card->lock */
	bool orphan;			/* under card->lock */
	struct scatterlist sg_in[XXCAP_MAX_SG];
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

static const struct xxcap_reg_desc *xxcap_find_reg(u16 offset)
{
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
	    cmd->op == XXCAP_OP_DMA_TRANSFER_NONBLOCK)
		return XXCAP_TF_NOT_SUPPORTED;

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

static void xxcap_req_free(struct xxcap_req *req)
{
	kvfree(req->out);
	kvfree(req->in);
	kfree(req);
}

static void xxcap_free_list(struct list_head *list)
{
	struct xxcap_req *req, *tmp;

	list_for_each_entry_safe(req, tmp, list, node) {
		list_del(&req->node);
		xxcap_req_free(req);
	}
}

/* Maps @len bytes at @buf (kmalloc or vmalloc memory), one entry per page. */
static void xxcap_sg_build(struct scatterlist *sg, void *buf, size_t len)
{
	unsigned int n = 0;

	sg_init_table(sg, XXCAP_MAX_SG);
	while (len) {
		size_t off = offset_in_page(buf);
		size_t chunk = min_t(size_t, len, PAGE_SIZE - off);
		struct page *page = is_vmalloc_addr(buf) ?
			vmalloc_to_page(buf) : virt_to_page(buf);

		sg_set_page(&sg[n++], page, chunk, off);
		buf += chunk;
		len -= chunk;
	}
	sg_mark_end(&sg[n - 1]);
}

/* Frees orphaned requests the device has given back. */
static void xxcap_reap_work(struct work_struct *work)
{
	struct xxcap_card *card = container_of(work, struct xxcap_card,
					       reap_work);
	LIST_HEAD(list);

	spin_lock_irq(&card->lock);
	list_splice_init(&card->reap_list, &list);
	spin_unlock_irq(&card->lock);
	xxcap_free_list(&list);
}

/* Command-queue callback (interrupt context). */
static void xxcap_cmd_done(struct virtqueue *vq)
{
	struct xxcap_card *card = vq->vdev->priv;
	struct xxcap_req *req;
	unsigned long flags;
	unsigned int len;
	bool reap = false, any = false;

	spin_lock_irqsave(&card->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len))) {
			card->n_inflight--;
			WRITE_ONCE(card->done_seq, card->done_seq + 1);
			any = true;
			req->used_len = len;
			req->result = 0;
			req->completed = true;
			if (req->orphan) {
				list_add_tail(&req->node, &card->reap_list);
				reap = true;
			} else {
				complete(&req->done);
			}
		}
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&card->lock, flags);

	if (reap)
		schedule_work(&card->reap_work);
	if (any)
		wake_up_all(&card->slot_wq);
}

/* A request came back (or the card went away) since @seq was read. */
static bool xxcap_slot_news(struct xxcap_card *card, unsigned long seq)
{
	return READ_ONCE(card->done_seq) != seq || READ_ONCE(card->gone);
}

/*
 * Hands @req to the device. Waits (interruptibly, until @deadline) while the
 * queue is full. On success the device owns @req.
 */
static int xxcap_submit(struct xxcap_card *card, struct xxcap_req *req,
			unsigned long deadline)
{
	struct scatterlist *sgs[2] = { req->sg_in, req->sg_out };
	struct xxcap_vq_request *vreq = req->in;
	const struct xxcap_tf_header *hdr = req->in + sizeof(*vreq);
	u32 count = hdr->count;
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
			vreq->tag = cpu_to_le64(card->next_tag);
			ret = virtqueue_add_sgs(card->cmd_vq, sgs, 1, 1, req,
						GFP_ATOMIC);
		}
		if (!ret) {
			card->next_tag++;
			card->n_inflight++;
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

		left = (long)(deadline - jiffies);
		if (left <= 0)
			return -ETIMEDOUT;
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
 * Waits for @req. Returns 0 when the request came back (or was failed by
 * remove()) and the caller owns it again; otherwise the request is left to
 * the device as an orphan and the caller must forget it.
 */
static int xxcap_wait(struct xxcap_card *card, struct xxcap_req *req,
		      unsigned long deadline)
{
	long left = max_t(long, (long)(deadline - jiffies), 1);
	bool orphaned = false;

	left = wait_for_completion_interruptible_timeout(&req->done, left);

	spin_lock_irq(&card->lock);
	if (!req->completed) {
		req->orphan = true;
		orphaned = true;
	}
	spin_unlock_irq(&card->lock);

	if (!orphaned)
		return 0;
	/*
	 * Not restartable: the device may still execute the task file, and a
	 * restarted ioctl would execute it a second time.
	 */
	return left < 0 ? -EINTR : -ETIMEDOUT;
}

static int xxcap_exec(struct xxcap_card *card, void __user *argp)
{
	struct xxcap_exec arg;
	struct xxcap_req *req;
	struct xxcap_tf_header *hdr;
	struct xxcap_vq_request *vreq;
	const struct xxcap_vq_status *vst;
	void __user *utf;
	unsigned long deadline;
	u32 err, index, status;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags)
		return -EINVAL;
	if (arg.size < XXCAP_HDR_SIZE || arg.size > XXCAP_MAX_TF_SIZE)
		return -EINVAL;
	utf = u64_to_user_ptr(arg.task_file);

	req = kzalloc(sizeof(*req), GFP_KERNEL_ACCOUNT);
	if (!req)
		return -ENOMEM;
	init_completion(&req->done);
	INIT_LIST_HEAD(&req->node);
	req->in = kvmalloc(sizeof(*vreq) + arg.size, GFP_KERNEL_ACCOUNT);
	if (!req->in) {
		ret = -ENOMEM;
		goto out_free;
	}
	vreq = req->in;
	hdr = req->in + sizeof(*vreq);
	if (copy_from_user(hdr, utf, arg.size)) {
		ret = -EFAULT;
		goto out_free;
	}

	err = xxcap_validate(card, hdr, arg.size, &index);
	if (err != XXCAP_TF_OK) {
		atomic64_inc(&card->rejected);
		hdr->error = err;
		hdr->count = index;
		ret = copy_to_user(utf, hdr, XXCAP_HDR_SIZE) ? -EFAULT : 0;
		goto out_free;
	}

	/* Zeroed: nothing stale reaches user space, whatever the device does. */
	req->out = kvzalloc(arg.size + sizeof(*vst), GFP_KERNEL_ACCOUNT);
	if (!req->out) {
		ret = -ENOMEM;
		goto out_free;
	}
	vreq->req_type = cpu_to_le32(XXCAP_REQ_EXEC_TASK_FILE);
	vreq->flags = 0;
	vreq->tag = 0;
	xxcap_sg_build(req->sg_in, req->in, sizeof(*vreq) + arg.size);
	xxcap_sg_build(req->sg_out, req->out, arg.size + sizeof(*vst));

	deadline = jiffies + msecs_to_jiffies(READ_ONCE(timeout_ms));
	ret = xxcap_submit(card, req, deadline);
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		goto out_free;
	}

	ret = xxcap_wait(card, req, deadline);
	if (ret) {
		if (ret == -ETIMEDOUT)
			atomic64_inc(&card->timeouts);
		return ret;	/* orphaned: the device still owns req */
	}

	/* Back from the device: req is ours again. */
	if (req->result) {
		ret = req->result;
		goto out_free;
	}
	if (req->used_len != arg.size + sizeof(*vst)) {
		dev_err_ratelimited(&card->dev,
				    "reply of %u bytes, expected %zu\n",
				    req->used_len, arg.size + sizeof(*vst));
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
	ret = copy_to_user(utf, req->out, arg.size) ? -EFAULT : 0;

out_free:
	xxcap_req_free(req);
	return ret;
}

/* ---- Char device ---- */

static int xxcap_open(struct inode *inode, struct file *file)
{
	struct xxcap_card *card = container_of(inode->i_cdev,
					       struct xxcap_card, cdev);

	if (READ_ONCE(card->gone))
		return -ENODEV;
	if ((file->f_mode & FMODE_WRITE) &&
	    test_and_set_bit(XXCAP_FLAG_WRITER, &card->flags))
		return -EBUSY;

	get_device(&card->dev);
	file->private_data = card;
	return stream_open(inode, file);
}

static int xxcap_release(struct inode *inode, struct file *file)
{
	struct xxcap_card *card = file->private_data;

	if (file->f_mode & FMODE_WRITE)
		clear_bit(XXCAP_FLAG_WRITER, &card->flags);
	put_device(&card->dev);
	return 0;
}

static long xxcap_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct xxcap_card *card = file->private_data;
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case XXCAP_IOC_NOP:
		return READ_ONCE(card->gone) ? -ENODEV : 0;
	case XXCAP_IOC_GET_INFO:
		if (READ_ONCE(card->gone))
			return -ENODEV;
		if (copy_to_user(argp, &card->id, sizeof(card->id)))
			return -EFAULT;
		return 0;
	case XXCAP_IOC_EXEC:
		if (READ_ONCE(card->gone))
			return -ENODEV;
		if (!(file->f_mode & FMODE_WRITE))
			return -EBADF;
		return xxcap_exec(card, argp);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations xxcap_fops = {
	.owner = THIS_MODULE,
	.open = xxcap_open,
	.release = xxcap_release,
	.unlocked_ioctl = xxcap_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
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
	NULL,
};
ATTRIBUTE_GROUPS(xxcap);

/* ---- Probe and remove ---- */

static void xxcap_card_release(struct device *dev)
{
	kfree(to_xxcap_card(dev));
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

static int xxcap_probe(struct virtio_device *vdev)
{
	vq_callback_t *callbacks[XXCAP_VQ_COUNT] = {
		[XXCAP_VQ_COMMAND] = xxcap_cmd_done,
		[XXCAP_VQ_EVENT] = NULL,	/* events: not yet used */
	};
	static const char * const names[XXCAP_VQ_COUNT] = {
		[XXCAP_VQ_COMMAND] = "command",
		[XXCAP_VQ_EVENT] = "event",
	};
	struct virtqueue *vqs[XXCAP_VQ_COUNT];
	struct xxcap_card *card;
	int ret;

	card = kzalloc(sizeof(*card), GFP_KERNEL);
	if (!card)
		return -ENOMEM;
	card->vdev = vdev;
	spin_lock_init(&card->lock);
	INIT_LIST_HEAD(&card->reap_list);
	init_waitqueue_head(&card->slot_wq);
	INIT_WORK(&card->reap_work, xxcap_reap_work);
	atomic64_set(&card->requests, 0);
	atomic64_set(&card->commands, 0);
	atomic64_set(&card->rejected, 0);
	atomic64_set(&card->timeouts, 0);

	/* From here on the last put_device() frees the card. */
	device_initialize(&card->dev);
	card->dev.release = xxcap_card_release;
	card->dev.class = xxcap_class;
	card->dev.parent = &vdev->dev;
	card->dev.groups = xxcap_groups;

	ret = xxcap_read_identity(card);
	if (ret)
		goto err_put;

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

	/* Ready before user space can reach the card. */
	virtio_device_ready(vdev);

	cdev_init(&card->cdev, &xxcap_fops);
	card->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&card->cdev, &card->dev);
	if (ret) {
		dev_err(&vdev->dev, "cannot add char device: %d\n", ret);
		goto err_reset;
	}

	dev_info(&card->dev, "model 0x%04x rev %u serial %.*s, %llu bytes of card RAM\n",
		 card->id.model, card->id.revision,
		 (int)xxcap_str_len(card->id.serial, sizeof(card->id.serial)),
		 card->id.serial, card->id.card_ram_size);
	return 0;

err_reset:
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
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
	struct xxcap_req *req;
	LIST_HEAD(free_list);

	/* No new requests; open files see -ENODEV from now on. */
	spin_lock_irq(&card->lock);
	WRITE_ONCE(card->gone, true);
	spin_unlock_irq(&card->lock);
	wake_up_all(&card->slot_wq);

	cdev_device_del(&card->cdev, &card->dev);

	/* After the reset the device touches no buffer and no callback runs. */
	virtio_reset_device(vdev);

	/* Take every request back: fail the waited ones, free the orphans. */
	spin_lock_irq(&card->lock);
	while ((req = virtqueue_detach_unused_buf(card->cmd_vq))) {
		card->n_inflight--;
		req->completed = true;
		req->result = -ENODEV;
		if (req->orphan)
			list_add_tail(&req->node, &free_list);
		else
			complete(&req->done);
	}
	WARN_ON(card->n_inflight);
	WRITE_ONCE(card->done_seq, card->done_seq + 1);
	spin_unlock_irq(&card->lock);

	vdev->config->del_vqs(vdev);

	/* The callback can no longer queue work: finish the reaping here. */
	cancel_work_sync(&card->reap_work);
	spin_lock_irq(&card->lock);
	list_splice_init(&card->reap_list, &free_list);
	card->cmd_vq = NULL;
	card->evt_vq = NULL;
	card->vdev = NULL;
	spin_unlock_irq(&card->lock);
	xxcap_free_list(&free_list);

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

static int __init xxcap_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&xxcap_devt, 0, XXCAP_MAX_CARDS, "xxcapture");
	if (ret)
		return ret;

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
	return ret;
}

static void __exit xxcap_exit(void)
{
	unregister_virtio_driver(&xxcap_driver);
	class_destroy(xxcap_class);
	unregister_chrdev_region(xxcap_devt, XXCAP_MAX_CARDS);
	ida_destroy(&xxcap_ida);
}

module_init(xxcap_init);
module_exit(xxcap_exit);

MODULE_DESCRIPTION("Driver for the emulated Double X video-capture card");
MODULE_LICENSE("GPL");
