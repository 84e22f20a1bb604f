// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: the V4L2 capture node (/dev/videoN) of a card. Formats,
 * frame sizes and rates are those the card's frame registers accept; the
 * inputs and the test-pattern control select its FRAME_SOURCE. Nothing is
 * written to the card until streaming starts (xxcap_vb2.c), which programs
 * the whole configuration in one task file.
 */

#include <linux/slab.h>
#include <linux/string.h>
#include <media/v4l2-event.h>
#include <media/v4l2-ioctl.h>

#include "xxcap_v4l2.h"

struct xxcap_fmt {
	u32 fourcc;
	u32 code;			/* FRAME_FORMAT */
};

static const struct xxcap_fmt xxcap_fmts[] = {
	{ V4L2_PIX_FMT_YUYV, 1 },
	{ V4L2_PIX_FMT_NV12, 2 },
	{ V4L2_PIX_FMT_RGB24, 3 },
};

static const struct xxcap_fmt *xxcap_fmt_by_fourcc(u32 fourcc)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(xxcap_fmts); i++)
		if (xxcap_fmts[i].fourcc == fourcc)
			return &xxcap_fmts[i];
	return NULL;
}

static const struct xxcap_fmt *xxcap_fmt_by_code(u32 code)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(xxcap_fmts); i++)
		if (xxcap_fmts[i].code == code)
			return &xxcap_fmts[i];
	return NULL;
}

/* Bytes per line of the first plane, as the card writes frames. */
u32 xxcap_v4l2_bpl(u32 code, u32 width)
{
	switch (code) {
	case 2:
		return width;		/* NV12: the Y plane */
	case 3:
		return width * 3;
	default:
		return width * 2;
	}
}

/* Bytes of a frame (device-model SPEC §8). */
u32 xxcap_v4l2_size(u32 code, u32 width, u32 height)
{
	if (code == 2)
		return width * height * 3 / 2;
	return xxcap_v4l2_bpl(code, width) * height;
}

static struct xxcap_v4l2 *xxcap_v4l2_of(struct file *file)
{
	return video_drvdata(file);
}

/*
 * Makes @pix a format the card accepts on the current input: a known
 * pixel format (else YUYV), an even size in range (the file's own on the
 * file input), and the exact layout of the card's frames. Returns the
 * card's format code.
 */
static u32 xxcap_fmt_adjust(struct xxcap_v4l2 *v, struct v4l2_pix_format *pix)
{
	const struct xxcap_fmt *f = xxcap_fmt_by_fourcc(pix->pixelformat);

	if (v->input == XXCAP_INPUT_FILE) {
		f = xxcap_fmt_by_code(v->file_code);
		pix->width = v->file_width;
		pix->height = v->file_height;
	} else {
		if (!f)
			f = &xxcap_fmts[0];
		pix->width = clamp_t(u32, pix->width, XXCAP_MIN_WIDTH,
				     XXCAP_MAX_WIDTH) & ~1U;
		pix->height = clamp_t(u32, pix->height, XXCAP_MIN_HEIGHT,
				      XXCAP_MAX_HEIGHT) & ~1U;
	}
	pix->pixelformat = f->fourcc;
	pix->field = V4L2_FIELD_NONE;
	pix->bytesperline = xxcap_v4l2_bpl(f->code, pix->width);
	pix->sizeimage = xxcap_v4l2_size(f->code, pix->width, pix->height);
	pix->flags = 0;
	if (f->code == 3) {
		pix->colorspace = V4L2_COLORSPACE_SRGB;
		pix->ycbcr_enc = V4L2_YCBCR_ENC_DEFAULT;
		pix->quantization = V4L2_QUANTIZATION_FULL_RANGE;
		pix->xfer_func = V4L2_XFER_FUNC_SRGB;
	} else {
		/* BT.601, limited range */
		pix->colorspace = V4L2_COLORSPACE_SMPTE170M;
		pix->ycbcr_enc = V4L2_YCBCR_ENC_601;
		pix->quantization = V4L2_QUANTIZATION_LIM_RANGE;
		pix->xfer_func = V4L2_XFER_FUNC_709;
	}
	return f->code;
}

