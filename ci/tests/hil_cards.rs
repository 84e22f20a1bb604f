//! xxcapd as a service and many cards, in booted VMs: a socket-activated
//! `xxcapd` (the harness passes the listening socket as descriptor 3, as
//! systemd does) serves a guest across a guest reboot and across a QEMU
//! restart without being restarted itself; two cards in one VM capture at
//! the same time, each verified, while a second VM does the same beside it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xxcapture_hil::build::repo_root;
use xxcapture_hil::results::{CaptureSummary, Record};
use xxcapture_hil::{parse_steps, ActivatedBackend, Artifacts, Mode, Step, Vm, VmOptions};

const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The tests of this file boot VMs of their own; one at a time is enough
/// load for the machine (the cards test runs two VMs at once itself).
/// Under `cargo test` they are threads of one process; nextest runs each
/// in a process of its own, kept apart by the `vm` test group of
/// .config/nextest.toml.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn capture_summary(step: &Step) -> CaptureSummary {
    step.record("capture", |r| match r {
        Record::Capture(c) => Some(c),
        _ => None,
    })
}

/// Panics unless `step` exited 0 having verified exactly `frames` frames.
fn assert_verified(step: &Step, frames: u64) -> CaptureSummary {
    assert_eq!(
        step.rc,
        0,
        "guest step {} failed:\n{}",
        step.name,
        step.output.join("\n")
    );
    let summary = capture_summary(step);
    assert_eq!(summary.frames, frames, "{}: {summary:?}", step.name);
    assert_eq!(summary.verified, frames, "{}: {summary:?}", step.name);
    assert_eq!(summary.corrupt, 0, "{}: {summary:?}", step.name);
    summary
}

