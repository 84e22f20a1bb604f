// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: virtio driver for the emulated "Double X" video-capture card.
 *
 * Module setup (parameters, the char-device region, the class and the
 * pseudo file system of the cards' address_spaces) and probe and remove of
 * a card. xxcap_drv.h holds the rules every file follows.
 */

#include <linux/cdev.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "xxcap_drv.h"

#ifndef XXCAPTURE_VIRTIO_ID
#define XXCAPTURE_VIRTIO_ID	XXCAP_VIRTIO_ID_DEFAULT
#endif

#define XXCAP_MAX_CARDS		64

/* Magic of the pseudo file system holding the cards' address_spaces */
#define XXCAP_FS_MAGIC		0x78786366

unsigned int xxcap_timeout_ms = 5000;

static int xxcap_timeout_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, 1, XXCAP_TIMEOUT_MAX_MS);
}

static const struct kernel_param_ops xxcap_timeout_ops = {
	.set = xxcap_timeout_set,
	.get = param_get_uint,
};

module_param_cb(timeout_ms, &xxcap_timeout_ops, &xxcap_timeout_ms, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "Time limit of one task file in milliseconds (1..3600000, default 5000)");

unsigned int xxcap_event_queue_depth = 4096;

static int xxcap_depth_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, XXCAP_DEPTH_MIN, XXCAP_DEPTH_MAX);
}

static const struct kernel_param_ops xxcap_depth_ops = {
	.set = xxcap_depth_set,
	.get = param_get_uint,
};

module_param_cb(event_queue_depth, &xxcap_depth_ops, &xxcap_event_queue_depth, 0644);
MODULE_PARM_DESC(event_queue_depth,
		 "Event records queued per open file (16..65536, default 4096; applies to later opens)");

/* The time limit of @card's requests: its own, else the module's. */
unsigned int xxcap_card_timeout_ms(const struct xxcap_card *card)
{
	return READ_ONCE(card->timeout_ms) ?: READ_ONCE(xxcap_timeout_ms);
}

/* The event queue depth of an open of @card made now. */
unsigned int xxcap_card_depth(const struct xxcap_card *card)
{
	return READ_ONCE(card->event_queue_depth) ?:
	       READ_ONCE(xxcap_event_queue_depth);
}

int xxcap_exec_wait = XXCAP_EXEC_WAIT_HYBRID;

static const char * const xxcap_exec_wait_names[] = {
	[XXCAP_EXEC_WAIT_INTERRUPT] = "interrupt",
	[XXCAP_EXEC_WAIT_HYBRID] = "hybrid",
	[XXCAP_EXEC_WAIT_POLL] = "poll",
};

static int xxcap_exec_wait_set(const char *val, const struct kernel_param *kp)
{
	int i = sysfs_match_string(xxcap_exec_wait_names, val);

	if (i < 0)
		return i;
	WRITE_ONCE(*(int *)kp->arg, i);
	return 0;
}

static int xxcap_exec_wait_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n",
			  xxcap_exec_wait_names[READ_ONCE(*(int *)kp->arg)]);
}

static const struct kernel_param_ops xxcap_exec_wait_ops = {
	.set = xxcap_exec_wait_set,
	.get = xxcap_exec_wait_get,
};

module_param_cb(exec_wait, &xxcap_exec_wait_ops, &xxcap_exec_wait, 0644);
MODULE_PARM_DESC(exec_wait,
		 "How EXEC without XXCAP_EXEC_POLL waits: interrupt, hybrid (spin for short task files, then sleep; default) or poll");

static dev_t xxcap_devt;
static struct class *xxcap_class;
static struct vfsmount *xxcap_mnt;
static DEFINE_IDA(xxcap_ida);

static void xxcap_card_release(struct device *dev)
{
	struct xxcap_card *card = to_xxcap_card(dev);

	/* Last user gone: no mapping of the card is left. */
	if (card->inode)
		iput(card->inode);
	if (card->gone_page)
		__free_page(card->gone_page);
	ida_destroy(&card->regbuf_ida);
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
	INIT_LIST_HEAD(&card->lost_regbufs);
	ida_init(&card->regbuf_ida);
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
	atomic64_set(&card->events_repeated, 0);
	atomic64_set(&card->completions, 0);
	atomic64_set(&card->exec_polled, 0);
	atomic64_set(&card->exec_irq, 0);
	atomic64_set(&card->exec_spins, 0);
	atomic64_set(&card->ring_kicks, 0);
	atomic64_set(&card->ring_kick_errors, 0);
	atomic64_set(&card->ring_wakeups, 0);

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

	/* What mappings show once the card is gone (xxcap_vm_fault()). */
	ret = -ENOMEM;
	card->gone_page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!card->gone_page)
		goto err_put;

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
	ret = xxcap_find_vqs(vdev, XXCAP_VQ_COUNT, vqs, callbacks, names);
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

	/* The char device works without it: a failure only costs the node. */
	ret = xxcap_v4l2_register(card);
	if (ret)
		dev_warn(&card->dev, "no V4L2 node: %d\n", ret);

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

	/* Streams end with errors; the reset below gives their buffers back. */
	xxcap_v4l2_unregister(card);

	/* Before the BAR goes: user mappings show a zeroed page from now on. */
	xxcap_zap_mappings(card);

	cdev_device_del(&card->cdev, &card->dev);

	xxcap_shutdown(card);
	/* Reset: the card holds no registered buffer any more. */
	xxcap_regbuf_reclaim(card);
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

	xxcap_class = xxcap_class_create("xxcapture");
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
