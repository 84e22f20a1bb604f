//! `xxvm exec`: one command in a fresh VM with the card, for anyone's tests.
//!
//! The host writes the run's folder (the command as a script, the `--put`
//! files, the list of `--get` paths and the guest half, `ci/guest/exec.sh`)
//! as a cpio archive appended to the busybox initramfs, or onto the tools
//! disk of the Debian image. The guest loads the driver, runs the command
//! with its output framed on the console, and writes a tar archive with the
//! exit status, the kernel log and the `--get` paths to the output disk,
//! which the host unpacks once QEMU is gone.

pub mod card;
pub mod cpio;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::build::{repo_root, Artifacts};
use crate::image::DebianImage;
use crate::vm::{Accel, Mode, Vm, VmOptions};
use crate::{Error, Result};

/// Exit status when the run did not finish within `--timeout` (as
/// timeout(1)).
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the harness failed: the VM did not start or boot, the
/// driver did not load, a `--put` could not be placed, or (with a command
/// that succeeded) a `--get` path did not exist.
pub const EXIT_HARNESS: u8 = 125;

/// The guest half of the run.
const GUEST_SCRIPT: &str = include_str!("../../guest/exec.sh");

/// Which guest runs the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// The busybox initramfs on the provisioned kernel (boots in seconds).
    Initramfs,
    /// The Debian image of `images/mkdebian` for this release.
    Debian(String),
}

/// A `--put SRC:DEST`: a host file or folder and its path in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    pub src: PathBuf,
    pub dest: String,
}

/// A `--get GUEST_PATH:HOST_PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    pub guest: String,
    pub host: PathBuf,
}

/// Splits `A:B` at its last `:` (host paths may hold one, guest paths
/// given here may not).
fn split_pair(text: &str, what: &str) -> std::result::Result<(String, String), String> {
    match text.rsplit_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("{what} {text:?}: expected A:B")),
    }
}

fn guest_path(path: &str, what: &str) -> std::result::Result<String, String> {
    if !path.starts_with('/') || path.contains('\n') || path.split('/').any(|c| c == "..") {
        return Err(format!(
            "{what}: guest path {path:?} must be absolute, without '..' or newlines"
        ));
    }
    Ok(path.to_string())
}

impl Put {
    /// Parses `SRC:DEST` (SRC relative to the current folder). A `DEST`
    /// ending in `/` is the folder that receives `SRC` under its own name,
    /// as `cp` would place it.
    pub fn parse(text: &str) -> std::result::Result<Put, String> {
        let (src, dest) = split_pair(text, "--put")?;
        let src = PathBuf::from(src);
        if std::fs::symlink_metadata(&src).is_err() {
            return Err(format!("--put {text:?}: {} not found", src.display()));
        }
        let mut dest = guest_path(&dest, "--put")?;
        if dest.ends_with('/') {
            let name = src
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| !n.contains('\n'))
                .ok_or_else(|| {
                    format!("--put {text:?}: {} has no file name to keep", src.display())
                })?;
            dest.push_str(name);
        }
        Ok(Put { src, dest })
    }
}

impl Get {
    /// Parses `GUEST_PATH:HOST_PATH`.
    pub fn parse(text: &str) -> std::result::Result<Get, String> {
        let (guest, host) = match text.split_once(':') {
            Some((g, h)) if !g.is_empty() && !h.is_empty() => (g, h),
            _ => return Err(format!("--get {text:?}: expected GUEST_PATH:HOST_PATH")),
        };
        Ok(Get {
            guest: guest_path(guest, "--get")?,
            host: PathBuf::from(host),
        })
    }
}

