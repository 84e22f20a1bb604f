use super::*;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xxcapd-trace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn sample(tracer: &Tracer) {
    tracer.emit(
        1000,
        What::Dma {
            direction: "to_card".into(),
            card_offset: 0,
            bytes: 4096,
            ok: true,
            dur_ns: 500,
        },
    );
    tracer.fault(2000, "dma-error@2", Unit::DmaTransfer, 2);
    tracer.emit(
        3000,
        What::Register {
            name: "SCRATCH".into(),
            old: 0,
            new: 5,
        },
    );
}

#[test]
fn json_lines_hold_one_event_per_line() {
    let dir = temp("jsonl");
    let path = dir.join("t.jsonl");
    let tracer = Tracer::create(std::slice::from_ref(&path)).expect("create");
    sample(&tracer);
    tracer.finish();
    let text = std::fs::read_to_string(&path).expect("read");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        json!({"t_ns": 1000, "event": "dma", "direction": "to_card", "card_offset": 0,
               "bytes": 4096, "ok": true, "dur_ns": 500})
    );
    assert_eq!(
        lines[1],
        json!({"t_ns": 2000, "event": "fault", "spec": "dma-error@2",
               "unit": "DMA transfer", "n": 2})
    );
    assert_eq!(lines[2]["event"], "register");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trace_event_json_is_one_closed_array_perfetto_reads() {
    let dir = temp("json");
    let path = dir.join("t.json");
    let tracer = Tracer::create(std::slice::from_ref(&path)).expect("create");
    sample(&tracer);
    tracer.finish();
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("array");
    // Process and track names, then the events.
    assert_eq!(all.len(), 1 + TRACKS.len() + 3);
    assert!(all[..6].iter().all(|e| e["ph"] == "M"));
    let dma = &all[6];
    assert_eq!(
        (&dma["ph"], &dma["ts"], &dma["dur"], &dma["tid"]),
        (&json!("X"), &json!(1.0), &json!(0.5), &json!(2))
    );
    assert_eq!(dma["args"]["bytes"], 4096);
    assert_eq!(all[7]["name"], "fault dma-error@2");
    assert_eq!(all[7]["ph"], "i");
    assert_eq!(all[8]["ph"], "C");
    assert_eq!(all[8]["args"]["value"], 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_empty_trace_is_still_valid() {
    let dir = temp("empty");
    let path = dir.join("t.json");
    Tracer::create(std::slice::from_ref(&path))
        .expect("create")
        .finish();
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("array");
    assert_eq!(all.len(), 1 + TRACKS.len());
    let _ = std::fs::remove_dir_all(&dir);
}