fn zeroed_disk(path: &Path) {
    std::fs::write(path, vec![0u8; 1 << 20]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn socket_activated_card_survives_guest_reboot_and_qemu_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_dir = repo_root().join("target/hil-logs/cards-reboot");
    std::fs::create_dir_all(&log_dir).unwrap_or_else(|e| panic!("{e}"));
    let workdir = tempfile::Builder::new()
        .prefix("xxcards-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let socket = workdir.path().join("xxcapd.sock");
    // Without --exit-on-disconnect: the daemon lives until SIGTERM.
    let mut backend = ActivatedBackend::start(
        &artifacts.xxcapd,
        &socket,
        &["--card-ram-size".into(), "64M".into(), "-v".into()],
        &log_dir.join("xxcapd.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pid = backend.pid();
    let started = Instant::now();
    let mut boots_so_far = 0;
    // Card RAM outlives guest reboots and reconnections: each boot finds
    // the mark the boot before left (a fresh daemon: none).
    let mut marks = Vec::new();

    // The first QEMU boots the guest twice (it reboots itself: a machine
    // reset, the card reset on the same connection); the second QEMU, a new
    // connection to the same daemon, boots it once.
    for (run, boots, connection) in [("first-qemu", 2, 1), ("second-qemu", 1, 2)] {
        let disk = log_dir.join(format!("{run}.img"));
        zeroed_disk(&disk);
        let opts = VmOptions {
            mode: Mode::Reboot,
            supervise: false,
            backend_socket: Some(socket.clone()),
            allow_reboot: true,
            output_disk: Some(disk),
            kernel_args: vec![format!("xxcap.boots={boots}")],
            log_dir: log_dir.join(run),
            ..VmOptions::default()
        };
        let run_started = Instant::now();
        let mut vm = Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
        let qemu = vm
            .wait_guest(GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{run}: {e}"));
        let console = vm.console();
        let dump = || console.join("\n");
        assert!(
            qemu.success(),
            "{run}: QEMU exited with {qemu}:\n{}",
            dump()
        );

        let boot_lines: Vec<&String> = console
            .iter()
            .filter(|l| l.starts_with("XXCAP-REBOOT boot "))
            .collect();
        let expected: Vec<String> = (1..=boots)
            .map(|n| format!("XXCAP-REBOOT boot {n} of {boots} "))
            .collect();
        assert_eq!(
            boot_lines.len(),
            expected.len(),
            "{run}: boots seen: {boot_lines:?}\n{}",
            dump()
        );
        for (line, prefix) in boot_lines.iter().zip(&expected) {
            assert!(line.starts_with(prefix.as_str()), "{run}: {line}");
        }
        let boot_ids: HashSet<&str> = boot_lines
            .iter()
            .filter_map(|l| l.split("boot_id=").nth(1))
            .collect();
        assert_eq!(boot_ids.len(), boots, "{run}: one kernel per boot");

        let steps = parse_steps(&console);
        for step in steps.iter().filter(|s| s.name == "ram-mark") {
            assert_eq!(step.rc, 0, "{run}: {}", step.output.join("\n"));
            marks.extend(
                step.output
                    .iter()
                    .filter_map(|l| l.strip_prefix("ram-mark: found "))
                    .map(|l| l.split(',').next().unwrap_or_default().to_string()),
            );
        }
        for name in [
            "load-driver",
            "info",
            "ram-mark",
            "capture-dma",
            "capture-mmap",
            "kernel-log",
        ] {
            let runs: Vec<&Step> = steps.iter().filter(|s| s.name == name).collect();
            assert_eq!(
                runs.len(),
                boots,
                "{run}: step {name} ran {} times in {boots} boots:\n{}",
                runs.len(),
                dump()
            );
            for (boot, step) in runs.iter().enumerate() {
                if name.starts_with("capture-") {
                    let s = assert_verified(step, 30);
                    eprintln!(
                        "{run} boot {}: {name}: {} verified, {:.1} fps",
                        boot + 1,
                        s.verified,
                        s.fps
                    );
                } else {
                    assert_eq!(
                        step.rc,
                        0,
                        "{run} boot {}: {name} failed:\n{}",
                        boot + 1,
                        step.output.join("\n")
                    );
                }
            }
        }

        assert!(
            backend.running(),
            "{run}: xxcapd exited:\n{}",
            backend.log()
        );
        assert_eq!(backend.pid(), pid, "{run}: xxcapd replaced");
        let log = backend.log();
        let this = format!("frontend connected (connection {connection})");
        let next = format!("frontend connected (connection {})", connection + 1);
        assert!(log.contains(&this), "{run}: no {this:?} in:\n{log}");
        assert!(
            !log.contains(&next),
            "{run}: a guest reboot must not reconnect:\n{log}"
        );
        // Each boot's driver started the card anew (-v logs it).
        boots_so_far += boots;
        assert_eq!(
            log.matches("device started").count(),
            boots_so_far,
            "{run}: card starts after {boots_so_far} boots:\n{log}"
        );
        eprintln!(
            "timing: {run}: {boots} boot(s) in {:.1} s",
            run_started.elapsed().as_secs_f64()
        );
    }

    assert_eq!(
        marks,
        ["none", "1", "2"],
        "card RAM must keep each boot's mark for the next, across the reboot and the new QEMU"
    );

    let status = backend
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}:\n{}", backend.log()));
    let log = backend.log();
    assert!(status.success(), "xxcapd exited with {status}:\n{log}");
    assert!(!log.contains("panicked"), "xxcapd panicked:\n{log}");
    assert!(
        socket.exists(),
        "the socket belongs to whoever bound it: xxcapd leaves it"
    );
    eprintln!(
        "timing: socket-activated test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn two_cards_capture_at_once_beside_a_second_vm() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let names = ["cards-vm0", "cards-vm1"];
    let mut vms: Vec<Vm> = names
        .iter()
        .map(|name| {
            let opts = VmOptions {
                mode: Mode::TwoCards,
                supervise: false,
                cards: 2,
                log_dir: repo_root().join("target/hil-logs").join(name),
                ..VmOptions::default()
            };
            Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect();

    for (name, vm) in names.iter().zip(vms.iter_mut()) {
        let qemu = vm
            .wait_guest(GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let first = vm
            .wait_backend(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let more = vm
            .wait_more_backends(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let console = vm.console();
        let dump = || console.join("\n");
        assert!(
            qemu.success(),
            "{name}: QEMU exited with {qemu}:\n{}",
            dump()
        );
        assert_eq!(more.len(), 1, "{name}: one more xxcapd");
        for (card, status) in [first].iter().chain(&more).enumerate() {
            let log = vm.card_backend_log(card as u32);
            assert!(
                status.success(),
                "{name}: card{card}'s xxcapd exited with {status}:\n{log}"
            );
            assert!(!log.contains("panicked"), "{name}: card{card}:\n{log}");
        }

        let steps = parse_steps(&console);
        let step = |wanted: &str| {
            steps
                .iter()
                .find(|s| s.name == wanted)
                .unwrap_or_else(|| panic!("{name}: step {wanted} never ran:\n{}", dump()))
        };
        for wanted in ["load-driver", "second-card", "capture-both", "kernel-log"] {
            let s = step(wanted);
            assert_eq!(s.rc, 0, "{name}: {wanted} failed:\n{}", s.output.join("\n"));
        }
        for card in ["card0", "card1"] {
            let s = assert_verified(step(card), 300);
            eprintln!(
                "{name}: {card}: {} verified, {:.1} fps, {:.1} MB/s",
                s.verified, s.fps, s.mb_per_s
            );
        }
        // At the same time: each capture began before the other ended.
        let both = step("capture-both").output.join("\n");
        let at = |what: &str| -> f64 {
            both.lines()
                .find(|l| l.starts_with(what))
                .and_then(|l| l.split("uptime=").nth(1))
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name}: no {what:?} in:\n{both}"))
        };
        let (start0, done0) = (at("card0 start"), at("card0 done"));
        let (start1, done1) = (at("card1 start"), at("card1 done"));
        eprintln!(
            "{name}: card0 ran {start0:.2}-{done0:.2} s, card1 {start1:.2}-{done1:.2} s (guest uptime)"
        );
        assert!(
            start0 < done1 && start1 < done0,
            "{name}: the captures did not overlap:\n{both}"
        );
    }
    eprintln!(
        "timing: two VMs with two cards each {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
