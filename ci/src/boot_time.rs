//! `xxvm boot-time`: where the seconds go from QEMU's start to the first
//! user command of `xxvm exec` (a command that does nothing).
//!
//! Three clocks are read: the host's, from QEMU's start (console lines and
//! the firmware's debug console, timed as they arrive); the guest kernel's
//! printk times (kernel.log); and the guest's uptime, which /init and the
//! exec script print with their markers. The guest clock starts early in
//! the kernel, so the host time at guest time zero is the host time of the
//! command's start minus its uptime then.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::build::Artifacts;
use crate::exec::{self, ExecOptions, Image};
use crate::vm::Accel;
use crate::{Error, Result};

/// One boot's phases, in seconds.
#[derive(Clone, Debug, Default)]
pub struct BootTimes {
    /// Host: QEMU's start to the firmware handing over to the kernel
    /// (SeaBIOS "Booting from ROM"; NaN when the firmware says nothing).
    pub firmware: f64,
    /// Host: from there to the kernel's clock starting (loading and
    /// decompressing the kernel, early setup).
    pub kernel_load: f64,
    /// Guest: kernel clock zero to the initramfs unpacked.
    pub initramfs_unpacked: f64,
    /// Guest: kernel clock zero to /init starting.
    pub kernel_to_init: f64,
    /// Guest: /init's start to the kernel modules loaded.
    pub modules: f64,
    /// Guest: modules to the driver loaded and every card's node there.
    pub driver: f64,
    /// Guest: driver loaded to the user's command starting.
    pub to_command: f64,
    /// Host: QEMU's start to the user's command starting.
    pub total: f64,
    /// Host: the CPU time QEMU used up to the user's command (all its
    /// threads; unlike the wall times, hardly changed by the host's load).
    pub cpu: f64,
    /// Host: QEMU's start to QEMU's end (the command, the archive of
    /// results and the power-off included).
    pub run: f64,
}

fn uptime_of(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
}

/// The printk time of the first kernel.log line containing `what`.
fn printk_time(log: &str, what: &str) -> Option<f64> {
    log.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split_once(']'))
        .and_then(|(t, _)| t.trim().parse().ok())
}

/// Reads the firmware's debug console from the FIFO `fifo`, timing each
/// line from `origin` once it is known.
fn debugcon_reader(fifo: &Path) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let Ok(file) = std::fs::File::open(&path) else {
            return;
        };
        for line in BufReader::new(file).split(b'\n').map_while(|l| l.ok()) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Ok(mut l) = sink.lock() {
                l.push((Instant::now(), text));
            }
        }
    });
    lines
}

