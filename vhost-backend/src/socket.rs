//! The listening socket: created by us, removed by us, and nothing else;
//! or inherited from a service manager (`--fd`, systemd socket activation).
//!
//! QEMU connects as a client, so xxcapd owns the socket path. A stale socket
//! left by an earlier run is replaced; anything that is not a socket is never
//! touched. On exit the path is removed only if it is still the very socket
//! we bound (same device and inode). An inherited socket belongs to whoever
//! created it: xxcapd never removes its path.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use log::{debug, warn};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0}: cannot inspect: {1}")]
    Inspect(PathBuf, io::Error),
    #[error("{0}: cannot remove stale socket: {1}")]
    RemoveStale(PathBuf, io::Error),
    #[error("{0}: cannot listen: {1}")]
    Bind(PathBuf, io::Error),
    #[error("--fd {0}: {1}")]
    BadFd(RawFd, String),
    #[error("socket activation: {0}")]
    Activation(String),
}

/// The first file descriptor a service manager passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The socket systemd passed by socket activation, if the environment says
/// one was passed to this process (`LISTEN_PID` is our pid and `LISTEN_FDS`
/// is 1). More than one socket is refused: xxcapd serves one card.
pub fn activation_fd() -> Result<Option<RawFd>, SocketError> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match fds.trim().parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(1) => Ok(Some(LISTEN_FDS_START)),
        Ok(n) => Err(SocketError::Activation(format!(
            "{n} sockets passed (LISTEN_FDS); xxcapd serves one card: pass one, or pick it with --fd"
        ))),
        Err(_) => Err(SocketError::Activation(format!("LISTEN_FDS={fds:?} is not a number"))),
    }
}

/// Takes over `fd`, which must be a listening Unix stream socket this
/// process inherited (and nothing else in it uses). Marks it close-on-exec.
pub fn inherited_listener(fd: RawFd) -> Result<UnixListener, SocketError> {
    let bad = |why: String| SocketError::BadFd(fd, why);
    if fd < LISTEN_FDS_START {
        return Err(bad(
            "0, 1 and 2 are stdin, stdout and stderr, not a socket".into()
        ));
    }
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; no memory is
    // passed. It fails with EBADF when `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(format!("not open: {}", io::Error::last_os_error())));
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process
    // to listen on; it is taken over once, at start-up, and no other code
    // in the process owns or closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = fs::File::from(owned.try_clone().map_err(|e| bad(e.to_string()))?)
        .metadata()
        .map_err(|e| bad(e.to_string()))?;
    if !meta.file_type().is_socket() {
        return Err(bad("not a socket".into()));
    }
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
    };
    let addr = getsockname::<SockaddrStorage>(owned.as_raw_fd())
        .map_err(|e| bad(format!("getsockname: {e}")))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(bad("not a Unix socket".into()));
    }
    match getsockopt(&owned, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(bad(format!("a {other:?} socket, not a stream socket"))),
        Err(e) => return Err(bad(format!("SO_TYPE: {e}"))),
    }
    if !getsockopt(&owned, sockopt::AcceptConn).map_err(|e| bad(format!("SO_ACCEPTCONN: {e}")))? {
        return Err(bad(
            "not listening (the service manager must listen() on it)".into(),
        ));
    }
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| bad(format!("FD_CLOEXEC: {e}")))?;
    Ok(UnixListener::from(owned))
}

/// A socket file this process created; removed on [`OwnedSocket::remove`] or
/// drop, if it is still ours.
#[derive(Debug)]
pub struct OwnedSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
    removed: AtomicBool,
}

impl OwnedSocket {
    /// Binds a listening socket at `path`, replacing a stale socket there.
    pub fn bind(path: &Path) -> Result<(OwnedSocket, UnixListener), SocketError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                warn!("{}: replacing existing socket", path.display());
                fs::remove_file(path).map_err(|e| SocketError::RemoveStale(path.into(), e))?;
            }
            Ok(_) => return Err(SocketError::NotASocket(path.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SocketError::Inspect(path.into(), e)),
        }
        let listener = UnixListener::bind(path).map_err(|e| SocketError::Bind(path.into(), e))?;
        let meta = fs::symlink_metadata(path).map_err(|e| SocketError::Inspect(path.into(), e))?;
        let owned = OwnedSocket {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            removed: AtomicBool::new(false),
        };
        Ok((owned, listener))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one we created. Safe to
    /// call more than once and from any thread.
    pub fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        match fs::symlink_metadata(&self.path) {
            Ok(meta)
                if meta.file_type().is_socket()
                    && meta.dev() == self.dev
                    && meta.ino() == self.ino =>
            {
                match fs::remove_file(&self.path) {
                    Ok(()) => debug!("{}: removed", self.path.display()),
                    Err(e) => warn!("{}: cannot remove socket: {e}", self.path.display()),
                }
            }
            Ok(_) => warn!(
                "{}: no longer our socket, leaving it in place",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests;
