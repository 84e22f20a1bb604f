//! The card as a V4L2 device, in a booted VM: `v4l2-compliance` (streaming
//! tests included, over every format, and importing vivid's DMABUFs) with
//! no failure and no warning,
//! `v4l2-ctl` streaming by mmap and userptr, the coexistence rules with
//! task files in both directions, and the card removed mid-stream (and
//! probed again); the driver unloads and the kernel log stays clean.

use std::time::Duration;

use xxcapture_hil::{Artifacts, FinishedRun, Mode, VmOptions};

/// `(failed, warnings)` of the last "Total ..." line v4l2-compliance printed.
fn compliance_totals(lines: &[String]) -> (u32, u32) {
    let total = lines
        .iter()
        .rev()
        .find(|l| l.contains("Total") && l.contains("Failed:"))
        .unwrap_or_else(|| panic!("no v4l2-compliance summary in {lines:?}"));
    eprintln!("{total}");
    let field = |name: &str| -> u32 {
        let rest = &total[total.find(name).expect("summary field") + name.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .expect("summary number")
    };
    (field("Failed:"), field("Warnings:"))
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn v4l2_node_in_vm() {
    let mut artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    artifacts.initramfs = xxcapture_hil::build::v4l2_initramfs().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::V4l2,
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, "v4l2", Duration::from_secs(1200));
    let names = [
        "load-driver",
        "v4l2-node",
        "v4l2-stream-mmap-60",
        "v4l2-compliance",
        "v4l2-compliance-formats",
        "v4l2-compliance-dmabuf",
        "v4l2-stream-nv12",
        "v4l2-stream-rgb24",
        "v4l2-stream-userptr",
        "v4l2-busy-for-task-files",
        "v4l2-busy-for-streamon",
        "v4l2-remove-mid-stream",
        "selftest-after-v4l2",
        "unload-driver",
        "kernel-log",
    ];
    for name in [
        "v4l2-busy-for-task-files",
        "v4l2-busy-for-streamon",
        "v4l2-remove-mid-stream",
    ] {
        eprintln!("{name}: {}", run.step(name).output.join(" | "));
    }
    for name in [
        "v4l2-compliance",
        "v4l2-compliance-formats",
        "v4l2-compliance-dmabuf",
    ] {
        let (failed, warnings) = compliance_totals(&run.step(name).output);
        assert_eq!((failed, warnings), (0, 0), "{name}: failures, warnings");
    }
    run.assert_steps_passed(&names);
}
