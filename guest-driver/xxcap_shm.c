// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: card RAM and the status block. ATTACH at probe, the
 * kernel mapping of the shared-memory region, and the user mappings of it,
 * filled on fault so that remove() can revoke them.
 */

#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/rwsem.h>
#include <linux/virtio_config.h>

#include "xxcap_drv.h"

/*
 * Sends ATTACH: the card maps card RAM and the status block into its
 * shared-memory region. Returns 0 once it says it has. Not interruptible:
 * probe runs in whichever process bound the device (a shell writing to
 * sysfs, with a SIGCHLD pending), whose signals must not cost the card
 * its mapping; timeout_ms bounds the wait.
 */
static int xxcap_send_attach(struct xxcap_card *card)
{
	return xxcap_send_plain(card, XXCAP_REQ_ATTACH, "ATTACH",
				jiffies + msecs_to_jiffies(xxcap_card_timeout_ms(card)),
				false);
}

/*
 * Whether PAT gave the kernel mapping at @virt the write-back type: for a
 * BAR in a range the MTRRs make uncachable (below 4 GiB, typically), a
 * write-back request silently becomes uncached-minus.
 */
static bool xxcap_mapped_wb(void *virt)
{
#ifdef CONFIG_X86
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)virt, &level);
	pteval_t mask = _PAGE_PWT | _PAGE_PCD |
			(level == PG_LEVEL_4K ? _PAGE_PAT : _PAGE_PAT_LARGE);

	return pte && !(pte_flags(*pte) & mask);
#else
	return true;
#endif
}

/*
 * Maps the region for the kernel, which also reserves its memory type:
 * user mappings get the same one (PAT looks it up on each inserted page).
 * Write-back when the platform allows it (the memory is RAM on the host),
 * else write-combining, which PAT grants whatever the MTRRs say.
 */
static void *xxcap_memremap(struct xxcap_card *card, phys_addr_t addr,
			    size_t len)
{
	void *virt = memremap(addr, len, MEMREMAP_WB);

	if (virt && xxcap_mapped_wb(virt))
		return virt;
	if (virt)
		memunmap(virt);
	card->shm_wc = true;
	return memremap(addr, len, MEMREMAP_WC);
}

/*
 * Attaches card RAM at probe. A card without it still runs task files;
 * only mmap() is refused (-ENODEV).
 */
void xxcap_attach(struct xxcap_card *card)
{
	struct virtio_shm_region region;
	bool has_shm = card->id.capabilities & XXCAP_CAP_CARD_RAM_SHM;
	const char *why;
	u64 ram = card->id.card_ram_size, need;
	int ret;

	ret = xxcap_send_attach(card);
	if (!has_shm) {
		dev_info(&card->dev, "no shared card RAM: mmap unavailable\n");
		return;
	}
	if (ret) {
		dev_warn(&card->dev, "ATTACH failed (%d): mmap unavailable\n",
			 ret);
		return;
	}

	why = "no shared-memory region";
	if (!virtio_get_shm_region(card->vdev, &region, XXCAP_SHM_ID_CARD_RAM))
		goto fail;
	why = "shared-memory region too small";
	if (check_add_overflow(ram, (u64)XXCAP_STATUS_MAP_SIZE, &need) ||
	    region.len < need)
		goto fail;
	why = "card RAM not page aligned";
	if (!ram || !PAGE_ALIGNED(ram) || !PAGE_ALIGNED(region.addr))
		goto fail;
	/* Its mmap offsets must stay below the status block's. */
	why = "card RAM too large to map";
	if (ram > XXCAP_MMAP_OFFSET_STATUS)
		goto fail;
	why = "shared-memory region busy";
	if (!request_mem_region(region.addr, need, dev_name(&card->dev)))
		goto fail;
	card->shm_virt = xxcap_memremap(card, region.addr, need);
	if (!card->shm_virt) {
		release_mem_region(region.addr, need);
		why = "cannot map the shared-memory region";
		goto fail;
	}
	card->shm_phys = region.addr;
	card->shm_len = need;
	card->shm_mapped = true;	/* no user yet: no lock needed */
	return;

fail:
	dev_warn(&card->dev, "%s: mmap unavailable\n", why);
}

/* Makes every later fault fail, then zaps every user mapping of the card. */
void xxcap_zap_mappings(struct xxcap_card *card)
{
	down_write(&card->map_rwsem);
	card->shm_mapped = false;
	up_write(&card->map_rwsem);
	unmap_mapping_range(card->inode->i_mapping, 0, 0, 1);
}

void xxcap_detach(struct xxcap_card *card)
{
	if (!card->shm_virt)
		return;
	memunmap(card->shm_virt);
	release_mem_region(card->shm_phys, card->shm_len);
	card->shm_virt = NULL;
}

static vm_fault_t xxcap_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct xxcap_card *card = vma->vm_private_data;
	unsigned long ram_pages = card->id.card_ram_size >> PAGE_SHIFT;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	phys_addr_t phys;

	down_read(&card->map_rwsem);
	if (!card->shm_mapped)
		goto out;	/* the card is gone */
	if (vmf->pgoff < ram_pages)
		phys = card->shm_phys + ((phys_addr_t)vmf->pgoff << PAGE_SHIFT);
	else if (vmf->pgoff == XXCAP_MMAP_PGOFF_STATUS &&
		 !(vma->vm_flags & VM_WRITE))
		phys = card->shm_phys + card->id.card_ram_size;
	else
		goto out;
	ret = vmf_insert_pfn(vma, vmf->address, PHYS_PFN(phys));
out:
	up_read(&card->map_rwsem);
	return ret;
}

static const struct vm_operations_struct xxcap_vm_ops = {
	.fault = xxcap_vm_fault,
};

/*
 * Offset 0: card RAM (writable by the controlling open only); offset
 * XXCAP_MMAP_OFFSET_STATUS: the status block (read-only). Pages are mapped
 * on fault, so that remove() can revoke every mapping.
 */
int xxcap_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	unsigned long len = vma->vm_end - vma->vm_start;
	bool writable;
	bool mapped;

	down_read(&card->map_rwsem);
	mapped = card->shm_mapped;
	up_read(&card->map_rwsem);
	if (!mapped || READ_ONCE(card->gone))
		return -ENODEV;

	if (vma->vm_pgoff == XXCAP_MMAP_PGOFF_RAM) {
		if (len > card->id.card_ram_size)
			return -EINVAL;
		writable = file->f_mode & FMODE_WRITE;
	} else if (vma->vm_pgoff == XXCAP_MMAP_PGOFF_STATUS) {
		if (len > XXCAP_STATUS_MAP_SIZE)
			return -EINVAL;
		writable = false;
	} else {
		return -EINVAL;
	}

	/* No private copies of card memory. */
	if (!(vma->vm_flags & VM_SHARED)) {
		if (vma->vm_flags & VM_WRITE)
			return -EINVAL;
		writable = false;
	}
	if (!writable) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		/* Nor later with mprotect(); also keeps it from being COW. */
		xxcap_vm_flags_clear(vma, VM_MAYWRITE);
	}

	xxcap_vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
	vma->vm_ops = &xxcap_vm_ops;
	/* The file, which the vma pins, holds a reference on the card. */
	vma->vm_private_data = card;
	return 0;
}
