//! Untrusted guest user space, for real, in a booted VM: hostile DMA never
//! touches memory its caller does not own (canaries), registered buffers
//! keep that guarantee (foreign and stale ids refused, canaries intact,
//! nothing pinned after a kill), so do the shared submission and
//! completion rings (refusals, canaries, exactly-once events, overflow,
//! wake-ups, a killed ring user), a multi-process
//! driver fuzzer leaves the kernel log clean, and 200 capture tools killed
//! at random moments leave nothing pinned; then 300 frames verify.

use std::time::Duration;

use xxcapture_hil::results::Record;
use xxcapture_hil::{Artifacts, FinishedRun, Mode, VmOptions};

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn hostile_clients_leave_nothing_behind_in_vm() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::Robust,
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, "robust", Duration::from_secs(1200));
    let names = [
        "load-driver",
        "canary-test",
        "regbuf-test",
        "pinned-after-regbuf",
        "ring-test",
        "pinned-after-ring",
        "fuzz-driver",
        "pinned-after-fuzz",
        "capture-after-fuzz",
        "kill-capture-dma",
        "kill-capture-mmap",
        "kill-stream",
        "pinned-after-kills",
        "capture-300-verified",
        "kernel-log",
    ];
    for name in names {
        eprintln!("{name}: {}", run.step(name).output.join(" | "));
    }
    run.assert_steps_passed(&names);
    let ops = run.step("fuzz-driver").record("fuzz-driver", |r| match r {
        Record::FuzzDriver(f) => Some(f.operations),
        _ => None,
    });
    assert!(ops > 1000, "the driver fuzzer ran only {ops} operations");
    let capture = run.step("capture-300-verified");
    let summary = capture.record("capture", |r| match r {
        Record::Capture(c) => Some(c),
        _ => None,
    });
    assert!(
        summary.frames == 300 && summary.verified == 300 && summary.corrupt == 0,
        "no clean 300-frame capture: {summary:?}\n{}",
        capture.output.join("\n")
    );
    run.assert_clean_exit();
}
