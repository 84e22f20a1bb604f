//! The C interface in a booted VM: the C example, statically linked against
//! libxxcapture.a, lists the card, captures 300 frames of 1080p YUYV and
//! verifies every one; a second C program drives the rest of the API
//! (task files, DMA, asynchronous completions through callbacks, events,
//! streaming, card RAM and the status block).

use std::time::Duration;

use xxcapture_hil::results::Record;
use xxcapture_hil::{Artifacts, FinishedRun, Mode, VmOptions};

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn c_example_captures_300_verified_frames_in_vm() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::Capi,
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, "capi", Duration::from_secs(600));
    run.assert_steps_passed(&["load-driver", "capi-capture-300", "capi-tour", "kernel-log"]);

    let step = run.step("capi-capture-300");
    let out = step.output.join("\n");
    eprintln!("{out}");
    assert!(
        out.contains("card 0: /dev/xxcapture0"),
        "the example did not list the card:\n{out}"
    );
    let summary = step.record("capture", |r| match r {
        Record::Capture(c) => Some(c),
        _ => None,
    });
    assert_eq!(summary.frames, 300, "{summary:?}");
    assert_eq!(summary.verified, 300, "{summary:?}");
    assert_eq!(summary.corrupt, 0, "{summary:?}");
    assert_eq!(
        (summary.width, summary.height, summary.format.as_str()),
        (1920, 1080, "yuyv")
    );

    let tour = run.step("capi-tour").output.join("\n");
    eprintln!("{tour}");
    assert!(
        !tour.contains("FAIL - "),
        "the API tour failed a check:\n{tour}"
    );
    assert!(
        tour.contains("checks passed, 0 failed"),
        "the API tour did not finish:\n{tour}"
    );

    run.assert_clean_exit();
}
