/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xxcapture: what the files of xxcapture.ko share. The structures of a card,
 * of an open file and of a request, the driver's limits, and the rules
 * every file follows; then the functions one file offers the others,
 * grouped by the file that defines them.
 *
 * Each card gets a char device /dev/xxcaptureN. User space sends task
 * files (batches of register commands) with XXCAP_IOC_EXEC (synchronous)
 * or XXCAP_IOC_SUBMIT (asynchronous); the driver validates them against the
 * register table and passes each one to the card as a single request on the
 * command virtqueue. Capture buffers (XXCAP_IOC_QUEUE_BUFFER) go to the
 * stream virtqueue, one request each. The card reports interrupt causes as
 * event records on the event virtqueue; read() on a file returns the
 * records it subscribed to and the completions of its own requests.
 *
 * Request ownership: a request belongs to the thread that submitted it
 * until the device has taken it (virtqueue_add_sgs). From then on the
 * device owns the buffers until a queue callback gets them back
 * (virtqueue_get_buf) or remove() takes them back after a reset
 * (virtqueue_detach_unused_buf). A synchronous waiter that gives up
 * (signal, timeout) does not free the request: it marks it orphaned under
 * card->lock, and whoever takes it back from the device frees it.
 * Asynchronous requests (SUBMIT, QUEUE_BUFFER) always come back to the
 * driver: the reap work unpins their pages, then turns them into a
 * completion record for the file that started them, unless that file was
 * closed meanwhile (req->client is then NULL and the record is dropped).
 * A RING_KICK (RING_ENTER) has no waiter from the start: whoever takes it
 * back from the device puts it on the reap list, which frees it.
 * All ownership decisions are made under card->lock.
 *
 * DMA: the pages of a DMA command's user buffer (or of a capture buffer)
 * are pinned before the request is sent and belong to the request: they are
 * unpinned exactly once, by xxcap_unpin(), before the request is freed, in
 * process context. So the device can never write to a page that has been
 * given back to the system. A registered buffer's pages belong to the
 * buffer, which each request naming it references (xxcap_regbuf.c).
 *
 * Events: each file has a FIFO of records, filled under card->lock (queue
 * callbacks, reap work) and emptied by one reader at a time (read_mutex)
 * without the lock, as kfifo allows for one producer and one consumer.
 *
 * Card RAM and the status block live in a virtio shared-memory region (a
 * PCI BAR). User mappings of it are filled on fault, under map_rwsem; all
 * files of a card share one address_space (an anonymous inode of the card),
 * so remove() can zap every mapping after making later faults fail with
 * SIGBUS.
 *
 * Rings (xxcap_ring.c): a card with XXCAP_CAP_RING has a ring area after
 * the status block, which the controlling open may set up as its
 * submission and completion rings and map read-write. The card runs the
 * ring's task files without the driver seeing them; the driver decides
 * who owns the ring (the open's owner tag, which also tags the open's
 * registered buffers), kicks the card on RING_ENTER, turns RING_WAKE
 * records into wake-ups of the owner, and tears the ring down before the
 * open's registered buffers are unpinned.
 */
#ifndef _XXCAP_DRV_H
#define _XXCAP_DRV_H

#include <linux/atomic.h>
#include <linux/cdev.h>
#include <linux/completion.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/kfifo.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mm_types.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/rwsem.h>
#include <linux/scatterlist.h>
#include <linux/sizes.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/virtio.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

/* Interfaces that differ between the supported kernels */
#include "xxcap_compat.h"
/* Device ABI (generated): request framing, and the register table */
#include "xxcapture_dev.h"

#ifdef __BIG_ENDIAN
#error "xxcapture passes task files and event records through unchanged: little-endian only"
#endif

#define XXCAP_HDR_SIZE		XXCAP_TF_HEADER_SIZE
#define XXCAP_MAX_TF_SIZE	XXCAP_MAX_TASK_FILE_SIZE
/* Largest result buffer of a request: task-file result + transport status */
#define XXCAP_MAX_OUT_SIZE	(XXCAP_MAX_TF_SIZE + sizeof(struct xxcap_vq_status))
/* One entry per page touched, for any alignment of the buffer */
#define XXCAP_MAX_SG		(DIV_ROUND_UP(XXCAP_MAX_OUT_SIZE, PAGE_SIZE) + 1)
/*
 * Command-queue requests the device owns at once, orphans included: room
 * for one open's XXCAP_MAX_SUBMITTED plus synchronous callers, within the
 * 256 ring slots QEMU is given (one slot per request with indirect
 * descriptors).
 */
