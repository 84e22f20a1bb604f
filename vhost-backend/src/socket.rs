//! The listening socket: created by us, removed by us, and nothing else.
//!
//! QEMU connects as a client, so xxcapd owns the socket path. A stale socket
//! left by an earlier run is replaced; anything that is not a socket is never
//! touched. On exit the path is removed only if it is still the very socket
//! we bound (same device and inode).

use std::fs;
use std::io;
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
