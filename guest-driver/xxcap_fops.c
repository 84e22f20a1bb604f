// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: the char device. open() and release() of /dev/xxcaptureN and
 * the ioctl dispatch; read(), poll() and mmap() live with what they serve.
 */

#include <linux/bitops.h>
#include <linux/fs.h>
#include <linux/kfifo.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "xxcap_drv.h"

static int xxcap_open(struct inode *inode, struct file *file)
{
	struct xxcap_card *card = container_of(inode->i_cdev,
					       struct xxcap_card, cdev);
	unsigned int depth = xxcap_card_depth(card);
	unsigned int slots = roundup_pow_of_two(depth + XXCAP_COMPLETION_SLOTS);
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
	INIT_LIST_HEAD(&client->regbufs);

	spin_lock_irq(&card->lock);
	if (card->gone) {
		spin_unlock_irq(&card->lock);
		ret = -ENODEV;
		goto err_ring;
	}
	list_add_tail(&client->node, &card->clients);
	if (writer)
		client->owner = xxcap_ring_new_owner(card);
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
 * Last close (also of a killed process): its ring is torn down first, so
 * that no ring task file runs after close or uses the registered buffers
 * released below. The card returns this open's capture buffers before the
 * next controlling open may queue its own (or a late flush would cancel
 * those); the wait is bounded by timeout_ms. Its submitted task files
 * finish in the background, without records.
 */
static int xxcap_release(struct inode *inode, struct file *file)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	struct xxcap_req *req, *tmp;
	bool flush;
	int ret;

	xxcap_ring_release(client);

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

	/* Its task files are done with them once the card forgot them. */
	xxcap_regbuf_release(client);

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
	case XXCAP_IOC_REGISTER_BUFFER:
	case XXCAP_IOC_UNREGISTER_BUFFER:
	case XXCAP_IOC_ABORT:
	case XXCAP_IOC_RING_SETUP:
	case XXCAP_IOC_RING_ENTER:
		break;
	default:
		return -ENOTTY;
	}

	/* The controlling open only */
	if (!(file->f_mode & FMODE_WRITE))
		return -EBADF;
	switch (cmd) {
	case XXCAP_IOC_EXEC:
		return xxcap_exec(client, argp);
	case XXCAP_IOC_SUBMIT:
		return xxcap_submit_tf(client, file, argp);
	case XXCAP_IOC_QUEUE_BUFFER:
		return xxcap_queue_buffer(client, argp);
	case XXCAP_IOC_REGISTER_BUFFER:
		return xxcap_register_buffer(client, argp);
	case XXCAP_IOC_UNREGISTER_BUFFER:
		return xxcap_unregister_buffer(client, argp);
	case XXCAP_IOC_ABORT:
		return xxcap_abort(client, argp);
	case XXCAP_IOC_RING_SETUP:
		return xxcap_ring_setup(client, argp);
	case XXCAP_IOC_RING_ENTER:
		return xxcap_ring_enter(client);
	default:
		/* While the V4L2 node streams, its buffers are the card's. */
		if (READ_ONCE(card->v4l2_streaming))
			return -EBUSY;
		return xxcap_flush(client, true);
	}
}

const struct file_operations xxcap_fops = {
	.owner = THIS_MODULE,
	.open = xxcap_open,
	.release = xxcap_release,
	.read = xxcap_read,
	.poll = xxcap_poll,
	.unlocked_ioctl = xxcap_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = xxcap_mmap,
	/* No .llseek: after stream_open() lseek() fails with ESPIPE. */
};