#define XXCAP_MAX_INFLIGHT	128
/* Task files one open may have submitted and not seen complete */
#define XXCAP_MAX_SUBMITTED	64
/* Capture buffers the device holds at once: one open's, plus one set of orphans */
#define XXCAP_MAX_STREAM_INFLIGHT	(2 * XXCAP_MAX_QUEUED_BUFFERS)
/*
 * Room an open's record queue keeps for completions beyond its depth. A
 * submitted task file or a queued buffer holds one of these from its ioctl
 * until read() has taken its completion record, so a completion always
 * finds room: device events may be dropped (and counted in a LOST record),
 * completions never.
 */
#define XXCAP_COMPLETION_SLOTS	(XXCAP_MAX_SUBMITTED + XXCAP_MAX_QUEUED_BUFFERS)
/* Records read() moves per copy to user space */
#define XXCAP_READ_BATCH	16
/* Event-queue buffers kept posted: 16 * 64 records */
#define XXCAP_EVENT_BUFFERS	16
/* Absolute limit of the bytes one task file may pin, whatever the card RAM */
#define XXCAP_MAX_DMA_BYTES	SZ_1G
/* Longest scatter-gather entry */
#define XXCAP_MAX_SG_LEN	U32_MAX
/* Ranges of the time limit and of an open's event queue depth */
#define XXCAP_TIMEOUT_MAX_MS	3600000U
#define XXCAP_DEPTH_MIN		16U
#define XXCAP_DEPTH_MAX		65536U
/* Causes an open may subscribe to */
/*
 * Adaptive completion of EXEC: round-trip estimates are kept per size
 * class of task file, and only one expected to be back within
 * XXCAP_HYBRID_MAX_NS is spun for.
 */
#define XXCAP_EST_CLASSES	16
#define XXCAP_HYBRID_MAX_NS	(200 * NSEC_PER_USEC)
#define XXCAP_HYBRID_PROBE	16
#define XXCAP_IRQ_CAUSES	(XXCAP_IRQ_FRAME_DONE | XXCAP_IRQ_DMA_DONE | \
				 XXCAP_IRQ_DMA_ERROR | XXCAP_IRQ_OVERFLOW | \
				 XXCAP_IRQ_TEST)

#define XXCAP_MMAP_PGOFF_RAM	(XXCAP_MMAP_OFFSET_CARD_RAM >> PAGE_SHIFT)
#define XXCAP_MMAP_PGOFF_STATUS	(XXCAP_MMAP_OFFSET_STATUS >> PAGE_SHIFT)
#define XXCAP_STATUS_MAP_SIZE	PAGE_ALIGN(XXCAP_STATUS_BLOCK_SIZE)
#define XXCAP_MMAP_PGOFF_RING	(XXCAP_MMAP_OFFSET_RING >> PAGE_SHIFT)
/* The ring area starts this far after card RAM in region 0 (SPEC 15). */
#define XXCAP_RING_AREA_GAP	4096
#define XXCAP_RING_MAP_SIZE	PAGE_ALIGN(XXCAP_RING_AREA_SIZE)
/*
 * RING_KICK requests the card may hold at once: they are not waited for,
 * and this keeps room in the command queue for everything else.
 */
#define XXCAP_MAX_RING_KICKS	32

enum {
	XXCAP_FLAG_WRITER,	/* a controlling (writable) open exists */
};

struct xxcap_v4l2;

struct xxcap_card {
	struct device dev;		/* class device; its release frees us */
	struct cdev cdev;
	struct virtio_device *vdev;	/* not to be used once gone */
	struct virtqueue *cmd_vq;
	struct virtqueue *evt_vq;
	struct virtqueue *stream_vq;
	struct xxcap_identity id;	/* read once at probe, CPU byte order */
	int minor;
	unsigned long flags;
	bool dma;			/* DMA commands are passed to the card */
	struct inode *inode;		/* its i_mapping holds every user mapping */
	struct page *gone_page;		/* what mappings show once it is gone */
	struct xxcap_v4l2 *v4l2;	/* the V4L2 node, or NULL */

