// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: sysfs attributes of a card: its identity, its counters and its
 * writable properties (request time limit, event queue depth of later
 * opens, the card's interrupt coalescing).
 */

#include <linux/bitops.h>
#include <linux/ctype.h>
#include <linux/device.h>
#include <linux/kernel.h>
#include <linux/sysfs.h>

#include "xxcap_drv.h"

/* Length of the printable prefix of a NUL-padded identity string. */
size_t xxcap_str_len(const u8 *s, size_t max)
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
XXCAP_COUNTER_ATTR(events_repeated);
XXCAP_COUNTER_ATTR(completions);
XXCAP_COUNTER_ATTR(exec_polled);
XXCAP_COUNTER_ATTR(exec_irq);
XXCAP_COUNTER_ATTR(exec_spins);
XXCAP_COUNTER_ATTR(ring_kicks);
XXCAP_COUNTER_ATTR(ring_kick_errors);
XXCAP_COUNTER_ATTR(ring_wakeups);

/* The expected EXEC round trip of each size class, in ns (0: none yet) */
static ssize_t exec_estimates_ns_show(struct device *dev,
				      struct device_attribute *attr, char *buf)
{
	struct xxcap_card *card = to_xxcap_card(dev);
	int i, len = 0;

	for (i = 0; i < XXCAP_EST_CLASSES; i++)
		len += sysfs_emit_at(buf, len, "%s%u", i ? " " : "",
				     READ_ONCE(card->exec_est_ns[i]));
	len += sysfs_emit_at(buf, len, "\n");
	return len;
}
static DEVICE_ATTR_RO(exec_estimates_ns);

static ssize_t card_ram_mapped_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(to_xxcap_card(dev)->shm_mapped));
}
static DEVICE_ATTR_RO(card_ram_mapped);

/* 1 when the card offers rings and its ring area is mapped, else 0 */
static ssize_t ring_available_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", xxcap_ring_available(to_xxcap_card(dev)));
}
static DEVICE_ATTR_RO(ring_available);

/* The owner tag of the open whose ring is set up, 0 for none */
static ssize_t ring_owner_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", xxcap_ring_owner(to_xxcap_card(dev)));
}
static DEVICE_ATTR_RO(ring_owner);

/*
 * Writable properties. A value is checked before anything else: out of
 * range or not a number is -EINVAL and changes nothing. A write is then a
 * controlling access for its duration, as a task file is: refused with
 * -EBUSY while a controlling open holds the card, and a controlling open
 * made meanwhile fails with -EBUSY. Only root writes (mode 0644).
 */
static int xxcap_prop_parse(const char *buf, unsigned int min, unsigned int max,
			    unsigned int *val)
{
	unsigned int v;

	if (kstrtouint(buf, 0, &v))
		return -EINVAL;
	if (v && (v < min || v > max))
		return -EINVAL;
	*val = v;
	return 0;
}

static int xxcap_prop_claim(struct xxcap_card *card)
{
	if (READ_ONCE(card->gone))
		return -ENODEV;
	if (test_and_set_bit(XXCAP_FLAG_WRITER, &card->flags))
		return -EBUSY;
	return 0;
}

static void xxcap_prop_unclaim(struct xxcap_card *card)
{
	clear_bit(XXCAP_FLAG_WRITER, &card->flags);
}

/* 0 stands for the module parameter: the card follows it again. */
static ssize_t xxcap_prop_store(struct xxcap_card *card, unsigned int *field,
				const char *buf, size_t count,
				unsigned int min, unsigned int max)
{
	unsigned int v;
	int ret;

	ret = xxcap_prop_parse(buf, min, max, &v);
	if (ret)
		return ret;
	ret = xxcap_prop_claim(card);
	if (ret)
		return ret;
	WRITE_ONCE(*field, v);
	xxcap_prop_unclaim(card);
	return count;
}

static ssize_t timeout_ms_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", xxcap_card_timeout_ms(to_xxcap_card(dev)));
}

static ssize_t timeout_ms_store(struct device *dev,
				struct device_attribute *attr,
				const char *buf, size_t count)
{
	struct xxcap_card *card = to_xxcap_card(dev);

	return xxcap_prop_store(card, &card->timeout_ms, buf, count,
				1, XXCAP_TIMEOUT_MAX_MS);
}
static DEVICE_ATTR_RW(timeout_ms);

static ssize_t event_queue_depth_show(struct device *dev,
				      struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", xxcap_card_depth(to_xxcap_card(dev)));
}

