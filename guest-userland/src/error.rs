use std::path::PathBuf;

use xxcapture_abi::TfError;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is busy: another process holds the card (controlling opens are exclusive)")]
    Busy { path: PathBuf },
    #[error("{call} failed: {source}")]
    Ioctl {
        call: &'static str,
        source: nix::Error,
    },
    #[error("task file failed at command {index}: {} ({code:?})", code.description())]
    Command { index: u32, code: TfError },
    #[error("the card returned a task file this library cannot read")]
    Protocol,
    /// The card was reset (its backend went away, or it was unplugged)
    /// while this process was capturing: the frame ring it read from no
    /// longer exists.
    #[error("the card was reset during capture: its frame ring is gone")]
    CardReset,
    #[error("not an xxcapture card: magic {0:#010x}")]
    BadMagic(u32),
    #[error("card speaks ABI {card:#x}, this library speaks {library:#x}")]
    AbiMismatch { card: u32, library: u32 },
    #[error("unknown register {0:?} (see `xxcap regs list`)")]
    UnknownRegister(String),
    #[error("register {name} is {width}-bit; use the {wanted} accessors")]
    RegisterWidth {
        name: &'static str,
        width: u32,
        wanted: &'static str,
    },
    #[error("{value:#x} does not fit 32-bit register {name}")]
    ValueTooWide { name: &'static str, value: u64 },
    #[error("too many commands for one task file: {0} (at most {max})", max = xxcapture_abi::MAX_COMMANDS)]
    TooManyCommands(usize),
    #[error("cannot read {path}: {source}")]
    Sysfs {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A property write the driver refused (`EINVAL`: a bad value,
    /// `EBUSY`: a controlling open holds the card, `EACCES`: not root).
    #[error("cannot set {path} to {value:?}: {source}")]
    Property {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("invalid frame format: {0}")]
    BadFormat(String),
    #[error("cannot map {what}: {source}")]
    Map {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("this card does not support {0} (see `xxcap info` capabilities)")]
    Unsupported(&'static str),
    /// A wait ran out: `what` names what it waited for ("completion of
    /// request 42", "a captured frame", ...).
    #[error("nothing arrived within {after:?}: waited for {what}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    #[error("request {0} is not outstanding on this queue")]
    UnknownRequest(u64),
    #[error("no capture buffer is queued: requeue frames to keep the stream going")]
    NoBuffers,
    /// The uevent socket of [`crate::Monitor`] failed.
    #[error("uevent monitor: {call} failed: {source}")]
    Monitor {
        call: &'static str,
        source: nix::Error,
    },
    /// The submission ring or its arena has no room: take completions
    /// ([`crate::Ring::wait`]) to free it.
    #[error("the submission ring is full: take completions first")]
    RingFull,
    #[error("the card did not hand back {0} capture buffers (leaked, not freed)")]
    BuffersNotReturned(usize),
}

impl Error {
    /// A timeout after `after` waiting for `what`.
    pub fn timeout(what: impl Into<String>, after: std::time::Duration) -> Error {
        Error::Timeout {
            what: what.into(),
            after,
        }
    }

    /// The errno behind an ioctl or open failure, for callers that test the
    /// driver's contract (EBUSY, EBADF, EINVAL, ...).
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Ioctl { source, .. } | Error::Monitor { source, .. } => Some(*source),
            Error::Open { source, .. } => source.raw_os_error().map(nix::errno::Errno::from_raw),
            Error::Busy { .. } => Some(nix::errno::Errno::EBUSY),
            Error::Map { source, .. } => source.raw_os_error().map(nix::errno::Errno::from_raw),
            Error::Sysfs { source, .. } | Error::Property { source, .. } => {
                source.raw_os_error().map(nix::errno::Errno::from_raw)
            }
            _ => None,
        }
    }
}
