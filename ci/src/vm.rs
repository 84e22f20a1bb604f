//! One VM with the card: `xxcapd` on a vhost-user socket and QEMU connected
//! to it. Dropping a `Vm` kills whatever is still running, so no process
//! outlives the harness.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use xxcapture_results::Record;

use crate::build::{repo_root, Artifacts};
use crate::qmp::Qmp;
use crate::supervise::{
    BackendLauncher, CardSpec, Recovery, SuperviseError, Supervisor, SupervisorOptions,
};
use crate::{Error, Result};

/// Kernel arguments that shorten the test guest's boot without changing
/// what it runs: no crypto self-tests at boot, the TSC trusted (no
/// clocksource watchdog or refined calibration in the emulated machine),
/// no timer check, one serial port probed, and no PS/2 mouse, multiplexer
/// or PnP probing.
pub const BOOT_ARGS: &str = "cryptomgr.notests tsc=reliable no_timer_check 8250.nr_uarts=1 \
i8042.noaux i8042.nomux i8042.nopnp";

/// What the guest's /init does (`xxcap.mode=` on the kernel command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Load the driver, print the card info, run the selftest.
    Run,
    /// The HIL test sequence.
    Test,
    /// The capture tests (writes its files to the output disk).
    Capture,
    /// The capture and DMA benchmarks.
    Bench,
    /// The crossing budgets (run with the tracer plugin and edu).
    Crossings,
    /// Interrupts, event records, streaming and killed clients.
    Events,
    /// Hostile clients: canaries, the driver fuzzer, 200 killed tools.
    Robust,
    /// The V4L2 node: v4l2-compliance, v4l2-ctl streaming, coexistence
    /// with task files (needs the initramfs of `build::v4l2_initramfs`).
    V4l2,
    /// An interactive shell on the serial console.
    Shell,
    /// The C interface: the C example captures and verifies frames.
    Capi,
    /// Capture in a loop across backend deaths (`xxcap.kills=N` of them):
    /// the host kills `xxcapd`, the supervisor replaces the card.
    BackendDeath,
    /// Capture, then reboot the guest until the boot count kept on the
    /// output disk reaches `xxcap.boots=N` (needs `allow_reboot`).
    Reboot,
    /// Two cards capturing at the same time (needs `cards: 2`).
    TwoCards,
    /// One `xxvm exec` command: the run's own files come in a second
    /// archive appended to the initramfs (see `exec`).
    Exec,
    /// The driver's reaction to faults armed in `xxcapd` (`xxcap.fault=KIND`
    /// names the one to check; see `xxcapd_args`).
    Faults,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Test => "test",
            Mode::Capture => "capture",
            Mode::Bench => "bench",
            Mode::Crossings => "crossings",
            Mode::Events => "events",
            Mode::Robust => "robust",
            Mode::V4l2 => "v4l2",
            Mode::Shell => "shell",
            Mode::Capi => "capi",
            Mode::BackendDeath => "backend-death",
            Mode::Reboot => "reboot",
            Mode::TwoCards => "two-cards",
            Mode::Exec => "exec",
            Mode::Faults => "faults",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// A guest other than the test initramfs on the provisioned kernel (the