static int xxcap_querycap(struct file *file, void *priv,
			  struct v4l2_capability *cap)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);
	const u8 *name = v->card->id.name;

	strscpy(cap->driver, KBUILD_MODNAME, sizeof(cap->driver));
	snprintf(cap->card, sizeof(cap->card), "%.*s",
		 (int)xxcap_str_len(name, sizeof(v->card->id.name)), name);
	if (!cap->card[0])
		strscpy(cap->card, "Double X capture card", sizeof(cap->card));
	strscpy(cap->bus_info, v->bus_info, sizeof(cap->bus_info));
	return 0;
}

static int xxcap_enum_fmt(struct file *file, void *priv,
			  struct v4l2_fmtdesc *f)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);

	if (v->input == XXCAP_INPUT_FILE) {
		if (f->index)
			return -EINVAL;
		f->pixelformat = xxcap_fmt_by_code(v->file_code)->fourcc;
		return 0;
	}
	if (f->index >= ARRAY_SIZE(xxcap_fmts))
		return -EINVAL;
	f->pixelformat = xxcap_fmts[f->index].fourcc;
	return 0;
}

static int xxcap_g_fmt(struct file *file, void *priv, struct v4l2_format *f)
{
	f->fmt.pix = xxcap_v4l2_of(file)->fmt;
	return 0;
}

static int xxcap_try_fmt(struct file *file, void *priv, struct v4l2_format *f)
{
	xxcap_fmt_adjust(xxcap_v4l2_of(file), &f->fmt.pix);
	return 0;
}

static int xxcap_s_fmt(struct file *file, void *priv, struct v4l2_format *f)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);
	u32 code = xxcap_fmt_adjust(v, &f->fmt.pix);

	if (vb2_is_busy(&v->queue))
		return -EBUSY;
	v->fmt = f->fmt.pix;
	v->code = code;
	return 0;
}

/* @fourcc is a format of the current input. */
static bool xxcap_fmt_valid(struct xxcap_v4l2 *v, u32 fourcc)
{
	const struct xxcap_fmt *f = xxcap_fmt_by_fourcc(fourcc);

	if (!f)
		return false;
	return v->input != XXCAP_INPUT_FILE || f->code == v->file_code;
}

static int xxcap_enum_framesizes(struct file *file, void *priv,
				 struct v4l2_frmsizeenum *fs)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);

	if (fs->index || !xxcap_fmt_valid(v, fs->pixel_format))
		return -EINVAL;
	if (v->input == XXCAP_INPUT_FILE) {
		fs->type = V4L2_FRMSIZE_TYPE_DISCRETE;
		fs->discrete.width = v->file_width;
		fs->discrete.height = v->file_height;
		return 0;
	}
	fs->type = V4L2_FRMSIZE_TYPE_STEPWISE;
	fs->stepwise.min_width = XXCAP_MIN_WIDTH;
	fs->stepwise.max_width = XXCAP_MAX_WIDTH;
	fs->stepwise.step_width = 2;
	fs->stepwise.min_height = XXCAP_MIN_HEIGHT;
	fs->stepwise.max_height = XXCAP_MAX_HEIGHT;
	fs->stepwise.step_height = 2;
	return 0;
}

static int xxcap_enum_frameintervals(struct file *file, void *priv,
				     struct v4l2_frmivalenum *fi)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);
	struct v4l2_pix_format pix = {
		.pixelformat = fi->pixel_format,
		.width = fi->width,
		.height = fi->height,
	};

	if (fi->index || !xxcap_fmt_valid(v, fi->pixel_format))
		return -EINVAL;
	xxcap_fmt_adjust(v, &pix);
	if (pix.width != fi->width || pix.height != fi->height)
		return -EINVAL;
	/* Any whole number of frames per second: 1/1000 s to 1 s */
	fi->type = V4L2_FRMIVAL_TYPE_CONTINUOUS;
	fi->stepwise.min.numerator = 1;
	fi->stepwise.min.denominator = XXCAP_MAX_FPS;
	fi->stepwise.max.numerator = 1;
	fi->stepwise.max.denominator = XXCAP_MIN_FPS;
	fi->stepwise.step.numerator = 1;
	fi->stepwise.step.denominator = 1;
	return 0;
}

