//! Cards come and go: the host removes the card from the running VM over
//! QMP (`device_del`, the guest's ACPI hotplug ejecting it) twenty times
//! (`XXCAP_HOTPLUG_REMOVALS=N` for another count) and adds it back each
//! time, with the same `xxcapd` behind it. One guest
//! program lives through all of it: on each card it streams verified
//! frames, runs DMA task files, waits in a blocking read and holds card RAM
//! and the status block mapped; at each removal every one of those must
//! fail with `ENODEV` (the driver's documented error), the library's uevent
//! monitor must report the removal, every pinned page must be let go and
//! the node must be gone; at each addition the monitor reports the new
//! card and the program captures verified frames from it. `xxcap monitor`
//! must print each change, the guest's pins balance at the end, and the
//! kernel log stays clean. The second test does the same to the card's
//! V4L2 node streaming by mmap (`v4l2-ctl`): each stream ends with `DQBUF`
//! failing `EIO` (or `ENODEV`, once the node is gone), the node goes, and
//! the card added back streams again.

use std::time::{Duration, Instant};

use xxcapture_hil::build::repo_root;
use xxcapture_hil::{parse_steps, Artifacts, Mode, Vm, VmOptions};

/// Removals per test unless `XXCAP_HOTPLUG_REMOVALS` says otherwise. A
/// round costs about 0.2 s (program) and 0.8 s (V4L2 node) under TCG, so
/// twenty add some 20 s to the two tests over three.
const DEFAULT_REMOVALS: u32 = 20;