/// Debian image, see `image`): what QEMU boots instead.
#[derive(Clone, Debug)]
pub struct BootTarget {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line (`VmOptions::kernel_args` are appended).
    pub cmdline: String,
    /// Its disks and other QEMU options.
    pub qemu_args: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct VmOptions {
    pub mode: Mode,
    pub accel: Accel,
    pub virtio_id: u32,
    pub guest_memory_mib: u32,
    pub card_ram: String,
    /// Echo the guest console to our stdout as it arrives.
    pub echo: bool,
    /// Where console and backend logs are kept.
    pub log_dir: PathBuf,
    /// A raw disk image the guest sees as /dev/vda (its way to hand files out).
    pub output_disk: Option<PathBuf>,
    /// More QEMU arguments (extra devices, `-plugin`).
    pub extra_qemu_args: Vec<String>,
    /// More kernel command-line words (`xxcap.*=` settings for /init).
    pub kernel_args: Vec<String>,
    /// Replace the card over QMP whenever `xxcapd` dies (see `supervise`).
    pub supervise: bool,
    /// Echo the supervisor's steps to stderr (always logged to
    /// `supervisor.log` in `log_dir`).
    pub echo_supervisor: bool,
    /// Boot this instead of the test initramfs (`mode` is then only told
    /// apart as interactive or not).
    pub boot: Option<BootTarget>,
    /// How many cards, each served by its own `xxcapd` (`--id cardN`,
    /// logged to `xxcapd-cardN.log` from the second on). More than one
    /// needs `supervise: false`.
    pub cards: u32,
    /// Attach the (one) card to an `xxcapd` the caller runs on this socket
    /// (see `activate`) instead of starting one: the VM neither starts nor
    /// stops it. Needs `supervise: false`.
    pub backend_socket: Option<PathBuf>,
    /// A guest reboot resets the machine (a card reset on the same
    /// connection) instead of ending QEMU.
    pub allow_reboot: bool,
    /// More `xxcapd` arguments per card (index 0: the first card), after
    /// the harness's own; a card whose list has `--card-ram-size` gets that
    /// instead of `card_ram`.
    pub card_xxcapd_args: Vec<Vec<String>>,
    /// Boot without [`BOOT_ARGS`] (`xxvm boot-time --baseline`).
    pub without_boot_args: bool,
    /// More `xxcapd` arguments (`--fault SPEC`, `--trace FILE`), for every
    /// card the VM starts (and the supervisor's replacements).
    pub xxcapd_args: Vec<String>,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Run,
            accel: Accel::Tcg,
            virtio_id: xxcapture_abi::VIRTIO_ID,
            guest_memory_mib: 512,
            card_ram: "64M".into(),
            echo: false,
            log_dir: repo_root().join("target/hil-logs"),
            output_disk: None,
            extra_qemu_args: Vec::new(),
            kernel_args: Vec::new(),
            supervise: true,
            echo_supervisor: true,
            boot: None,
            cards: 1,
            backend_socket: None,
            allow_reboot: false,
            card_xxcapd_args: Vec::new(),
            without_boot_args: false,
            xxcapd_args: Vec::new(),
        }
    }
}

/// The QEMU arguments that attach the card, split into argv words: the
/// same options `xxcapd --print-qemu-args` prints (one definition, in
/// xxcapd's `options` module).
pub fn card_qemu_args(socket: &Path, virtio_id: u32, guest_memory_mib: u32) -> Vec<String> {
    let guest_ram = u64::from(guest_memory_mib) << 20;
    argv_words(&xxcapd::options::qemu_args(
        socket,
        None,
        virtio_id,
        Some(guest_ram),
    ))
}

/// The QEMU arguments of a further card named `id` (no guest-RAM options:
/// the first card's serve every card).
pub fn more_card_qemu_args(socket: &Path, id: &str, virtio_id: u32) -> Vec<String> {
    argv_words(&xxcapd::options::qemu_args(
        socket,
        Some(id),
        virtio_id,
        None,
    ))
}

/// The arguments of card `card`'s `xxcapd`: the harness's own, then the
/// card's `card_xxcapd_args`, then the `xxcapd_args` of every card.
fn xxcapd_args(opts: &VmOptions, card: u32) -> Vec<String> {
    let extra = usize::try_from(card)
        .ok()
        .and_then(|i| opts.card_xxcapd_args.get(i))
        .cloned()
        .unwrap_or_default();
    let mut args = Vec::new();
    if !extra.iter().any(|a| a == "--card-ram-size") {
        args.extend(["--card-ram-size".to_string(), opts.card_ram.clone()]);
    }
    args.extend(["--exit-on-disconnect".to_string(), "-v".to_string()]);
    args.extend(extra);
    args.extend(opts.xxcapd_args.iter().cloned());
    args
}

fn argv_words(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|line| match line.split_once(' ') {
            Some((option, value)) => vec![option.to_string(), value.to_string()],
            None => vec![line.clone()],
        })
        .collect()
}

/// A running VM.
pub struct Vm {
    xxcapd: Option<Child>,
    /// The `xxcapd`s of the second and further cards.
    more_xxcapds: Vec<Child>,
    /// Owns the backend instead of `xxcapd` when supervising.
    supervisor: Option<Supervisor>,
    recoveries: Vec<Recovery>,
    supervisor_failure: Option<String>,
    qemu: Option<Child>,
    console: Arc<Mutex<Vec<(Duration, String)>>>,
    /// Held by the console reader from each read() of QEMU's output until
    /// its lines are in `console`: with it held and the pipe empty, every
    /// byte QEMU wrote so far is in `console` (but a last partial line).
    console_lock: Arc<Mutex<()>>,
    /// QEMU's console pipe, to see how much is unread.
    console_pipe: Option<OwnedFd>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
    log_dir: PathBuf,
    /// Last: sockets and the QMP socket live here until everything is down.
    _workdir: tempfile::TempDir,
}