static void xxcap_fill_parm(struct xxcap_v4l2 *v, struct v4l2_streamparm *a)
{
	memset(&a->parm, 0, sizeof(a->parm));
	a->parm.capture.capability = V4L2_CAP_TIMEPERFRAME;
	a->parm.capture.timeperframe.numerator = 1;
	a->parm.capture.timeperframe.denominator = v->fps;
	a->parm.capture.readbuffers = 2;
}

static int xxcap_g_parm(struct file *file, void *priv,
			struct v4l2_streamparm *a)
{
	if (a->type != V4L2_BUF_TYPE_VIDEO_CAPTURE)
		return -EINVAL;
	xxcap_fill_parm(xxcap_v4l2_of(file), a);
	return 0;
}

/* The card paces whole frames per second: the nearest one, 1 to 1000. */
static int xxcap_s_parm(struct file *file, void *priv,
			struct v4l2_streamparm *a)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);
	struct v4l2_fract *tpf = &a->parm.capture.timeperframe;
	u64 fps;

	if (a->type != V4L2_BUF_TYPE_VIDEO_CAPTURE)
		return -EINVAL;
	if (tpf->numerator && tpf->denominator) {
		/* FRAME_RATE cannot change while capture runs */
		if (vb2_is_streaming(&v->queue))
			return -EBUSY;
		fps = DIV_ROUND_CLOSEST_ULL((u64)tpf->denominator,
					    tpf->numerator);
		v->fps = clamp_t(u64, fps, XXCAP_MIN_FPS, XXCAP_MAX_FPS);
	}
	xxcap_fill_parm(v, a);
	return 0;
}

static int xxcap_enum_input(struct file *file, void *priv,
			    struct v4l2_input *inp)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);

	if (inp->index == XXCAP_INPUT_PATTERN)
		strscpy(inp->name, "Test Pattern", sizeof(inp->name));
	else if (inp->index == XXCAP_INPUT_FILE && v->has_file)
		strscpy(inp->name, "File Source", sizeof(inp->name));
	else
		return -EINVAL;
	inp->type = V4L2_INPUT_TYPE_CAMERA;
	return 0;
}

static int xxcap_g_input(struct file *file, void *priv, unsigned int *i)
{
	*i = xxcap_v4l2_of(file)->input;
	return 0;
}

/* Selects FRAME_SOURCE @input; the file input brings its own format. */
static int xxcap_select_input(struct xxcap_v4l2 *v, u32 input)
{
	if (input == v->input)
		return 0;
	if (input > XXCAP_INPUT_FILE ||
	    (input == XXCAP_INPUT_FILE && !v->has_file))
		return -EINVAL;
	if (vb2_is_busy(&v->queue))
		return -EBUSY;
	v->input = input;
	v->code = xxcap_fmt_adjust(v, &v->fmt);
	return 0;
}

static int xxcap_s_input(struct file *file, void *priv, unsigned int i)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);

	if (i == v->input)
		return 0;
	if (i > XXCAP_INPUT_FILE || (i == XXCAP_INPUT_FILE && !v->has_file))
		return -EINVAL;
	if (vb2_is_busy(&v->queue))
		return -EBUSY;
	/* The control follows, and selects the source (xxcap_s_ctrl()). */
	return v4l2_ctrl_s_ctrl(v->source, i);
}

/* Called under v->lock too: every control ioctl holds vdev->lock. */
static int xxcap_s_ctrl(struct v4l2_ctrl *ctrl)
{
	struct xxcap_v4l2 *v = container_of(ctrl->handler, struct xxcap_v4l2,
					    ctrls);

	switch (ctrl->id) {
	case V4L2_CID_TEST_PATTERN:
		return xxcap_select_input(v, ctrl->val);
	default:
		return -EINVAL;
	}
}

