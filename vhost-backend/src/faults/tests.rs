use super::*;

fn spec(text: &str) -> FaultSpec {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn refused(text: &str) -> String {
    match text.parse::<FaultSpec>() {
        Ok(s) => panic!("{text} accepted as {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn grammar_accepts_every_kind_and_prints_it_back() {
    for text in [
        "dma-error@3",
        "corrupt-frame@100",
        "drop-frames@10..20",
        "irq-lost@5",
        "irq-dup@5",
        "irq-storm=50@2",
        "stuck@2",
        "dma-latency=2000us",
        "dma-latency=500us@4..6",
        "dma-error@3,every=10",
        "stuck@10,every=2,times=20",
    ] {
        assert_eq!(spec(text).to_string(), text);
    }
    let s = spec("dma-latency=2ms");
    assert_eq!(
        (s.latency, s.first, s.last),
        (Duration::from_millis(2), 1, u64::MAX)
    );
    assert_eq!(spec("irq-storm@1").storm, DEFAULT_STORM);
    assert_eq!(spec("drop-frames@7").last, 7);
}

#[test]
fn grammar_refuses_bad_specs_clearly() {
    for (text, why) in [
        ("", "unknown kind"),
        ("dma-eror@3", "unknown kind \"dma-eror\""),
        ("dma-error", "needs @N"),
        ("dma-error@0", "counts from 1"),
        ("dma-error@x", "not a positive whole number"),
        ("dma-error@-1", "not a positive whole number"),
        (
            "dma-error@99999999999999999999",
            "not a positive whole number",
        ),
        ("drop-frames@20..10", "ends before it starts"),
        ("drop-frames@1..", "not a positive whole number"),
        ("dma-error=3@1", "takes no =VALUE"),
        ("dma-latency", "needs =DURATION"),
        ("dma-latency=2", "needs a unit"),
        ("dma-latency=2h", "needs a unit"),
        ("dma-latency=11s", "above"),
        ("irq-storm=0@1", "K must be"),
        ("irq-storm=100001@1", "K must be"),
        ("stuck@2,often", "unknown option"),
        ("stuck@2,every=0", "counts from 1"),
        ("stuck@2,times=0", "counts from 1"),
        ("stuck@2,every=2,twice", "unknown option"),
        ("drop-frames@1..5,every=3", "longer than the window"),
    ] {
        let e = refused(text);
        assert!(e.contains(why), "{text}: {e:?} does not say {why:?}");
        assert!(e.starts_with(&format!("fault {text:?}")), "{e}");
    }
}

#[test]
fn windows_and_repeats() {
    let s = spec("drop-frames@3..4,every=10");
    let hits: Vec<u64> = (1..=30).filter(|&n| s.fires_at(n)).collect();
    assert_eq!(hits, [3, 4, 13, 14, 23, 24]);
    let once = spec("dma-error@2");
    assert_eq!((1..10).filter(|&n| once.fires_at(n)).count(), 1);
}

#[test]
fn faults_fire_by_count_from_arming_and_are_counted() {
    let faults = Faults::default();
    assert!(!faults.is_live(), "a plain card injects nothing");
    faults.arm(spec("dma-error@2")).expect("arm");
    faults.arm(spec("irq-lost@1")).expect("arm");
    assert!(faults.is_live());
    assert!(!faults.tick(Unit::DmaTransfer, 0).any());
    let fired = faults.tick(Unit::DmaTransfer, 0);
    assert!(fired.has(FaultKind::DmaError));
    assert!(!fired.has(FaultKind::IrqLost));
    assert_eq!(faults.injected(), 1);
    // Other units count on their own.
    assert!(faults.tick(Unit::EventRecord, 0).has(FaultKind::IrqLost));
    assert_eq!(faults.injected(), 2);
    // Both spent: the hooks are back to one branch.
    assert!(!faults.is_live());
    let listed = faults.list();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|a| a.spent && a.injected == 1));
    // A fault armed later counts from its arming.
    faults.arm(spec("dma-error@1")).expect("arm");
    assert!(faults.tick(Unit::DmaTransfer, 0).has(FaultKind::DmaError));
    assert_eq!(faults.list().len(), 1, "spent faults go at the next arm");
    faults.arm(spec("stuck@1,every=1")).expect("arm");
    faults.clear();
    assert!(!faults.is_live());
    assert!(faults.list().is_empty());
    assert_eq!(faults.injected(), 3, "clear keeps the count");
}

#[test]
fn latency_and_storm_carry_their_values() {
    let faults = Faults::default();
    faults.arm(spec("dma-latency=3ms@2..3")).expect("arm");
    faults.arm(spec("irq-storm=7@1")).expect("arm");
    assert!(!faults.tick(Unit::DmaTransfer, 0).any());
    let f = faults.tick(Unit::DmaTransfer, 0);
    assert_eq!(f.latency, Duration::from_millis(3));
    assert_eq!(faults.tick(Unit::EventRecord, 0).storm, 7);
}

#[test]
fn armed_faults_are_bounded() {
    let faults = Faults::default();
    for _ in 0..MAX_ARMED {
        faults.arm(spec("stuck@1000")).expect("arm");
    }
    let e = faults.arm(spec("stuck@1000")).expect_err("too many");
    assert!(e.contains("armed already"), "{e}");
}

#[test]
fn times_ends_a_repeating_fault() {
    let faults = Faults::default();
    faults
        .arm(spec("dma-error@2,every=2,times=3"))
        .expect("arm");
    let hits: Vec<u64> = (1..=10)
        .filter(|_| faults.tick(Unit::DmaTransfer, 0).any())
        .collect();
    assert_eq!(hits, [2, 4, 6]);
    assert!(!faults.is_live());
    assert_eq!(faults.injected(), 3);
}
