//! `xxcapd`: the vhost-user backend daemon of the emulated Double X capture
//! card. The binary is a thin CLI over this library; the modules are public
//! so that their behaviour can be tested without QEMU.
//!
//! - [`request`]: one command-queue descriptor chain in, one executed task
//!   file (or an error status) out.
//! - [`vhu_xxcap`]: the `VhostUserBackend` implementation, the only module
//!   that knows the vhost-user protocol.
//! - [`socket`]: creating the listening socket and removing it (and only it)
//!   on exit.
//! - [`options`]: size parsing and the QEMU command-line options.

pub mod options;
pub mod request;
pub mod socket;
pub mod vhu_xxcap;
