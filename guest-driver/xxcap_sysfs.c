// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: sysfs attributes of a card: its identity and its counters.
 */

#include <linux/ctype.h>
#include <linux/device.h>
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
XXCAP_COUNTER_ATTR(completions);
XXCAP_COUNTER_ATTR(exec_polled);
XXCAP_COUNTER_ATTR(exec_irq);
XXCAP_COUNTER_ATTR(exec_spins);

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
	&dev_attr_exec_polled.attr,
	&dev_attr_exec_irq.attr,
	&dev_attr_exec_spins.attr,
	&dev_attr_exec_estimates_ns.attr,
	&dev_attr_card_ram_mapped.attr,
	NULL,
};

static const struct attribute_group xxcap_group = {
	.attrs = xxcap_attrs,
};

const struct attribute_group *xxcap_groups[] = {
	&xxcap_group,
	NULL,
};
