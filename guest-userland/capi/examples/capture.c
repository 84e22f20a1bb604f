// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * capture: lists the xxcapture cards, opens one, captures frames through
 * libxxcapture and verifies each (its stamp: frame number, format, size
 * and a CRC-32 of the whole frame). Prints a summary line and, with
 * --results, a capture record for the test harness. Exits 0 only when
 * every frame asked for arrived and verified.
 *
 * Build: cc capture.c $(pkg-config --cflags --libs xxcapture)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxcapture.h>

#define FRAME_TIMEOUT_MS 5000
#define MAX_CARDS 16
#define MAX_REPORTED 5

struct options {
	const char *device;
	unsigned int index;
	unsigned long frames;
	struct xxcap_format fmt;
	uint32_t flags;
	int results;
};

static void usage(void)
{
	fprintf(stderr,
		"usage: xxcap-capi-capture [--device PATH | --index N] [--frames N]\n"
		"                          [--format yuyv|nv12|rgb24] [--size WxH]\n"
		"                          [--rate FPS] [--mode dma|mmap] [--results]\n");
}

static void report(const char *what, int rc)
{
	fprintf(stderr, "capture: %s: %s (%s)\n", what, xxcap_strerror(rc),
		xxcap_last_error());
}

static const char *format_name(uint32_t code)
{
	switch (code) {
	case XXCAP_FORMAT_YUYV:
		return "yuyv";
	case XXCAP_FORMAT_NV12:
		return "nv12";
	case XXCAP_FORMAT_RGB24:
		return "rgb24";
	default:
		return "unknown";
	}
}

static int parse_format(const char *s, uint32_t *code)
{
	if (!strcmp(s, "yuyv"))
		*code = XXCAP_FORMAT_YUYV;
	else if (!strcmp(s, "nv12"))
		*code = XXCAP_FORMAT_NV12;
	else if (!strcmp(s, "rgb24"))
		*code = XXCAP_FORMAT_RGB24;
	else
		return -EINVAL;
	return 0;
}

static int parse_args(int argc, char **argv, struct options *o)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(arg, "--results")) {
			o->results = 1;
			continue;
		}
		if (!val)
			return -EINVAL;
		i++;
		if (!strcmp(arg, "--device")) {
			o->device = val;
		} else if (!strcmp(arg, "--index")) {
			o->index = strtoul(val, NULL, 10);
		} else if (!strcmp(arg, "--frames")) {
			o->frames = strtoul(val, NULL, 10);
		} else if (!strcmp(arg, "--format")) {
			if (parse_format(val, &o->fmt.pixel_format))
				return -EINVAL;
		} else if (!strcmp(arg, "--size")) {
			if (sscanf(val, "%ux%u", &o->fmt.width,
				   &o->fmt.height) != 2)
				return -EINVAL;
		} else if (!strcmp(arg, "--rate")) {
			o->fmt.fps = strtoul(val, NULL, 10);
		} else if (!strcmp(arg, "--mode")) {
			if (!strcmp(val, "mmap"))
				o->flags |= XXCAP_CAPTURE_MAPPED;
			else if (strcmp(val, "dma"))
				return -EINVAL;
		} else {
			return -EINVAL;
		}
	}
	return o->frames ? 0 : -EINVAL;
}

