//! The crossings plugin in the provisioned QEMU (11.1.3, TCG): it loads, it
//! writes its JSON at exit, it refuses bad arguments, and it counts the edu
//! probe's MMIO reads exactly between the two guest markers.
//!
//! Needs prebuilt artifacts (no nested cargo here):
//! `ci/crossings-plugin/build-test-artifacts.sh` builds the plugin and the
//! static probe; `images/provision` provides QEMU and the guest kernel. Each
//! test fails naming what is missing. Every QEMU is bounded by a timeout and
//! killed when its guard drops.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use xxcapture_hil::{parse_steps, Provisioned};

const BUILD_HINT: &str = "build it with `ci/crossings-plugin/build-test-artifacts.sh`";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const READS: u64 = 1000;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn artifact(rel: &str) -> PathBuf {
    let path = target_dir().join(rel);
    assert!(path.is_file(), "missing {} ({BUILD_HINT})", path.display());
    path
}

fn plugin_path() -> PathBuf {
    artifact("release/libxxcapture_crossings.so")
}

fn probe_path() -> PathBuf {
    artifact("x86_64-unknown-linux-gnu/release/edu-probe")
}

fn provisioned() -> Provisioned {
    Provisioned::load().unwrap_or_else(|e| panic!("{e}"))
}

/// A QEMU process that is killed (and reaped) when dropped.
struct Qemu {
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Qemu {
    fn spawn(qemu: &Path, args: &[String], workdir: &Path) -> Qemu {
        let stderr_path = workdir.join("qemu.stderr");
        let stderr = File::create(&stderr_path).expect("create qemu.stderr");
        let child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", qemu.display()));
        Qemu {
            child: Some(child),
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits up to `timeout`; `None` if QEMU is still running.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => return None,
            }
        }
    }