	/* Card RAM + status block (virtio shared memory), set at probe */
	phys_addr_t shm_phys;
	u64 shm_len;
	void *shm_virt;			/* kernel mapping: reserves the memtype */
	bool shm_wc;			/* write-combining, not write-back */
	struct rw_semaphore map_rwsem;	/* protects shm_mapped */
	bool shm_mapped;		/* user mappings may be filled */

	spinlock_t lock;		/* protects the fields below */
	bool gone;			/* removed: no new requests */
	bool stalled;			/* a request outlived its time limit */
	unsigned int n_inflight;	/* command-queue requests the device owns */
	unsigned int n_stream;		/* capture buffers the device owns */
	unsigned int n_vb2;		/* ... of them, the V4L2 node's */
	bool v4l2_streaming;		/* the V4L2 node owns capture */
	bool v4l2_drops;		/* ... and counts dropped frames */
	unsigned int pollers;		/* EXEC_POLL callers: callbacks off */
	unsigned int n_unrecorded;	/* async requests waiting for the work */
	unsigned long done_seq;		/* bumped whenever a request comes back */
	struct list_head reap_list;	/* returned orphans and async requests */
	struct list_head clients;	/* open files, for event routing */
	struct xxcap_event evt_last;	/* under lock: the last record taken */

	wait_queue_head_t slot_wq;	/* waiting for room in the queue */
	struct work_struct reap_work;	/* retires reap_list */

	/* Writable properties (sysfs); 0: the module parameter's value */
	unsigned int timeout_ms;
	unsigned int event_queue_depth;	/* of opens made later */

	atomic64_t next_id;		/* request ids (and wire tags) */
	atomic64_t requests;
	atomic64_t commands;
	atomic64_t rejected;
	atomic64_t timeouts;
	atomic64_t pinned_pages;
	atomic64_t dma_bytes;
	atomic64_t events;		/* records received from the card */
	atomic64_t events_dropped;	/* records a full open queue dropped */
	atomic64_t events_repeated;	/* records equal to the one before */
	atomic64_t completions;		/* completion records made */
	atomic64_t exec_polled;		/* EXECs back before their waiter slept */
	atomic64_t exec_irq;		/* EXECs whose waiter the interrupt woke */
	atomic64_t exec_spins;		/* EXECs that spun (hybrid or polled) */

	/* Expected kick-to-completion time of an EXEC per size class, in ns */
	u32 exec_est_ns[XXCAP_EST_CLASSES];	/* READ_ONCE/WRITE_ONCE; 0: none */
	atomic_t exec_probe;		/* picks the EXECs that probe */

	/* Rings (xxcap_ring.c) */
	bool ring;			/* set at probe: the ring area is mapped */
	u64 ring_off;			/* ... at this offset in the region */
	u32 last_owner;			/* under lock: owner tag of the last writer */
	struct xxcap_client *ring_client;	/* under lock: holds (or may hold) the ring */
	unsigned int n_kicks;		/* under lock: RING_KICKs the card holds */
	atomic64_t ring_kicks;		/* RING_KICKs sent */
	atomic64_t ring_kick_errors;	/* ... that the card refused */
	atomic64_t ring_wakeups;	/* RING_WAKE records received */

	/* Registered buffers (xxcap_regbuf.c) */
	struct ida regbuf_ida;		/* their ids, 1..PER_CARD */
	unsigned int n_regbufs;		/* under lock: held, or being set up */
	u64 regbuf_bytes;		/* under lock: their bytes */
	struct list_head lost_regbufs;	/* under lock: the card may hold them */
};

/* Ring of a controlling open, as far as the driver knows */
enum xxcap_ring_state {
	XXCAP_RING_NONE,		/* the card holds no ring of this open */
	XXCAP_RING_SETTING,		/* RING_SETUP on its way */
	XXCAP_RING_ACTIVE,		/* set up: mappable, RING_ENTER works */
	XXCAP_RING_UNKNOWN,		/* a RING_SETUP unanswered: may be set up */
};

/* One open file of a card */
struct xxcap_client {
	struct xxcap_card *card;
	bool writer;			/* the controlling open */
	u32 owner;			/* writer: its nonzero owner tag; else 0 */
	struct mutex read_mutex;	/* one consumer of fifo at a time */
	wait_queue_head_t wq;		/* readers, pollers, buffer flushes */
	struct xxcap_event *ring;	/* storage of fifo */
	unsigned int depth;		/* device events fifo may hold */
	DECLARE_KFIFO_PTR(fifo, struct xxcap_event);
	struct xxcap_event bounce[XXCAP_READ_BATCH];	/* under read_mutex */