/// Waits for `child` to exit on its own; SIGTERM after `grace`, SIGKILL
/// after twice that.
fn wait_or_stop(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    if let Some(status) = wait_deadline(child, grace)? {
        return Ok(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match wait_deadline(child, grace)? {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| Error::Step(format!("wait xxcapd: {e}")))
        }
    }
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::Step(format!("wait: {e}")))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Vm {
    /// Starts `xxcapd`, waits for its socket, then boots QEMU (and the
    /// backend supervisor when `opts.supervise`).
    pub fn start(artifacts: &Artifacts, opts: &VmOptions) -> Result<Vm> {
        let workdir = tempfile::Builder::new()
            .prefix("xxvm-")
            .tempdir()
            .map_err(|e| Error::Step(format!("temp dir: {e}")))?;
        std::fs::create_dir_all(&opts.log_dir)
            .map_err(|e| Error::Step(format!("create {}: {e}", opts.log_dir.display())))?;
        let launcher = BackendLauncher {
            xxcapd: artifacts.xxcapd.clone(),
            args: xxcapd_args(opts, 0),
            dir: workdir.path().to_path_buf(),
            log: opts.log_dir.join("xxcapd.log"),
        };
        if opts.supervise && (opts.cards != 1 || opts.backend_socket.is_some()) {
            return Err(Error::Step(
                "the supervisor replaces one card the VM started: set supervise: false".into(),
            ));
        }
        let socket = opts
            .backend_socket
            .clone()
            .unwrap_or_else(|| launcher.socket(0));
        let mut card_args = card_qemu_args(&socket, opts.virtio_id, opts.guest_memory_mib);
        // Refuse before anything starts if the card cannot be re-created.
        let card_spec = match opts.supervise {
            true => {
                Some(CardSpec::from_qemu_args(&card_args).map_err(|e| Error::Step(e.to_string()))?)
            }
            false => None,
        };
        let mut xxcapd = match opts.backend_socket {
            Some(_) => None,
            None => Some(
                launcher
                    .spawn(0, Duration::from_secs(10))
                    .map_err(|e| Error::Step(e.to_string()))?,
            ),
        };
        let mut more_xxcapds = Vec::new();
        for card in 1..opts.cards {
            let id = format!("card{card}");
            let dir = workdir.path().join(&id);
            std::fs::create_dir(&dir)
                .map_err(|e| Error::Step(format!("create {}: {e}", dir.display())))?;
            let mut args = xxcapd_args(opts, card);
            args.extend(["--id".to_string(), id.clone()]);
            let more = BackendLauncher {
                xxcapd: launcher.xxcapd.clone(),
                args,
                dir,
                log: opts.log_dir.join(format!("xxcapd-{id}.log")),
            };
            // Dropped children are not killed: reap what already runs.
            let child = more.spawn(0, Duration::from_secs(10)).map_err(|e| {
                for c in xxcapd.iter_mut().chain(more_xxcapds.iter_mut()) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Error::Step(e.to_string())
            })?;
            more_xxcapds.push(child);
            card_args.extend(more_card_qemu_args(&more.socket(0), &id, opts.virtio_id));
        }

        let qmp_socket = workdir.path().join("qmp.sock");
        let p = &artifacts.provisioned;
        let (kernel, initrd, cmdline) = match &opts.boot {
            Some(b) => (&b.kernel, &b.initrd, b.cmdline.clone()),
            None => (
                &artifacts.boot_kernel,
                &artifacts.initramfs,
                format!(
                    "console=ttyS0 panic=-1 quiet loglevel=4 {}xxcap.mode={}",
                    match opts.without_boot_args {
                        true => String::new(),
                        false => format!("{BOOT_ARGS} "),
                    },
                    opts.mode.as_str()
                ),
            ),
        };
        let mut qemu = Command::new(&p.qemu);
        match opts.accel {
            // TCG's "max" CPU has SSE4.2, AVX2 and PCLMUL, which TCG runs on
            // host vector instructions: frame checksums in the guest run
            // twice as fast as on the default qemu64 model. Without ERMS and
            // FSRM: TCG runs `rep movsb` a byte at a time, and with them the
            // kernel's copy_from_user and glibc's memcpy use it (a 128 KiB
            // task file took 1.8 ms to copy in instead of 0.2 ms).
            Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max,erms=off,fsrm=off"]),
            Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        };
        qemu.args(["-smp", "1", "-nodefaults", "-display", "none"])
            .args((!opts.allow_reboot).then_some("-no-reboot"))
            .args(&card_args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
            .args(&opts.extra_qemu_args)
            .args(opts.boot.iter().flat_map(|b| &b.qemu_args))
            .arg("-kernel")
            .arg(kernel)
            .args(opts.output_disk.iter().flat_map(|disk| {
                [
                    "-drive".to_string(),
                    format!("file={},format=raw,if=none,id=out0", disk.display()),
                    "-device".to_string(),
                    // The serial names the disk in /sys/block/*/serial.
                    "virtio-blk-pci,drive=out0,serial=xxcap-out".to_string(),
                ]
            }))
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!(
                "{cmdline}{}",
                opts.kernel_args
                    .iter()
                    .map(|a| format!(" {a}"))
                    .collect::<String>()
            ));
        let interactive = opts.mode == Mode::Shell;
        if interactive {
            qemu.args(["-serial", "mon:stdio"]);
        } else {
            qemu.args(["-serial", "stdio", "-monitor", "none"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
        }
        let started = Instant::now();
        let mut qemu = match qemu.spawn() {
            Ok(child) => child,
            Err(e) => {
                for c in xxcapd.iter_mut().chain(more_xxcapds.iter_mut()) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(Error::Step(format!("start {}: {e}", p.qemu.display())));
            }
        };

        let console = Arc::new(Mutex::new(Vec::new()));
        let console_lock = Arc::new(Mutex::new(()));
        let mut console_pipe = None;
        let reader = qemu.stdout.take().map(|out| {
            let out = OwnedFd::from(out);
            console_pipe = out.try_clone().ok();
            let reader = ConsoleReader {
                console: Arc::clone(&console),
                lock: Arc::clone(&console_lock),
                echo: opts.echo,
                log: File::create(opts.log_dir.join("console.log")).ok(),
                started,
            };
            std::thread::spawn(move || reader.run(out))
        });
        let mut vm = Vm {
            _workdir: workdir,
            xxcapd,
            more_xxcapds,
            supervisor: None,
            recoveries: Vec::new(),
            supervisor_failure: None,
            qemu: Some(qemu),
            console,
            console_lock,
            console_pipe,
            reader,
            started,
            log_dir: opts.log_dir.clone(),
        };
        // card_spec is Some exactly when supervising: hand it the backend.
        if let Some((card, first)) = card_spec.and_then(|c| Some((c, vm.xxcapd.take()?))) {
            let mut options = SupervisorOptions::new(opts.log_dir.join("supervisor.log"));
            options.echo = opts.echo_supervisor;
            let _ = std::fs::remove_file(&options.log);
            let supervisor = Qmp::connect(&qmp_socket, Duration::from_secs(10))
                .map_err(SuperviseError::from)
                .and_then(|qmp| Supervisor::start(qmp, first, launcher, card, options))
                .map_err(|e| Error::Step(format!("backend supervisor: {e}")))?;
            vm.supervisor = Some(supervisor);
        }
        Ok(vm)
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for QEMU to exit (the guest powers off at the end of its
    /// script); kills it after `timeout`.
    pub fn wait_guest(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(qemu) = self.qemu.as_mut() else {
            return Err(Error::Step("QEMU already reaped".into()));
        };
        match wait_deadline(qemu, timeout)? {
            Some(status) => {
                self.qemu = None;
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                Ok(status)
            }
            None => {
                let _ = qemu.kill();
                let _ = qemu.wait();
                self.qemu = None;
                Err(Error::Timeout(format!(
                    "the guest did not finish within {} s; console tail:\n{}",
                    timeout.as_secs(),
                    self.console_tail(30)
                )))
            }
        }
    }

    /// Waits for `xxcapd` to exit on its own (it does when QEMU disconnects);
    /// sends SIGTERM after `grace`, SIGKILL after twice that. Supervised:
    /// ends supervision and returns how the last backend ended.
    pub fn wait_backend(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(mut supervisor) = self.supervisor.take() {
            let status = supervisor
                .stop(grace)
                .map_err(|e| Error::Step(format!("xxcapd: {e}")));
            self.supervisor_failure = supervisor.failure();
            self.recoveries = supervisor.recoveries();
            return status;
        }
        let Some(child) = self.xxcapd.as_mut() else {
            return Err(Error::Step("xxcapd already reaped".into()));
        };
        let status = wait_or_stop(child, grace)?;
        self.xxcapd = None;
        Ok(status)
    }

    /// `wait_backend` for the `xxcapd`s of the second and further cards,
    /// in card order.
    pub fn wait_more_backends(&mut self, grace: Duration) -> Result<Vec<ExitStatus>> {
        let mut statuses = Vec::new();
        for mut child in std::mem::take(&mut self.more_xxcapds) {
            statuses.push(wait_or_stop(&mut child, grace)?);
        }
        Ok(statuses)
    }

    /// Sends `signal` to the running `xxcapd`; returns its pid.
    pub fn signal_backend(&mut self, signal: Signal) -> Result<u32> {
        if let Some(supervisor) = self.supervisor.as_ref() {
            return supervisor
                .signal_backend(signal)
                .map_err(|e| Error::Step(e.to_string()));
        }
        let child = self
            .xxcapd
            .as_mut()
            .ok_or_else(|| Error::Step("xxcapd not running".into()))?;
        if child.try_wait().ok().flatten().is_some() {
            return Err(Error::Step("xxcapd has exited".into()));
        }
        let pid = child.id();
        let raw = i32::try_from(pid).map_err(|_| Error::Step(format!("pid {pid}")))?;
        kill(Pid::from_raw(raw), signal).map_err(|e| Error::Step(format!("kill xxcapd: {e}")))?;
        Ok(pid)
    }

    /// The card replacements so far (supervised VMs).
    pub fn recoveries(&self) -> Vec<Recovery> {
        match &self.supervisor {
            Some(s) => s.recoveries(),
            None => self.recoveries.clone(),
        }
    }

    /// Waits until `count` replacements are done; returns all of them.
    pub fn wait_recoveries(&self, count: usize, timeout: Duration) -> Vec<Recovery> {
        match &self.supervisor {
            Some(s) => s.wait_recoveries(count, timeout),
            None => self.recoveries.clone(),
        }
    }

    /// Why the supervisor gave up, if it did.
    pub fn supervisor_failure(&self) -> Option<String> {
        match &self.supervisor {
            Some(s) => s.failure(),
            None => self.supervisor_failure.clone(),
        }
    }

    /// Freezes the whole guest (SIGSTOP to QEMU: its vCPU stops where it
    /// is, the backend keeps running) and waits until every console line
    /// QEMU wrote before is in [`Vm::console_timed`]. What the console
    /// shows then is all the guest has reported up to the freeze, however
    /// late this process got to read it. [`Vm::resume_guest`] lets it go on.
    pub fn freeze_guest(&mut self, timeout: Duration) -> Result<()> {
        self.signal_qemu(Signal::SIGSTOP)?;
        let deadline = Instant::now() + timeout;
        // kill() returns before the signal has stopped every thread: wait
        // until each of QEMU's threads is stopped ('T' in its stat).
        let pid = self.qemu.as_ref().map(Child::id).unwrap_or(0);
        let tasks = PathBuf::from(format!("/proc/{pid}/task"));
        while !all_stopped(&tasks) {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "QEMU's threads stopped within {timeout:?} of SIGSTOP"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(pipe) = self.console_pipe.as_ref() else {
            return Ok(());
        };
        loop {
            {
                let _reading = self
                    .console_lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut unread: nix::libc::c_int = 0;
                // SAFETY: FIONREAD on a pipe we own writes one int.
                let ret =
                    unsafe { nix::libc::ioctl(pipe.as_raw_fd(), nix::libc::FIONREAD, &mut unread) };
                if ret != 0 || unread == 0 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "console drained within {timeout:?} after freezing QEMU"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a frozen guest run again (SIGCONT to QEMU).
    pub fn resume_guest(&mut self) -> Result<()> {
        self.signal_qemu(Signal::SIGCONT)
    }

    fn signal_qemu(&mut self, signal: Signal) -> Result<()> {
        let qemu = self
            .qemu
            .as_mut()
            .ok_or_else(|| Error::Step("QEMU not running".into()))?;
        let pid = i32::try_from(qemu.id()).map_err(|_| Error::Step("QEMU pid".into()))?;
        kill(Pid::from_raw(pid), signal).map_err(|e| Error::Step(format!("{signal} QEMU: {e}")))
    }

    /// QEMU's process id while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(Child::id)
    }

    /// QEMU still running?
    pub fn qemu_running(&mut self) -> bool {
        self.qemu
            .as_mut()
            .is_some_and(|q| matches!(q.try_wait(), Ok(None)))
    }

    pub fn console(&self) -> Vec<String> {
        self.console_timed()
            .into_iter()
            .map(|(_, line)| line)
            .collect()
    }

    /// Console lines with the wall time since QEMU started.
    pub fn console_timed(&self) -> Vec<(Duration, String)> {
        self.console.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn console_tail(&self, n: usize) -> String {
        let lines = self.console();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn backend_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("xxcapd.log")).unwrap_or_default()
    }

    /// The log of card `card`'s `xxcapd` (0: `backend_log`).
    pub fn card_backend_log(&self, card: u32) -> String {
        match card {
            0 => self.backend_log(),
            n => std::fs::read_to_string(self.log_dir.join(format!("xxcapd-card{n}.log")))
                .unwrap_or_default(),
        }
    }
}

/// Every thread listed under `tasks` (/proc/PID/task) is stopped.
fn all_stopped(tasks: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).all(|e| {
        std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
            // "pid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T")
        })
    })
}

/// The thread that turns QEMU's console output into timed lines.
struct ConsoleReader {
    console: Arc<Mutex<Vec<(Duration, String)>>>,
    lock: Arc<Mutex<()>>,
    echo: bool,
    log: Option<File>,
    started: Instant,
}

impl ConsoleReader {
    fn run(mut self, out: OwnedFd) {
        let lock = Arc::clone(&self.lock);
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            // Wait outside the lock, so a freeze can see the pipe empty.
            let mut fds = [nix::poll::PollFd::new(
                out.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            let _reading = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = match nix::unistd::read(&out, &mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                Err(_) => break,
            };
            pending.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                self.line(&pending[start..start + end]);
                start += end + 1;
            }
            pending.drain(..start);
        }
        if !pending.is_empty() {
            self.line(&pending);
        }
    }

    fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes)
            .trim_end_matches('\r')
            .to_string();
        if self.echo {
            println!("{text}");
        }
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "{text}");
        }
        if let Ok(mut lines) = self.console.lock() {
            lines.push((self.started.elapsed(), text));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(q) = self.qemu.as_mut() {
            let _ = q.kill();
            let _ = q.wait();
        }
        if let Some(mut supervisor) = self.supervisor.take() {
            supervisor.kill();
        }
        for child in [self.qemu.as_mut(), self.xxcapd.as_mut()]
            .into_iter()
            .flatten()
            .chain(self.more_xxcapds.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// One framed step of the guest script.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub rc: i32,
    pub output: Vec<String>,
    /// Guest uptime in seconds when the step ended.
    pub uptime: f64,
}

impl Step {
    /// The result records the guest's tools printed during this step.
    pub fn records(&self) -> Vec<Record> {
        Record::all(&self.output)
    }

    /// The first record of this step that `pick` accepts (test support:
    /// panics with the step's output if there is none).
    pub fn record<T>(&self, what: &str, pick: impl Fn(Record) -> Option<T>) -> T {
        self.records()
            .into_iter()
            .find_map(pick)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {what} result record:\n{}",
                    self.name,
                    self.output.join("\n")
                )
            })
    }
}

