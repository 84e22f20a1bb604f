//! The backend supervisor: when `xxcapd` dies, replace the card.
//!
//! Stock QEMU 11.1.3 cannot reconnect a vhost-user device in place (with
//! `reconnect-ms` it refuses to start or aborts when the backend returns),
//! and any guest config read after the backend is gone aborts QEMU
//! (`vhost_dev_get_config: Assertion 'hdev->vhost_ops' failed`). What works is a new
//! device: `device_del` (the guest's driver lets go through ACPI unplug and
//! fails what was outstanding), wait for `DEVICE_DELETED`, `chardev-remove`,
//! restart `xxcapd` with the same options on a fresh socket, `chardev-add`
//! (client), `device_add` with the same properties. The guest's loaded
//! driver probes the new card.
//!
//! One thread per VM waits for the backend to exit (`waitid` with `WNOWAIT`,
//! so the process is only reaped under the state lock and a signal sent
//! under that lock can never reach a recycled pid), then runs the
//! replacement over QMP and logs every step with its time.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};

use crate::qmp::{split_qemu_opts, Qmp, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("the card's QEMU options have no {0}")]
    MissingOption(&'static str),
    #[error("cannot supervise a card whose {what} has option {option:?} (the supervisor re-creates only what it knows)")]
    UnsupportedOption { what: &'static str, option: String },
    #[error("cannot start xxcapd: {0}")]
    Spawn(String),
    #[error("xxcapd exited ({status}) before listening:\n{log}")]
    EarlyExit { status: ExitStatus, log: String },
    #[error("xxcapd did not create {0} within {1:?}")]
    NoSocket(PathBuf, Duration),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("no backend is running")]
    NoBackend,
    #[error("cannot signal xxcapd: {0}")]
    Signal(Errno),
    #[error("wait for xxcapd: {0}")]
    Wait(std::io::Error),
    #[error("card property {name}={value}: not a valid {kind:?} (or unknown to QEMU)")]
    PropertyValue {
        name: String,
        value: String,
        kind: String,
    },
}

/// How the card appears on QEMU's command line, taken apart so that it can
/// be re-created over QMP. Built from the options xxcapd itself prints
/// ([`xxcapd::options::qemu_args`]), so there is one definition.
#[derive(Clone, Debug, PartialEq)]
pub struct CardSpec {
    pub chardev_id: String,
    pub device_id: String,
    pub driver: String,
    /// Device properties other than `id` and `chardev`, in order.
    pub props: Vec<(String, String)>,
}

