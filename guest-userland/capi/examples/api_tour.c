// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * api_tour: drives every part of libxxcapture against a real card and
 * checks what comes back: listing and opening, task files, synchronous and
 * asynchronous DMA with completion callbacks, events, card RAM and the
 * status block mapped, streaming and mapped capture, the card's
 * properties, and the card monitor across an unbind and a bind of the
 * driver (needs root). One line per check,
 * then a count of checks passed and failed; exits 0 only when none failed.
 *
 * Build: cc api_tour.c $(pkg-config --cflags --libs xxcapture)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxcapture.h>

#define DMA_LEN (64 * 1024)
#define STREAM_FRAMES 30
#define CAPTURE_FRAMES 10
#define WAIT_MS 5000

static unsigned int passed, failed;

static void check(int ok, const char *what, int rc)
{
	if (ok) {
		passed++;
		printf("ok - %s\n", what);
	} else {
		failed++;
		printf("FAIL - %s: rc %d %s (%s)\n", what, rc,
		       xxcap_strerror(rc), xxcap_last_error());
	}
}

struct async_done {
	int calls;
	uint32_t status;
	uint64_t request_id;
};

static void on_completion(struct xxcap_card *card,
			  const struct xxcap_completion *done, void *refcon)
{
	struct async_done *d = refcon;

	(void)card;
	d->calls++;
	d->status = done->status;
	d->request_id = done->request_id;
}

struct event_seen {
	int test;
	int other;
};

static void on_event(struct xxcap_card *card, const struct xxcap_event *ev,
		     void *refcon)
{
	struct event_seen *seen = refcon;

	(void)card;
	if (ev->cause == XXCAP_CAUSE_TEST)
		seen->test++;
	else
		seen->other++;
}

static void fill(uint8_t *buf, size_t len, uint8_t seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = (uint8_t)(i * 31 + seed);
}

/* Runs while this process holds the card open for control. */
static void tour_open(void)
{
	struct xxcap_card_entry entries[4];
	struct xxcap_card *again = NULL, *observer = NULL;
	int n, rc;

	n = xxcap_list_cards(entries, 4);
	check(n >= 1 && !strcmp(entries[0].dev_path, "/dev/xxcapture0"),
	      "list_cards finds /dev/xxcapture0", n);
	check(xxcap_list_cards(NULL, 0) == n, "list_cards counts without room",
	      n);
	rc = xxcap_open_index(0, XXCAP_OPEN_CONTROL, &again);
	check(rc == -EBUSY, "a second controlling open is refused", rc);
	if (!rc)
		xxcap_close(again);
	rc = xxcap_open_index(0, XXCAP_OPEN_OBSERVE, &observer);
	check(!rc, "an observing open is shared", rc);
	xxcap_close(observer);
	rc = xxcap_open("/dev/xxcapture-none", 0, &again);
	check(rc == -ENOENT, "opening a missing node says ENOENT", rc);
}

static void tour_task_files(struct xxcap_card *card,
			    const struct xxcap_info *info)
{
	struct xxcap_tf_result res;
	struct xxcap_taskfile *tf;
	uint16_t caps_reg, width_reg;
	struct xxcap_format fmt = { XXCAP_FORMAT_NV12, 640, 480, 30 }, back;
	uint64_t caps = 0;
	int at, rc;

	rc = xxcap_register_lookup("CAPS", &caps_reg, NULL);
	rc |= xxcap_register_lookup("frame_width", &width_reg, NULL);
	check(!rc, "register_lookup by name", rc);
	rc = xxcap_tf_new(&tf);
	if (rc) {
		check(0, "tf_new", rc);
		return;
	}
	at = xxcap_tf_get(tf, caps_reg);
	rc = xxcap_tf_execute(card, tf, &res);
	if (!rc)
		rc = xxcap_tf_value(tf, at, &caps);
	check(!rc && res.error == 0 && caps == info->capabilities,
	      "task file GET CAPS equals the identity", rc);

	xxcap_tf_reset(tf);
	xxcap_tf_get(tf, caps_reg);
	xxcap_tf_set(tf, caps_reg, 0);
	xxcap_tf_get(tf, caps_reg);
	rc = xxcap_tf_execute(card, tf, &res);
	check(rc == -EIO && res.error != 0 && res.index == 1,
	      "a write to a read-only register fails at its command", rc);
	xxcap_tf_free(tf);

	rc = xxcap_set_format(card, &fmt);
	if (!rc)
		rc = xxcap_get_format(card, &back);
	check(!rc && back.pixel_format == fmt.pixel_format &&
	      back.width == 640 && back.height == 480 && back.fps == 30,
	      "set_format and get_format agree", rc);
}

