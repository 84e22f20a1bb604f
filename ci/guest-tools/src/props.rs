//! `xxcap-test props-test`: the card's writable properties (sysfs
//! `timeout_ms`, `event_queue_depth`, `int_coalesce_count`,
//! `int_coalesce_usec`), each set through the library and shown to act:
//! the depth decides how many TEST records an open keeps before a LOST
//! record, the time limit decides whether the same large DMA times out,
//! and the coalescing registers decide in which batches FRAME_DONE records
//! arrive. Bad values are refused with EINVAL and change nothing; every
//! write is refused with EBUSY while a controlling open holds the card, and
//! with EACCES for a writer that is not root. Leaves every property as it
//! found it. Prints `ok <check>: ...` or `FAIL <check>: ...` per check.

use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use xxcapture::abi::{control, dma_dir, format, irq, regs};
use xxcapture::props::name;
use xxcapture::{Access, Card, Cause, Causes, Error, Event, Properties, TaskFile};

type Check = Result<String, String>;
/// One named check of the card's properties.
type CheckFn = fn(&Properties, &str) -> Check;

fn err(e: Error) -> String {
    e.to_string()
}

/// Every property, as found before the test.
struct Saved {
    timeout_ms: u32,
    depth: u32,
    count: u32,
    usec: u32,
}

