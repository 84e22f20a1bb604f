//! Interrupts to user threads, for real, in a booted VM: 10,000 TEST
//! interrupts each delivered exactly once, signals interrupting blocking
//! waits, a minute of verified 1080p30 streaming into user buffers, and 200
//! capture tools killed at random moments with nothing left behind.

use std::time::Duration;

use xxcapture_hil::{Artifacts, FinishedRun, Mode, Step, VmOptions};

/// The line of a step's output that starts with `prefix`.
fn line<'a>(step: &'a Step, prefix: &str) -> &'a str {
    step.output
        .iter()
        .find_map(|l| l.find(prefix).map(|at| &l[at..]))
        .unwrap_or_else(|| {
            panic!(
                "{}: no {prefix:?} line:\n{}",
                step.name,
                step.output.join("\n")
            )
        })
}

/// The number that follows `key` in `line`.
fn number_after(line: &str, key: &str) -> f64 {
    line.split(key)
        .nth(1)
        .and_then(|rest| rest.trim_start().split([' ', ',', ';']).next())
        .and_then(|n| n.trim_start_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line}"))
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn events_streaming_and_killed_clients_in_vm() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::Events,
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, "events", Duration::from_secs(1200));
    run.assert_steps_passed(&[
        "load-driver",
        "irq-test",
        "eintr-test",
        "dma-async",
        "stream-1080p30-60s",
        "kill-dma-async",
        "kill-stream",
        "pinned-after-kills",
        "stream-after-kills",
        "kernel-log",
    ]);

    let irq = line(run.step("irq-test"), "irq-test:");
    eprintln!("{irq}");
    assert_eq!(number_after(irq, "raised"), 10_000.0);
    assert_eq!(number_after(irq, "received"), 10_000.0);
    for zero in ["extra", "gaps", "out of order", "lost"] {
        assert_eq!(number_after(irq, zero), 0.0, "{zero} in {irq}");
    }
    assert_eq!(number_after(irq, "EVENT_COUNT"), 10_000.0);
    assert_eq!(number_after(irq, "driver events"), 10_000.0);

    let eintr = run.step("eintr-test");
    eprintln!("{}", eintr.output.join("\n"));

    let stream = line(run.step("stream-1080p30-60s"), "stream:");
    eprintln!("{stream}");
    let frames = number_after(stream, "stream:");
    // 60 s at 30 fps; the first frame waits for the card's first period.
    assert!(frames >= 1790.0, "only {frames} frames in 60 s at 30 fps");
    assert_eq!(number_after(stream, "verified"), frames);
    assert_eq!(number_after(stream, "corrupt"), 0.0);
    assert_eq!(number_after(stream, "dropped"), 0.0);

    let after = line(run.step("stream-after-kills"), "stream:");
    eprintln!("{after}");
    assert_eq!(number_after(after, "verified"), 60.0);
    let pinned = run.step("pinned-after-kills");
    eprintln!("{}", pinned.output.join("\n"));

    run.assert_clean_exit();
}