/* QBUF, then the buffer goes to the card (see xxcap_buf_queue()). */
static int xxcap_qbuf(struct file *file, void *priv, struct v4l2_buffer *b)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);
	int ret;

	ret = vb2_ioctl_qbuf(file, priv, b);
	if (!ret)
		xxcap_vb2_send_pending(v);
	return ret;
}

/*
 * vb2_fop_read() with the buffers a call queues held back until it
 * returns: the one it emptied and requeued, and, for a nonblocking call
 * that starts streaming, the first ones too (xxcap_start_streaming()).
 * Such a call therefore always finds no frame, however long the host
 * took between the start and the dequeue, and the next call finds what
 * the card delivered in between.
 */
static ssize_t xxcap_v4l2_read(struct file *file, char __user *buf,
			       size_t count, loff_t *ppos)
{
	struct xxcap_v4l2 *v = xxcap_v4l2_of(file);
	struct vb2_queue *q = &v->queue;
	bool nonblock = file->f_flags & O_NONBLOCK;
	ssize_t ret = -EBUSY;

	if (mutex_lock_interruptible(&v->lock))
		return -ERESTARTSYS;
	if (vb2_queue_is_busy(q, file))
		goto out;
	v->hold_start = nonblock;
	ret = vb2_read(q, buf, count, ppos, nonblock);
	v->hold_start = false;
	if (vb2_fileio_is_active(q))
		q->owner = file->private_data;
	xxcap_vb2_send_pending(v);
out:
	mutex_unlock(&v->lock);
	return ret;
}

static const struct v4l2_ctrl_ops xxcap_ctrl_ops = {
	.s_ctrl = xxcap_s_ctrl,
};

static const char * const xxcap_sources[] = {
	"75% Colour Bars",
	"File Source",
};

static const struct v4l2_ioctl_ops xxcap_ioctl_ops = {
	.vidioc_querycap = xxcap_querycap,
	.vidioc_enum_fmt_vid_cap = xxcap_enum_fmt,
	.vidioc_g_fmt_vid_cap = xxcap_g_fmt,
	.vidioc_try_fmt_vid_cap = xxcap_try_fmt,
	.vidioc_s_fmt_vid_cap = xxcap_s_fmt,
	.vidioc_enum_framesizes = xxcap_enum_framesizes,
	.vidioc_enum_frameintervals = xxcap_enum_frameintervals,
	.vidioc_g_parm = xxcap_g_parm,
	.vidioc_s_parm = xxcap_s_parm,
	.vidioc_enum_input = xxcap_enum_input,
	.vidioc_g_input = xxcap_g_input,
	.vidioc_s_input = xxcap_s_input,

	.vidioc_reqbufs = vb2_ioctl_reqbufs,
	.vidioc_create_bufs = vb2_ioctl_create_bufs,
	.vidioc_prepare_buf = vb2_ioctl_prepare_buf,
	.vidioc_querybuf = vb2_ioctl_querybuf,
	.vidioc_qbuf = xxcap_qbuf,
	.vidioc_dqbuf = vb2_ioctl_dqbuf,
	.vidioc_expbuf = vb2_ioctl_expbuf,
	.vidioc_streamon = vb2_ioctl_streamon,
	.vidioc_streamoff = vb2_ioctl_streamoff,

	.vidioc_log_status = v4l2_ctrl_log_status,
	.vidioc_subscribe_event = v4l2_ctrl_subscribe_event,
	.vidioc_unsubscribe_event = v4l2_event_unsubscribe,
};

static const struct v4l2_file_operations xxcap_v4l2_fops = {
	.owner = THIS_MODULE,
	.open = v4l2_fh_open,
	.release = vb2_fop_release,
	.read = xxcap_v4l2_read,
	.poll = vb2_fop_poll,
	.mmap = vb2_fop_mmap,
	.unlocked_ioctl = video_ioctl2,
};