static ssize_t event_queue_depth_store(struct device *dev,
				       struct device_attribute *attr,
				       const char *buf, size_t count)
{
	struct xxcap_card *card = to_xxcap_card(dev);

	return xxcap_prop_store(card, &card->event_queue_depth, buf, count,
				XXCAP_DEPTH_MIN, XXCAP_DEPTH_MAX);
}
static DEVICE_ATTR_RW(event_queue_depth);

/* One register of the card, through a task file of the driver's own. */
static int xxcap_prop_reg(struct xxcap_card *card, u16 op, u16 reg, u32 *val)
{
	struct xxcap_cmd cmd = { .op = op, .reg = reg, .value = *val };
	u32 err;
	u64 t;
	int ret;

	ret = xxcap_exec_kernel(card, &cmd, 1, &err, &t);
	if (ret)
		return ret;
	if (err != XXCAP_TF_OK)
		return -EIO;
	*val = cmd.value;
	return 0;
}

static ssize_t xxcap_coalesce_show(struct device *dev, u16 reg, char *buf)
{
	u32 val = 0;
	int ret;

	ret = xxcap_prop_reg(to_xxcap_card(dev), XXCAP_OP_GET_REGISTER, reg,
			     &val);
	if (ret)
		return ret;
	return sysfs_emit(buf, "%u\n", val);
}

/*
 * The register's range is the register table's: the driver's validation of
 * a task file setting it decides, before anything reaches the card.
 */
static ssize_t xxcap_coalesce_store(struct device *dev, u16 reg,
				    const char *buf, size_t count)
{
	struct xxcap_card *card = to_xxcap_card(dev);
	struct {
		struct xxcap_tf_header hdr;
		struct xxcap_cmd cmd;
	} tf = {
		.hdr.count = 1,
		.cmd = { .op = XXCAP_OP_SET_REGISTER, .reg = reg },
	};
	unsigned int v;
	u32 index, val;
	int ret;

	BUILD_BUG_ON(sizeof(tf) != XXCAP_HDR_SIZE + XXCAP_CMD_SIZE);
	if (kstrtouint(buf, 0, &v))
		return -EINVAL;
	tf.cmd.value = v;
	if (xxcap_validate(card, &tf, sizeof(tf), false, &index) != XXCAP_TF_OK)
		return -EINVAL;
	ret = xxcap_prop_claim(card);
	if (ret)
		return ret;
	val = v;
	ret = xxcap_prop_reg(card, XXCAP_OP_SET_REGISTER, reg, &val);
	xxcap_prop_unclaim(card);
	return ret ? ret : count;
}

static ssize_t int_coalesce_count_show(struct device *dev,
				       struct device_attribute *attr, char *buf)
{
	return xxcap_coalesce_show(dev, XXCAP_REG_INT_COALESCE_COUNT, buf);
}

static ssize_t int_coalesce_count_store(struct device *dev,
					struct device_attribute *attr,
					const char *buf, size_t count)
{
	return xxcap_coalesce_store(dev, XXCAP_REG_INT_COALESCE_COUNT, buf,
				    count);
}
static DEVICE_ATTR_RW(int_coalesce_count);

static ssize_t int_coalesce_usec_show(struct device *dev,
				      struct device_attribute *attr, char *buf)
{
	return xxcap_coalesce_show(dev, XXCAP_REG_INT_COALESCE_USEC, buf);
}

static ssize_t int_coalesce_usec_store(struct device *dev,
				       struct device_attribute *attr,
				       const char *buf, size_t count)
{
	return xxcap_coalesce_store(dev, XXCAP_REG_INT_COALESCE_USEC, buf,
				    count);
}
static DEVICE_ATTR_RW(int_coalesce_usec);

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
	&dev_attr_events_repeated.attr,
	&dev_attr_completions.attr,
	&dev_attr_exec_polled.attr,
	&dev_attr_exec_irq.attr,
	&dev_attr_exec_spins.attr,
	&dev_attr_exec_estimates_ns.attr,
	&dev_attr_card_ram_mapped.attr,
	&dev_attr_ring_available.attr,
	&dev_attr_ring_owner.attr,
	&dev_attr_ring_kicks.attr,
	&dev_attr_ring_kick_errors.attr,
	&dev_attr_ring_wakeups.attr,
	&dev_attr_timeout_ms.attr,
	&dev_attr_event_queue_depth.attr,
	&dev_attr_int_coalesce_count.attr,
	&dev_attr_int_coalesce_usec.attr,
	NULL,
};

static const struct attribute_group xxcap_group = {
	.attrs = xxcap_attrs,
};

const struct attribute_group *xxcap_groups[] = {
	&xxcap_group,
	NULL,
};