static void tour_dma(struct xxcap_card *card)
{
	struct async_done wrote = { 0 }, read = { 0 };
	uint8_t *out, *in, *in2;
	struct xxcap_status_map *status_map = NULL;
	struct xxcap_status st;
	struct xxcap_ram *ram = NULL;
	uint64_t moved = 0, id_w = 0, id_r = 0;
	void *ram_data;
	size_t ram_len;
	int rc, i;

	out = malloc(DMA_LEN);
	in = malloc(DMA_LEN);
	in2 = malloc(DMA_LEN);
	if (!out || !in || !in2) {
		check(0, "allocating DMA buffers", -ENOMEM);
		goto out_free;
	}

	fill(out, DMA_LEN, 1);
	rc = xxcap_write_blocks(card, 0, out, DMA_LEN, &moved);
	check(!rc && moved == DMA_LEN, "write_blocks moves 64 KiB", rc);
	memset(in, 0, DMA_LEN);
	rc = xxcap_read_blocks(card, 0, in, DMA_LEN, &moved);
	check(!rc && moved == DMA_LEN && !memcmp(in, out, DMA_LEN),
	      "read_blocks reads back what was written", rc);
	rc = xxcap_read_blocks(card, 0, NULL, DMA_LEN, NULL);
	check(rc == -EINVAL, "a NULL buffer with a length is refused", rc);

	fill(out, DMA_LEN, 7);
	rc = xxcap_dma_async(card, XXCAP_DMA_TO_CARD, out, DMA_LEN, 0,
			     on_completion, &wrote, &id_w);
	check(!rc, "dma_async to the card submitted", rc);
	for (i = 0; i < 50 && !wrote.calls; i++)
		xxcap_dispatch(card, 100);
	check(wrote.calls == 1 && wrote.status == 0 && wrote.request_id == id_w,
	      "its callback ran once with its refcon and id", wrote.calls);
	memset(in2, 0, DMA_LEN);
	rc = xxcap_dma_async(card, XXCAP_DMA_FROM_CARD, in2, DMA_LEN, 0,
			     on_completion, &read, &id_r);
	check(!rc && xxcap_pending(card) == 1, "dma_async from the card pending",
	      rc);
	for (i = 0; i < 50 && !read.calls; i++)
		xxcap_dispatch(card, 100);
	check(read.calls == 1 && read.status == 0 && read.request_id == id_r &&
	      !memcmp(in2, out, DMA_LEN),
	      "asynchronous read back matches", read.calls);
	check(xxcap_pending(card) == 0, "nothing left pending", 0);

	rc = xxcap_ram_map(card, &ram, &ram_data, &ram_len);
	check(!rc && ram_len >= DMA_LEN && !memcmp(ram_data, out, DMA_LEN),
	      "mapped card RAM holds what DMA wrote", rc);
	xxcap_ram_unmap(ram);

	rc = xxcap_status_map(card, &status_map);
	if (!rc)
		rc = xxcap_status_read(status_map, &st);
	check(!rc && (st.status & XXCAP_STATUS_READY),
	      "status block mapped and the card ready", rc);
	xxcap_status_unmap(status_map);

out_free:
	free(out);
	free(in);
	free(in2);
}