/// Boots the exec guest once with `true` as the command and measures it
/// (`baseline`: booted as the harness used to, see
/// [`ExecOptions::baseline_boot`]).
pub fn measure(
    artifacts: &Artifacts,
    accel: Accel,
    logs: &Path,
    baseline: bool,
) -> Result<BootTimes> {
    let scratch = tempfile::Builder::new()
        .prefix("xxvm-boot-time-")
        .tempdir()
        .map_err(|e| Error::Step(format!("temp dir: {e}")))?;
    let fifo = scratch.path().join("debugcon");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map_err(|e| Error::Step(format!("mkfifo: {e}")))?;
    if !status.success() {
        return Err(Error::Step(format!("mkfifo {}: {status}", fifo.display())));
    }
    let debugcon = debugcon_reader(&fifo);
    let opts = ExecOptions {
        command: vec!["true".into()],
        puts: Vec::new(),
        gets: Vec::new(),
        image: Image::Initramfs,
        cards: vec![Vec::new()],
        xxcapd_args: Vec::new(),
        accel,
        timeout: Duration::from_secs(300),
        logs: logs.to_path_buf(),
        guest_memory_mib: 512,
        echo: false,
        // SeaBIOS writes its log to I/O port 0x402.
        extra_qemu_args: vec![
            "-chardev".into(),
            format!("pipe,id=debugcon,path={}", fifo.display()),
            "-device".into(),
            "isa-debugcon,iobase=0x402,chardev=debugcon".into(),
        ],
        baseline_boot: baseline,
    };
    let outcome = exec::run(artifacts, &opts)?;
    if outcome.exit != 0 {
        return Err(Error::Step(format!(
            "the boot did not reach the command: {} (logs in {})",
            outcome.failure.unwrap_or_default(),
            logs.display()
        )));
    }
    let marker = |prefix: &str| {
        outcome
            .console
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .and_then(|(t, l)| Some((t.as_secs_f64(), uptime_of(l)?)))
            .ok_or_else(|| Error::Step(format!("no {prefix:?} line on the console")))
    };
    let (command_wall, command_up) = marker("XXCAP-EXEC-BEGIN")?;
    let (_, init_up) = marker("XXCAP-GUEST booted")?;
    let (_, modules_up) = marker("XXCAP-GUEST modules loaded")?;
    let (_, driver_up) = marker("XXCAP-GUEST driver loaded")?;
    let kernel_log = std::fs::read_to_string(logs.join("kernel.log")).unwrap_or_default();
    let zero_wall = command_wall - command_up;
    let firmware = debugcon
        .lock()
        .ok()
        .and_then(|l| {
            l.iter()
                .find(|(_, text)| text.contains("Booting from"))
                .map(|(at, _)| at.saturating_duration_since(outcome.qemu_started))
        })
        .map_or(f64::NAN, |d| d.as_secs_f64());
    let nan = f64::NAN;
    Ok(BootTimes {
        firmware,
        kernel_load: zero_wall - firmware,
        initramfs_unpacked: printk_time(&kernel_log, "Freeing initrd memory").unwrap_or(nan),
        kernel_to_init: printk_time(&kernel_log, "Run /init as init process").unwrap_or(nan),
        modules: modules_up - init_up,
        driver: driver_up - modules_up,
        to_command: command_up - driver_up,
        total: command_wall,
        cpu: outcome
            .qemu_cpu_to_command
            .map_or(f64::NAN, |d| d.as_secs_f64()),
        run: outcome.wall.as_secs_f64(),
    })
}

/// Reads one phase of a boot.
type Phase = fn(&BootTimes) -> f64;

/// The table of `runs` (one column per run, then the median).
pub fn table(runs: &[BootTimes]) -> String {
    let rows: [(&str, Phase); 10] = [
        ("QEMU start -> firmware done (host)", |b| b.firmware),
        ("-> kernel clock starts: load + decompress (host)", |b| {
            b.kernel_load
        }),
        ("kernel: initramfs unpacked (guest, from 0)", |b| {
            b.initramfs_unpacked
        }),
        ("kernel: /init starts (guest, from 0)", |b| b.kernel_to_init),
        ("/init: kernel modules loaded", |b| b.modules),
        ("/init: driver loaded, card nodes there", |b| b.driver),
        ("exec script: to the user's command", |b| b.to_command),
        ("QEMU start -> user's command (host wall)", |b| b.total),
        ("QEMU start -> QEMU end (host wall)", |b| b.run),
        ("QEMU's CPU time up to the user's command (host)", |b| b.cpu),
    ];
    let mut out = String::new();
    let header: Vec<String> = (1..=runs.len()).map(|i| format!("run {i}")).collect();
    out.push_str(&format!(
        "| phase (s) | {} | median |\n|---|{}---|\n",
        header.join(" | "),
        "---|".repeat(runs.len())
    ));
    for (name, get) in rows {
        let mut values: Vec<f64> = runs.iter().map(get).collect();
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        values.sort_by(f64::total_cmp);
        let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| {name} | {} | {median:.2} |\n",
            cells.join(" | ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_from_markers_and_printk() {
        assert_eq!(
            uptime_of("XXCAP-GUEST booted kernel=6.1 uptime=2.50s mode=exec"),
            Some(2.5)
        );
        assert_eq!(uptime_of("XXCAP-EXEC-BEGIN uptime=3.25"), Some(3.25));
        let log = "[    0.000000] Linux\n[    1.234567] Run /init as init process\n";
        assert_eq!(printk_time(log, "Run /init"), Some(1.234567));
        assert_eq!(printk_time(log, "absent"), None);
    }
}
