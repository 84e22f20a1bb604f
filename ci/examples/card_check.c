// SPDX-License-Identifier: MIT
/*
 * card_check: a small test program of the kind `xxvm exec` runs in the
 * guest (docs/xxvm.md builds it with `cc -static`). For each card node it
 * reads the identity (XXCAP_IOC_GET_INFO), then runs one task file that
 * writes the SCRATCH register and reads it back (XXCAP_IOC_EXEC). One
 * line per card goes to stdout and to OUT_FILE.
 *
 *   card_check OUT_FILE /dev/xxcapture0 [/dev/xxcapture1 ...]
 *
 * Exit status: 0 when every card answered as expected, 1 otherwise,
 * 2 on usage errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/xxcapture.h>

struct scratch_tf {
	struct xxcap_tf_header header;
	struct xxcap_cmd cmds[2];
};

/* Checks one card; prints its line to both streams. Returns 0 if good. */
static int check_card(const char *path, unsigned int index, FILE *out)
{
	struct xxcap_identity id;
	struct scratch_tf tf;
	struct xxcap_exec exec;
	uint32_t pattern = 0x5eed0000u + index;
	int fd, ret = 1;

	fd = open(path, O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "%s: open: %s\n", path, strerror(errno));
		return 1;
	}
	memset(&id, 0, sizeof(id));
	if (ioctl(fd, XXCAP_IOC_GET_INFO, &id) < 0) {
		fprintf(stderr, "%s: GET_INFO: %s\n", path, strerror(errno));
		goto out_close;
	}
	if (id.magic != XXCAP_MAGIC) {
		fprintf(stderr, "%s: magic 0x%08x\n", path, id.magic);
		goto out_close;
	}

	memset(&tf, 0, sizeof(tf));
	tf.header.count = 2;
	tf.cmds[0].op = XXCAP_OP_SET_REGISTER;
	tf.cmds[0].reg = XXCAP_REG_SCRATCH;
	tf.cmds[0].value = pattern;
	tf.cmds[1].op = XXCAP_OP_GET_REGISTER;
	tf.cmds[1].reg = XXCAP_REG_SCRATCH;
	memset(&exec, 0, sizeof(exec));
	exec.task_file = (uintptr_t)&tf;
	exec.size = sizeof(tf);
	if (ioctl(fd, XXCAP_IOC_EXEC, &exec) < 0) {
		fprintf(stderr, "%s: EXEC: %s\n", path, strerror(errno));
		goto out_close;
	}
	if (tf.header.error != XXCAP_TF_OK || tf.cmds[1].value != pattern) {
		fprintf(stderr, "%s: task file error %u, scratch 0x%llx\n", path,
			tf.header.error, (unsigned long long)tf.cmds[1].value);
		goto out_close;
	}

	printf("%s serial=%.16s card_ram=%llu scratch=0x%08x ok\n", path,
	       (const char *)id.serial, (unsigned long long)id.card_ram_size,
	       pattern);
	fprintf(out, "%s serial=%.16s card_ram=%llu scratch=0x%08x ok\n", path,
		(const char *)id.serial, (unsigned long long)id.card_ram_size,
		pattern);
	ret = 0;
out_close:
	close(fd);
	return ret;
}

int main(int argc, char **argv)
{
	FILE *out;
	int i, failed = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: %s OUT_FILE DEVICE...\n", argv[0]);
		return 2;
	}
	out = fopen(argv[1], "w");
	if (!out) {
		fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	for (i = 2; i < argc; i++)
		failed |= check_card(argv[i], (unsigned int)(i - 2), out);
	if (fclose(out) != 0) {
		fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	return failed ? 1 : 0;
}