static void tour_events(struct xxcap_card *card)
{
	struct event_seen seen = { 0 };
	struct xxcap_event ev[8];
	uint16_t raise_reg;
	int rc, n, i;

	rc = xxcap_subscribe(card, XXCAP_CAUSE_TEST, NULL);
	if (!rc)
		rc = xxcap_enable_interrupts(card, XXCAP_CAUSE_TEST, 1, 0);
	if (!rc)
		rc = xxcap_register_lookup("INT_RAISE", &raise_reg, NULL);
	check(!rc, "subscribed to TEST interrupts", rc);

	rc = xxcap_write_register(card, raise_reg, XXCAP_CAUSE_TEST);
	n = rc ? rc : xxcap_wait_events(card, ev, 8, WAIT_MS);
	check(n == 1 && ev[0].cause == XXCAP_CAUSE_TEST && !ev[0].completion,
	      "wait_events returns the raised TEST record", n);

	xxcap_set_event_callback(card, on_event, &seen);
	rc = xxcap_write_register(card, raise_reg, XXCAP_CAUSE_TEST);
	for (i = 0; !rc && i < 50 && !seen.test; i++)
		xxcap_dispatch(card, 100);
	check(seen.test == 1, "dispatch runs the event callback", rc);
	xxcap_set_event_callback(card, NULL, NULL);
	n = xxcap_wait_events(card, ev, 8, 0);
	check(n == 0, "a zero timeout returns at once with nothing", n);
	xxcap_enable_interrupts(card, 0, 0, 0);
	xxcap_subscribe(card, 0, NULL);
}

static void tour_stream(struct xxcap_card *card)
{
	struct xxcap_format fmt = { XXCAP_FORMAT_YUYV, 640, 480, 0 };
	struct xxcap_stream_stats stats = { 0 };
	struct xxcap_stream *stream;
	int rc, i, good = 0;

	rc = xxcap_stream_start(card, &fmt, 0, 4, &stream);
	check(!rc, "stream started with 4 lent buffers", rc);
	if (rc)
		return;
	rc = xxcap_close(card);
	check(rc == -EBUSY, "the card cannot close under a stream", rc);
	for (i = 0; i < STREAM_FRAMES; i++) {
		struct xxcap_stream_frame f;

		rc = xxcap_stream_next(stream, WAIT_MS, &f);
		if (rc)
			break;
		if (!xxcap_frame_verify(f.data, f.size, &fmt, NULL))
			good++;
		rc = xxcap_stream_requeue(stream, f.index);
		if (rc)
			break;
	}
	check(good == STREAM_FRAMES, "30 streamed frames verified", rc);
	rc = xxcap_stream_stop(stream, &stats);
	check(!rc && stats.frames >= STREAM_FRAMES, "stream stopped", rc);
}

static void tour_capture(struct xxcap_card *card)
{
	struct xxcap_format fmt = { XXCAP_FORMAT_RGB24, 640, 480, 0 };
	struct xxcap_capture_stats stats;
	struct xxcap_capture *cap;
	struct xxcap_status st;
	int rc, i, good = 0;
	size_t size;
	void *buf;

	if (xxcap_frame_size(&fmt, &size) || !(buf = malloc(size))) {
		check(0, "frame buffer", -ENOMEM);
		return;
	}
	rc = xxcap_capture_start(card, &fmt, XXCAP_CAPTURE_MAPPED, &cap);
	check(!rc, "mapped capture started", rc);
	if (rc)
		goto out_free;
	rc = xxcap_capture_next(cap, buf, size - 1, WAIT_MS, NULL);
	check(rc == -EMSGSIZE, "a short buffer is refused", rc);
	for (i = 0; i < CAPTURE_FRAMES; i++) {
		struct xxcap_frame_info fi;
		struct xxcap_stamp stamp;

		rc = xxcap_capture_next(cap, buf, size, WAIT_MS, &fi);
		if (rc)
			break;
		if (!xxcap_frame_verify(buf, fi.size, &fmt, &stamp) &&
		    stamp.frame_number == fi.number)
			good++;
	}
	check(good == CAPTURE_FRAMES, "10 mapped RGB24 frames verified", rc);
	rc = xxcap_capture_status(cap, &st);
	check(!rc && (st.status & XXCAP_STATUS_CAPTURING) &&
	      st.width == 640 && st.format == XXCAP_FORMAT_RGB24,
	      "the status block shows the capture", rc);
	rc = xxcap_capture_stop(cap, &stats);
	check(!rc && stats.delivered == CAPTURE_FRAMES, "capture stopped", rc);
out_free:
	free(buf);
}

/*
 * Properties: read with the card held, refused to change while it is
 * held (this process's controlling open), changed once it is not.
 */
static void tour_properties_held(void)
{
	uint32_t value = 0;
	int rc;

	rc = xxcap_get_property(0, XXCAP_PROP_TIMEOUT_MS, &value);
	check(!rc && value > 0, "get_property timeout_ms", rc);
	rc = xxcap_set_property(0, XXCAP_PROP_TIMEOUT_MS, value);
	check(rc == -EBUSY, "set_property while the card is held: -EBUSY", rc);
	rc = xxcap_get_property(0, 99, &value);
	check(rc == -EINVAL, "get_property of an unknown property: -EINVAL", rc);
}