/* Prints every card present; returns how many, or a negative errno. */
static int list_cards(void)
{
	struct xxcap_card_entry cards[MAX_CARDS];
	int n, i;

	n = xxcap_list_cards(cards, MAX_CARDS);
	if (n < 0)
		return n;
	for (i = 0; i < n && i < MAX_CARDS; i++)
		printf("card %u: %s \"%s\" serial %s model %#x abi %#x caps %#x ram %llu\n",
		       cards[i].index, cards[i].dev_path, cards[i].name,
		       cards[i].serial, cards[i].model, cards[i].abi_version,
		       cards[i].capabilities,
		       (unsigned long long)cards[i].card_ram_size);
	return n;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct options o = {
		.frames = 300,
		.fmt = { XXCAP_FORMAT_YUYV, 1920, 1080, 60 },
	};
	struct xxcap_capture_stats stats = { 0 };
	unsigned long verified = 0, corrupt = 0, got = 0;
	struct xxcap_card *card = NULL;
	struct xxcap_capture *cap = NULL;
	struct xxcap_info info;
	double start, seconds;
	size_t size;
	void *frame;
	int rc, n;

	if (parse_args(argc, argv, &o)) {
		usage();
		return 2;
	}
	printf("libxxcapture %s\n", xxcap_version());

	n = list_cards();
	if (n < 0) {
		report("listing cards", n);
		return 1;
	}
	if (n == 0) {
		fprintf(stderr, "capture: no xxcapture card present\n");
		return 1;
	}

	if (o.device)
		rc = xxcap_open(o.device, XXCAP_OPEN_CONTROL, &card);
	else
		rc = xxcap_open_index(o.index, XXCAP_OPEN_CONTROL, &card);
	if (rc) {
		report("opening the card", rc);
		return 1;
	}
	rc = xxcap_get_info(card, &info);
	if (rc) {
		report("reading the identity", rc);
		goto out_close;
	}
	printf("opened %s serial %s, %llu bytes of card RAM\n", info.name,
	       info.serial, (unsigned long long)info.card_ram_size);

	rc = xxcap_frame_size(&o.fmt, &size);
	if (rc) {
		report("frame size", rc);
		goto out_close;
	}
	frame = malloc(size);
	if (!frame) {
		rc = -ENOMEM;
		report("allocating a frame", rc);
		goto out_close;
	}

	rc = xxcap_capture_start(card, &o.fmt, o.flags, &cap);
	if (rc) {
		report("starting capture", rc);
		goto out_free;
	}
	start = now_s();
	while (got < o.frames) {
		struct xxcap_frame_info fi;
		struct xxcap_stamp stamp;
		int vr;

		rc = xxcap_capture_next(cap, frame, size, FRAME_TIMEOUT_MS, &fi);
		if (rc) {
			report("waiting for a frame", rc);
			break;
		}
		got++;
		vr = xxcap_frame_verify(frame, fi.size, &o.fmt, &stamp);
		if (!vr && stamp.frame_number == fi.number) {
			verified++;
			continue;
		}
		corrupt++;
		if (corrupt <= MAX_REPORTED) {
			if (vr)
				fprintf(stderr, "capture: frame %llu: %s (%s)\n",
					(unsigned long long)fi.number,
					xxcap_strerror(vr), xxcap_last_error());
			else
				fprintf(stderr, "capture: frame %llu carries the stamp of frame %llu\n",
					(unsigned long long)fi.number,
					(unsigned long long)stamp.frame_number);
		}
	}
	seconds = now_s() - start;

	n = xxcap_capture_stop(cap, &stats);
	if (n) {
		report("stopping capture", n);
		if (!rc)
			rc = n;
	}

	printf("capture: %lu frames %ux%u %s %s: verified %lu, corrupt %lu, missed %llu, card dropped %llu, %.1f fps\n",
	       got, o.fmt.width, o.fmt.height, format_name(o.fmt.pixel_format),
	       o.flags & XXCAP_CAPTURE_MAPPED ? "mmap" : "dma", verified,
	       corrupt, (unsigned long long)stats.missed,
	       (unsigned long long)stats.card_dropped,
	       seconds > 0 ? got / seconds : 0.0);
	if (o.results)
		printf("@xxcap-result {\"kind\":\"capture\",\"frames\":%lu,\"width\":%u,\"height\":%u,\"format\":\"%s\",\"rate\":%u,\"mode\":\"%s\",\"verified\":%lu,\"corrupt\":%lu,\"missed\":%llu,\"card_dropped\":%llu,\"fps\":%.3f,\"mb_per_s\":%.3f,\"cpu_ms_per_frame\":null}\n",
		       got, o.fmt.width, o.fmt.height,
		       format_name(o.fmt.pixel_format), o.fmt.fps,
		       o.flags & XXCAP_CAPTURE_MAPPED ? "mmap" : "dma",
		       verified, corrupt, (unsigned long long)stats.missed,
		       (unsigned long long)stats.card_dropped,
		       seconds > 0 ? got / seconds : 0.0,
		       seconds > 0 ? got * (double)size / seconds / 1e6 : 0.0);
	if (!rc && verified != o.frames)
		rc = -EBADMSG;

out_free:
	free(frame);
out_close:
	n = xxcap_close(card);
	if (n) {
		report("closing the card", n);
		if (!rc)
			rc = n;
	}
	return rc ? 1 : 0;
}