impl CardSpec {
    /// Parses the `-chardev` and `-device` options of the card.
    pub fn from_qemu_args(args: &[String]) -> Result<CardSpec, SuperviseError> {
        let value_of = |option: &'static str| {
            args.iter()
                .position(|a| a == option)
                .and_then(|at| args.get(at + 1))
                .ok_or(SuperviseError::MissingOption(option))
        };
        let chardev = split_qemu_opts(value_of("-chardev")?);
        let mut chardev_id = None;
        for (i, item) in chardev.iter().enumerate() {
            match item.split_once('=') {
                None if i == 0 && item == "socket" => {}
                Some(("id", v)) => chardev_id = Some(v.to_string()),
                // The path is the socket's, new for every backend.
                Some(("path", _)) => {}
                _ => {
                    return Err(SuperviseError::UnsupportedOption {
                        what: "-chardev",
                        option: item.clone(),
                    })
                }
            }
        }
        let device = split_qemu_opts(value_of("-device")?);
        let mut items = device.into_iter();
        let driver = items
            .next()
            .filter(|d| !d.contains('='))
            .ok_or(SuperviseError::MissingOption("-device driver"))?;
        let mut device_id = None;
        let mut props = Vec::new();
        for item in items {
            match item.split_once('=') {
                Some(("id", v)) => device_id = Some(v.to_string()),
                Some(("chardev", _)) => {}
                Some((k, v)) => props.push((k.to_string(), v.to_string())),
                None => {
                    return Err(SuperviseError::UnsupportedOption {
                        what: "-device",
                        option: item,
                    })
                }
            }
        }
        Ok(CardSpec {
            chardev_id: chardev_id.ok_or(SuperviseError::MissingOption("-chardev id"))?,
            device_id: device_id.ok_or(SuperviseError::MissingOption("-device id"))?,
            driver,
            props,
        })
    }

    /// `chardev-add` arguments: a unix-socket client, as `-chardev socket,path=`.
    pub fn chardev_add(&self, id: &str, socket: &Path) -> Value {
        json!({
            "id": id,
            "backend": {
                "type": "socket",
                "data": {
                    "addr": { "type": "unix", "data": { "path": socket.to_string_lossy() } },
                    "server": false
                }
            }
        })
    }

    /// `device_add` arguments for the card on chardev `chardev`. QMP's
    /// `device_add` wants JSON types (QEMU 11 refuses `"96"` for a
    /// `uint64`), so each value is converted by the property's type as
    /// `device-list-properties` reports it (`types`: name -> type).
    pub fn device_add(
        &self,
        chardev: &str,
        types: &HashMap<String, String>,
    ) -> Result<Value, SuperviseError> {
        let mut args = Map::new();
        args.insert("driver".into(), json!(self.driver));
        args.insert("id".into(), json!(self.device_id));
        args.insert("chardev".into(), json!(chardev));
        for (k, v) in &self.props {
            let bad = || SuperviseError::PropertyValue {
                name: k.clone(),
                value: v.clone(),
                kind: types.get(k).cloned().unwrap_or_default(),
            };
            let value = match types.get(k).map(String::as_str) {
                Some(t) if t.starts_with("uint") || t == "size" => {
                    json!(v.parse::<u64>().map_err(|_| bad())?)
                }
                Some(t) if t.starts_with("int") => json!(v.parse::<i64>().map_err(|_| bad())?),
                Some("bool") => match v.as_str() {
                    "on" | "true" | "yes" => json!(true),
                    "off" | "false" | "no" => json!(false),
                    _ => return Err(bad()),
                },
                Some(_) => json!(v),
                None => return Err(bad()),
            };
            args.insert(k.clone(), value);
        }
        Ok(Value::Object(args))
    }

    /// The card's property types, from QEMU itself.
    pub fn property_types(&self, qmp: &mut Qmp) -> Result<HashMap<String, String>, SuperviseError> {
        let list = qmp.execute(
            "device-list-properties",
            Some(json!({ "typename": self.driver })),
            QMP_TIMEOUT,
        )?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_string(),
                    p.get("type")?.as_str()?.to_string(),
                ))
            })
            .collect())
    }
}

