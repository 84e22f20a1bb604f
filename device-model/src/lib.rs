//! The xxcapture card as a pure model: its register file, the task-file
//! executor that validates and runs batches of register and DMA commands,
//! and the capture state machine.
//!
//! No clock of its own and no I/O beyond the file video source reading its
//! file; DMA data moves through a [`DmaPort`] the backend provides: the backend passes the time in, so every behaviour here is
//! deterministic and unit-testable. The ABI (register map,
//! wire format, error codes) lives in `xxcapture-abi`; `SPEC.md` next to this
//! crate is the prose contract.

pub mod capture;
mod card;
pub mod dma;
pub mod interrupts;
mod regfile;
mod taskfile;
pub mod video;

pub use capture::{CaptureSession, FrameGeometry, Ring};
pub use card::{
    Card, CardConfig, ConfigError, FrameDefaults, ALL_CAPS, CAPTURE_CARD_CAPS, MAX_CARD_RAM,
    MIN_CARD_RAM,
};
pub use dma::{DmaDirection, DmaFault, DmaPort, NoDma, RegisteredTable};
pub use interrupts::{InterruptController, IrqConfig};
pub use regfile::RegisterFile;
pub use taskfile::Outcome;
pub use video::{FileKind, FileSource, PixelFormat, TestPattern, VideoError, VideoSource};
pub use xxcapture_abi as abi;
