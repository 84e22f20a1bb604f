//! `xxcapture-crossings`: a QEMU TCG plugin (plugin API v7) that counts the
//! guest's memory-mapped I/O accesses per device region, for measuring how
//! often the guest crosses into a device.
//!
//! Load it with `-plugin <dir>/libxxcapture_crossings.so,out=<file.json>`;
//! see README.md for the options, the JSON it writes and the marker protocol
//! that snapshots the counters from inside the guest.
//!
//! Layout: everything that decides what is counted and how is plain Rust
//! ([`config`], [`counters`], [`report`]) and is unit-tested without QEMU.
//! The only `unsafe` code is in the `ffi` module (QEMU's C API and the v7
//! registration shim); it is left out of test builds, whose binaries could
//! not resolve QEMU's symbols.

#![deny(unsafe_code)]

pub mod config;
pub mod counters;
pub mod report;

#[cfg(not(test))]
#[allow(unsafe_code)]
mod ffi;