/// How many times each test removes the card (`XXCAP_HOTPLUG_REMOVALS`,
/// 1 to 1000; default [`DEFAULT_REMOVALS`]).
fn removals() -> u32 {
    match std::env::var("XXCAP_HOTPLUG_REMOVALS") {
        Err(_) => DEFAULT_REMOVALS,
        Ok(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .unwrap_or_else(|| {
                panic!("XXCAP_HOTPLUG_REMOVALS={text:?}: not a count from 1 to 1000")
            }),
    }
}

/// One VM at a time (the tests of this file run on parallel threads).
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Reads the console as it arrives.
struct Console {
    next: usize,
}

impl Console {
    /// The next `XXCAP-HOTPLUG` line after the ones already taken, which
    /// must start with `want`; any other such line, or the guest program's
    /// end, fails the test.
    fn expect(&mut self, vm: &Vm, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = vm.console();
            while self.next < lines.len() {
                let line = &lines[self.next];
                self.next += 1;
                if line.starts_with(want) {
                    return line.clone();
                }
                assert!(
                    !line.starts_with("XXCAP-STEP-END hotplug-loop"),
                    "the guest program ended while waiting for {want:?}:\n{}",
                    tail(&lines, 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {want:?} within {timeout:?}; console tail:\n{}",
                tail(&lines, 40)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every `XXCAP-HOTPLUG` line up to (and with) the first one starting
    /// with `until`.
    fn collect_until(&mut self, vm: &Vm, until: &str, timeout: Duration) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let line = self.expect(vm, "XXCAP-HOTPLUG ", timeout);
            let done = line.starts_with(until);
            out.push(line);
            if done {
                return out;
            }
        }
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints what the removal rounds cost: from the first round's stream to
/// the last card added back, and since the test started (the boot too).
fn report_rounds(removals: u32, rounds_from: Option<Instant>, t_start: Instant) {
    let rounds = rounds_from.map_or(Duration::ZERO, |t| t.elapsed());
    eprintln!(
        "{removals} removals in {:.1} s ({:.1} s per round); {:.1} s since the test started",
        rounds.as_secs_f64(),
        rounds.as_secs_f64() / f64::from(removals.max(1)),
        t_start.elapsed().as_secs_f64()
    );
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn card_removed_and_added_back_while_a_program_uses_it() {
    let _vm = ONE_VM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let removals = removals();
    let t_start = Instant::now();
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::Hotplug,
        log_dir: repo_root().join("target/hil-logs/hotplug"),
        kernel_args: vec![format!("xxcap.removals={removals}")],
        supervise: false,
        hotplug: true,
        ..VmOptions::default()
    };
    let mut vm = Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
    let mut console = Console { next: 0 };
    let mut rounds_from = None;
    for round in 1..=removals {
        let prefix = format!("XXCAP-HOTPLUG round {round} ");
        let streaming = console.expect(
            &vm,
            &format!("{prefix}streaming"),
            Duration::from_secs(if round == 1 { 240 } else { 120 }),
        );
        rounds_from.get_or_insert_with(Instant::now);
        let t = Instant::now();
        let released = vm
            .unplug_card(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", tail(&vm.console(), 40)));
        let lines =
            console.collect_until(&vm, &format!("{prefix}released"), Duration::from_secs(60));
        let failures: Vec<&String> = lines.iter().filter(|l| l.contains(" failed ")).collect();
        // The stream, the DMA thread, the blocked reader, and a call on
        // each open file afterwards.
        for what in ["stream", "dma", "observer-read", "nop", "observer-nop"] {
            let line = failures
                .iter()
                .find(|l| field(l, "what=").is_some_and(|w| w.starts_with(what)))
                .unwrap_or_else(|| panic!("round {round}: no failure of {what}: {lines:?}"));
            assert_eq!(
                field(line, "kind="),
                Some("ENODEV"),
                "round {round}: {line}"
            );
        }
        assert_eq!(failures.len(), 5, "round {round}: {failures:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{prefix}removed /dev/xxcapture"))),
            "round {round}: the monitor did not report the removal: {lines:?}"
        );
        let released_line = lines.last().expect("collected until released");
        let acquired = field(released_line, "acquired=");
        assert!(acquired.is_some(), "{released_line}");
        assert_eq!(
            acquired,
            field(released_line, "released="),
            "round {round}: pages still pinned: {released_line}"
        );
        assert_eq!(
            field(released_line, "node="),
            Some("gone"),
            "{released_line}"
        );
        assert_eq!(field(released_line, "cards="), Some("0"), "{released_line}");
        let gone = t.elapsed();
        vm.plug_card()
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", tail(&vm.console(), 40)));
        let added = console.expect(&vm, &format!("{prefix}added"), Duration::from_secs(60));
        eprintln!(
            "round {round}: {streaming}; guest released the card in {:.0} ms, users failed and everything let go after {:.0} ms; {added} {:.0} ms after device_add",
            released.as_secs_f64() * 1e3,
            gone.as_secs_f64() * 1e3,
            (t.elapsed() - gone).as_secs_f64() * 1e3,
        );
    }
    report_rounds(removals, rounds_from, t_start);
    let last = removals + 1;
    let streaming = console.expect(
        &vm,
        &format!("XXCAP-HOTPLUG round {last} streaming"),
        Duration::from_secs(120),
    );
    eprintln!("{streaming}");
    let done = console.expect(&vm, "XXCAP-HOTPLUG done", Duration::from_secs(60));
    assert_eq!(field(&done, "ok="), Some("true"), "{done}");

    let qemu = vm
        .wait_guest(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = vm
        .wait_backend(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = vm.console();
    let steps = parse_steps(&lines);
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("guest step {name} never ran:\n{}", tail(&lines, 60)))
            .clone()
    };
    for name in [
        "load-driver",
        "hotplug-loop",
        "monitor-lines",
        "pins",
        "capture-after-hotplug",
        "unload-driver",
        "kernel-log",
    ] {
        let s = step(name);
        assert_eq!(
            s.rc,
            0,
            "guest step {name} failed:\n{}",
            s.output.join("\n")
        );
    }
    // `xxcap monitor` ran through it all: each removal, then each addition.
    let monitor = step("monitor-lines").output;
    let changes: Vec<&str> = monitor
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let expected: Vec<&str> = (0..removals).flat_map(|_| ["removed", "added"]).collect();
    assert_eq!(changes, expected, "xxcap monitor printed {monitor:?}");
    assert!(
        monitor.iter().all(|l| l.ends_with("/dev/xxcapture0")),
        "{monitor:?}"
    );
    assert!(qemu.success(), "QEMU exited with {qemu}");
    assert!(backend.success(), "xxcapd exited with {backend}");
    let log = vm.backend_log();
    let connections = log.matches("frontend connected (connection").count();
    assert_eq!(
        connections,
        removals as usize + 1,
        "xxcapd served {connections} connections"
    );
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn card_removed_and_added_back_while_its_v4l2_node_streams() {
    let _vm = ONE_VM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let removals = removals();
    let t_start = Instant::now();
    let mut artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    artifacts.initramfs = xxcapture_hil::build::v4l2_initramfs().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::V4l2Hotplug,
        log_dir: repo_root().join("target/hil-logs/hotplug-v4l2"),
        kernel_args: vec![format!("xxcap.removals={removals}")],
        supervise: false,
        hotplug: true,
        ..VmOptions::default()
    };
    let mut vm = Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
    let mut console = Console { next: 0 };
    let mut rounds_from = None;
    for round in 1..=removals {
        let prefix = format!("XXCAP-HOTPLUG round {round} ");
        let streaming = console.expect(
            &vm,
            &format!("{prefix}streaming"),
            Duration::from_secs(if round == 1 { 240 } else { 120 }),
        );
        rounds_from.get_or_insert_with(Instant::now);
        let released = vm
            .unplug_card(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", tail(&vm.console(), 40)));
        let lines =
            console.collect_until(&vm, &format!("{prefix}released"), Duration::from_secs(60));
        let failed = lines
            .iter()
            .find(|l| l.contains(" failed what=v4l2-dqbuf"))
            .unwrap_or_else(|| panic!("round {round}: {lines:?}"));
        // EIO for a DQBUF the removal found waiting (the queue is marked
        // in error first), ENODEV for one made after the node went.
        assert!(
            matches!(field(failed, "kind="), Some("EIO" | "ENODEV")),
            "round {round}: {failed}"
        );
        let frames: u32 = field(failed, "frames=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            frames >= 10,
            "round {round}: streamed only {frames} frames: {failed}"
        );
        let released_line = lines.last().expect("collected until released");
        assert_eq!(
            field(released_line, "node="),
            Some("gone"),
            "{released_line}"
        );
        assert_eq!(field(released_line, "cards="), Some("0"), "{released_line}");
        vm.plug_card()
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", tail(&vm.console(), 40)));
        console.expect(&vm, &format!("{prefix}added"), Duration::from_secs(60));
        eprintln!(
            "round {round}: {streaming}; {frames} frames, then DQBUF {}; guest released the card in {:.0} ms",
            field(failed, "kind=").unwrap_or("?"),
            released.as_secs_f64() * 1e3
        );
    }
    report_rounds(removals, rounds_from, t_start);
    let done = console.expect(&vm, "XXCAP-HOTPLUG done", Duration::from_secs(120));
    eprintln!("{done}");
    let qemu = vm
        .wait_guest(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = vm
        .wait_backend(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = vm.console();
    let steps = parse_steps(&lines);
    for name in [
        "load-driver",
        "hotplug-loop",
        "monitor-lines",
        "pins",
        "unload-driver",
        "kernel-log",
    ] {
        let s = steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("guest step {name} never ran:\n{}", tail(&lines, 60)));
        assert_eq!(
            s.rc,
            0,
            "guest step {name} failed:\n{}",
            s.output.join("\n")
        );
    }
    let monitor = &steps
        .iter()
        .find(|s| s.name == "monitor-lines")
        .expect("checked above")
        .output;
    let changes: Vec<&str> = monitor
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let expected: Vec<&str> = (0..removals).flat_map(|_| ["removed", "added"]).collect();
    assert_eq!(changes, expected, "xxcap monitor printed {monitor:?}");
    assert!(qemu.success(), "QEMU exited with {qemu}");
    assert!(backend.success(), "xxcapd exited with {backend}");
}
