use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::{
    read_c_string, regs, Exec, Identity, RegisterDesc, TaskFile, TaskFileResult, TfError, Width,
    ABI_VERSION_MAJOR, MAGIC, MAX_COMMANDS,
};

use crate::error::{Error, Result};
use crate::registered::Registration;
use crate::sys;

/// How a card is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Exclusive: may execute task files. A second controlling open fails
    /// with EBUSY until the first is closed.
    Control,
    /// Shared and passive: identity only.
    Observe,
}

/// The card's identity, as the driver read it from config space at probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub model: u32,
    pub revision: u32,
    pub abi_version: u32,
    pub capabilities: u32,
    pub max_commands: u32,
    pub card_ram_size: u64,
    pub status: u32,
    pub serial: String,
    pub name: String,
}

impl Info {
    fn from_identity(id: &Identity) -> Result<Self> {
        if id.magic.get() != MAGIC {
            return Err(Error::BadMagic(id.magic.get()));
        }
        if id.abi_version.get() >> 16 != ABI_VERSION_MAJOR {
            return Err(Error::AbiMismatch {
                card: id.abi_version.get(),
                library: xxcapture_abi::ABI_VERSION,
            });
        }
        Ok(Info {
            model: id.model.get(),
            revision: id.revision.get(),
            abi_version: id.abi_version.get(),
            capabilities: id.capabilities.get(),
            max_commands: id.max_commands.get(),
            card_ram_size: id.card_ram_size.get(),
            status: id.status.get(),
            serial: read_c_string(&id.serial),
            name: read_c_string(&id.name),
        })
    }
}

/// What the card captures: format, size and rate (0 fps: free-running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFormat {
    pub pixel_format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// An open card.
#[derive(Debug)]
pub struct Card {
    pub(crate) file: File,
    path: PathBuf,
    info: Info,
    /// Buffers this handle registered, for read/write_blocks to find.
    registrations: Mutex<Vec<Registration>>,
}

impl AsRawFd for Card {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Card {
    /// Opens `/dev/xxcaptureN`.
    pub fn open_index(index: u32, access: Access) -> Result<Self> {
        Self::open(format!("/dev/xxcapture{index}"), access)
    }