	/* Under card->lock (fifo: its producer side) */
	struct list_head node;		/* on card->clients */
	struct list_head reqs;		/* its async requests the card owns */
	u32 mask;			/* subscribed XXCAP_IRQ_* causes */
	u32 lost;			/* records dropped since the last LOST */
	unsigned int n_submitted;	/* SUBMITs without a record yet */
	unsigned int n_buffers;		/* capture buffers without a record yet */
	unsigned int unread_submits;	/* SUBMIT completions queued, unread */
	unsigned int unread_buffers;	/* buffer completions queued, unread */
	u64 bufs_queued;		/* capture buffers queued, ever */
	u64 bufs_done;			/* ... and retired */
	struct list_head regbufs;	/* its registered buffers */
	unsigned int n_regbufs;		/* ... and those being registered */
	enum xxcap_ring_state ring_state;	/* WRITE_ONCE */
	bool ring_woken;		/* under lock: a RING_WAKE not reported yet */
};

/*
 * A registered buffer: pinned, described to the card once, named by id.
 * Referenced by its open and by each request that names it.
 */
struct xxcap_regbuf {
	struct list_head node;		/* on client->regbufs, under card->lock */
	struct kref ref;
	struct xxcap_card *card;
	u32 id;
	u32 owner;			/* owner tag sent with it (0: none) */
	u64 addr;			/* user address */
	u64 length;
	struct page **pages;
	unsigned long n_pages;
	unsigned long n_pinned;
};

/* A DMA command of a request and the user pages it pinned */
struct xxcap_dma {
	u32 index;			/* of the command in the task file */
	bool to_user;			/* FROM_CARD: the card writes the pages */
	u64 user_value;			/* buffer address, restored in the result */
	u64 length;
	unsigned long first_page;	/* in xxcap_req.pages */
	unsigned long n_pages;		/* pages the buffer spans */
	unsigned long n_pinned;		/* pinned so far */
};

enum xxcap_req_kind {
	XXCAP_KIND_SYNC,		/* EXEC, ATTACH, FLUSH: a thread waits */
	XXCAP_KIND_SUBMIT,		/* SUBMIT: completes as a record */
	XXCAP_KIND_BUFFER,		/* capture buffer: completes as a record */
	XXCAP_KIND_VB2,			/* vb2 buffer of the V4L2 node */
	XXCAP_KIND_KICK,		/* RING_KICK: nobody waits, freed when back */
};


/*
 * Device-readable: in (vq_request [+ task file]) then sgt (SG table);
 * device-writable: out ([task-file result +] vq_status, or stream result).
 */
struct xxcap_req {
	struct list_head node;		/* on card->reap_list */
	struct completion done;
	struct xxcap_card *card;
	enum xxcap_req_kind kind;
	u64 id;				/* request_id, and the wire tag */
	u64 refcon;			/* SUBMIT, BUFFER: echoed in the record */
	struct xxcap_client *client;	/* SUBMIT, BUFFER; NULL once orphaned */
	void *vbuf;			/* VB2: its struct xxcap_vbuf */
	struct list_head client_node;	/* on client->reqs, under card->lock */
	void *in;
	size_t in_len;
	struct xxcap_sg_entry *sgt;	/* NULL without DMA commands */
	unsigned int n_sgt;
	void *out;
	size_t out_len;
	struct xxcap_dma *dma;		/* DMA commands, in command order */
	unsigned int n_dma;
	struct page **pages;		/* their pinned pages */
	struct xxcap_regbuf **rbufs;	/* registered buffers it names */
	unsigned int n_rbufs;
	u32 used_len;
	int result;			/* 0: returned by the device; or -ENODEV */
	bool completed;			/* under card->lock */
	u64 kick_ns;			/* SYNC: when the card was kicked */
	u64 done_ns;			/* SYNC: when it came back */
	bool orphan;			/* SYNC: the waiter left; under card->lock */
	bool recorded;			/* SUBMIT, BUFFER: record made */
	struct scatterlist *sg_in;	/* kvmalloc'd, for in + sgt */
	struct scatterlist sg_out[XXCAP_MAX_SG];
};

