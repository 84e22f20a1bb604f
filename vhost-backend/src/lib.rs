//! `xxcapd`: the vhost-user backend daemon of the emulated Double X capture
//! card. The binary is a thin CLI over this library; the modules are public
//! so that their behaviour can be tested without QEMU.
//!
//! - [`request`]: one command-queue descriptor chain in, one executed task
//!   file, ATTACH / FLUSH_BUFFERS answer or error status out.
//! - [`card_ram`]: the memfd holding card RAM and the status block, DMA
//!   copies between it and guest memory, the status block's seqlock writer.
//! - [`capture`]: the capture thread that renders frames into the ring or
//!   into queued stream buffers.
//! - [`events`]: the interrupt controller's records, delivered into the
//!   event queue's buffers (coalescing timer included).
//! - [`stream`]: stream-queue chains parsed into capture buffers, and the
//!   buffers held until a frame fills them.
//! - [`queue`]: what those two need from a virtqueue, and guest memory.
//! - [`vhu_xxcap`]: the `VhostUserBackend` implementation, the only module
//!   that knows the vhost-user protocol.
//! - [`socket`]: creating the listening socket and removing it (and only it)
//!   on exit.
//! - [`options`]: size parsing and the QEMU command-line options.

pub mod capture;
pub mod card_ram;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod options;
pub mod queue;
pub mod request;
pub mod socket;
pub mod stream;
pub mod vhu_xxcap;