/// The guest's steps, parsed from the console.
pub fn parse_steps(lines: &[String]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in lines {
        if let Some(name) = line.strip_prefix("XXCAP-STEP-BEGIN ") {
            current = Some((name.trim().to_string(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("XXCAP-STEP-END ") {
            let mut fields = rest.split_whitespace();
            let name = fields.next().unwrap_or_default().to_string();
            let mut rc = -1;
            let mut uptime = 0.0;
            for f in fields {
                if let Some(v) = f.strip_prefix("rc=") {
                    rc = v.parse().unwrap_or(-1);
                } else if let Some(v) = f.strip_prefix("uptime=") {
                    uptime = v.parse().unwrap_or(0.0);
                }
            }
            let output = match current.take() {
                Some((begun, out)) if begun == name => out,
                _ => Vec::new(),
            };
            steps.push(Step {
                name,
                rc,
                output,
                uptime,
            });
        } else if let Some((_, out)) = current.as_mut() {
            out.push(line.clone());
        }
    }
    steps
}

/// A VM run of one guest mode, booted, run to the end and shut down: what
/// the HIL tests look at.
pub struct FinishedRun {
    pub steps: Vec<Step>,
    pub console: Vec<String>,
    pub qemu: ExitStatus,
    pub backend: ExitStatus,
    pub backend_log: String,
}

impl FinishedRun {
    /// Boots with `opts` (logs under `target/hil-logs/<log_name>`), waits up
    /// to `timeout` for the guest and collects everything. For tests: any
    /// failure to run panics with its reason.
    pub fn boot(
        artifacts: &Artifacts,
        mut opts: VmOptions,
        log_name: &str,
        timeout: Duration,
    ) -> Self {
        opts.log_dir = repo_root().join("target/hil-logs").join(log_name);
        if let Err(e) = std::fs::create_dir_all(&opts.log_dir) {
            panic!("{}: {e}", opts.log_dir.display());
        }
        let mut vm = Vm::start(artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
        let qemu = vm.wait_guest(timeout).unwrap_or_else(|e| panic!("{e}"));
        let backend = vm
            .wait_backend(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        let console = vm.console();
        FinishedRun {
            steps: parse_steps(&console),
            console,
            qemu,
            backend,
            backend_log: vm.backend_log(),
        }
    }

    /// The guest step `name`; panics with the console if it never ran.
    pub fn step(&self, name: &str) -> &Step {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "guest step {name} never ran; console:\n{}",
                    self.console.join("\n")
                )
            })
    }

    /// Panics unless each named step ran and exited 0.
    pub fn assert_steps_passed(&self, names: &[&str]) {
        for name in names {
            let s = self.step(name);
            assert_eq!(
                s.rc,
                0,
                "guest step {name} failed:\n{}",
                s.output.join("\n")
            );
        }
    }

    /// Panics unless QEMU and xxcapd both exited cleanly.
    pub fn assert_clean_exit(&self) {
        assert!(self.qemu.success(), "QEMU exited with {}", self.qemu);
        assert!(
            self.backend.success(),
            "xxcapd exited with {}:\n{}",
            self.backend,
            self.backend_log
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_args_are_argv_words() {
        let args = card_qemu_args(Path::new("/tmp/a,b.sock"), 31, 512);
        let device = args.iter().position(|a| a == "-device").expect("-device");
        assert!(args[device + 1].starts_with("vhost-user-test-device-pci,"));
        assert!(args.contains(&"512M".to_string()));
        assert!(args.contains(&"socket,id=xxcap0,path=/tmp/a,,b.sock".to_string()));
        assert!(args.iter().all(|a| !a.starts_with("-m ")));
    }

    #[test]
    fn further_cards_have_their_own_ids_and_no_memory_options() {
        let first = card_qemu_args(Path::new("/tmp/0.sock"), 31, 512);
        let second = more_card_qemu_args(Path::new("/tmp/1.sock"), "card1", 31);
        assert_eq!(second.len(), 4, "{second:?}");
        assert!(second
            .iter()
            .all(|a| a != "-m" && a != "-numa" && a != "-object"));
        assert!(second.contains(&"socket,id=chr-card1,path=/tmp/1.sock".to_string()));
        let device = |args: &[String]| {
            let at = args.iter().position(|a| a == "-device").expect("-device");
            args[at + 1].clone()
        };
        assert!(device(&second).contains(",id=card1,chardev=chr-card1,"));
        assert_ne!(device(&first), device(&second));
    }

    #[test]
    fn steps_are_framed() {
        let lines: Vec<String> = [
            "noise",
            "XXCAP-STEP-BEGIN info",
            "card /dev/xxcapture0",
            "XXCAP-STEP-END info rc=0 uptime=3.21",
            "XXCAP-STEP-BEGIN selftest",
            "selftest: FAIL x",
            "XXCAP-STEP-END selftest rc=1 uptime=4.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let steps = parse_steps(&lines);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].name, "info");
        assert_eq!(steps[0].rc, 0);
        assert_eq!(steps[0].output, vec!["card /dev/xxcapture0".to_string()]);
        assert_eq!(steps[1].rc, 1);
        assert!((steps[1].uptime - 4.5).abs() < 1e-9);
    }
}
