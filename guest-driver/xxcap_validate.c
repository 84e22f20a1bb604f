// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: task-file validation. Every task file is checked against the
 * register table of xxcapture_dev.h, with the card's own rules, before it
 * reaches the card: a task file refused here costs no round trip.
 */

#include <linux/bsearch.h>
#include <linux/kernel.h>

#include "xxcap_drv.h"

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

void xxcap_index_regs(void)
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
			   const struct xxcap_cmd *cmd, bool async)
{
	const struct xxcap_reg_desc *desc;
	bool addr_op;

	if (cmd->op > XXCAP_OP_DMA_BUFFER)
		return XXCAP_TF_BAD_OP;
	/* A caller that waits for the result cannot also not wait. */
	if (cmd->op == XXCAP_OP_DMA_TRANSFER_NONBLOCK && !async)
		return XXCAP_TF_BAD_OP;
	/* DMA_BUFFER: flags is the buffer id, checked with its owner. */
	if (cmd->flags && cmd->op != XXCAP_OP_DMA_BUFFER)
		return XXCAP_TF_RESERVED;
	if (cmd->op == XXCAP_OP_DMA_TRANSFER_BLOCK ||
	    cmd->op == XXCAP_OP_DMA_TRANSFER_NONBLOCK ||
	    cmd->op == XXCAP_OP_DMA_BUFFER) {
		if (!card->dma)
			return XXCAP_TF_NOT_SUPPORTED;
		if (cmd->reg != XXCAP_DMA_TO_CARD &&
		    cmd->reg != XXCAP_DMA_FROM_CARD)
			return XXCAP_TF_BAD_VALUE;
		/*
		 * A length that can never fit is refused here. Where it goes
		 * in card RAM is the card's to check: a transfer past the end
		 * fails there with the same code and latches the card's
		 * DMA_ERROR, as a DMA the card refused does.
		 */
		if (!cmd->length || cmd->length > card->id.card_ram_size)
			return XXCAP_TF_DMA_RANGE;
		/*
		 * The buffer (value) is checked when its pages are pinned, or
		 * against the registered buffer it names.
		 */
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
 * Validates a task file of @size bytes, submitted asynchronously if
 * @async (only then may it hold DMA_TRANSFER_NONBLOCK). Returns
 * XXCAP_TF_OK, or an error code with the index of the failing command in
 * @index.
 */
u32 xxcap_validate(const struct xxcap_card *card, const void *tf,
		   size_t size, bool async, u32 *index)
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
		err = xxcap_check_cmd(card, &cmds[i], async);
		if (err != XXCAP_TF_OK) {
			*index = i;
			return err;
		}
	}
	return XXCAP_TF_OK;
}