/* The last reference to the node is gone (unregistered, every file closed). */
static void xxcap_v4l2_release(struct v4l2_device *v4l2_dev)
{
	struct xxcap_v4l2 *v = container_of(v4l2_dev, struct xxcap_v4l2,
					    v4l2_dev);
	struct xxcap_card *card = v->card;

	v4l2_ctrl_handler_free(&v->ctrls);
	v4l2_device_unregister(&v->v4l2_dev);
	mutex_destroy(&v->lock);
	card->v4l2 = NULL;
	kfree(v);
	put_device(&card->dev);
}

/*
 * Reads the card's frame registers at start (the node's first format) and
 * whether it has a file source, with that file's format; leaves the
 * registers as they were. A card that cannot answer gets the defaults of
 * device-model SPEC §5.
 */
static void xxcap_v4l2_probe_card(struct xxcap_v4l2 *v)
{
	struct xxcap_cmd cmds[8] = {
		{ .op = XXCAP_OP_GET_REGISTER, .reg = XXCAP_REG_FRAME_FORMAT },
		{ .op = XXCAP_OP_GET_REGISTER, .reg = XXCAP_REG_FRAME_WIDTH },
		{ .op = XXCAP_OP_GET_REGISTER, .reg = XXCAP_REG_FRAME_HEIGHT },
		{ .op = XXCAP_OP_GET_REGISTER, .reg = XXCAP_REG_FRAME_RATE },
	};
	struct v4l2_pix_format *pix = &v->fmt;
	u32 err;
	u64 t;

	pix->pixelformat = V4L2_PIX_FMT_YUYV;
	pix->width = 640;
	pix->height = 480;
	v->fps = 30;
	if (!xxcap_exec_kernel(v->card, cmds, 4, &err, &t) &&
	    err == XXCAP_TF_OK) {
		if (xxcap_fmt_by_code(cmds[0].value))
			pix->pixelformat = xxcap_fmt_by_code(cmds[0].value)->fourcc;
		pix->width = cmds[1].value;
		pix->height = cmds[2].value;
		if (cmds[3].value)
			v->fps = cmds[3].value;
	}
	v->code = xxcap_fmt_adjust(v, pix);

	/* Selecting the file loads its format: put the registers back after. */
	memset(cmds, 0, sizeof(cmds));
	cmds[0] = (struct xxcap_cmd){ .op = XXCAP_OP_SET_REGISTER,
				      .reg = XXCAP_REG_FRAME_SOURCE, .value = 1 };
	cmds[1] = (struct xxcap_cmd){ .op = XXCAP_OP_GET_REGISTER,
				      .reg = XXCAP_REG_FRAME_FORMAT };
	cmds[2] = (struct xxcap_cmd){ .op = XXCAP_OP_GET_REGISTER,
				      .reg = XXCAP_REG_FRAME_WIDTH };
	cmds[3] = (struct xxcap_cmd){ .op = XXCAP_OP_GET_REGISTER,
				      .reg = XXCAP_REG_FRAME_HEIGHT };
	cmds[4] = (struct xxcap_cmd){ .op = XXCAP_OP_SET_REGISTER,
				      .reg = XXCAP_REG_FRAME_SOURCE, .value = 0 };
	cmds[5] = (struct xxcap_cmd){ .op = XXCAP_OP_SET_REGISTER,
				      .reg = XXCAP_REG_FRAME_FORMAT,
				      .value = v->code };
	cmds[6] = (struct xxcap_cmd){ .op = XXCAP_OP_SET_REGISTER,
				      .reg = XXCAP_REG_FRAME_WIDTH,
				      .value = pix->width };
	cmds[7] = (struct xxcap_cmd){ .op = XXCAP_OP_SET_REGISTER,
				      .reg = XXCAP_REG_FRAME_HEIGHT,
				      .value = pix->height };
	if (xxcap_exec_kernel(v->card, cmds, 8, &err, &t) ||
	    err != XXCAP_TF_OK || !xxcap_fmt_by_code(cmds[1].value))
		return;
	v->has_file = true;
	v->file_code = cmds[1].value;
	v->file_width = cmds[2].value;
	v->file_height = cmds[3].value;
}