    /// SIGTERM (QEMU then shuts down cleanly and runs plugin atexit
    /// callbacks), bounded; the guard's SIGKILL remains the fallback.
    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        self.wait(timeout)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn base_args() -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-device",
        "edu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn plugin_arg(plugin: &Path, options: &str) -> [String; 2] {
    ["-plugin".into(), format!("{},{options}", plugin.display())]
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("plugin output {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

fn counter(v: &Value, region: &str, field: &str) -> u64 {
    v["regions"][region][field].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "runs the provisioned QEMU: ci/test runs it with --ignored"]
fn plugin_loads_and_writes_json_at_exit() {
    let plugin = plugin_path();
    let p = provisioned();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("crossings.json");
    let mut args = base_args();
    args.extend(plugin_arg(&plugin, &format!("out={}", out.display())));
    args.extend(["-serial".into(), "none".into()]);
    // No kernel: the firmware runs; that is enough to load, translate and exit.
    let mut qemu = Qemu::spawn(&p.qemu, &args, dir.path());
    if let Some(status) = qemu.wait(Duration::from_secs(3)) {
        panic!(
            "QEMU exited at once ({status}): the plugin was refused?\n{}",
            qemu.stderr()
        );
    }
    let status = qemu
        .terminate(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("QEMU ignored SIGTERM for 30 s\n{}", qemu.stderr()));
    let v = read_json(&out);
    assert_eq!(v["tool"], "xxcapture-crossings");
    assert_eq!(v["qemu_plugin_api"], 7);
    assert_eq!(
        v["complete"], true,
        "the atexit callback did not run ({status})"
    );
    assert_eq!(v["target"], "x86_64");
    assert_eq!(v["vcpus"], 1);
    assert!(v["regions"].is_object() && v["snapshots"].is_array());
}

#[test]
#[ignore = "runs the provisioned QEMU: ci/test runs it with --ignored"]
fn plugin_refuses_unknown_arguments() {
    let plugin = plugin_path();
    let p = provisioned();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = base_args();
    args.extend(plugin_arg(&plugin, "out=/dev/null,frobnicate=1"));
    args.extend(["-serial".into(), "none".into()]);
    let mut qemu = Qemu::spawn(&p.qemu, &args, dir.path());
    let status = qemu
        .wait(Duration::from_secs(30))
        .expect("QEMU started despite a bad plugin argument");
    assert!(!status.success());
    let err = qemu.stderr();
    assert!(
        err.contains("xxcapture-crossings: unknown argument 'frobnicate=1'"),
        "{err}"
    );
}

#[test]
#[ignore = "runs the provisioned QEMU: ci/test runs it with --ignored"]
fn edu_reads_between_markers_are_counted_exactly() {
    let plugin = plugin_path();
    let probe = probe_path();
    let p = provisioned();
    let dir = tempfile::tempdir().expect("temp dir");
    let initrd = dir.path().join("initrd.cpio.gz");
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/init");
    let packed = Command::new(workspace_root().join("images/mkinitramfs"))
        .arg("--out")
        .arg(&initrd)
        .arg("--init")
        .arg(&init)
        .arg("--add")
        .arg(format!("{}:/bin/edu-probe", probe.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run images/mkinitramfs");
    assert!(packed.success(), "images/mkinitramfs failed ({packed})");

    let out = dir.path().join("crossings.json");
    let console = dir.path().join("console.log");
    let mut args = base_args();
    args.extend(plugin_arg(&plugin, &format!("out={}", out.display())));
    args.extend([
        "-kernel".into(),
        p.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        format!("console=ttyS0 panic=-1 quiet loglevel=4 crossings.reads={READS}"),
        "-serial".into(),
        format!("file:{}", console.display()),
    ]);
    let started = Instant::now();
    let mut qemu = Qemu::spawn(&p.qemu, &args, dir.path());
    let status = qemu.wait(BOOT_TIMEOUT);
    let lines: Vec<String> = std::fs::read_to_string(&console)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the guest did not power off within {} s; console:\n{}",
            BOOT_TIMEOUT.as_secs(),
            lines.join("\n")
        )
    });
    eprintln!(
        "crossings: boot + probe + poweroff with the plugin took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "QEMU: {status}\n{}", qemu.stderr());

    let steps = parse_steps(&lines);
    let step = steps
        .iter()
        .find(|s| s.name == "edu-probe")
        .unwrap_or_else(|| panic!("the probe never ran; console:\n{}", lines.join("\n")));
    assert_eq!(step.rc, 0, "edu-probe failed:\n{}", step.output.join("\n"));
    for line in &step.output {
        eprintln!("guest: {line}");
    }

    let v = read_json(&out);
    assert_eq!(v["complete"], true);
    let snaps = v["snapshots"].as_array().expect("snapshots array");
    assert_eq!(
        snaps.len(),
        2,
        "expected exactly the two probe markers: {v}"
    );
    let (start, end) = (&snaps[0], &snaps[1]);
    assert_eq!(
        (start["seq"].as_u64(), start["tag"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        (end["seq"].as_u64(), end["tag"].as_u64()),
        (Some(1), Some(2))
    );
    let delta = |field: &str| counter(end, "edu-mmio", field) - counter(start, "edu-mmio", field);
    eprintln!(
        "crossings: between the markers edu-mmio reads={} writes={} read_bytes={} write_bytes={}",
        delta("reads"),
        delta("writes"),
        delta("read_bytes"),
        delta("write_bytes")
    );
    assert_eq!(delta("reads"), READS, "edu reads between the markers");
    assert_eq!(delta("read_bytes"), 4 * READS);
    assert_eq!(delta("writes"), 0, "marker writes must not be counted");
    assert_eq!(delta("write_bytes"), 0);
    // Whole run: the probe's identification read before the start marker,
    // the phase, nothing after; the markers themselves are not counted.
    assert_eq!(counter(&v, "edu-mmio", "reads"), READS + 1);
    assert_eq!(counter(&v, "edu-mmio", "writes"), 0);
    assert_eq!(v["regions"]["edu-mmio"]["class"], "edu");
}
