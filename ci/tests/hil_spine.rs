//! The spine, end to end in a booted VM: real QEMU, real Debian kernel, the
//! real module and `xxcapd` on a real vhost-user socket. Needs the artifacts
//! of `cargo xxvm build` (ci/test builds them first); fails naming what is
//! missing otherwise.

use std::time::Duration;

use xxcapture_hil::build::repo_root;
use xxcapture_hil::results::Record;
use xxcapture_hil::{parse_steps, Artifacts, Mode, Vm, VmOptions};

const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn spine_end_to_end_in_vm() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::Test,
        log_dir: repo_root().join("target/hil-logs/spine"),
        ..VmOptions::default()
    };
    let mut vm = Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
    let qemu = vm
        .wait_guest(GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = vm
        .wait_backend(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let console = vm.console();
    let steps = parse_steps(&console);
    let dump = || console.join("\n");

    for expected in [
        "load-driver",
        "info",
        "selftest",
        "unload-driver",
        "reload-driver",
        "selftest-after-reload",
        "kernel-log",
    ] {
        let step = steps
            .iter()
            .find(|s| s.name == expected)
            .unwrap_or_else(|| panic!("guest step {expected} never ran; console:\n{}", dump()));
        assert_eq!(
            step.rc,
            0,
            "guest step {expected} failed:\n{}",
            step.output.join("\n")
        );
    }
    let info = steps
        .iter()
        .find(|s| s.name == "info")
        .map(|s| s.output.join("\n"));
    assert!(
        info.as_deref()
            .is_some_and(|o| o.contains("config space and task file agree")),
        "xxcap info did not confirm the identity: {info:?}"
    );
    for name in ["selftest", "selftest-after-reload"] {
        let step = steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("guest step {name} never ran"));
        let summary = step.record("selftest", |r| match r {
            Record::Selftest(s) => Some(s),
            _ => None,
        });
        assert_eq!(
            summary.failed,
            0,
            "{name}: {summary:?}\n{}",
            step.output.join("\n")
        );
        assert!(
            summary.passed >= 20,
            "{name}: only {} checks ran",
            summary.passed
        );
    }
    assert!(qemu.success(), "QEMU exited with {qemu}");
    assert!(
        backend.success(),
        "xxcapd exited with {backend}:\n{}",
        vm.backend_log()
    );
    let log = vm.backend_log();
    assert!(!log.contains("panicked"), "xxcapd panicked:\n{log}");

    let timed = vm.console_timed();
    let at = |needle: &str| {
        timed
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| t.as_secs_f64())
    };
    eprintln!(
        "timing: QEMU start to guest init {:.1} s, to selftest summary {:.1} s, whole run {:.1} s",
        at("XXCAP-GUEST booted").unwrap_or(f64::NAN),
        at("selftest: ").unwrap_or(f64::NAN),
        vm.started().elapsed().as_secs_f64()
    );
}