/*
 * Registers the V4L2 node of @card, for a card that can stream into guest
 * memory; without one the card keeps its char device only.
 */
int xxcap_v4l2_register(struct xxcap_card *card)
{
	struct device *parent = &card->vdev->dev;
	struct video_device *vdev;
	struct xxcap_v4l2 *v;
	int ret;

	if (!(card->id.capabilities & XXCAP_CAP_STREAMING) || !card->dma ||
	    !parent->parent)
		return 0;

	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!v)
		return -ENOMEM;
	v->card = card;
	mutex_init(&v->lock);
	INIT_LIST_HEAD(&v->pending);
	INIT_LIST_HEAD(&v->early);
	init_waitqueue_head(&v->wq);
	snprintf(v->bus_info, sizeof(v->bus_info), "PCI:%s",
		 dev_name(parent->parent));
	xxcap_v4l2_probe_card(v);

	ret = v4l2_device_register(parent, &v->v4l2_dev);
	if (ret)
		goto err_free;
	/* From here on xxcap_v4l2_release() frees v and drops the card. */
	get_device(&card->dev);
	card->v4l2 = v;
	v->v4l2_dev.release = xxcap_v4l2_release;

	/*
	 * The handler keeps its own lock: control ioctls take it under
	 * v->lock (vdev->lock), so it cannot be that one.
	 */
	v4l2_ctrl_handler_init(&v->ctrls, 1);
	v->source = v4l2_ctrl_new_std_menu_items(&v->ctrls, &xxcap_ctrl_ops,
						 V4L2_CID_TEST_PATTERN,
						 ARRAY_SIZE(xxcap_sources) - 1,
						 v->has_file ? 0 : BIT(1), 0,
						 xxcap_sources);
	ret = v->ctrls.error;
	if (ret)
		goto err_put;
	v->v4l2_dev.ctrl_handler = &v->ctrls;

	ret = xxcap_vb2_init(v);
	if (ret)
		goto err_put;

	vdev = &v->vdev;
	strscpy(vdev->name, dev_name(&card->dev), sizeof(vdev->name));
	vdev->fops = &xxcap_v4l2_fops;
	vdev->ioctl_ops = &xxcap_ioctl_ops;
	vdev->release = video_device_release_empty;
	vdev->v4l2_dev = &v->v4l2_dev;
	vdev->queue = &v->queue;
	vdev->lock = &v->lock;
	vdev->vfl_dir = VFL_DIR_RX;
	vdev->device_caps = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING |
			    V4L2_CAP_READWRITE;
	video_set_drvdata(vdev, v);
	ret = video_register_device(vdev, VFL_TYPE_VIDEO, -1);
	if (ret)
		goto err_put;
	dev_info(&card->dev, "V4L2 capture node %s%s\n",
		 video_device_node_name(vdev),
		 v->has_file ? ", file source" : "");
	return 0;

err_put:
	v4l2_device_put(&v->v4l2_dev);
	return ret;

err_free:
	mutex_destroy(&v->lock);
	kfree(v);
	return ret;
}

/*
 * Removal: ends a stream with errors and unregisters the node; files still
 * open see -ENODEV. The card's reset then gives every buffer back.
 */
void xxcap_v4l2_unregister(struct xxcap_card *card)
{
	struct xxcap_v4l2 *v = card->v4l2;

	if (!v)
		return;
	/*
	 * Not under v->lock: a stop_streaming() holding it waits for the
	 * buffers that the reset after this gives back.
	 */
	vb2_queue_error(&v->queue);
	video_unregister_device(&v->vdev);
	v4l2_device_disconnect(&v->v4l2_dev);
	v4l2_device_put(&v->v4l2_dev);
}