pub fn run(device: &str) -> Result<ExitCode, Error> {
    let index = device
        .strip_prefix("/dev/xxcapture")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let props = Properties::for_index(index);
    let saved = Saved {
        timeout_ms: props.timeout_ms()?,
        depth: props.event_queue_depth()?,
        count: props.int_coalesce_count()?,
        usec: props.int_coalesce_usec()?,
    };
    println!(
        "found timeout_ms={} event_queue_depth={} int_coalesce_count={} int_coalesce_usec={}",
        saved.timeout_ms, saved.depth, saved.count, saved.usec
    );
    let checks: [(&str, CheckFn); 6] = [
        ("bad-values", bad_values),
        ("exclusive", exclusive),
        ("root-only", root_only),
        ("event-queue-depth", event_queue_depth),
        ("timeout-ms", timeout_ms),
        ("coalescing", coalescing),
    ];
    let mut ok = true;
    for (check_name, check) in checks {
        match check(&props, device) {
            Ok(detail) => println!("ok {check_name}: {detail}"),
            Err(detail) => {
                ok = false;
                println!("FAIL {check_name}: {detail}");
            }
        }
    }
    // The time limit and the depth go back to following the module
    // parameters; the card's registers to their values before.
    let restored = props
        .set_timeout_ms(0)
        .and_then(|()| props.set_event_queue_depth(0))
        .and_then(|()| props.set_int_coalesce_count(saved.count))
        .and_then(|()| props.set_int_coalesce_usec(saved.usec));
    match restored {
        Ok(()) => println!("restored"),
        Err(e) => {
            ok = false;
            println!("FAIL restore: {e}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn errno_of(e: &Error) -> Option<Errno> {
    e.errno()
}

/// Each property refuses values outside its range and text that is not a
/// number with EINVAL, and keeps its value.
fn bad_values(props: &Properties, _device: &str) -> Check {
    let cases: [(&str, &[&str]); 4] = [
        (
            name::TIMEOUT_MS,
            &["3600001", "-1", "abc", "\n", "4294967296"],
        ),
        (name::EVENT_QUEUE_DEPTH, &["15", "1", "65537", "16x"]),
        (name::INT_COALESCE_COUNT, &["65536", "4294967296", "one"]),
        (name::INT_COALESCE_USEC, &["1000001", "2000000", "soon"]),
    ];
    let mut refused = 0;
    for (prop, values) in cases {
        let before = props.get(prop).map_err(err)?;
        for value in values {
            match props.set_raw(prop, value) {
                Ok(()) => return Err(format!("{prop} accepted {value:?}")),
                Err(e) if errno_of(&e) == Some(Errno::EINVAL) => refused += 1,
                Err(e) => return Err(format!("{prop} refused {value:?} with {e}, not EINVAL")),
            }
            let after = props.get(prop).map_err(err)?;
            if after != before {
                return Err(format!(
                    "{prop} changed from {before} to {after} by refused {value:?}"
                ));
            }
        }
    }
    Ok(format!(
        "{refused} bad values refused with EINVAL, nothing changed"
    ))
}

/// A valid value for each property, other than its current one.
fn other_value(prop: &str, current: u32) -> u32 {
    let (a, b) = match prop {
        name::TIMEOUT_MS => (4000, 6000),
        name::EVENT_QUEUE_DEPTH => (32, 64),
        name::INT_COALESCE_COUNT => (2, 3),
        _ => (1000, 2000),
    };
    if current == a {
        b
    } else {
        a
    }
}

const ALL: [&str; 4] = [
    name::TIMEOUT_MS,
    name::EVENT_QUEUE_DEPTH,
    name::INT_COALESCE_COUNT,
    name::INT_COALESCE_USEC,
];

/// While a controlling open holds the card every write fails EBUSY and
/// changes nothing; an observer does not hold it; after the close the same
/// write succeeds.
fn exclusive(props: &Properties, device: &str) -> Check {
    let mut detail = Vec::new();
    for prop in ALL {
        let before = props.get(prop).map_err(err)?;
        let value = other_value(prop, before);
        {
            let holder = Card::open(device, Access::Control).map_err(err)?;
            match props.set(prop, value) {
                Ok(()) => return Err(format!("{prop}={value} accepted under a controlling open")),
                Err(e) if errno_of(&e) == Some(Errno::EBUSY) => {}
                Err(e) => {
                    return Err(format!(
                        "{prop}={value} under a controlling open: {e}, not EBUSY"
                    ))
                }
            }
            let now = props.get(prop).map_err(err)?;
            if now != before {
                return Err(format!("{prop} changed to {now} by a refused write"));
            }
            drop(holder);
        }
        {
            let _observer = Card::open(device, Access::Observe).map_err(err)?;
            props
                .set(prop, value)
                .map_err(|e| format!("{prop}={value} beside an observer: {e}"))?;
        }
        let now = props.get(prop).map_err(err)?;
        if now != value {
            return Err(format!("{prop} reads {now} after writing {value}"));
        }
        props.set(prop, before).map_err(err)?;
        detail.push(format!("{prop} {before}->{value}->{before}"));
    }
    Ok(format!(
        "EBUSY under a controlling open; {}",
        detail.join(", ")
    ))
}

/// The attributes are mode 0644, owned by root; a process of another user
/// cannot open them for writing (EACCES).
fn root_only(props: &Properties, _device: &str) -> Check {
    for prop in ALL {
        let path = props.dir().join(prop);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o777 != 0o644 || meta.uid() != 0 {
            return Err(format!(
                "{prop}: mode {:o} owner {}, not 0644 root",
                meta.mode() & 0o777,
                meta.uid()
            ));
        }
    }
    let path = props.dir().join(name::TIMEOUT_MS);
    // SAFETY: this program runs no other thread here; the child only
    // calls async-signal-safe functions (setuid, open, _exit).
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            let code = match nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)) {
                Err(_) => 3,
                Ok(()) => match nix::fcntl::open(
                    &path,
                    nix::fcntl::OFlag::O_WRONLY,
                    nix::sys::stat::Mode::empty(),
                ) {
                    Err(Errno::EACCES) => 0,
                    Err(_) => 2,
                    Ok(_) => 1,
                },
            };
            // SAFETY: leaves the forked child without running the parent's
            // atexit handlers or destructors.
            unsafe { nix::libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).map_err(|e| format!("waitpid: {e}"))? {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(
                    "mode 0644 root; uid 65534 gets EACCES opening timeout_ms for writing".into(),
                ),
                nix::sys::wait::WaitStatus::Exited(_, 1) => {
                    Err("uid 65534 opened timeout_ms for writing".into())
                }
                other => Err(format!("the child of uid 65534 ended {other:?}")),
            }
        }
    }
}

