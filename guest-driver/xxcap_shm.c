// SPDX-License-Identifier: GPL-2.0
/*
 * xxcapture: card RAM, the status block and the ring area. ATTACH at
 * probe, the kernel mapping of the shared-memory region, and the user
 * mappings of it, filled on fault so that remove() can revoke them.
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
 * How much of the region, @need bytes already, to claim and map for the
 * ring area of a card with XXCAP_CAP_RING: the area follows the status
 * page. 0 when the region does not hold it; the card then works without
 * rings.
 */
static u64 xxcap_ring_need(struct xxcap_card *card, u64 region_len, u64 ram)
{
	u64 off = ram + XXCAP_RING_AREA_GAP, end;
	const char *why;

	if (!(card->id.capabilities & XXCAP_CAP_RING))
		return 0;
	why = "ring area not page aligned";
	if (!PAGE_ALIGNED(off))
		goto fail;
	why = "shared-memory region too small for the ring area";
	if (check_add_overflow(off, (u64)XXCAP_RING_MAP_SIZE, &end) ||
	    region_len < end)
		goto fail;
	card->ring_off = off;
	return end;

fail:
	dev_warn(&card->dev, "%s: rings unavailable\n", why);
	return 0;
}

/*
 * Attaches card RAM at probe. A card without it still runs task files;
 * only mmap() is refused (-ENODEV), and rings.
 */
void xxcap_attach(struct xxcap_card *card)
{
	struct virtio_shm_region region;
	bool has_shm = card->id.capabilities & XXCAP_CAP_CARD_RAM_SHM;
	const char *why;
	u64 ram = card->id.card_ram_size, need, ring_end;
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
	/* The ring area too, with the same memory type as the rest. */
	ring_end = xxcap_ring_need(card, region.len, ram);
	if (ring_end)
		need = ring_end;
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
	card->ring = ring_end != 0;
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
	unsigned long ring_page = vmf->pgoff - XXCAP_MMAP_PGOFF_RING;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	phys_addr_t phys;

	down_read(&card->map_rwsem);
	if (!card->shm_mapped) {
		/*
		 * The card is gone: every page of the mapping shows one zeroed
		 * page of the card's own (writes land there and count for
		 * nothing), so a reader sees a status block without its magic,
		 * not SIGBUS.
		 */
		ret = vmf_insert_pfn_prot(vma, vmf->address,
					  page_to_pfn(card->gone_page),
					  vm_get_page_prot(vma->vm_flags));
		goto out;
	}
	if (vmf->pgoff < ram_pages)
		phys = card->shm_phys + ((phys_addr_t)vmf->pgoff << PAGE_SHIFT);
	else if (vmf->pgoff == XXCAP_MMAP_PGOFF_STATUS &&
		 !(vma->vm_flags & VM_WRITE))
		phys = card->shm_phys + card->id.card_ram_size;
	else if (card->ring && vmf->pgoff >= XXCAP_MMAP_PGOFF_RING &&
		 ring_page < XXCAP_RING_MAP_SIZE >> PAGE_SHIFT)
		/* Only its ring's owner could map these (xxcap_mmap()). */
		phys = card->shm_phys + card->ring_off +
		       ((phys_addr_t)ring_page << PAGE_SHIFT);
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
 * The ring area, for the controlling open whose ring is set up only, and
 * shared only (the card reads what the application writes). A ring is
 * torn down only at the last close, when no mapping of the file is left,
 * or by remove(), which zaps every mapping: a mapping made here never
 * outlives the ring.
 */
static int xxcap_mmap_ring(struct xxcap_client *client,
			   struct vm_area_struct *vma, unsigned long len)
{
	struct xxcap_card *card = client->card;

	if (!xxcap_ring_available(card))
		return -ENODEV;
	if (!client->writer)
		return -EACCES;
	if (READ_ONCE(client->ring_state) != XXCAP_RING_ACTIVE)
		return -EINVAL;
	if (len > XXCAP_RING_MAP_SIZE || !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	return 0;
}

/*
 * Offset 0: card RAM (writable by the controlling open only); offset
 * XXCAP_MMAP_OFFSET_STATUS: the status block (read-only); offset
 * XXCAP_MMAP_OFFSET_RING: the ring area (the ring's owner only). Pages are
 * mapped on fault, so that remove() can revoke every mapping.
 */
int xxcap_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct xxcap_client *client = file->private_data;
	struct xxcap_card *card = client->card;
	unsigned long len = vma->vm_end - vma->vm_start;
	bool writable;
	bool mapped;
	int ret;

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
	} else if (vma->vm_pgoff == XXCAP_MMAP_PGOFF_RING) {
		ret = xxcap_mmap_ring(client, vma, len);
		if (ret)
			return ret;
		writable = true;
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
