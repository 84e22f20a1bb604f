//! Interrupts to user threads, for real, in a booted VM: 10,000 TEST
//! interrupts each delivered exactly once, signals interrupting blocking
//! waits, the card's writable properties acting, every completion arriving
//! while device events overflow an open's queue, a minute of verified
//! 1080p30 streaming into user buffers, and 200 capture tools killed at
//! random moments with nothing left behind.

use std::time::Duration;

use xxcapture_hil::results::{Record, StreamSummary};
use xxcapture_hil::{Artifacts, FinishedRun, Mode, Step, VmOptions};

fn stream_summary(step: &Step) -> StreamSummary {
    step.record("stream", |r| match r {
        Record::Stream(s) => Some(s),
        _ => None,
    })
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
        "abort-test",
        "pinned-after-abort",
        "props-test",
        "pinned-after-props",
        "dma-async",
        "completion-flood",
        "pinned-after-flood",
        "stream-1080p30-60s",
        "kill-dma-async",
        "kill-stream",
        "pinned-after-kills",
        "stream-after-kills",
        "kernel-log",
    ]);

    let irq = run.step("irq-test").record("irq-test", |r| match r {
        Record::IrqTest(t) => Some(t),
        _ => None,
    });
    eprintln!("{irq:?}");
    assert_eq!(irq.raised, 10_000);
    assert_eq!(irq.received, 10_000);
    for (zero, count) in [
        ("extra", irq.extra),
        ("gaps", irq.gaps),
        ("out of order", irq.out_of_order),
        ("lost", irq.lost),
    ] {
        assert_eq!(count, 0, "{zero} in {irq:?}");
    }
    assert_eq!(irq.event_count_delta, 10_000, "EVENT_COUNT");
    assert_eq!(irq.driver_events_delta, Some(10_000), "driver events");

    // Device events far beyond the open's depth, with task files (pinning
    // pages) and capture buffers outstanding: events may be dropped, and
    // LOST records count them; completions may not.
    let flood = run
        .step("completion-flood")
        .record("completion-flood", |r| match r {
            Record::CompletionFlood(f) => Some(f),
            _ => None,
        });
    eprintln!("{flood:?}");
    assert!(flood.task_files_submitted > 0 && flood.buffers_queued > 0);
    assert_eq!(
        flood.task_files_completed, flood.task_files_submitted,
        "task files"
    );
    assert_eq!(flood.task_file_errors, 0);
    assert_eq!(flood.task_file_strays, 0);
    assert_eq!(flood.buffers_returned, flood.buffers_queued, "buffers");
    assert_eq!(flood.buffer_strays, 0);
    assert!(
        flood.raised > 100 * flood.depth,
        "no flood: {} raised for a depth of {}",
        flood.raised,
        flood.depth
    );
    assert_eq!(flood.received + flood.lost, flood.raised, "TEST records");
    assert!(flood.events_dropped_delta > 0, "nothing was dropped");
    assert!(flood.lost > 0, "no LOST record counted the drops");
    assert_eq!(flood.pinned_pages_after, Some(0), "pinned pages");
    assert!(flood.enospc_with_64_unread, "65th SUBMIT with 64 unread");
    assert!(flood.submit_after_one_read, "SUBMIT after one read");

    let eintr = run.step("eintr-test");
    eprintln!("{}", eintr.output.join("\n"));

    // ABORT cancels held capture buffers (by id and all of an open's) and a
    // task file queued behind a large DMA, each completing once with
    // CANCELLED and nothing left pinned; a non-blocking DMA is refused in a
    // synchronous EXEC; STATUS.DMA_BUSY shows during large transfers and
    // DMA_ERROR latches until DMA_RESET.
    let abort = run.step("abort-test");
    eprintln!("{}", abort.output.join("\n"));
    for check in [
        "abort-buffers",
        "abort-task-files",
        "nonblock-in-exec",
        "dma-busy",
        "dma-error",
    ] {
        let prefix = format!("ok {check}:");
        assert!(
            abort.output.iter().any(|l| l.starts_with(&prefix)),
            "{check} did not pass"
        );
    }
    let cancelled = abort
        .output
        .iter()
        .find_map(|l| l.strip_prefix("ok abort-task-files: task file behind a "))
        .and_then(|l| l.split("cancelled ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        cancelled > 0,
        "no task file queued behind a large DMA was cancelled"
    );

    // The writable properties: each one set through sysfs changes what the
    // card or the driver does (records kept before a LOST record, a DMA
    // timing out, FRAME_DONE batches), bad values and writes under a
    // controlling open or by another user are refused.
    let props = run.step("props-test");
    eprintln!("{}", props.output.join("\n"));
    for check in [
        "bad-values",
        "exclusive",
        "root-only",
        "event-queue-depth",
        "timeout-ms",
        "coalescing",
    ] {
        let prefix = format!("ok {check}:");
        assert!(
            props.output.iter().any(|l| l.starts_with(&prefix)),
            "{check} did not pass"
        );
    }
    assert!(
        props.output.iter().any(|l| l == "restored"),
        "the properties were not put back"
    );

    let stream = stream_summary(run.step("stream-1080p30-60s"));
    eprintln!("{stream:?}");
    let frames = stream.frames;
    // 60 s at 30 fps; the first frame waits for the card's first period.
    assert!(frames >= 1790, "only {frames} frames in 60 s at 30 fps");
    assert_eq!(stream.verified, frames);
    assert_eq!(stream.corrupt, 0);
    assert_eq!(stream.dropped, 0);

    let after = stream_summary(run.step("stream-after-kills"));
    eprintln!("{after:?}");
    assert_eq!(after.verified, 60);
    let pinned = run.step("pinned-after-kills");
    eprintln!("{}", pinned.output.join("\n"));

    run.assert_clean_exit();
}