/// Starts `xxcapd` generations: same options, a fresh socket each time, one
/// log for all of them.
#[derive(Clone, Debug)]
pub struct BackendLauncher {
    pub xxcapd: PathBuf,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl BackendLauncher {
    pub fn socket(&self, generation: u32) -> PathBuf {
        if generation == 0 {
            self.dir.join("xxcap.sock")
        } else {
            self.dir.join(format!("xxcap-{generation}.sock"))
        }
    }

    /// Starts generation `generation` and waits for its socket.
    pub fn spawn(&self, generation: u32, timeout: Duration) -> Result<Child, SuperviseError> {
        let socket = self.socket(generation);
        // A fresh log per VM; every generation appends to it.
        let fresh = generation == 0;
        let mut log = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&self.log)
            .and_then(|f| {
                if fresh {
                    f.set_len(0).map(|()| f)
                } else {
                    Ok(f)
                }
            })
            .map_err(|e| SuperviseError::Spawn(format!("{}: {e}", self.log.display())))?;
        let _ = writeln!(
            log,
            "=== xxcapd generation {generation} on {}",
            socket.display()
        );
        // Left by an earlier try that was killed: the directory is ours, and
        // a stale file must not pass for the new backend listening.
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new(&self.xxcapd)
            .arg("--socket")
            .arg(&socket)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| SuperviseError::Spawn(format!("{}: {e}", self.xxcapd.display())))?;
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(SuperviseError::EarlyExit {
                        status,
                        log: tail(&self.log, 20),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(SuperviseError::Wait(e)),
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SuperviseError::NoSocket(socket, timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(child)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    /// Tries per replacement before giving up.
    pub max_attempts: u32,
    /// Give up after this many backends in a row died sooner than
    /// `min_uptime` after their card was plugged.
    pub crash_loop: u32,
    pub min_uptime: Duration,
    /// How long the guest may take to release the old card.
    pub unplug_timeout: Duration,
    /// How long a new xxcapd may take to listen.
    pub socket_timeout: Duration,
    /// Where the step log goes (also echoed to stderr).
    pub log: PathBuf,
    pub echo: bool,
}

impl SupervisorOptions {
    pub fn new(log: PathBuf) -> Self {
        Self {
            max_attempts: 3,
            crash_loop: 5,
            min_uptime: Duration::from_secs(1),
            unplug_timeout: Duration::from_secs(10),
            socket_timeout: Duration::from_secs(10),
            log,
            echo: true,
        }
    }
}

/// One card replacement.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The new backend's generation (the first backend is 0).
    pub generation: u32,
    pub pid: u32,
    /// How the old backend ended.
    pub exit: ExitStatus,
    /// When its exit was seen.
    pub died: Instant,
    /// Each step with the time it took.
    pub steps: Vec<(String, Duration)>,
    /// When `device_add` of the new card returned.
    pub replaced: Instant,
    pub attempts: u32,
}

impl Recovery {
    pub fn total(&self) -> Duration {
        self.replaced.saturating_duration_since(self.died)
    }
}

#[derive(Default)]
struct State {
    /// The running backend, not yet reaped.
    child: Option<Child>,
    generation: u32,
    stopping: bool,
    /// How the last backend ended when the supervisor stopped replacing it.
    final_status: Option<ExitStatus>,
    recoveries: Vec<Recovery>,
    failure: Option<String>,
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Supervises `first` (generation 0), whose card QEMU was started with.
    pub fn start(
        mut qmp: Qmp,
        first: Child,
        launcher: BackendLauncher,
        card: CardSpec,
        options: SupervisorOptions,
    ) -> Result<Supervisor, SuperviseError> {
        let types = card.property_types(&mut qmp)?;
        // Checked now, so that a bad property fails the launch, not a rescue.
        card.device_add(&card.chardev_id, &types)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&options.log)
            .map_err(|e| SuperviseError::Spawn(format!("{}: {e}", options.log.display())))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                child: Some(first),
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let crash_loop = CrashLoop::new(options.crash_loop, options.min_uptime);
        let mut worker = Worker {
            shared: Arc::clone(&shared),
            qmp,
            launcher,
            chardev: card.chardev_id.clone(),
            card,
            types,
            options,
            log,
            plugged: Instant::now(),
            crash_loop,
        };
        let thread = std::thread::Builder::new()
            .name("xxcapd-supervisor".into())
            .spawn(move || worker.run())
            .map_err(|e| SuperviseError::Spawn(format!("supervisor thread: {e}")))?;
        Ok(Supervisor {
            shared,
            thread: Some(thread),
        })
    }

    /// Sends `signal` to the running backend; returns its pid.
    pub fn signal_backend(&self, signal: Signal) -> Result<u32, SuperviseError> {
        let state = self.shared.lock();
        // Unreaped while held in the state: the pid cannot be recycled.
        let child = state.child.as_ref().ok_or(SuperviseError::NoBackend)?;
        let pid = child.id();
        let raw = i32::try_from(pid).map_err(|_| SuperviseError::NoBackend)?;
        kill(Pid::from_raw(raw), signal).map_err(SuperviseError::Signal)?;
        Ok(pid)
    }

    pub fn backend_pid(&self) -> Option<u32> {
        self.shared.lock().child.as_ref().map(Child::id)
    }

    pub fn recoveries(&self) -> Vec<Recovery> {
        self.shared.lock().recoveries.clone()
    }

    /// Why the supervisor gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Waits until `count` replacements are done (or the supervisor ended).
    pub fn wait_recoveries(&self, count: usize, timeout: Duration) -> Vec<Recovery> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.recoveries.len() < count && !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.recoveries.clone()
    }

    /// Stops supervising. Waits up to `grace` for the backend to exit on its
    /// own (it does once QEMU has gone), then sends SIGTERM, then SIGKILL
    /// after as long again. Returns how the last backend ended.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus, SuperviseError> {
        self.shared.lock().stopping = true;
        let mut escalation = [Some(Signal::SIGTERM), Some(Signal::SIGKILL), None].into_iter();
        let status = loop {
            let deadline = Instant::now() + grace;
            let mut state = self.shared.lock();
            while !state.finished && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if state.finished {
                break state.final_status;
            }
            match (escalation.next().flatten(), state.child.as_ref()) {
                (Some(signal), Some(child)) => {
                    if let Ok(pid) = i32::try_from(child.id()) {
                        let _ = kill(Pid::from_raw(pid), signal);
                    }
                }
                _ => break None,
            }
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        status.ok_or(SuperviseError::NoBackend)
    }