static inline struct xxcap_card *to_xxcap_card(struct device *dev)
{
	return container_of(dev, struct xxcap_card, dev);
}

/* Whether @req completes as a record (or a vb2 buffer) */
static inline bool xxcap_req_recorded_kind(const struct xxcap_req *req)
{
	return req->kind == XXCAP_KIND_SUBMIT ||
	       req->kind == XXCAP_KIND_BUFFER || req->kind == XXCAP_KIND_VB2;
}

/* How xxcap_submit() waits for room in the command queue */
enum {
	XXCAP_SUBMIT_NONBLOCK = BIT(0),	/* -EAGAIN instead of waiting */
	XXCAP_SUBMIT_UNINTR = BIT(1),	/* signals do not end the wait */
};

/* xxcap_validate.c */
void xxcap_index_regs(void);
u32 xxcap_validate(const struct xxcap_card *card, const void *tf,
		   size_t size, bool async, u32 *index);

/* xxcap_vq.c */
void xxcap_req_free(struct xxcap_req *req);
struct xxcap_req *xxcap_req_alloc(struct xxcap_card *card,
				  enum xxcap_req_kind kind,
				  size_t in_len, size_t out_len);
int xxcap_req_map(struct xxcap_req *req);
void xxcap_req_returned(struct xxcap_card *card, struct xxcap_req *req,
			u32 len, int result, struct list_head *reap);
void xxcap_reap_kick(struct xxcap_card *card);
void xxcap_cmd_done(struct virtqueue *vq);
void xxcap_req_sent(struct xxcap_req *req);
int xxcap_submit(struct xxcap_card *card, struct xxcap_req *req,
		 u32 count, unsigned long deadline, unsigned int how);
int xxcap_wait(struct xxcap_card *card, struct xxcap_req *req,
	       unsigned long deadline, bool intr);
void xxcap_poll_begin(struct xxcap_card *card);
void xxcap_poll_end(struct xxcap_card *card, bool any);
int xxcap_wait_polled(struct xxcap_card *card, struct xxcap_req *req,
		      unsigned long deadline, u64 spin_until, bool *caught);
int xxcap_short_status(struct xxcap_card *card, struct xxcap_req *req,
		       const char *what);
int xxcap_send_plain(struct xxcap_card *card, u32 type, const char *what,
		     unsigned long deadline, bool intr);
int xxcap_reserve(struct xxcap_card *card, unsigned int *n,
		  const unsigned int *unread, unsigned int limit);
void xxcap_unreserve(struct xxcap_card *card, unsigned int *n);
void xxcap_shutdown(struct xxcap_card *card);

/* xxcap_dma.c */
void xxcap_unpin(struct xxcap_req *req);
int xxcap_sg_emit(struct xxcap_req *req, unsigned int max,
		  phys_addr_t addr, u64 len);
int xxcap_sg_grow(struct xxcap_req *req, unsigned int max,
		  phys_addr_t *addr, u64 *len, phys_addr_t pa, u64 chunk);
int xxcap_buffer_from_sgt(struct xxcap_req *req, struct sg_table *sgt);
int xxcap_dma_prepare(struct xxcap_card *card, struct xxcap_req *req,
		      struct xxcap_cmd *cmds, u32 count);
int xxcap_buffer_prepare(struct xxcap_card *card, struct xxcap_req *req,
			 u64 addr, u64 len);
void xxcap_dma_finish(struct xxcap_card *card, struct xxcap_req *req);

/* xxcap_events.c */
void xxcap_client_push(struct xxcap_card *card,
		       struct xxcap_client *client,
		       const struct xxcap_event *ev);
void xxcap_client_complete(struct xxcap_card *card,
			   struct xxcap_client *client,
			   const struct xxcap_event *ev);
void xxcap_req_record(struct xxcap_card *card, struct xxcap_req *req);
void xxcap_retire(struct xxcap_card *card, struct list_head *list);
void xxcap_reap_work(struct work_struct *work);
void xxcap_evt_done(struct virtqueue *vq);
void xxcap_evt_fill(struct xxcap_card *card);
void xxcap_evt_poll(struct xxcap_card *card);
ssize_t xxcap_read(struct file *file, char __user *buf, size_t count,
		   loff_t *ppos);