/// Everything one `xxvm exec` run needs.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    pub puts: Vec<Put>,
    pub gets: Vec<Get>,
    pub image: Image,
    /// Per card, the xxcapd arguments of its `--card` (at least one card).
    pub cards: Vec<Vec<String>>,
    /// Given to every card's xxcapd after its own.
    pub xxcapd_args: Vec<String>,
    pub accel: Accel,
    /// For the whole run, from QEMU's start.
    pub timeout: Duration,
    /// The run directory: console, kernel and xxcapd logs, status.
    pub logs: PathBuf,
    pub guest_memory_mib: u32,
    /// Copy the command's output to our stdout as it arrives.
    pub echo: bool,
    /// More QEMU arguments (the boot-time measurement's debug console).
    pub extra_qemu_args: Vec<String>,
    /// Boot as the harness used to, for comparison: the compressed kernel,
    /// a gzip initramfs, no `vm::BOOT_ARGS`.
    pub baseline_boot: bool,
    /// Removals and additions of the (one) card over QMP, at times after
    /// the command started, in order.
    pub hotplug: Vec<HotplugStep>,
    /// Deterministic mode ([`DETERMINISTIC_QEMU_ARGS`], xxcapd `--clock
    /// virtual`): TCG only.
    pub deterministic: bool,
}

/// What `--hotplug` does to the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardAction {
    /// `device_del`: the guest's driver lets go of the card (ACPI eject).
    Remove,
    /// `device_add` of the card again, on the same xxcapd.
    Add,
}

/// One `--hotplug remove@SECS` or `add@SECS`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HotplugStep {
    pub action: CardAction,
    /// After the command started.
    pub at: Duration,
}

impl std::str::FromStr for HotplugStep {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (action, at) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: expected remove@SECS or add@SECS"))?;
        let action = match action {
            "remove" => CardAction::Remove,
            "add" => CardAction::Add,
            other => return Err(format!("{other:?}: the card can be removed or added")),
        };
        let at = at
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("{at:?}: not a number of seconds"))?;
        Ok(HotplugStep { action, at })
    }
}

/// Checks that a schedule alternates remove, add, ... in time order.
pub fn check_hotplug(steps: &[HotplugStep]) -> std::result::Result<(), String> {
    let mut plugged = true;
    let mut last = Duration::ZERO;
    for step in steps {
        if step.at < last {
            return Err(format!("--hotplug times go back at {:?}", step.at));
        }
        last = step.at;
        match (step.action, plugged) {
            (CardAction::Remove, true) | (CardAction::Add, false) => plugged = !plugged,
            (CardAction::Remove, false) => return Err("the card is removed twice".into()),
            (CardAction::Add, true) => return Err("the card is added while present".into()),
        }
    }
    Ok(())
}

/// QEMU's side of `xxvm exec --deterministic`: the guest's clocks count
/// instructions instead of following the host (`-icount`, a fixed 2^shift
/// ns per instruction, never adapted to the host's speed), the RTC starts
/// at a fixed date and runs on that virtual clock, and the CPU offers no
/// RDRAND/RDSEED (which TCG answers from the host's random source). With
/// `sleep=on` an idle guest's clock still follows the host's while it
/// waits: the guest waits for xxcapd, which runs on the host, and a guest
/// clock that jumped ahead whenever the vCPU idled would expire the
/// driver's and the application's timeouts before xxcapd could answer.
pub const DETERMINISTIC_QEMU_ARGS: &[&str] = &[
    "-icount",
    "shift=3,sleep=on",
    "-rtc",
    "base=2026-01-01T00:00:00,clock=vm",
    "-cpu",
    "max,erms=off,fsrm=off,rdrand=off,rdseed=off",
];

/// How a run ended.
#[derive(Clone, Debug)]
pub struct ExecOutcome {
    /// What `xxvm exec` exits with.
    pub exit: u8,
    /// The command's own status, when it ran to the end.
    pub command_status: Option<i32>,
    /// The command's output (the console between the markers).
    pub output: Vec<String>,
    /// Console lines with the wall time since QEMU started.
    pub console: Vec<(Duration, String)>,
    /// Why the harness failed, if it did.
    pub failure: Option<String>,
    /// Wall time from QEMU's start to the end of the run.
    pub wall: Duration,
    /// When QEMU was started.
    pub qemu_started: Instant,
    /// The CPU time QEMU had used when the command started (user and
    /// system, all threads): the boot's cost without the host's load.
    pub qemu_cpu_to_command: Option<Duration>,
}

