//! `xxcapd`: the vhost-user backend daemon of the emulated Double X capture
//! card. The binary is a few lines over this library; the modules are public
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
//! - [`registered`]: the registered buffers' tables the card holds, and
//!   the DMA port that resolves DMA_BUFFER commands through them.
//! - [`ring`]: the submission and completion rings in shared memory
//!   (SPEC §15): the CQ writer, SQ entries, the SQ poller's parts.
//! - [`device`]: the card and its state as the daemon runs it (card RAM,
//!   capture thread, events, stream buffers, counters), and its lock order.
//! - [`vhu_xxcap`]: the `VhostUserBackend` implementation over the device;
//!   with the private `vhu_worker` (what a queue kick does) and
//!   `vhu_adapters` (vrings and the backend channel as the device sees
//!   them), the only code that knows the vhost-user protocol.
//! - [`socket`]: creating the listening socket and removing it (and only it)
//!   on exit.
//! - [`faults`]: faults armed by count (`--fault`, the control socket) and
//!   where they fire; [`trace`]: `--trace` files (JSON lines, trace events).
//! - [`control`]: the control socket (`--control-socket`) and its client,
//!   [`control::ControlClient`] (`xxcapd ctl`, tests).
//! - [`options`]: the command line (options, help text, usage errors),
//!   value parsing and the QEMU command-line options.
//! - [`clock`]: where device time comes from (the host's clock, or
//!   virtual time that only the card's work moves: `--clock virtual`).
//! - [`daemon`]: the daemon's life: start, serve QEMU, signals, shutdown.

pub mod capture;
pub mod card_ram;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod device;
pub mod events;
pub mod faults;
pub mod options;
pub mod queue;
mod range_lock;
pub mod registered;
pub mod request;
pub mod ring;
pub mod socket;
pub mod stream;
pub mod trace;
mod vhu_adapters;
mod vhu_worker;
pub mod vhu_xxcap;