__poll_t xxcap_poll(struct file *file, poll_table *wait);
int xxcap_subscribe(struct xxcap_client *client, void __user *argp);

/* xxcap_stream.c */
void xxcap_stream_done(struct virtqueue *vq);
void xxcap_stream_poll(struct xxcap_card *card);
int xxcap_queue_buffer(struct xxcap_client *client, void __user *argp);
int xxcap_flush(struct xxcap_client *client, bool intr);
struct xxcap_req *xxcap_stream_req_alloc(struct xxcap_card *card,
					 enum xxcap_req_kind kind);
int xxcap_stream_send(struct xxcap_card *card, struct xxcap_req *req);
int xxcap_flush_card(struct xxcap_card *card, unsigned long deadline,
		     bool intr);

/* xxcap_regbuf.c */
void xxcap_regbuf_put(struct xxcap_regbuf *rb);
void xxcap_regbuf_reclaim(struct xxcap_card *card);
int xxcap_register_buffer(struct xxcap_client *client, void __user *argp);
int xxcap_unregister_buffer(struct xxcap_client *client, void __user *argp);
void xxcap_regbuf_release(struct xxcap_client *client);
int xxcap_regbuf_resolve(struct xxcap_client *client, struct xxcap_req *req,
			 const struct xxcap_cmd *cmds, u32 count, u32 *err,
			 u32 *index);

/* xxcap_taskfile.c */
int xxcap_exec(struct xxcap_client *client, void __user *argp);
int xxcap_exec_kernel(struct xxcap_card *card, struct xxcap_cmd *cmds,
		      u32 count, u32 *err, u64 *device_time_ns);
int xxcap_submit_tf(struct xxcap_client *client, struct file *file,
		    void __user *argp);

/* xxcap_ring.c */
u32 xxcap_ring_new_owner(struct xxcap_card *card);
u32 xxcap_ring_buffer_owner(const struct xxcap_client *client);
bool xxcap_ring_available(const struct xxcap_card *card);
int xxcap_ring_setup(struct xxcap_client *client, void __user *argp);
int xxcap_ring_enter(struct xxcap_client *client);
void xxcap_ring_release(struct xxcap_client *client);
void xxcap_ring_kick_done(struct xxcap_card *card, struct xxcap_req *req);
void xxcap_ring_wake(struct xxcap_card *card);
bool xxcap_ring_ready(struct xxcap_client *client, bool consume);
u32 xxcap_ring_owner(struct xxcap_card *card);

/* xxcap_abort.c */
int xxcap_abort(struct xxcap_client *client, void __user *argp);

/* xxcap_v4l2.c */
int xxcap_v4l2_register(struct xxcap_card *card);
void xxcap_v4l2_unregister(struct xxcap_card *card);

/* xxcap_vb2.c */
void xxcap_vb2_done(struct xxcap_card *card, struct xxcap_req *req,
		    const struct xxcap_event *ev);
void xxcap_vb2_event(struct xxcap_card *card, const struct xxcap_event *ev);

/* xxcap_shm.c */
void xxcap_attach(struct xxcap_card *card);
void xxcap_zap_mappings(struct xxcap_card *card);
void xxcap_detach(struct xxcap_card *card);
int xxcap_mmap(struct file *file, struct vm_area_struct *vma);

/* xxcap_fops.c */
extern const struct file_operations xxcap_fops;

/* xxcap_sysfs.c */
extern const struct attribute_group *xxcap_groups[];
size_t xxcap_str_len(const u8 *s, size_t max);

/* xxcap_main.c: module parameters, and a card's own values of them */
extern unsigned int xxcap_timeout_ms;
extern unsigned int xxcap_event_queue_depth;
unsigned int xxcap_card_timeout_ms(const struct xxcap_card *card);
unsigned int xxcap_card_depth(const struct xxcap_card *card);

/* How an EXEC without XXCAP_EXEC_POLL waits for its completion */
enum xxcap_exec_wait {
	XXCAP_EXEC_WAIT_INTERRUPT,	/* sleeps until the interrupt */
	XXCAP_EXEC_WAIT_HYBRID,		/* spins for short ones, then sleeps */
	XXCAP_EXEC_WAIT_POLL,		/* spins, as XXCAP_EXEC_POLL */
};

extern int xxcap_exec_wait;

#endif /* _XXCAP_DRV_H */