    /// Kills the backend and ends the thread (QEMU must be gone or going,
    /// or a replacement could be under way).
    pub fn kill(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            if let Some(child) = state.child.as_mut() {
                let _ = child.kill();
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a replacement ended without a new card.
enum Ended {
    QemuGone,
    Stopping,
    GaveUp(String),
}

struct Worker {
    shared: Arc<Shared>,
    qmp: Qmp,
    launcher: BackendLauncher,
    card: CardSpec,
    types: HashMap<String, String>,
    /// The chardev the current card uses.
    chardev: String,
    options: SupervisorOptions,
    log: File,
    /// When the current card was plugged.
    plugged: Instant,
    crash_loop: CrashLoop,
}

/// Counts backends in a row that died soon after their card was plugged.
#[derive(Debug)]
struct CrashLoop {
    limit: u32,
    min_uptime: Duration,
    quick: u32,
}

impl CrashLoop {
    fn new(limit: u32, min_uptime: Duration) -> Self {
        Self {
            limit,
            min_uptime,
            quick: 0,
        }
    }

    /// Records a death after `uptime`; says why to give up, if it is time.
    fn died_after(&mut self, uptime: Duration) -> Option<String> {
        if uptime >= self.min_uptime {
            self.quick = 0;
            return None;
        }
        self.quick += 1;
        (self.quick >= self.limit).then(|| {
            format!(
                "{} backends in a row died within {:?} of their card being plugged",
                self.quick, self.min_uptime
            )
        })
    }
}

/// What one replacement has done so far, so that a retry resumes there.
#[derive(Default)]
struct Progress {
    unplugged: bool,
    chardev_removed: bool,
    steps: Vec<(String, Duration)>,
}

const QMP_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    fn say(&mut self, text: &str) {
        let line = format!("xxvm supervisor: {text}");
        if self.options.echo {
            eprintln!("{line}");
        }
        let _ = writeln!(self.log, "{line}");
    }

    /// Log only: the normal end of a VM is not news on the terminal.
    fn note(&mut self, text: &str) {
        let _ = writeln!(self.log, "xxvm supervisor: {text}");
    }

    fn run(&mut self) {
        loop {
            let Some(pid) = self.shared.lock().child.as_ref().map(Child::id) else {
                break;
            };
            let died = match self.wait_exit(pid) {
                Ok(at) => at,
                Err(e) => {
                    self.say(&format!("cannot wait for xxcapd (pid {pid}): {e}"));
                    self.finish(None, Some(e.to_string()));
                    return;
                }
            };
            // Reap under the lock: from here the pid is gone for everyone.
            let (status, stopping, generation) = {
                let mut state = self.shared.lock();
                let status = state.child.take().map(|mut c| c.wait());
                (status, state.stopping, state.generation)
            };
            let status = match status {
                Some(Ok(status)) => status,
                Some(Err(e)) => {
                    self.finish(None, Some(format!("reap xxcapd: {e}")));
                    return;
                }
                None => break,
            };
            if stopping {
                self.finish(Some(status), None);
                return;
            }
            match self.replace(generation, pid, status, died) {
                Ok((child, recovery)) => {
                    let mut state = self.shared.lock();
                    state.generation = recovery.generation;
                    if state.stopping {
                        // Stopped while we replaced: do not leave it running.
                        let mut child = child;
                        let _ = child.kill();
                        let _ = child.wait();
                        state.final_status = Some(status);
                        state.finished = true;
                        drop(state);
                        self.shared.changed.notify_all();
                        return;
                    }
                    state.child = Some(child);
                    state.recoveries.push(recovery);
                    drop(state);
                    self.shared.changed.notify_all();
                }
                Err(Ended::QemuGone) => {
                    self.note(&format!(
                        "xxcapd generation {generation} exited ({status}) as QEMU went away: nothing to replace"
                    ));
                    self.finish(Some(status), None);
                    return;
                }
                Err(Ended::Stopping) => {
                    self.finish(Some(status), None);
                    return;
                }
                Err(Ended::GaveUp(why)) => {
                    self.say(&format!("GIVING UP: {why}; the guest has no card now"));
                    self.finish(Some(status), Some(why));
                    return;
                }
            }
        }
        self.finish(None, None);
    }

    fn finish(&mut self, status: Option<ExitStatus>, failure: Option<String>) {
        let mut state = self.shared.lock();
        if status.is_some() {
            state.final_status = status;
        }
        if failure.is_some() {
            state.failure = failure;
        }
        state.finished = true;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Blocks until backend `pid` has exited, without reaping it.
    fn wait_exit(&self, pid: u32) -> Result<Instant, SuperviseError> {
        let raw = i32::try_from(pid).map_err(|_| SuperviseError::NoBackend)?;
        loop {
            match waitid(
                Id::Pid(Pid::from_raw(raw)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ) {
                Ok(_) => return Ok(Instant::now()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(SuperviseError::Signal(e)),
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.lock().stopping
    }

    /// Replaces the card of the backend that just died.
    fn replace(
        &mut self,
        generation: u32,
        pid: u32,
        status: ExitStatus,
        died: Instant,
    ) -> Result<(Child, Recovery), Ended> {
        // QEMU going down takes its backend with it: not a death to repair.
        match self.qmp.take_events() {
            Ok(events) => {
                if events
                    .iter()
                    .any(|e| e.name == "SHUTDOWN" || e.name == "RESET")
                {
                    return Err(Ended::QemuGone);
                }
            }
            Err(QmpError::Closed) => return Err(Ended::QemuGone),
            Err(e) => self.say(&format!("reading QMP events: {e}")),
        }
        let uptime = died.saturating_duration_since(self.plugged);
        self.say(&format!(
            "xxcapd generation {generation} (pid {pid}) exited: {status}, after {:.1} s; replacing the card",
            uptime.as_secs_f64()
        ));
        if let Some(why) = self.crash_loop.died_after(uptime) {
            return Err(Ended::GaveUp(why));
        }

        let mut progress = Progress::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.stopping() {
                return Err(Ended::Stopping);
            }
            match self.attempt(generation + 1, died, &mut progress) {
                Ok(child) => {
                    let replaced = Instant::now();
                    self.plugged = replaced;
                    let recovery = Recovery {
                        generation: generation + 1,
                        pid: child.id(),
                        exit: status,
                        died,
                        steps: std::mem::take(&mut progress.steps),
                        replaced,
                        attempts: attempt,
                    };
                    self.say(&format!(
                        "card replaced: xxcapd generation {} (pid {}) in {:.1} ms ({} attempt{})",
                        recovery.generation,
                        recovery.pid,
                        recovery.total().as_secs_f64() * 1e3,
                        attempt,
                        if attempt == 1 { "" } else { "s" }
                    ));
                    return Ok((child, recovery));
                }
                Err(SuperviseError::Qmp(QmpError::Closed)) => return Err(Ended::QemuGone),
                Err(e) => {
                    self.say(&format!("attempt {attempt} failed: {e}"));
                    if attempt >= self.options.max_attempts {
                        return Err(Ended::GaveUp(format!(
                            "could not replace the card after {attempt} attempts; last error: {e}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(200) * attempt);
                }
            }
        }
    }

    fn step(&mut self, progress: &mut Progress, name: &str, since: Instant, died: Instant) {
        let took = since.elapsed();
        progress.steps.push((name.to_string(), took));
        self.say(&format!(
            "  {name}: {:.1} ms (t+{:.1} ms)",
            took.as_secs_f64() * 1e3,
            died.elapsed().as_secs_f64() * 1e3
        ));
    }

    /// One try: unplug the old card (once), start the new backend, plug.
    fn attempt(
        &mut self,
        generation: u32,
        died: Instant,
        progress: &mut Progress,
    ) -> Result<Child, SuperviseError> {
        let device = self.card.device_id.clone();
        if !progress.unplugged {
            let t = Instant::now();
            match self
                .qmp
                .execute("device_del", Some(json!({ "id": device })), QMP_TIMEOUT)
            {
                Ok(_) => {}
                // Gone already (an earlier attempt's unplug completed late).
                Err(QmpError::Command { ref class, .. }) if class == "DeviceNotFound" => {}
                Err(e) => return Err(e.into()),
            }
            self.step(progress, "device_del", t, died);
            let t = Instant::now();
            self.qmp.wait_event(
                &format!("DEVICE_DELETED {device}"),
                Instant::now() + self.options.unplug_timeout,
                |e| e.name == "DEVICE_DELETED" && e.data.get("device") == Some(&json!(device)),
            )?;
            progress.unplugged = true;
            self.step(progress, "guest released the card", t, died);
        }
        if !progress.chardev_removed {
            let t = Instant::now();
            let old = self.chardev.clone();
            // The chardev is freed with the device; allow it a moment.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match self
                    .qmp
                    .execute("chardev-remove", Some(json!({ "id": old })), QMP_TIMEOUT)
                {
                    Ok(_) => break,
                    Err(QmpError::Command { ref desc, .. })
                        if desc.contains("not found") || desc.contains("not exist") =>
                    {
                        break
                    }
                    Err(QmpError::Command { .. }) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            progress.chardev_removed = true;
            self.step(progress, "chardev-remove", t, died);
        }

        let t = Instant::now();
        let mut child = self
            .launcher
            .spawn(generation, self.options.socket_timeout)?;
        self.step(progress, "xxcapd listening", t, died);

        let chardev = format!("{}-{generation}", self.card.chardev_id);
        let socket = self.launcher.socket(generation);
        let t = Instant::now();
        // The socket file appears at bind(), a moment before listen(): a
        // connect in between is refused, so that is worth another try.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.qmp.execute(
                "chardev-add",
                Some(self.card.chardev_add(&chardev, &socket)),
                QMP_TIMEOUT,
            ) {
                Ok(_) => break,
                Err(QmpError::Command { ref desc, .. })
                    if desc.contains("Connection refused") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e.into());
                }
            }
        }
        self.step(progress, "chardev-add", t, died);

        let t = Instant::now();
        let added = self
            .card
            .device_add(&chardev, &self.types)
            .and_then(|args| Ok(self.qmp.execute("device_add", Some(args), QMP_TIMEOUT)?));
        if let Err(e) = added {
            let _ = self.qmp.execute(
                "chardev-remove",
                Some(json!({ "id": chardev })),
                QMP_TIMEOUT,
            );
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.step(progress, "device_add", t, died);
        self.chardev = chardev;
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_spec_comes_from_xxcapds_own_options() {
        let args = crate::vm::card_qemu_args(Path::new("/tmp/a,b.sock"), 31, 512);
        let spec = CardSpec::from_qemu_args(&args).expect("spec");
        assert_eq!(spec.chardev_id, "xxcap0");
        assert_eq!(spec.device_id, "card0");
        assert_eq!(spec.driver, "vhost-user-test-device-pci");
        assert!(spec
            .props
            .iter()
            .any(|(k, v)| k == "virtio-id" && v == "31"));
        assert!(spec.props.iter().any(|(k, _)| k == "num_vqs"));
        let types: HashMap<String, String> = [
            ("virtio-id", "uint16"),
            ("num_vqs", "uint16"),
            ("vq_size", "uint32"),
            ("config_size", "uint64"),
            ("chardev", "str"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let add = spec.device_add("xxcap0-3", &types).expect("typed");
        assert_eq!(add["chardev"], "xxcap0-3");
        assert_eq!(add["id"], "card0");
        assert_eq!(add["driver"], "vhost-user-test-device-pci");
        assert_eq!(add["config_size"], 96);
        assert_eq!(add["virtio-id"], 31);
        let mut unknown = types.clone();
        unknown.remove("vq_size");
        assert!(matches!(
            spec.device_add("c", &unknown),
            Err(SuperviseError::PropertyValue { .. })
        ));
        let mut wrong = types;
        wrong.insert("config_size".into(), "bool".into());
        assert!(spec.device_add("c", &wrong).is_err());
        let chardev = spec.chardev_add("xxcap0-3", Path::new("/tmp/x,y.sock"));
        assert_eq!(
            chardev["backend"]["data"]["addr"]["data"]["path"],
            "/tmp/x,y.sock"
        );
        assert_eq!(chardev["backend"]["data"]["server"], false);
    }

    #[test]
    fn a_crash_loop_is_five_quick_deaths_in_a_row() {
        let mut cl = CrashLoop::new(5, Duration::from_secs(1));
        let quick = Duration::from_millis(300);
        for _ in 0..4 {
            assert_eq!(cl.died_after(quick), None);
        }
        // A backend that lived long enough starts the count again.
        assert_eq!(cl.died_after(Duration::from_secs(3)), None);
        for _ in 0..4 {
            assert_eq!(cl.died_after(quick), None);
        }
        let why = cl.died_after(quick).expect("fifth in a row");
        assert!(why.starts_with("5 backends in a row"), "{why}");
    }

    #[test]
    fn card_spec_refuses_options_it_cannot_recreate() {
        let args: Vec<String> = [
            "-chardev",
            "socket,id=c,path=/s,reconnect-ms=100",
            "-device",
            "x,id=d,chardev=c",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let err = CardSpec::from_qemu_args(&args).expect_err("reconnect is not re-created");
        assert!(err.to_string().contains("reconnect-ms"), "{err}");
        let args: Vec<String> = ["-device", "x,id=d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(matches!(
            CardSpec::from_qemu_args(&args),
            Err(SuperviseError::MissingOption("-chardev"))
        ));
    }
}
