//! Crossing budgets, counted by the tracer plugin in a booted VM: a task
//! file costs one doorbell whatever its length, following the card
//! through the mapped status block costs no access to the card at all, and
//! a register read through device config space (what `xxcap
//! bench-config-space` times) is exactly one config-space access.

use std::time::Duration;

use serde_json::Value;
use xxcapture_hil::build::repo_root;
use xxcapture_hil::{parse_steps, Artifacts, Mode, Vm, VmOptions};

/// QEMU names the card's regions after virtio id 31's entry in its table.
const CARD: &str = "virtio-vid-decoder";

fn snapshot(json: &Value, tag: u64) -> &Value {
    json["snapshots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["tag"] == tag))
        .unwrap_or_else(|| panic!("no snapshot with tag {tag} in {json}"))
}

/// Accesses to the card's region `kind` (common, isr, device, notify)
/// between two snapshots.
fn delta(json: &Value, from: u64, to: u64, kind: &str, field: &str) -> u64 {
    let region = format!("virtio-pci-{kind}-{CARD}");
    let get = |tag| {
        snapshot(json, tag)["regions"][&region][field]
            .as_u64()
            .unwrap_or(0)
    };
    get(to) - get(from)
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn task_files_cost_one_doorbell_and_status_reads_cost_none() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_dir = repo_root().join("target/hil-logs/crossings");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let json_path = log_dir.join("crossings.json");
    let _ = std::fs::remove_file(&json_path);
    let opts = VmOptions {
        mode: Mode::Crossings,
        log_dir: log_dir.clone(),
        extra_qemu_args: vec![
            "-device".into(),
            "edu".into(),
            "-plugin".into(),
            format!(
                "{},out={}",
                artifacts.crossings_plugin.display(),
                json_path.display()
            ),
        ],
        ..VmOptions::default()
    };
    let mut vm = Vm::start(&artifacts, &opts).unwrap_or_else(|e| panic!("{e}"));
    let qemu = vm
        .wait_guest(Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_backend(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let console = vm.console();
    for step in parse_steps(&console) {
        assert_eq!(
            step.rc,
            0,
            "guest step {} failed:\n{}",
            step.name,
            step.output.join("\n")
        );
    }
    assert!(qemu.success(), "QEMU exited with {qemu}");
    let text = std::fs::read_to_string(&json_path).expect("tracer output");
    let json: Value = serde_json::from_str(&text).expect("tracer JSON");

    let doorbells_1 = delta(&json, 2, 3, "notify", "writes");
    let doorbells_4096 = delta(&json, 4, 5, "notify", "writes");
    let config_reads =
        delta(&json, 2, 3, "device", "reads") + delta(&json, 4, 5, "device", "reads");
    let isr_1 = delta(&json, 2, 3, "isr", "reads");
    eprintln!(
        "crossings: 1-command task file {doorbells_1} doorbell(s), 4096-command task file {doorbells_4096} doorbell(s), {isr_1} ISR read(s), {config_reads} config reads"
    );
    assert_eq!(
        doorbells_1, 1,
        "a 1-command task file must cost exactly one doorbell"
    );
    assert_eq!(
        doorbells_4096, 1,
        "a 4096-command task file must cost exactly one doorbell"
    );
    assert_eq!(
        config_reads, 0,
        "task files must not read device config space"
    );

    let status_phase: u64 = ["common", "isr", "device", "notify"]
        .iter()
        .map(|k| delta(&json, 6, 7, k, "reads") + delta(&json, 6, 7, k, "writes"))
        .sum();
    eprintln!(
        "crossings: 1000 status-block reads through mmap: {status_phase} accesses to the card"
    );
    assert_eq!(
        status_phase, 0,
        "reading the mapped status block must not touch the card"
    );

    // Phase 8..13: 60 frames streamed into 8 lent buffers: 68 buffers
    // queued and 4 task files, so at most 72 doorbells (fewer when the
    // card suppresses notifications), and never device config space.
    let stream_doorbells = delta(&json, 8, 13, "notify", "writes");
    let stream_config = delta(&json, 8, 13, "device", "reads");
    eprintln!(
        "crossings: streaming 60 frames (68 buffers queued, 4 task files): {stream_doorbells} doorbells, {stream_config} config reads"
    );
    assert!(
        stream_doorbells <= 68 + 4,
        "streaming cost {stream_doorbells} doorbells, more than one per queued buffer and task file"
    );
    assert!(
        stream_doorbells > 0,
        "the tracer saw no doorbell for 68 queued buffers: is it counting?"
    );
    assert_eq!(
        stream_config, 0,
        "streaming must not read device config space"
    );

    // Phase 14..15: 100 TEST interrupts, each raised by its own task file
    // (plus a few for setup and the counters): a record delivered to user
    // space costs the driver no doorbell of its own.
    let irq_doorbells = delta(&json, 14, 15, "notify", "writes");
    let irq_isr = delta(&json, 14, 15, "isr", "reads");
    eprintln!(
        "crossings: 100 TEST interrupts raised singly: {irq_doorbells} doorbells, {irq_isr} ISR reads"
    );
    assert!(
        irq_doorbells <= 110,
        "100 raises cost {irq_doorbells} doorbells: event records must not cost doorbells of their own"
    );

    // Phase 17..18: 1000 one-command task files and 1000 TEST events by
    // the shared rings, the card's SQ poller and the consumer spinning:
    // no doorbell and no ISR read at all.
    let ring_doorbells = delta(&json, 17, 18, "notify", "writes");
    let ring_isr = delta(&json, 17, 18, "isr", "reads");
    let ring_other: u64 = ["common", "device"]
        .iter()
        .map(|k| delta(&json, 17, 18, k, "reads") + delta(&json, 17, 18, k, "writes"))
        .sum();
    eprintln!(
        "crossings: 1000 task files + 1000 events by the rings: {ring_doorbells} doorbells, {ring_isr} ISR reads, {ring_other} other card accesses"
    );
    assert_eq!(
        ring_doorbells, 0,
        "the rings with the SQ poller awake must cost no doorbell"
    );
    assert_eq!(
        ring_isr, 0,
        "events taken from the ring by a spinning consumer must cost no interrupt"
    );
    assert_eq!(ring_other, 0, "the ring path touched the card's registers");

    // Phase 10..11: `xxcap-test bench-config-space --iterations 100` on the
    // unbound card, so its per-read cost is the cost of one access.
    let config_reads = delta(&json, 10, 11, "device", "reads");
    let other: u64 = ["common", "isr", "notify"]
        .iter()
        .map(|k| delta(&json, 10, 11, k, "reads") + delta(&json, 10, 11, k, "writes"))
        .sum::<u64>()
        + delta(&json, 10, 11, "device", "writes");
    eprintln!(
        "crossings: 100 config-space register reads: {config_reads} device-config reads, {other} other card accesses"
    );
    assert_eq!(
        config_reads, 100,
        "one config-space register read must be exactly one device-config access"
    );
    assert_eq!(other, 0, "config-space reads must touch nothing else");
}