    /// Opens a card by device path and checks it is one this library speaks.
    pub fn open(path: impl AsRef<Path>, access: Access) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::Control)
            .open(&path)
            .map_err(|source| {
                if source.raw_os_error() == Some(nix::libc::EBUSY) {
                    Error::Busy { path: path.clone() }
                } else {
                    Error::Open {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        let mut identity = Identity::default();
        // SAFETY: the fd is open and `identity` is a writable repr(C) struct
        // of exactly the size encoded in the ioctl number.
        unsafe { sys::xxcap_get_info(file.as_raw_fd(), &mut identity) }.map_err(|source| {
            Error::Ioctl {
                call: "GET_INFO",
                source,
            }
        })?;
        let info = Info::from_identity(&identity)?;
        Ok(Card {
            file,
            path,
            info,
            registrations: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn registrations(&self) -> MutexGuard<'_, Vec<Registration>> {
        self.registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity read at open (from the config space the driver cached).
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The driver's sysfs attribute `name` of this card (identity fields and
    /// counters such as `requests`).
    pub fn sysfs_attribute(&self, name: &str) -> Result<String> {
        let node = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = PathBuf::from(format!("/sys/class/xxcapture/{node}/{name}"));
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| Error::Sysfs { path, source })
    }

    /// The cheapest crossing: an ioctl that the driver answers at once.
    pub fn nop(&self) -> Result<()> {
        // SAFETY: NOP takes no argument.
        unsafe { sys::xxcap_nop(self.file.as_raw_fd()) }
            .map(drop)
            .map_err(|source| Error::Ioctl {
                call: "NOP",
                source,
            })
    }

    /// Executes a task file as one request and returns the card's result,
    /// including a command error, which is data, not a failure of the call.
    pub fn execute(&self, task_file: &TaskFile) -> Result<TaskFileResult> {
        if task_file.len() > MAX_COMMANDS as usize {
            return Err(Error::TooManyCommands(task_file.len()));
        }
        let mut bytes = task_file.to_bytes();
        self.execute_raw(&mut bytes)?;
        TaskFileResult::parse(&bytes).map_err(|_| Error::Protocol)
    }

    /// Executes raw task-file bytes in place (for tests of malformed input).
    pub fn execute_raw(&self, bytes: &mut [u8]) -> Result<()> {
        self.execute_raw_with(bytes, bytes.len(), 0)
    }

    /// Like [`Card::execute_raw`] with an explicit size and flags word, which
    /// may disagree with the buffer to test the driver's checks. `size` is
    /// clamped to the buffer so the kernel never reads past it.
    pub fn execute_raw_with(&self, bytes: &mut [u8], size: usize, flags: u32) -> Result<()> {
        let size = u32::try_from(size.min(bytes.len())).unwrap_or(u32::MAX);
        let mut exec = Exec {
            task_file: (bytes.as_mut_ptr() as u64).into(),
            size: size.into(),
            flags: flags.into(),
        };
        // SAFETY: `exec` points at `bytes`, which lives and is writable for
        // the whole call; `size` does not exceed its length.
        unsafe { sys::xxcap_exec(self.file.as_raw_fd(), &mut exec) }
            .map(drop)
            .map_err(|source| Error::Ioctl {
                call: "EXEC",
                source,
            })
    }

    /// Executes with an arbitrary task-file address (for tests of the
    /// driver's handling of bad user pointers).
    pub fn execute_at_address(&self, address: u64, size: u32) -> Result<()> {
        let mut exec = Exec {
            task_file: address.into(),
            size: size.into(),
            flags: 0.into(),
        };
        // SAFETY: the kernel validates `address` with copy_from_user; this
        // process's memory is never touched through it by the library.
        unsafe { sys::xxcap_exec(self.file.as_raw_fd(), &mut exec) }
            .map(drop)
            .map_err(|source| Error::Ioctl {
                call: "EXEC",
                source,
            })
    }

    /// Executes and turns a command error into `Error::Command`.
    pub fn run(&self, task_file: &TaskFile) -> Result<TaskFileResult> {
        let result = self.execute(task_file)?;
        if result.error != TfError::Ok {
            return Err(Error::Command {
                index: result.index,
                code: result.error,
            });
        }
        Ok(result)
    }

    fn value_of(result: &TaskFileResult, index: usize) -> Result<u64> {
        result.value(index).ok_or(Error::Protocol)
    }

    /// Reads a register of either width by descriptor.
    pub fn read(&self, desc: &RegisterDesc) -> Result<u64> {
        let mut tf = TaskFile::new();
        let at = match desc.width {
            Width::W32 => tf.get_register(desc.offset),
            Width::W64 => tf.get_address(desc.offset),
        };
        Self::value_of(&self.run(&tf)?, at)
    }

    /// Writes a register of either width by descriptor.
    pub fn write(&self, desc: &RegisterDesc, value: u64) -> Result<()> {
        let mut tf = TaskFile::new();
        match desc.width {
            Width::W32 => {
                let narrow = u32::try_from(value).map_err(|_| Error::ValueTooWide {
                    name: desc.name,
                    value,
                })?;
                tf.set_register(desc.offset, narrow)
            }
            Width::W64 => tf.set_address(desc.offset, value),
        };
        self.run(&tf).map(drop)
    }

    /// Reads a 32-bit register by offset.
    pub fn read_register(&self, offset: u16) -> Result<u32> {
        let mut tf = TaskFile::new();
        let at = tf.get_register(offset);
        let value = Self::value_of(&self.run(&tf)?, at)?;
        u32::try_from(value).map_err(|_| Error::Protocol)
    }

    /// Writes a 32-bit register by offset.
    pub fn write_register(&self, offset: u16, value: u32) -> Result<()> {
        let mut tf = TaskFile::new();
        tf.set_register(offset, value);
        self.run(&tf).map(drop)
    }

    /// The capture format, read in one task file.
    pub fn frame_format(&self) -> Result<FrameFormat> {
        let mut tf = TaskFile::new();
        let f = tf.get_register(regs::FRAME_FORMAT);
        let w = tf.get_register(regs::FRAME_WIDTH);
        let h = tf.get_register(regs::FRAME_HEIGHT);
        let r = tf.get_register(regs::FRAME_RATE);
        let res = self.run(&tf)?;
        let get = |i| Self::value_of(&res, i).map(|v| v as u32);
        Ok(FrameFormat {
            pixel_format: PixelFormat::from_code(get(f)?).ok_or(Error::Protocol)?,
            width: get(w)?,
            height: get(h)?,
            fps: get(r)?,
        })
    }

    /// Sets the capture format in one task file: all fields or none.
    pub fn set_frame_format(&self, fmt: FrameFormat) -> Result<()> {
        let mut tf = TaskFile::new();
        tf.set_register(regs::FRAME_FORMAT, fmt.pixel_format.code());
        tf.set_register(regs::FRAME_WIDTH, fmt.width);
        tf.set_register(regs::FRAME_HEIGHT, fmt.height);
        tf.set_register(regs::FRAME_RATE, fmt.fps);
        self.run(&tf).map(drop)
    }

    /// Identity read through registers (ID, VERSION, CAPS, CARD_RAM_PAGES) in
    /// one task file, to compare with the config-space identity.
    pub fn identity_from_registers(&self) -> Result<(u32, u32, u32, u64)> {
        let mut tf = TaskFile::new();
        let id = tf.get_register(regs::ID);
        let version = tf.get_register(regs::VERSION);
        let caps = tf.get_register(regs::CAPS);
        let pages = tf.get_register(regs::CARD_RAM_PAGES);
        let res = self.run(&tf)?;
        Ok((
            Self::value_of(&res, id)? as u32,
            Self::value_of(&res, version)? as u32,
            Self::value_of(&res, caps)? as u32,
            Self::value_of(&res, pages)? * 4096,
        ))
    }
}