/// Reads records until `quiet` passes without one (or `limit` passes).
fn drain(card: &Card, quiet: Duration, limit: Duration) -> Result<Vec<Event>, String> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(all);
        }
        let got = card
            .wait_events(&mut all, 256, Some(quiet.min(left)))
            .map_err(err)?;
        if got == 0 {
            return Ok(all);
        }
    }
}

/// TEST records kept and LOST count for `raises` TEST interrupts raised in
/// one task file into an open made at the depth set now.
fn flood_at_depth(device: &str, raises: u32) -> Result<(usize, u64), String> {
    let card = Card::open(device, Access::Control).map_err(err)?;
    card.subscribe(Causes::TEST).map_err(err)?;
    let old_mask = card.read_register(regs::INT_MASK).map_err(err)?;
    card.write_register(regs::INT_MASK, irq::TEST)
        .map_err(err)?;
    let mut tf = TaskFile::new();
    for _ in 0..raises {
        tf.set_register(regs::INT_RAISE, irq::TEST);
    }
    let run = card.run(&tf).map_err(err);
    let records = drain(&card, Duration::from_millis(500), Duration::from_secs(10));
    card.write_register(regs::INT_MASK, old_mask).map_err(err)?;
    run?;
    let records = records?;
    let tests = records.iter().filter(|e| e.cause == Cause::Test).count();
    let lost = records
        .iter()
        .filter(|e| e.cause == Cause::Lost)
        .map(|e| u64::from(e.count))
        .sum();
    Ok((tests, lost))
}

/// The depth of an open decides how many of 40 TEST records it keeps: 16
/// and a LOST record counting the other 24 at depth 16; all 40 at depth
/// 64. Opens made earlier keep their depth.
fn event_queue_depth(props: &Properties, device: &str) -> Check {
    const RAISES: u32 = 40;
    let mut detail = Vec::new();
    for depth in [16u32, 64] {
        props.set_event_queue_depth(depth).map_err(err)?;
        let shown = props.event_queue_depth().map_err(err)?;
        if shown != depth {
            return Err(format!(
                "event_queue_depth reads {shown} after writing {depth}"
            ));
        }
        let (tests, lost) = flood_at_depth(device, RAISES)?;
        let kept = RAISES.min(depth) as usize;
        let dropped = u64::from(RAISES) - kept as u64;
        if tests != kept || lost != dropped {
            return Err(format!(
                "depth {depth}: {tests} TEST records and LOST {lost}, expected {kept} and {dropped}"
            ));
        }
        detail.push(format!("depth {depth}: {tests} kept, LOST {lost}"));
    }
    Ok(detail.join("; "))
}

fn timeouts(card: &Card) -> Result<u64, String> {
    let raw = card.sysfs_attribute("timeouts").map_err(err)?;
    raw.parse().map_err(|e| format!("timeouts {raw:?}: {e}"))
}

fn pinned_pages(card: &Card) -> Result<u64, String> {
    let raw = card.sysfs_attribute("pinned_pages").map_err(err)?;
    raw.parse()
        .map_err(|e| format!("pinned_pages {raw:?}: {e}"))
}

/// Task files queued on the card ahead of an EXEC, each moving as much
/// from card RAM as one task file may (twice the card RAM).
const AHEAD: usize = 4;

/// Waits for the completions of `ids` (records of this open).
fn wait_completions(card: &Card, ids: &[u64]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    let mut batch = Vec::new();
    while seen < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{seen} of {} completions in 60 s", ids.len()));
        }
        batch.clear();
        card.wait_events(&mut batch, 64, Some(left)).map_err(err)?;
        seen += batch
            .iter()
            .filter(|e| e.completion && ids.contains(&e.request_id))
            .count();
    }
    Ok(())
}