/// The user and system CPU time of process `pid` so far.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ 100).
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Quotes `word` for the guest's shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Step(format!("{what}: {e}"))
}

/// The run's folder as it appears in the guest: files of `cpio` under
/// `root` (`xxexec`).
fn payload(opts: &ExecOptions, root: &str) -> Result<cpio::Cpio> {
    let mut c = cpio::Cpio::default();
    let err = io_err("packing the run's files");
    c.dir(root).map_err(&err)?;
    c.dir(&format!("{root}/put")).map_err(&err)?;
    let mut put_list = String::new();
    for (n, put) in opts.puts.iter().enumerate() {
        c.add_path(&put.src, &format!("{root}/put/{n}"))
            .map_err(&err)?;
        put_list.push_str(&format!("{n} {}\n", put.dest));
    }
    let get_list: String = opts.gets.iter().map(|g| format!("{}\n", g.guest)).collect();
    let words: Vec<String> = opts.command.iter().map(|w| shell_quote(w)).collect();
    let cmd = format!("exec {}\n", words.join(" "));
    for (name, perm, text) in [
        ("put.list", 0o644, put_list.as_str()),
        ("get.list", 0o644, get_list.as_str()),
        ("cmd", 0o755, cmd.as_str()),
        ("exec.sh", 0o755, GUEST_SCRIPT),
    ] {
        c.file(&format!("{root}/{name}"), perm, text.as_bytes())
            .map_err(&err)?;
    }
    Ok(c)
}

/// Writes the folder of `cpio` out as a tree under `dir` (for the Debian
/// image's tools disk).
fn unpack_cpio(cpio: cpio::Cpio, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("tools tree"))?;
    cpio::unpack(&cpio.finish(), dir).map_err(io_err("unpacking the run's files"))
}

/// The Debian image's script: the guest half, from the tools disk.
const DEBIAN_SCRIPT: &str =
    "mountpoint -q /opt/xxcapture || mount -o ro LABEL=xxcap-tools /opt/xxcapture
i=0
while ! ls /dev/xxcapture* >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo \"XXCAP-GUEST driver loaded uptime=$(cut -d' ' -f1 /proc/uptime)\"
sh /opt/xxcapture/xxexec/exec.sh /opt/xxcapture/xxexec
";

