//! A small QMP client: JSON lines over QEMU's `-qmp unix:...` socket.
//!
//! Hand-written on serde_json rather than the `qapi` crate: the supervisor
//! needs to wait for one event with a deadline while command answers and
//! other events interleave, which `qapi`'s blocking client cannot do, and its
//! generated schema predates the QEMU this project runs. Four commands and
//! two events need no schema.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("QMP: {0}")]
    Io(#[from] io::Error),
    #[error("QMP connection closed (QEMU has exited)")]
    Closed,
    #[error("QMP: unexpected message: {0}")]
    Protocol(String),
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: no {0} within {1:?}")]
    Timeout(String, Duration),
}

/// An asynchronous QMP event.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// When the client read it.
    pub received: Instant,
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// A line read in part before a read timed out.
    partial: Vec<u8>,
    events: VecDeque<Event>,
    next_id: u64,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, retrying until `timeout` while QEMU
    /// is still creating it, and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) {
                        return Err(QmpError::Connect {
                            path: path.display().to_string(),
                            source: e,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        };
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
        };
        let greeting = qmp.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        qmp.execute("qmp_capabilities", None, left.max(Duration::from_secs(1)))?;
        Ok(qmp)
    }

    /// Reads one JSON message, or times out at `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout("QMP message".into(), Duration::ZERO));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    let text = String::from_utf8_lossy(&line);
                    if text.trim().is_empty() {
                        continue;
                    }
                    return serde_json::from_str(text.trim())
                        .map_err(|e| QmpError::Protocol(format!("{e}: {}", text.trim())));
                }
                // End of stream in the middle of a line.
                Ok(_) => return Err(QmpError::Closed),
                // The socket's timeout can fire a little before the
                // deadline (it counts in the kernel's ticks): look again
                // until the deadline itself has passed.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(QmpError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Files an event, or returns the message if it is not one.
    fn file_event(&mut self, msg: Value) -> Option<Value> {
        match msg.get("event").and_then(Value::as_str) {
            Some(name) => {
                self.events.push_back(Event {
                    name: name.to_string(),
                    data: msg.get("data").cloned().unwrap_or(Value::Null),
                    received: Instant::now(),
                });
                None
            }
            None => Some(msg),
        }
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let mut request = Map::new();
        request.insert("execute".into(), json!(command));
        if let Some(args) = arguments {
            request.insert("arguments".into(), args);
        }
        request.insert("id".into(), json!(id));
        let mut line = Value::Object(request).to_string();
        line.push('\n');
        match self.writer.write_all(line.as_bytes()) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                return Err(QmpError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        loop {
            let msg = match self.read_message(deadline) {
                Err(QmpError::Timeout(..)) => {
                    return Err(QmpError::Timeout(format!("answer to {command}"), timeout))
                }
                other => other?,
            };
            let Some(msg) = self.file_event(msg) else {
                continue;
            };
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(msg.to_string()));
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            let error = msg.get("error").cloned().unwrap_or(Value::Null);
            let field = |name: &str| {
                error
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            return Err(QmpError::Command {
                command: command.to_string(),
                class: field("class"),
                desc: field("desc"),
            });
        }
    }

    /// Waits until `deadline` for an event `matches` accepts; events read on
    /// the way are kept for [`Qmp::take_events`].
    pub fn wait_event(
        &mut self,
        what: &str,
        deadline: Instant,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        let started = Instant::now();
        loop {
            if let Some(at) = self.events.iter().position(&matches) {
                if let Some(event) = self.events.remove(at) {
                    return Ok(event);
                }
            }
            let msg = match self.read_message(deadline) {
                Err(QmpError::Timeout(..)) => {
                    return Err(QmpError::Timeout(what.to_string(), started.elapsed()))
                }
                other => other?,
            };
            if let Some(msg) = self.file_event(msg) {
                return Err(QmpError::Protocol(msg.to_string()));
            }
        }
    }

    /// Reads what QEMU has sent so far without waiting, and returns every
    /// event not yet consumed.
    pub fn take_events(&mut self) -> Result<Vec<Event>, QmpError> {
        loop {
            match self.read_message(Instant::now() + Duration::from_millis(1)) {
                Ok(msg) => {
                    if let Some(msg) = self.file_event(msg) {
                        return Err(QmpError::Protocol(msg.to_string()));
                    }
                }
                Err(QmpError::Timeout(..)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.events.drain(..).collect())
    }
}

/// Splits a QEMU option string (`a,b=c,d=e,,f`) into its items, undoing the
/// doubled commas QEMU uses to escape a comma inside a value.
pub fn split_qemu_opts(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn qemu_opts_split_on_single_commas_only() {
        assert_eq!(
            split_qemu_opts("socket,id=xxcap0,path=/tmp/a,,b.sock"),
            vec!["socket", "id=xxcap0", "path=/tmp/a,b.sock"]
        );
        assert_eq!(split_qemu_opts("x"), vec!["x"]);
        assert_eq!(split_qemu_opts("a,,,b"), vec!["a,", "b"]);
    }

    /// A fake QEMU: greets, answers by a script, and checks what it got.
    fn fake_qemu(
        script: Vec<(&'static str, Vec<String>)>,
        linger: Duration,
    ) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<Value>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut out = stream.try_clone().expect("clone");
            let mut lines = BufReader::new(stream).lines();
            writeln!(out, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).expect("greet");
            let mut seen = Vec::new();
            for (expect, replies) in script {
                let line = lines.next().expect("a command").expect("read");
                let cmd: Value = serde_json::from_str(&line).expect("json");
                assert_eq!(cmd["execute"], expect, "{line}");
                let id = cmd["id"].clone();
                for reply in replies {
                    let reply = reply.replace("$ID", &id.to_string());
                    writeln!(out, "{reply}").expect("reply");
                }
                seen.push(cmd);
            }
            // Keeps the connection open a while, as a live QEMU would.
            std::thread::sleep(linger);
            seen
        });
        (dir, server)
    }

    #[test]
    fn commands_answers_and_events_interleave() {
        let (dir, server) = fake_qemu(vec![
            ("qmp_capabilities", vec![r#"{"return": {}, "id": $ID}"#.into()]),
            (
                "device_del",
                vec![
                    r#"{"event": "RTC_CHANGE", "data": {"offset": 1}}"#.into(),
                    r#"{"return": {}, "id": $ID}"#.into(),
                    r#"{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/card0/virtio-backend"}}"#.into(),
                    r#"{"event": "DEVICE_DELETED", "data": {"device": "card0", "path": "/machine/peripheral/card0"}}"#.into(),
                ],
            ),
            (
                "chardev-remove",
                vec![r#"{"error": {"class": "GenericError", "desc": "Chardev 'x' is busy"}, "id": $ID}"#.into()],
            ),
        ], Duration::from_millis(300));
        let mut qmp =
            Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).expect("connect");
        qmp.execute(
            "device_del",
            Some(json!({"id": "card0"})),
            Duration::from_secs(5),
        )
        .expect("device_del");
        let deleted = qmp
            .wait_event(
                "DEVICE_DELETED card0",
                Instant::now() + Duration::from_secs(5),
                |e| e.name == "DEVICE_DELETED" && e.data["device"] == "card0",
            )
            .expect("event");
        assert_eq!(deleted.data["path"], "/machine/peripheral/card0");
        let err = qmp
            .execute(
                "chardev-remove",
                Some(json!({"id": "x"})),
                Duration::from_secs(5),
            )
            .expect_err("busy");
        assert!(err.to_string().contains("is busy"), "{err}");
        let events: Vec<String> = qmp
            .take_events()
            .expect("events")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(events, vec!["RTC_CHANGE", "DEVICE_DELETED"]);
        let seen = server.join().expect("server");
        assert_eq!(seen[1]["arguments"]["id"], "card0");
        // The server is gone: the next command finds the connection closed.
        let gone = qmp.execute("query-status", None, Duration::from_secs(5));
        assert!(matches!(gone, Err(QmpError::Closed)), "{gone:?}");
    }

    #[test]
    fn waiting_for_an_event_times_out() {
        let (dir, server) = fake_qemu(
            vec![(
                "qmp_capabilities",
                vec![r#"{"return": {}, "id": $ID}"#.into()],
            )],
            Duration::from_millis(600),
        );
        let mut qmp =
            Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).expect("connect");
        let started = Instant::now();
        let err = qmp
            .wait_event(
                "DEVICE_DELETED",
                Instant::now() + Duration::from_millis(100),
                |e| e.name == "DEVICE_DELETED",
            )
            .expect_err("must time out");
        assert!(matches!(err, QmpError::Timeout(..)), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_millis(600));
        server.join().expect("server");
        // Then QEMU hangs up: waiting says so instead of timing out.
        let err = qmp
            .wait_event("anything", Instant::now() + Duration::from_secs(5), |_| {
                true
            })
            .expect_err("closed");
        assert!(matches!(err, QmpError::Closed), "{err}");
    }
}