/// One EXEC of a large DMA behind `AHEAD` submitted ones of the same size
/// (the card runs them in order): how it ended, and how long it took.
fn exec_behind(device: &str, buf: &mut [u8]) -> Result<(Result<(), Error>, Duration), String> {
    let card = Card::open(device, Access::Control).map_err(err)?;
    card.subscribe(Causes::empty()).map_err(err)?;
    let len = buf.len();
    let mut tf = TaskFile::new();
    for _ in 0..2 {
        tf.dma(
            true,
            dma_dir::FROM_CARD,
            buf.as_mut_ptr() as u64,
            0,
            len as u64,
        );
    }
    let mut ids = Vec::new();
    for refcon in 0..AHEAD as u64 {
        // SAFETY: `buf` outlives the completions waited for below and is
        // not touched until then (the card only writes into it).
        ids.push(unsafe { card.submit(&tf, refcon) }.map_err(err)?);
    }
    let start = Instant::now();
    let outcome = card.execute(&tf).map(drop);
    let took = start.elapsed();
    wait_completions(&card, &ids)?;
    // A timed-out EXEC is left to the card; its pages go back when it ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pinned_pages(&card)? != 0 {
        if Instant::now() > deadline {
            return Err("pages still pinned 30 s after the requests ended".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((outcome, took))
}

/// The same EXEC, queued behind large DMA transfers, ends ETIMEDOUT
/// (counted in `timeouts`) with a time limit of 1 ms, and completes with
/// the module's limit.
fn timeout_ms(props: &Properties, device: &str) -> Check {
    let (ram, before) = {
        let card = Card::open(device, Access::Control).map_err(err)?;
        (card.info().card_ram_size, timeouts(&card)?)
    };
    let mut buf = vec![0u8; ram.min(64 << 20) as usize];
    let mib = ((AHEAD + 1) * 2 * buf.len()) >> 20;

    props.set_timeout_ms(1).map_err(err)?;
    let shown = props.timeout_ms().map_err(err)?;
    if shown != 1 {
        return Err(format!("timeout_ms reads {shown} after writing 1"));
    }
    let (short, short_took) = exec_behind(device, &mut buf)?;
    let after = {
        let card = Card::open(device, Access::Observe).map_err(err)?;
        timeouts(&card)?
    };
    match short {
        Err(e) if e.errno() == Some(Errno::ETIMEDOUT) => {}
        Err(e) => return Err(format!("with 1 ms: {e}, not ETIMEDOUT")),
        Ok(()) => {
            return Err(format!(
                "with 1 ms the EXEC behind {mib} MiB of DMA completed in {short_took:?}"
            ))
        }
    }
    if after != before + 1 {
        return Err(format!("timeouts went from {before} to {after}, not by 1"));
    }

    props.set_timeout_ms(0).map_err(err)?;
    let module = props.timeout_ms().map_err(err)?;
    let (long, long_took) = exec_behind(device, &mut buf)?;
    long.map_err(|e| format!("with the module's {module} ms: {e}"))?;
    Ok(format!(
        "EXEC behind {mib} MiB of DMA: ETIMEDOUT after {short_took:?} at 1 ms (timeouts +1), done in {long_took:?} at {module} ms"
    ))
}

/// FRAME_DONE records and the card's FRAME_COUNTER of about `run` of
/// 320x240 capture at 30 fps, read `settle` after the capture stopped.
fn capture_records(
    device: &str,
    run: Duration,
    settle: Duration,
) -> Result<(Vec<u64>, u64), String> {
    let card = Card::open(device, Access::Control).map_err(err)?;
    card.subscribe(Causes::FRAME_DONE).map_err(err)?;
    let old_mask = card.read_register(regs::INT_MASK).map_err(err)?;
    // Records an earlier capture left in the card, delivered by the
    // property write before this open subscribed, are not this capture's.
    drain(&card, Duration::from_millis(200), Duration::from_secs(2))?;
    let mut start = TaskFile::new();
    start.set_register(regs::FRAME_FORMAT, format::YUYV);
    start.set_register(regs::FRAME_WIDTH, 320);
    start.set_register(regs::FRAME_HEIGHT, 240);
    start.set_register(regs::FRAME_RATE, 30);
    start.set_register(regs::INT_MASK, irq::FRAME_DONE);
    start.set_register(regs::CONTROL, control::ENABLE | control::CAPTURE);
    card.run(&start).map_err(err)?;
    std::thread::sleep(run);
    let mut stop = TaskFile::new();
    stop.set_register(regs::CONTROL, control::ENABLE);
    let counter = stop.get_register(regs::FRAME_COUNTER);
    stop.set_register(regs::INT_MASK, old_mask);
    let result = card.run(&stop).map_err(err)?;
    let frames = result
        .value(counter)
        .ok_or("no FRAME_COUNTER in the result")?;
    let records = drain(&card, settle, settle * 4)?;
    let done = records
        .iter()
        .filter(|e| e.cause == Cause::FrameDone)
        .map(|e| e.frame_number)
        .collect();
    Ok((done, frames))
}

/// INT_COALESCE_COUNT 4: FRAME_DONE records come in fours, so of F frames
/// captured F rounded down to a multiple of 4 arrive and the rest wait in
/// the card. COUNT 65535 (no count) with INT_COALESCE_USEC 0 (no time
/// limit): none arrives; with USEC 100000 all arrive once 100 ms passed.
fn coalescing(props: &Properties, device: &str) -> Check {
    let capture = Duration::from_millis(1000);
    let settle = Duration::from_millis(400);
    props.set_int_coalesce_usec(0).map_err(err)?;
    props.set_int_coalesce_count(4).map_err(err)?;
    {
        let card = Card::open(device, Access::Control).map_err(err)?;
        let reg = card.read_register(regs::INT_COALESCE_COUNT).map_err(err)?;
        if reg != 4 {
            return Err(format!(
                "INT_COALESCE_COUNT reads {reg} after int_coalesce_count=4"
            ));
        }
    }
    let (by4, frames4) = capture_records(device, capture, settle)?;
    let n = by4.len() as u64;
    if n > frames4 || frames4 < 8 || !n.is_multiple_of(4) || frames4 - n >= 4 {
        return Err(format!(
            "count 4: {n} FRAME_DONE records of {frames4} frames, expected {}",
            frames4 - frames4 % 4
        ));
    }

    props.set_int_coalesce_count(65535).map_err(err)?;
    let (none, frames_none) = capture_records(device, capture, settle)?;
    if frames_none < 8 || !none.is_empty() {
        return Err(format!(
            "count 65535, usec 0: {} FRAME_DONE records of {frames_none} frames, expected none",
            none.len()
        ));
    }

    props.set_int_coalesce_usec(100_000).map_err(err)?;
    let usec = props.int_coalesce_usec().map_err(err)?;
    if usec != 100_000 {
        return Err(format!(
            "int_coalesce_usec reads {usec} after writing 100000"
        ));
    }
    let (timed, frames_timed) = capture_records(device, capture, settle)?;
    let expected: Vec<u64> = (0..frames_timed).collect();
    if frames_timed < 8 || timed != expected {
        return Err(format!(
            "count 65535, usec 100000: FRAME_DONE of frames {timed:?}, expected 0..{frames_timed}"
        ));
    }
    Ok(format!(
        "count 4: {n} of {frames4} frames delivered; count 65535 usec 0: 0 of {frames_none}; usec 100000: {} of {frames_timed}",
        timed.len()
    ))
}
