//! `xxcapd` started the way a service manager starts it (systemd socket
//! activation): the harness binds and listens on the Unix socket itself and
//! hands it over as descriptor 3 with `--fd 3`. The daemon outlives the VMs
//! that connect to it, so a test can reboot a guest or restart QEMU against
//! the same process; dropping it kills whatever is still running.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// A running socket-activated `xxcapd`.
pub struct ActivatedBackend {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl ActivatedBackend {
    /// Binds `socket`, starts `xxcapd --fd 3 <args>` with the listening
    /// socket as its descriptor 3 (stderr to `log`), and closes the
    /// harness's copy: from then on the socket belongs to the daemon alone,
    /// and its path stays (whoever binds a socket removes it).
    pub fn start(xxcapd: &Path, socket: &Path, args: &[String], log: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(|e| Error::Step(format!("bind {}: {e}", socket.display())))?;
        let stderr =
            File::create(log).map_err(|e| Error::Step(format!("{}: {e}", log.display())))?;
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(xxcapd);
        cmd.args(["--fd", "3"])
            .args(args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2 and fcntl, which are async-signal-safe and touch
        // descriptors alone. dup2 leaves descriptor 3 open across exec; if
        // the listener already is 3, its close-on-exec flag is cleared.
        unsafe {
            cmd.pre_exec(move || {
                let rc = if fd == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Step(format!("start {}: {e}", xxcapd.display())))?;
        drop(listener);
        Ok(Self {
            child: Some(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        })
    }

    /// The socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Still running (not exited)?
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits up to `grace` for the daemon to exit
    /// (SIGKILL after that, reported as an error).
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| Error::Step("xxcapd already reaped".into()))?;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Step(format!(
                "xxcapd exited before SIGTERM with {status}"
            )));
        }
        let pid = i32::try_from(child.id()).map_err(|_| Error::Step("xxcapd pid".into()))?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .map_err(|e| Error::Step(format!("kill xxcapd: {e}")))?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout(format!(
                        "xxcapd still running {} s after SIGTERM",
                        grace.as_secs()
                    )));
                }
                Err(e) => return Err(Error::Step(format!("wait xxcapd: {e}"))),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ActivatedBackend {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
