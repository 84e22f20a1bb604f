//! Untrusted guest user space, for real, in a booted VM: hostile DMA never
//! touches memory its caller does not own (canaries), a multi-process
//! driver fuzzer leaves the kernel log clean, and 200 capture tools killed
//! at random moments leave nothing pinned; then 300 frames verify.

use std::time::Duration;

use xxcapture_hil::build::repo_root;
use xxcapture_hil::{parse_steps, Artifacts, Mode, Step, Vm, VmOptions};

fn step<'a>(steps: &'a [Step], name: &str, console: &[String]) -> &'a Step {
    steps.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "guest step {name} never ran; console:\n{}",
            console.join("\n")
        )
    })
}

#[test]
fn hostile_clients_leave_nothing_behind_in_vm() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_dir = repo_root().join("target/hil-logs/robust");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let opts = VmOptions {
        mode: Mode::Robust,
        log_dir,
        ..VmOptions::default()
    };
    let mut vm = Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
    let qemu = vm
        .wait_guest(Duration::from_secs(1200))
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = vm
        .wait_backend(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let console = vm.console();
    let steps = parse_steps(&console);
    for name in [
        "load-driver",
        "canary-test",
        "fuzz-driver",
        "pinned-after-fuzz",
        "capture-after-fuzz",
        "kill-capture-dma",
        "kill-capture-mmap",
        "kill-stream",
        "pinned-after-kills",
        "capture-300-verified",
        "kernel-log",
    ] {
        let s = step(&steps, name, &console);
        eprintln!("{name}: {}", s.output.join(" | "));
        assert_eq!(
            s.rc,
            0,
            "guest step {name} failed:\n{}",
            s.output.join("\n")
        );
    }
    let fuzz = step(&steps, "fuzz-driver", &console);
    let ops: u64 = fuzz
        .output
        .iter()
        .find_map(|l| l.split("fuzz-driver: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ops > 1000, "the driver fuzzer ran only {ops} operations");
    let capture = step(&steps, "capture-300-verified", &console);
    assert!(
        capture
            .output
            .iter()
            .any(|l| l.contains("capture: 300 frames") && l.contains("verified 300, corrupt 0")),
        "no clean 300-frame capture:\n{}",
        capture.output.join("\n")
    );
    assert!(qemu.success(), "QEMU exited with {qemu}");
    assert!(
        backend.success(),
        "xxcapd exited with {backend}:\n{}",
        vm.backend_log()
    );
}