static void tour_properties_free(void)
{
	uint32_t old = 0, value = 0;
	int rc;

	rc = xxcap_get_property(0, XXCAP_PROP_INT_COALESCE_COUNT, &old);
	check(!rc, "get_property int_coalesce_count", rc);
	rc = xxcap_set_property(0, XXCAP_PROP_INT_COALESCE_COUNT, old + 3);
	check(!rc, "set_property int_coalesce_count", rc);
	rc = xxcap_get_property(0, XXCAP_PROP_INT_COALESCE_COUNT, &value);
	check(!rc && value == old + 3, "the card took the new value", rc);
	rc = xxcap_set_property(0, XXCAP_PROP_INT_COALESCE_COUNT, old);
	check(!rc, "set_property back", rc);
	rc = xxcap_set_property(0, XXCAP_PROP_EVENT_QUEUE_DEPTH, 5);
	check(rc == -EINVAL, "set_property out of range: -EINVAL", rc);
}

struct changes {
	int added;
	int removed;
	int other;
};

static void on_change(const struct xxcap_card_change *change, void *refcon)
{
	struct changes *c = refcon;

	if (change->change == XXCAP_CARD_ADDED && change->index == 0)
		c->added++;
	else if (change->change == XXCAP_CARD_REMOVED && change->index == 0)
		c->removed++;
	else
		c->other++;
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, text, strlen(text));
	close(fd);
	return n < 0 ? -errno : 0;
}

/* Waits up to WAIT_MS for @field of @c to reach 1. */
static void dispatch_until(struct xxcap_monitor *mon, struct changes *c,
			   const int *field)
{
	int i;

	for (i = 0; i < WAIT_MS / 100 && *field < 1; i++)
		xxcap_monitor_dispatch(mon, 100, on_change, c);
}

/*
 * The card monitor: unbinding the driver from the card removes
 * /dev/xxcapture0, binding it again adds it back; the monitor reports
 * each exactly once.
 */
static void tour_monitor(void)
{
	const char *link = "/sys/class/xxcapture/xxcapture0/device";
	struct xxcap_monitor *mon;
	struct changes c = { 0 };
	char target[256], *dev;
	ssize_t n;
	int rc;

	rc = xxcap_monitor_open(&mon);
	check(!rc && xxcap_monitor_fd(mon) >= 0, "monitor_open", rc);
	if (rc)
		return;
	rc = xxcap_monitor_dispatch(mon, 0, on_change, &c);
	check(rc == 0, "monitor_dispatch: nothing changed yet", rc);
	n = readlink(link, target, sizeof(target) - 1);
	check(n > 0, "the card's virtio device", n < 0 ? -errno : 0);
	if (n <= 0)
		goto out;
	target[n] = '\0';
	dev = strrchr(target, '/');
	dev = dev ? dev + 1 : target;
	rc = write_text("/sys/bus/virtio/drivers/xxcapture/unbind", dev);
	check(!rc, "unbind the driver", rc);
	dispatch_until(mon, &c, &c.removed);
	rc = write_text("/sys/bus/virtio/drivers/xxcapture/bind", dev);
	check(!rc, "bind it again", rc);
	dispatch_until(mon, &c, &c.added);
	check(c.removed == 1 && c.added == 1 && c.other == 0,
	      "the monitor saw the card removed once and added once", 0);
out:
	xxcap_monitor_close(mon);
}

int main(void)
{
	struct xxcap_card *card;
	struct xxcap_info info;
	int rc;

	rc = xxcap_open_index(0, XXCAP_OPEN_CONTROL, &card);
	check(!rc, "open /dev/xxcapture0", rc);
	if (rc)
		goto out;
	tour_open();
	rc = xxcap_get_info(card, &info);
	check(!rc && info.max_commands > 0, "get_info", rc);

	tour_task_files(card, &info);
	tour_dma(card);
	tour_events(card);
	tour_stream(card);
	tour_capture(card);
	tour_properties_held();

	rc = xxcap_close(card);
	check(!rc, "close", rc);
	tour_properties_free();
	tour_monitor();
out:
	printf("api tour: %u checks passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