/// Boots, runs, collects. Harness failures that happen before the VM
/// starts are errors; later ones are in the outcome.
pub fn run(artifacts: &Artifacts, opts: &ExecOptions) -> Result<ExecOutcome> {
    if opts.deterministic && opts.accel == Accel::Kvm {
        return Err(Error::Step(
            "deterministic mode needs TCG: KVM cannot count instructions (-icount)".into(),
        ));
    }
    std::fs::create_dir_all(&opts.logs)
        .map_err(|e| Error::Step(format!("run directory {}: {e}", opts.logs.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix("xxvm-exec-")
        .tempdir()
        .map_err(io_err("temp dir"))?;
    let mut vm_opts = VmOptions {
        mode: Mode::Exec,
        accel: opts.accel,
        guest_memory_mib: opts.guest_memory_mib,
        log_dir: opts.logs.clone(),
        supervise: false,
        echo: false,
        echo_supervisor: false,
        cards: u32::try_from(opts.cards.len().max(1)).unwrap_or(1),
        card_xxcapd_args: opts
            .cards
            .iter()
            .map(|c| {
                c.iter()
                    .chain(&opts.xxcapd_args)
                    .cloned()
                    .chain(
                        opts.deterministic
                            .then(|| ["--clock".to_string(), "virtual".to_string()])
                            .into_iter()
                            .flatten(),
                    )
                    .collect()
            })
            .collect(),
        extra_qemu_args: opts
            .extra_qemu_args
            .iter()
            .cloned()
            .chain(
                DETERMINISTIC_QEMU_ARGS
                    .iter()
                    .filter(|_| opts.deterministic)
                    .map(|a| a.to_string()),
            )
            .collect(),
        without_boot_args: opts.baseline_boot,
        hotplug: !opts.hotplug.is_empty(),
        ..VmOptions::default()
    };
    if !opts.hotplug.is_empty() && vm_opts.cards != 1 {
        return Err(Error::Step("--hotplug works on one card".into()));
    }
    check_hotplug(&opts.hotplug).map_err(Error::Step)?;
    vm_opts
        .kernel_args
        .push(format!("xxcap.cards={}", vm_opts.cards));
    let mut artifacts = artifacts.clone();
    match &opts.image {
        Image::Initramfs => {
            let initrd = scratch.path().join("initrd");
            let mut bytes =
                std::fs::read(&artifacts.initramfs).map_err(io_err("reading the initramfs"))?;
            if opts.baseline_boot {
                bytes = gzip(&bytes)?;
                artifacts.boot_kernel = artifacts.provisioned.kernel.clone();
            }
            // The kernel looks for the next archive on a 4-byte boundary.
            while !bytes.len().is_multiple_of(4) {
                bytes.push(0);
            }
            payload(opts, "xxexec")?
                .write_to(&mut bytes)
                .map_err(io_err("initrd"))?;
            std::fs::write(&initrd, bytes).map_err(io_err("initrd"))?;
            artifacts.initramfs = initrd;
        }
        Image::Debian(dist) => {
            let image = DebianImage::load(dist)?;
            // Not `tools.d`: tools_disk_with builds the disk's tree there.
            let tree = scratch.path().join("run.d");
            unpack_cpio(payload(opts, "xxexec")?, &tree)?;
            let tools = scratch.path().join("tools.img");
            crate::image::tools_disk_with(&artifacts, &tools, Some(&tree))?;
            let script = scratch.path().join("run.sh");
            std::fs::write(&script, DEBIAN_SCRIPT).map_err(io_err("run script"))?;
            vm_opts.boot = Some(image.boot_target(&tools, Some(&script)));
            if vm_opts.guest_memory_mib < 1024 {
                vm_opts.guest_memory_mib = 1024;
            }
        }
    }
    let disk = opts.logs.join("output.img");
    let file = std::fs::File::create(&disk).map_err(io_err("output disk"))?;
    // Sparse: only what the guest writes takes room.
    file.set_len(1 << 30).map_err(io_err("output disk"))?;
    drop(file);
    vm_opts.output_disk = Some(disk.clone());

    let mut vm = Vm::start(&artifacts, &vm_opts)?;
    let outcome = follow(&mut vm, opts);
    let console = vm.console_timed();
    let _ = vm.wait_backend(Duration::from_secs(5));
    let _ = vm.wait_more_backends(Duration::from_secs(5));
    drop(vm);
    let mut outcome = outcome;
    outcome.console = console;
    collect(&disk, opts, &mut outcome);
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::write(
        opts.logs.join("status"),
        format!(
            "exit={}\ncommand={}\nwall_seconds={:.3}\nfailure={}\n",
            outcome.exit,
            outcome
                .command_status
                .map_or_else(|| "none".to_string(), |s| s.to_string()),
            outcome.wall.as_secs_f64(),
            outcome.failure.clone().unwrap_or_default()
        ),
    );
    Ok(outcome)
}

/// `data` compressed as images/mkinitramfs used to (gzip -n -6).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(["-n", "-6"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(io_err("cannot start gzip"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Step("gzip: no stdin".into()))?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(io_err("gzip"))?;
    let _ = writer.join();
    match out.status.success() {
        true => Ok(out.stdout),
        false => Err(Error::Step(format!("gzip: {}", out.status))),
    }
}

/// Echoes the command's output as it arrives and waits for QEMU to end.
fn follow(vm: &mut Vm, opts: &ExecOptions) -> ExecOutcome {
    let started = vm.started();
    let deadline = started + opts.timeout;
    let mut seen = 0;
    let mut inside = false;
    let mut outcome = ExecOutcome {
        exit: EXIT_HARNESS,
        command_status: None,
        output: Vec::new(),
        console: Vec::new(),
        failure: None,
        wall: Duration::ZERO,
        qemu_started: started,
        qemu_cpu_to_command: None,
    };
    let pid = vm.qemu_pid();
    let mut timed_out = false;
    let mut command_started = None;
    let mut hotplug = opts.hotplug.iter().peekable();
    loop {
        if let Some(at) = command_started {
            while let Some(step) = hotplug.next_if(|s| Instant::now() >= at + s.at) {
                let t = Instant::now();
                let done = match step.action {
                    CardAction::Remove => vm.unplug_card(Duration::from_secs(30)).map(|took| {
                        format!(
                            "card removed (the guest let go in {:.0} ms)",
                            took.as_secs_f64() * 1e3
                        )
                    }),
                    CardAction::Add => vm.plug_card().map(|()| "card added".to_string()),
                };
                let when = t.saturating_duration_since(at).as_secs_f64();
                match done {
                    Ok(what) => eprintln!("xxvm: {what} at command time {when:.3} s"),
                    Err(e) => {
                        eprintln!("xxvm: at command time {when:.3} s: {e}");
                        outcome.failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
        let running = vm.qemu_running();
        let lines = vm.console();
        for line in &lines[seen.min(lines.len())..] {
            if let Some(rest) = line.strip_prefix("XXCAP-EXEC-END ") {
                inside = false;
                outcome.command_status = rest
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("rc=")?.parse().ok());
            } else if inside {
                if opts.echo {
                    println!("{line}");
                }
                outcome.output.push(line.clone());
            } else if line.starts_with("XXCAP-EXEC-BEGIN") {
                inside = true;
                command_started.get_or_insert_with(Instant::now);
                outcome.qemu_cpu_to_command = pid.and_then(process_cpu);
            } else if let Some(why) = line.strip_prefix("XXCAP-EXEC-ERROR ") {
                outcome.failure.get_or_insert_with(|| why.to_string());
            }
        }
        seen = lines.len();
        if !running {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outcome.wall = started.elapsed();
    match vm.wait_guest(Duration::from_secs(if timed_out { 0 } else { 5 })) {
        Ok(_) if !timed_out => {}
        _ if timed_out => {
            outcome.exit = EXIT_TIMEOUT;
            outcome.failure = Some(format!(
                "the run did not finish within {} s",
                opts.timeout.as_secs()
            ));
            return outcome;
        }
        Err(e) => {
            outcome.failure.get_or_insert_with(|| e.to_string());
        }
        Ok(_) => {}
    }
    match outcome.command_status {
        Some(rc) if outcome.failure.is_none() => {
            outcome.exit = u8::try_from(rc).unwrap_or(EXIT_HARNESS);
        }
        Some(_) => {}
        None => {
            outcome.failure.get_or_insert_with(|| {
                "the guest ended before the command did (see console.log)".into()
            });
        }
    }
    outcome
}

/// Unpacks the guest's archive from the output disk: status and kernel
/// log into the run directory, `--get` paths to their host paths.
fn collect(disk: &Path, opts: &ExecOptions, outcome: &mut ExecOutcome) {
    let mut fail = |why: String| {
        if outcome.failure.is_none() && outcome.command_status.is_some() {
            outcome.failure = Some(why);
        }
    };
    let Ok(file) = std::fs::File::open(disk) else {
        return fail("no output disk".into());
    };
    let staging = opts.logs.join("out");
    let _ = std::fs::remove_dir_all(&staging);
    let mut archive = tar::Archive::new(file.take(1 << 30));
    archive.set_preserve_permissions(true);
    if let Err(e) = archive.unpack(&staging) {
        return fail(format!("reading the output disk: {e}"));
    }
    let out = staging.join("xxexec-out");
    let _ = std::fs::rename(out.join("kernel.log"), opts.logs.join("kernel.log"));
    let mut missing = Vec::new();
    for (n, get) in opts.gets.iter().enumerate() {
        let src = out.join("get").join(n.to_string());
        if std::fs::symlink_metadata(&src).is_err() {
            missing.push(get.guest.clone());
            continue;
        }
        if let Some(parent) = get.host.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        if std::fs::symlink_metadata(&get.host).is_ok_and(|m| m.is_dir()) && src.is_dir() {
            let _ = std::fs::remove_dir_all(&get.host);
        }
        if let Err(e) = std::fs::rename(&src, &get.host).or_else(|_| copy_tree(&src, &get.host)) {
            fail(format!("--get {}: {}: {e}", get.guest, get.host.display()));
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    if !missing.is_empty() {
        let why = format!("--get: not in the guest: {}", missing.join(", "));
        eprintln!("xxvm: {why}");
        if outcome.exit == 0 {
            outcome.exit = EXIT_HARNESS;
            outcome.failure = Some(why);
        }
    }
}

/// Copies a file or folder (when a rename across file systems fails).
fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dest)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(src, dest).map(|_| ())
    }
}

/// The default run directory: a new folder under the system's temporary
/// directory, kept after the run.
pub fn default_run_dir() -> Result<PathBuf> {
    tempfile::Builder::new()
        .prefix("xxvm-run-")
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(io_err("run directory"))
}

/// The error for artifacts that are not there, saying where they were
/// looked for and how to choose another checkout.
pub fn missing_artifacts(e: Error) -> Error {
    Error::Missing(format!(
        "the built pieces of the xxcapture checkout at {} (set it with --project DIR or \
         XXVM_PROJECT; build them there with `cargo xxvm build`): {e}",
        repo_root().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotplug_schedules_parse_and_alternate() {
        let step = |s: &str| s.parse::<HotplugStep>();
        assert_eq!(
            step("remove@2.5"),
            Ok(HotplugStep {
                action: CardAction::Remove,
                at: Duration::from_millis(2500)
            })
        );
        for bad in ["remove", "unplug@1", "add@x", "add@-1", "add@inf", "@1"] {
            assert!(step(bad).is_err(), "{bad}");
        }
        let plan = |list: &[&str]| {
            let steps: Vec<HotplugStep> = list.iter().map(|s| step(s).expect("parses")).collect();
            check_hotplug(&steps)
        };
        assert_eq!(plan(&["remove@1", "add@2", "remove@2", "add@5"]), Ok(()));
        assert_eq!(plan(&["remove@1"]), Ok(()));
        assert!(plan(&["add@1"]).is_err());
        assert!(plan(&["remove@1", "remove@2"]).is_err());
        assert!(plan(&["remove@2", "add@1"]).is_err());
    }

    #[test]
    fn puts_and_gets_parse() {
        let p = Put::parse("Cargo.toml:/opt/x/Cargo.toml").expect("put");
        assert_eq!(p.dest, "/opt/x/Cargo.toml");
        assert!(Put::parse("Cargo.toml:relative").is_err());
        assert!(Put::parse("/nonexistent-xxvm:/a").is_err());
        assert!(Put::parse("Cargo.toml:/a/../b").is_err());
        // Into a folder, under the source's name.
        let p = Put::parse("../ci/Cargo.toml:/tmp/in/").expect("put into a folder");
        assert_eq!(p.dest, "/tmp/in/Cargo.toml");
        assert_eq!(
            Put::parse("Cargo.toml:/").expect("put into /").dest,
            "/Cargo.toml"
        );
        assert!(Put::parse("..:/tmp/").is_err());
        let g = Get::parse("/tmp/out.txt:results/out.txt").expect("get");
        assert_eq!(g.guest, "/tmp/out.txt");
        assert_eq!(g.host, PathBuf::from("results/out.txt"));
        assert!(Get::parse("tmp/x:y").is_err());
        assert!(Get::parse("/x").is_err());
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
