//! `xxcapture`: the device interface of the Double X capture card.
//!
//! Applications open a card and call functions; the library turns each call
//! into a task file (a batch of register commands) and executes it with one
//! ioctl, as the Double X card's device interface does. Register-level access stays
//! available for tools and tests through [`Card::execute`] and
//! [`Card::read_register`] / [`Card::write_register`].

mod capture;
mod card;
mod enumerate;
mod error;
mod events;
pub mod measure;
mod monitor;
pub mod props;
mod registered;
mod ring;
mod stream;
mod sys;

pub use capture::{Capture, CaptureMode, CaptureStats, CardRam, Frame, FrameRef, StatusView};
pub use card::{Access, Card, FrameFormat, Info, PixelFormat};
pub use enumerate::{cards, cards_in, CardEntry, SYSFS_CLASS};
pub use error::{Error, Result};
pub use events::{monotonic_ns, AsyncDma, Cause, Causes, Completion, Direction, Event, Events};
pub use monitor::{parse_uevent, CardChange, CardPath, Monitor};
pub use props::Properties;
pub use registered::RegisteredBuffer;
pub use ring::{Ring, RingCompletion, RingEntry, RingOptions, RingStats};
pub use stream::{Stream, StreamFrame, StreamStats};
pub use xxcapture_abi as abi;
pub use xxcapture_abi::{RegisterDesc, TaskFile, TaskFileResult, TfError};
