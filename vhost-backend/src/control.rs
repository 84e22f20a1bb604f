//! The control socket (`xxcapd --control-socket PATH`): a host-side Unix
//! socket through which a test arms and clears faults while the VM runs,
//! and [`ControlClient`], the Rust API that `xxcapd ctl` and the HIL tests
//! use to drive it.
//!
//! Protocol: one command per line, one JSON reply per line, any number of
//! commands per connection.
//!
//! | command | effect | reply |
//! |---|---|---|
//! | `fault SPEC` | arms SPEC (grammar: [`crate::faults`]) | `{"ok":true,...}` |
//! | `list` | | `{"ok":true,"injected":N,"faults":[{"spec":..,"injected":..,"spent":..}]}` |
//! | `clear` | disarms every fault | `{"ok":true,...}` |
//!
//! Every reply carries `injected` (FAULTS_INJECTED) and the armed faults. A
//! malformed command (unknown word, bad SPEC, a line over 4 KiB, bytes that
//! are not UTF-8) gets `{"ok":false,"error":"..."}`; the connection and the
//! daemon go on. A client silent for 30 s is disconnected.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::faults::{FaultSpec, Faults};

/// Longest command line accepted.
pub const MAX_LINE: usize = 4096;
/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(30);

/// One armed fault, as `list` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultInfo {
    pub spec: String,
    pub injected: u64,
    pub spent: bool,
}

/// A reply of the control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Faults injected since the daemon started (FAULTS_INJECTED).
    #[serde(default)]
    pub injected: u64,
    #[serde(default)]
    pub faults: Vec<FaultInfo>,
}

/// Answers one command line.
pub fn handle(faults: &Faults, line: &str) -> Reply {
    let line = line.trim();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let result = match (word, rest.trim()) {
        ("fault", "") => Err("fault needs a SPEC (e.g. fault dma-error@3)".to_owned()),
        ("fault", spec) => spec
            .parse::<FaultSpec>()
            .map_err(|e| e.to_string())
            .and_then(|spec| faults.arm(spec)),
        ("list", "") => Ok(()),
        ("clear", "") => {
            faults.clear();
            Ok(())
        }
        ("list" | "clear", _) => Err(format!("{word} takes no argument")),
        ("", _) => Err("empty command (fault SPEC, list or clear)".to_owned()),
        _ => Err(format!(
            "unknown command {word:?} (fault SPEC, list or clear)"
        )),
    };
    let mut reply = Reply {
        ok: result.is_ok(),
        error: result.err(),
        injected: faults.injected(),
        faults: faults
            .list()
            .into_iter()
            .map(|a| FaultInfo {
                spec: a.spec.to_string(),
                injected: a.injected,
                spent: a.spent,
            })
            .collect(),
    };
    if !reply.ok {
        reply.faults.clear();
    }
    reply
}

/// Serves the control socket on `listener` in a thread of its own, for the
/// daemon's lifetime.
pub fn serve(listener: UnixListener, faults: Arc<Faults>) -> io::Result<()> {
    thread::Builder::new()
        .name("control".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = connection(stream, &faults) {
                            debug!("control connection ended: {e}");
                        }
                    }
                    Err(e) => warn!("control socket: accept failed: {e}"),
                }
            }
        })?;
    Ok(())
}

fn connection(stream: UnixStream, faults: &Faults) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut raw = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if raw.last() != Some(&b'\n') && raw.len() > MAX_LINE {
            // Skip the rest of the line before answering.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
            Reply {
                error: Some(format!("command longer than {MAX_LINE} bytes")),
                ..Reply::default()
            }
        } else {
            match std::str::from_utf8(&raw) {
                Ok(line) => {
                    let reply = handle(faults, line);
                    if reply.ok {
                        info!("control: {}", line.trim());
                    }
                    reply
                }
                Err(_) => Reply {
                    error: Some("command is not UTF-8 text".to_owned()),
                    ..Reply::default()
                },
            }
        };
        let mut text = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        text.push(b'\n');
        writer.write_all(&text)?;
    }
}

/// Why a control request failed.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    #[error("xxcapd refused: {0}")]
    Refused(String),
    #[error("control socket: malformed reply: {0}")]
    BadReply(String),
}

/// A connection to a daemon's control socket.
pub struct ControlClient {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<ControlClient, ControlError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", path.display()),
            )
        })?;
        stream.set_read_timeout(Some(IDLE))?;
        Ok(ControlClient {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command line; the daemon's reply, refusals as errors.
    pub fn request(&mut self, command: &str) -> Result<Reply, ControlError> {
        if command.contains('\n') {
            return Err(ControlError::Refused("a command is one line".into()));
        }
        self.writer.write_all(format!("{command}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ControlError::BadReply("connection closed".into()));
        }
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| ControlError::BadReply(e.to_string()))?;
        match reply.ok {
            true => Ok(reply),
            false => Err(ControlError::Refused(
                reply.error.unwrap_or_else(|| "no reason given".into()),
            )),
        }
    }

    /// Arms `spec`.
    pub fn fault(&mut self, spec: &str) -> Result<Reply, ControlError> {
        self.request(&format!("fault {spec}"))
    }

    /// The armed faults and the injected count.
    pub fn list(&mut self) -> Result<Reply, ControlError> {
        self.request("list")
    }

    /// Disarms every fault.
    pub fn clear(&mut self) -> Result<Reply, ControlError> {
        self.request("clear")
    }
}

#[cfg(test)]
mod tests;
