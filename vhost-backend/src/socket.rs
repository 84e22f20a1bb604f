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
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xxcapd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn creates_and_removes_its_socket() {
        let dir = temp_dir("sock-own");
        let path = dir.join("s");
        let (owned, _listener) = OwnedSocket::bind(&path).expect("bind");
        assert!(fs::symlink_metadata(&path)
            .expect("exists")
            .file_type()
            .is_socket());
        owned.remove();
        assert!(!path.exists());
        owned.remove();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_a_regular_file_and_leaves_it_alone() {
        let dir = temp_dir("sock-file");
        let path = dir.join("s");
        fs::write(&path, b"keep me").expect("write");
        let err = OwnedSocket::bind(&path).expect_err("must refuse");
        assert!(matches!(err, SocketError::NotASocket(_)));
        assert_eq!(fs::read(&path).expect("still there"), b"keep me");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn replaces_a_stale_socket() {
        let dir = temp_dir("sock-stale");
        let path = dir.join("s");
        drop(UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let (owned, _listener) = OwnedSocket::bind(&path).expect("bind");
        drop(owned);
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn does_not_remove_a_file_that_replaced_our_socket() {
        let dir = temp_dir("sock-swap");
        let path = dir.join("s");
        let (owned, _listener) = OwnedSocket::bind(&path).expect("bind");
        fs::remove_file(&path).expect("rm");
        fs::write(&path, b"other").expect("write");
        drop(owned);
        assert_eq!(fs::read(&path).expect("kept"), b"other");
        let _ = fs::remove_dir_all(&dir);
    }
}
