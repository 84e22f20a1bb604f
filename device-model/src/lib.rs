//! The xxcapture card as a pure model: its register file and the task-file
//! executor that validates and runs batches of register commands.
//!
//! No clock of its own and no I/O beyond the file video source reading its
//! file: the backend passes the time in, so every behaviour here is
//! deterministic and unit-testable. The ABI (register map,
//! wire format, error codes) lives in `xxcapture-abi`; `SPEC.md` next to this
//! crate is the prose contract.

mod card;
mod regfile;
mod taskfile;
pub mod video;

pub use card::{Card, CardConfig, ConfigError};
pub use regfile::RegisterFile;
pub use taskfile::Outcome;
pub use video::{FileKind, FileSource, PixelFormat, TestPattern, VideoError, VideoSource};
pub use xxcapture_abi as abi;
