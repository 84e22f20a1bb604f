//! `xxcap-test ring-test`: the submission and completion rings keep every
//! guarantee of the ioctl path. Task files round-trip with their outputs;
//! raw-address DMA is refused; DMA reaches only this open's registered
//! buffers (canaries around them intact, stale and foreign ids refused);
//! malformed entries complete BAD_COUNT; 10,000 routed events arrive
//! exactly once and in order, and under overflow only events are dropped,
//! each counted, never a completion; a sleeping consumer is woken; without
//! the SQ poller every submission enters the kernel; a killed ring user
//! leaves nothing pinned. `xxcap-test ring-hold` is the process killed.
//! `xxcap-test bench-ring` measures the ring's round trips.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use xxcapture::abi::{dma_dir, irq, regs, TaskFile, TfError, MAGIC, RING_ARENA_SIZE};
use xxcapture::measure::{cpu_time, GuestCpu, Percentiles};
use xxcapture::{Access, Card, Cause, Causes, Error, Event, Ring, RingEntry, RingOptions};
use xxcapture_results::{IrqLatency, Record};

use crate::irq::{raise_task_file as raise, sysfs_u64};
use crate::regbuf::{pattern, pinned};

const CANARY: u8 = 0x5c;
const SPIN: Duration = Duration::from_millis(2);
/// Rings with the card's SQ poller (its idle time the card's default).
const SQPOLL: RingOptions = RingOptions {
    sqpoll: true,
    sq_idle: Duration::ZERO,
};
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct RingArgs {
    /// TEST events raised through the ring and checked one by one.
    #[arg(long, default_value_t = 10_000)]
    events: u32,
}

#[derive(clap::Args)]
pub struct HoldArgs {}

#[derive(clap::Args)]
pub struct BenchRingArgs {
    /// Round trips measured per figure.
    #[arg(long, default_value_t = 5000)]
    rounds: u32,
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        println!("ring-test: ok: {what}");
        Ok(())
    } else {
        println!("ring-test: FAILED: {what}");
        Err(Error::Protocol)
    }
}

fn dma_buffer(
    ring: &mut Ring<'_>,
    dir: u16,
    id: u32,
    offset: u64,
    card: u64,
    len: u64,
) -> Result<TfError, Error> {
    let mut tf = TaskFile::new();
    tf.dma_buffer(dir, id, offset, card, len);
    Ok(ring.run(&tf, SPIN)?.error)
}

/// Register round trips, refusals, registered-buffer DMA with canaries.
fn basics(card: &Card, ring: &mut Ring<'_>) -> Result<(), Error> {
    let again = card.setup_ring(SQPOLL).err().and_then(|e| e.errno());
    check(
        again == Some(Errno::EBUSY),
        &format!("second RING_SETUP of one open: {again:?}"),
    )?;

    let mut tf = TaskFile::new();
    let id_at = tf.get_register(regs::ID);
    tf.set_register(regs::SCRATCH, 0x1234_5678);
    let scratch_at = tf.get_register(regs::SCRATCH);
    let r = ring.run(&tf, SPIN)?;
    check(
        r.error == TfError::Ok
            && r.index == 3
            && r.value(id_at) == Some(u64::from(MAGIC))
            && r.value(scratch_at) == Some(0x1234_5678),
        &format!(
            "task file round trip with outputs: {:?} at {}",
            r.error, r.index
        ),
    )?;
    check(
        card.read_register(regs::SCRATCH)? == 0x1234_5678,
        "the ring's write is the card's (read back by EXEC)",
    )?;

    // Raw-address DMA: refused as a whole, nothing written anywhere.
    let data = pattern(8192, 1);
    card.write_blocks(0, &data)?;
    let mut target = vec![CANARY; 8192];
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 1);
    tf.dma(
        true,
        dma_dir::FROM_CARD,
        target.as_mut_ptr() as u64,
        0,
        8192,
    );
    let r = ring.run(&tf, SPIN)?;
    check(
        r.error == TfError::Refused && r.index == 1,
        &format!("raw-address DMA refused: {:?} at {}", r.error, r.index),
    )?;
    check(
        target.iter().all(|&b| b == CANARY) && card.read_register(regs::SCRATCH)? == 0x1234_5678,
        "a refused task file changed nothing",
    )?;

    // Registered buffer in the middle of canaries, at an unaligned address.
    const GUARD: usize = 8192 + 300;
    const LEN: usize = 200_000;
    let mut region = vec![CANARY; GUARD + LEN + GUARD];
    let addr = region.as_mut_ptr() as u64 + GUARD as u64;
    let id = card.register_raw(addr, LEN as u64)?;
    let data = pattern(LEN, 9);
    card.write_blocks(0x1000, &data)?;
    let e = dma_buffer(ring, dma_dir::FROM_CARD, id, 0, 0x1000, LEN as u64)?;
    check(
        e == TfError::Ok,
        &format!("DMA into a registered buffer by the ring: {e:?}"),
    )?;
    check(region[GUARD..GUARD + LEN] == data[..], "data arrived")?;
    let e = dma_buffer(ring, dma_dir::TO_CARD, id, 0, 0x8_0000, LEN as u64)?;
    let mut back = vec![0u8; LEN];
    card.read_blocks(0x8_0000, &mut back)?;
    check(
        e == TfError::Ok && back == data,
        "DMA out of it round-trips",
    )?;
    for (offset, len) in [(0, LEN as u64 + 1), (LEN as u64 - 10, 11), (u64::MAX, 2)] {
        let e = dma_buffer(ring, dma_dir::FROM_CARD, id, offset, 0, len)?;
        check(
            e == TfError::DmaFault,
            &format!("range {offset}+{len} refused: {e:?}"),
        )?;
    }
    for bad in [0, id + 1, 255, u32::MAX] {
        let e = dma_buffer(ring, dma_dir::FROM_CARD, bad, 0, 0, 1)?;
        check(
            e == TfError::DmaFault,
            &format!("unknown id {bad} refused: {e:?}"),
        )?;
    }
    card.unregister_raw(id)?;
    let e = dma_buffer(ring, dma_dir::FROM_CARD, id, 0, 0, 1)?;
    check(
        e == TfError::DmaFault,
        &format!("use after unregister refused: {e:?}"),
    )?;
    check(
        region[..GUARD].iter().all(|&b| b == CANARY)
            && region[GUARD + LEN..].iter().all(|&b| b == CANARY),
        "canaries around the buffer untouched",
    )?;

    // Entries the card must refuse as a whole.
    for (offset, size) in [
        (RING_ARENA_SIZE - 16, 48),
        (0, 17),
        (0, 16),
        (u32::MAX, 48),
        (0, 0),
    ] {
        let index = ring.push_entry_raw(offset, size, 7)?;
        ring.publish()?;
        let mut events = Vec::new();
        let c = ring.wait_completion(index, SPIN, TIMEOUT, &mut events)?;
        check(
            c.result.error == TfError::BadCount && c.user_data == 7,
            &format!(
                "entry at {offset}+{size} completes BAD_COUNT: {:?}",
                c.result.error
            ),
        )?;
    }
    // A header that disagrees with the entry's size.
    let mut tf = TaskFile::new();
    tf.get_register(regs::ID);
    tf.get_register(regs::ID);
    let index = ring.push(&tf, 8)?;
    let bogus = ring.push_entry_raw(0, 16 + 32, 9);
    ring.publish()?;
    let mut events = Vec::new();
    let first = ring.wait_completion(index, SPIN, TIMEOUT, &mut events)?;
    let second = ring.wait_completion(bogus?, SPIN, TIMEOUT, &mut events)?;
    check(
        first.result.error == TfError::Ok && second.result.error == TfError::BadCount,
        &format!(
            "size disagreeing with the header: {:?}",
            second.result.error
        ),
    )?;
    Ok(())
}

/// Raises `events` TEST records through the ring, taking them as they
/// come: each exactly once, in order, none lost.
fn exactly_once(card: &Card, ring: &mut Ring<'_>, events: u32) -> Result<(), Error> {
    card.enable_interrupts(Causes::TEST, 1, 0)?;
    ring.set_event_mask(Causes::TEST);
    let count0 = card.read_register(regs::EVENT_COUNT)?;
    let per_file = 100;
    let mut seen: Vec<Event> = Vec::with_capacity(events as usize);
    let mut raised = 0;
    while raised < events {
        let n = per_file.min(events - raised);
        let index = ring.submit(&raise(n), u64::from(raised))?;
        raised += n;
        let c = ring.wait_completion(index, SPIN, TIMEOUT, &mut seen)?;
        if c.result.error != TfError::Ok {
            return check(
                false,
                &format!("raise task file failed: {:?}", c.result.error),
            );
        }
    }
    // Anything posted after the last completion.
    while let Some(entry) = ring.peek()? {
        if let RingEntry::Event(e) = entry {
            seen.push(e);
        }
    }
    let tests: Vec<&Event> = seen.iter().filter(|e| e.cause == Cause::Test).collect();
    let lost = seen.iter().filter(|e| e.cause == Cause::Lost).count();
    let in_order = tests.windows(2).all(|w| w[1].sequence == w[0].sequence + 1);
    let count1 = card.read_register(regs::EVENT_COUNT)?;
    check(
        tests.len() == events as usize && lost == 0 && in_order,
        &format!("{events} events through the CQ: {} received, {lost} LOST records, contiguous {in_order}", tests.len()),
    )?;
    check(
        count1.wrapping_sub(count0) == events,
        &format!("EVENT_COUNT moved by {}", count1.wrapping_sub(count0)),
    )?;
    Ok(())
}

/// Submits more events than the CQ holds without taking any: every
/// completion arrives, events beyond the room are dropped and counted.
fn overflow(card: &Card, ring: &mut Ring<'_>) -> Result<(), Error> {
    let lost0 = ring.stats().cq_lost;
    let elost0 = card.read_register(regs::EVENTS_LOST)?;
    let (files, per_file) = (40u32, 100u32);
    let mut indices = Vec::new();
    for i in 0..files {
        indices.push(ring.push(&raise(per_file), u64::from(i))?);
    }
    ring.publish()?;
    // Let the card run into the full CQ before anything is taken.
    std::thread::sleep(Duration::from_millis(300));
    let mut completions = Vec::new();
    let mut tests = 0u64;
    let mut lost_records = 0u64;
    let mut lost_events = 0u64;
    let mut last_seq = None;
    let mut ordered = true;
    while completions.len() < files as usize {
        match ring.wait(SPIN, TIMEOUT)? {
            RingEntry::Completion(c) => completions.push(c),
            RingEntry::Event(e) if e.cause == Cause::Test => {
                tests += 1;
                ordered &= last_seq.is_none_or(|s| e.sequence > s);
                last_seq = Some(e.sequence);
            }
            RingEntry::Event(e) if e.cause == Cause::Lost => {
                lost_records += 1;
                lost_events += u64::from(e.count);
            }
            RingEntry::Event(_) => {}
        }
    }
    // The LOST record goes in ahead of the next event the card posts: one
    // more, once there is room.
    let index = ring.submit(&raise(1), 0)?;
    let mut after = Vec::new();
    ring.wait_completion(index, SPIN, TIMEOUT, &mut after)?;
    while let Some(entry) = ring.peek()? {
        if let RingEntry::Event(e) = entry {
            after.push(e);
        }
    }
    let mut last_test = None;
    for e in &after {
        match e.cause {
            Cause::Test => {
                tests += 1;
                last_test = Some(e.sequence);
            }
            Cause::Lost => {
                lost_records += 1;
                lost_events += u64::from(e.count);
                ordered &= last_test.is_none();
            }
            _ => {}
        }
    }
    let raised = u64::from(files * per_file) + 1;
    let in_sq_order = completions
        .iter()
        .zip(&indices)
        .all(|(c, &i)| c.sq_index == i && c.result.error == TfError::Ok);
    let cq_lost = u64::from(ring.stats().cq_lost.wrapping_sub(lost0));
    let elost = u64::from(card.read_register(regs::EVENTS_LOST)?.wrapping_sub(elost0));
    println!(
        "ring-test: overflow: raised {raised}, received {tests}, LOST records {lost_records} for {lost_events} events, cq_lost +{cq_lost}, EVENTS_LOST +{elost}"
    );
    check(
        in_sq_order,
        &format!("all {files} completions, in SQ order, OK"),
    )?;
    check(
        lost_events > 0 && tests + lost_events == raised && cq_lost == lost_events && ordered,
        "under overflow only events are dropped, each counted once, the LOST record first",
    )?;
    check(elost == lost_events, "EVENTS_LOST counts them too")?;
    ring.set_event_mask(Causes::empty());
    card.enable_interrupts(Causes::empty(), 1, 0)?;
    Ok(())
}

/// A consumer that sleeps is woken by the card: FRAME_DONE of a 30 fps
/// capture routed to the CQ, waited for without spinning.
fn sleeper_woken(card: &Card, ring: &mut Ring<'_>) -> Result<(), Error> {
    ring.set_event_mask(Causes::FRAME_DONE);
    let wakeups0 = ring.stats().wakeups;
    let wakes0 = sysfs_u64(card, "ring_wakeups");
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_WIDTH, 320);
    tf.set_register(regs::FRAME_HEIGHT, 240);
    tf.set_register(regs::FRAME_RATE, 30);
    tf.set_to_register(regs::INT_MASK, u32::MAX, irq::FRAME_DONE);
    tf.set_to_register(regs::CONTROL, u32::MAX, 0x3);
    card.run(&tf)?;
    let mut frames = 0;
    let started = Instant::now();
    while frames < 10 && started.elapsed() < TIMEOUT {
        if let RingEntry::Event(e) = ring.wait(Duration::ZERO, TIMEOUT)? {
            frames += u32::from(e.cause == Cause::FrameDone);
        }
    }
    card.stop_capture()?;
    ring.set_event_mask(Causes::empty());
    std::thread::sleep(Duration::from_millis(100));
    while ring.peek()?.is_some() {}
    let wakeups = ring.stats().wakeups - wakeups0;
    let wakes = sysfs_u64(card, "ring_wakeups")
        .zip(wakes0)
        .map(|(a, b)| a - b);
    check(
        frames == 10 && wakeups >= 5,
        &format!("a sleeping consumer woken for {frames} frames: card sent {wakeups} RING_WAKE, driver took {wakes:?}"),
    )
}

pub fn run(device: &str, args: RingArgs) -> Result<ExitCode, Error> {
    {
        let card = Card::open(device, Access::Control)?;
        let mut ring = card.setup_ring(SQPOLL)?;
        basics(&card, &mut ring)?;
        exactly_once(&card, &mut ring, args.events)?;
        overflow(&card, &mut ring)?;
        sleeper_woken(&card, &mut ring)?;
        let s = ring.stats();
        println!(
            "ring-test: sqpoll stats: sqes {} kicks {} wakeups {} poller cpu {:.1} ms awake {:.1} ms sleeps {}",
            s.sqes,
            s.kicks,
            s.wakeups,
            s.poll_cpu_ns as f64 / 1e6,
            s.poll_awake_ns as f64 / 1e6,
            s.poll_sleeps
        );
    }
    {
        // Without the poller every publish enters the kernel.
        let card = Card::open(device, Access::Control)?;
        let mut ring = card.setup_ring(RingOptions {
            sqpoll: false,
            sq_idle: Duration::ZERO,
        })?;
        let mut entered = 0;
        for _ in 0..100 {
            let mut tf = TaskFile::new();
            let at = tf.get_register(regs::ID);
            let index = ring.push(&tf, 0)?;
            entered += u32::from(ring.publish()?);
            let mut events = Vec::new();
            let c = ring.wait_completion(index, SPIN, TIMEOUT, &mut events)?;
            if c.result.value(at) != Some(u64::from(MAGIC)) {
                check(false, "a task file without the poller")?;
            }
        }
        let s = ring.stats();
        check(
            entered == 100 && s.kicks >= 100 && s.poll_sleeps == 0 && s.poll_cpu_ns == 0,
            &format!(
                "without SQPOLL: {entered} of 100 submissions entered, kicks {}, no poller",
                s.kicks
            ),
        )?;
    }
    // Another open's buffers: the last open's ids are gone for this one.
    {
        let card = Card::open(device, Access::Control)?;
        let mut held = vec![CANARY; 8192];
        let held_id = card.register_raw(held.as_mut_ptr() as u64, 8192)?;
        drop(card);
        let other = Card::open(device, Access::Control)?;
        let mut ring = other.setup_ring(SQPOLL)?;
        let e = dma_buffer(&mut ring, dma_dir::FROM_CARD, held_id, 0, 0, 8192)?;
        check(
            e == TfError::DmaFault && held.iter().all(|&b| b == CANARY),
            &format!("a closed open's buffer id {held_id} refused, its memory untouched: {e:?}"),
        )?;
    }
    kill_leaves_nothing(device)?;
    println!("ring-test: passed");
    Ok(ExitCode::SUCCESS)
}

fn kill_leaves_nothing(device: &str) -> Result<(), Error> {
    let observer = Card::open(device, Access::Observe)?;
    let exe = std::env::current_exe().map_err(|source| Error::Map {
        what: "current_exe",
        source,
    })?;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["--device", device, "ring-hold"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Map {
                what: "ring-hold",
                source,
            })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        std::thread::sleep(Duration::from_millis(50 + 70 * round));
        let held = pinned(&observer)?;
        let _ = child.kill();
        let _ = child.wait();
        let started = Instant::now();
        let mut left = pinned(&observer)?;
        while left != 0 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            left = pinned(&observer)?;
        }
        check(
            line.starts_with("ready") && held > 0 && left == 0,
            &format!("ring user killed mid-DMA (round {round}): held {held} pages, left {left}"),
        )?;
    }
    // The card works for the next user.
    let card = Card::open(device, Access::Control)?;
    let mut ring = card.setup_ring(SQPOLL)?;
    let mut tf = TaskFile::new();
    let at = tf.get_register(regs::ID);
    let r = ring.run(&tf, SPIN)?;
    check(
        r.value(at) == Some(u64::from(MAGIC)),
        "the next ring user runs",
    )
}

/// Sets up a ring, registers a buffer and keeps DMA into it in flight
/// until killed.
pub fn hold(device: &str, _args: HoldArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let mut ring = card.setup_ring(SQPOLL)?;
    let len = 4 << 20;
    let buf = card.register_buffer(len)?;
    println!("ready");
    let mut round = 0u64;
    loop {
        for _ in 0..8 {
            let mut tf = TaskFile::new();
            tf.dma_buffer(dma_dir::FROM_CARD, buf.id(), 0, 0, len as u64);
            match ring.push(&tf, round) {
                Ok(_) => {}
                Err(Error::RingFull) => break,
                Err(e) => return Err(e),
            }
        }
        ring.publish()?;
        while ring.in_flight() > 4 {
            ring.wait(SPIN, TIMEOUT)?;
        }
        round += 1;
    }
}

/// Round trips by the rings: a one-command task file and a TEST event with
/// the card's SQ poller and this thread spinning (no system call, no
/// interrupt); the task file without the poller (a RING_ENTER each); then
/// a TEST event to a consumer asleep on the armed ring (the interrupt
/// path, [`to_sleeper`]).
pub fn bench(device: &str, args: BenchRingArgs) -> Result<ExitCode, Error> {
    let mut one = TaskFile::new();
    one.get_register(regs::ID);
    let raise_one = raise(1);
    let polled = SQPOLL;
    let unpolled = RingOptions::default();
    for (name, options, tf, spin, want_event) in [
        ("ring-task-file-1-spin", polled, &one, SPIN, false),
        ("ring-raise-to-user-spin", polled, &raise_one, SPIN, true),
        // Without the poller: one RING_ENTER (a doorbell) per task file,
        // and the consumer arming the ring at once (it sleeps unless the
        // card posted before it armed: `wakeups` says how often it did).
        ("ring-task-file-1-enter", unpolled, &one, SPIN, false),
        (
            "ring-raise-to-user-enter",
            unpolled,
            &raise_one,
            Duration::ZERO,
            true,
        ),
    ] {
        let card = Card::open(device, Access::Control)?;
        card.enable_interrupts(Causes::TEST, 1, 0)?;
        let mut ring = card.setup_ring(options)?;
        ring.set_event_mask(Causes::TEST);
        let mut lat = Percentiles::default();
        let (cpu0, guest0) = (cpu_time(), GuestCpu::now());
        let stats0 = ring.stats();
        let started = Instant::now();
        for _ in 0..args.rounds {
            let t0 = Instant::now();
            let index = ring.submit(tf, 0)?;
            let mut events = Vec::new();
            if want_event {
                // The TEST record and the task file's completion, in
                // whichever order the card posts them.
                let mut completed = false;
                loop {
                    match ring.wait(spin, TIMEOUT)? {
                        RingEntry::Event(e) if e.cause == Cause::Test => break,
                        RingEntry::Completion(c) if c.sq_index == index => completed = true,
                        _ => {}
                    }
                }
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
                if !completed {
                    ring.wait_completion(index, spin, TIMEOUT, &mut events)?;
                }
            } else {
                ring.wait_completion(index, spin, TIMEOUT, &mut events)?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let (cpu1, guest1) = (cpu_time(), GuestCpu::now());
        let stats1 = ring.stats();
        let n = f64::from(args.rounds.max(1));
        let thread = cpu0
            .zip(cpu1)
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6 / n);
        let busy = guest0.zip(guest1).map(|(a, b)| b.busy_since(&a) * 1e6 / n);
        let poller_cpu = (stats1.poll_cpu_ns - stats0.poll_cpu_ns) as f64 / 1e3 / n;
        let r = IrqLatency {
            method: name.to_string(),
            events: lat.len() as u64,
            p50_us: lat.percentile(50.0),
            p99_us: lat.percentile(99.0),
            max_us: lat.max(),
            mean_us: lat.mean(),
        };
        println!(
            "ring: method={name} rounds={} p50_us={:.1} p99_us={:.1} max_us={:.1} mean_us={:.1} thread_cpu_us={} guest_busy_us={} host_poller_cpu_us={poller_cpu:.1} kicks={} wakeups={} wall_s={wall:.2}",
            r.events,
            r.p50_us,
            r.p99_us,
            r.max_us,
            r.mean_us,
            thread.map_or("n/a".into(), |t| format!("{t:.1}")),
            busy.map_or("n/a".into(), |t| format!("{t:.1}")),
            stats1.kicks - stats0.kicks,
            stats1.wakeups - stats0.wakeups,
        );
        Record::IrqLatency(r).print();
        card.enable_interrupts(Causes::empty(), 1, 0)?;
    }
    to_sleeper(device, args.rounds.min(1000))?;
    Ok(ExitCode::SUCCESS)
}

/// A TEST event to a thread asleep in `poll()` on the armed completion
/// ring: another thread raises it with an EXEC task file 2 ms after the
/// last one, and the time runs from just before that EXEC to the sleeper
/// seeing the record (the path `bench-irq` measures for the event queue:
/// system call, doorbell, card, interrupt, wake-up).
fn to_sleeper(device: &str, rounds: u32) -> Result<(), Error> {
    let card = Card::open(device, Access::Control)?;
    card.enable_interrupts(Causes::TEST, 1, 0)?;
    let mut ring = card.setup_ring(RingOptions {
        sqpoll: false,
        sq_idle: Duration::ZERO,
    })?;
    ring.set_event_mask(Causes::TEST);
    let wakeups0 = ring.stats().wakeups;
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let mut lat = Percentiles::default();
    let raiser = std::thread::scope(|scope| -> Result<Result<(), Error>, Error> {
        let card = &card;
        let raiser = scope.spawn(move || -> Result<(), Error> {
            let raise_one = raise(1);
            for _ in 0..rounds {
                std::thread::sleep(Duration::from_millis(2));
                let _ = tx.send(Instant::now());
                card.run(&raise_one)?;
            }
            Ok(())
        });
        let mut seen = 0;
        while seen < rounds {
            if let RingEntry::Event(e) = ring.wait(Duration::ZERO, TIMEOUT)? {
                if e.cause == Cause::Test {
                    let t1 = Instant::now();
                    let t0 = rx.recv_timeout(TIMEOUT).map_err(|_| Error::Protocol)?;
                    lat.push(t1.duration_since(t0).as_secs_f64() * 1e6);
                    seen += 1;
                }
            }
        }
        raiser.join().map_err(|_| Error::Protocol)
    })?;
    raiser?;
    let wakeups = ring.stats().wakeups - wakeups0;
    let r = IrqLatency {
        method: "ring-raise-to-sleeper".to_string(),
        events: lat.len() as u64,
        p50_us: lat.percentile(50.0),
        p99_us: lat.percentile(99.0),
        max_us: lat.max(),
        mean_us: lat.mean(),
    };
    println!(
        "ring: method=ring-raise-to-sleeper rounds={} p50_us={:.1} p99_us={:.1} max_us={:.1} mean_us={:.1} wakeups={wakeups}",
        r.events, r.p50_us, r.p99_us, r.max_us, r.mean_us
    );
    Record::IrqLatency(r).print();
    card.enable_interrupts(Causes::empty(), 1, 0)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct RingCrossingsArgs {
    /// Task files, and then TEST events, by the rings between the markers.
    #[arg(long, default_value_t = 1000)]
    ops: u32,
    /// Tracer marker written to edu before the measured phase.
    #[arg(long)]
    start_tag: u16,
    /// Tracer marker written to edu after it.
    #[arg(long)]
    end_tag: u16,
}

/// Writes the tracer's marker `0x5843_0000 | tag` to edu's liveness
/// register (one MMIO write; see `edu-probe`).
fn edu_marker(tag: u16) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Map {
        what: "edu's BAR for a tracer marker",
        source,
    };
    let dev = crate::crossings::find_pci(0x1234, 0x11e8)
        .ok_or_else(|| io(std::io::Error::other("no edu device")))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_SYNC)
        .open(dev.join("resource0"))
        .map_err(io)?;
    // SAFETY: edu's BAR through its sysfs resource file; one aligned
    // 32-bit volatile store at offset 4, inside the mapped page.
    let mut map = unsafe { memmap2::MmapOptions::new().len(4096).map_mut(&file) }.map_err(io)?;
    // SAFETY: offset 4 is 4-aligned and inside the 4096-byte mapping.
    unsafe {
        std::ptr::write_volatile(
            map.as_mut_ptr().add(4) as *mut u32,
            0x5843_0000 | u32::from(tag),
        )
    };
    Ok(())
}

/// Interrupts taken so far by the virtio devices (`/proc/interrupts`).
fn virtio_interrupts() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("virtio"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The ring path between two tracer markers, for the crossing budget:
/// with the SQ poller awake and this thread spinning on the CQ, task files
/// and the events they raise cost no doorbell and no interrupt. The set-up
/// (RING_SETUP, INT_MASK) and a warm-up happen before the start marker;
/// the poller's idle time is long enough that it never sleeps in between,
/// and this thread spins for as long as it waits at all (on a loaded host
/// a short spin can run out and arm the ring, which costs an interrupt).
pub fn crossings(device: &str, args: RingCrossingsArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    card.enable_interrupts(Causes::TEST, 1, 0)?;
    let mut ring = card.setup_ring(RingOptions {
        sqpoll: true,
        sq_idle: Duration::from_secs(1),
    })?;
    ring.set_event_mask(Causes::TEST);
    let mut one = TaskFile::new();
    one.get_register(regs::ID);
    let raise_one = raise(1);
    for _ in 0..10 {
        ring.run(&one, SPIN)?;
    }
    let kicks0 = ring.stats().kicks;
    let counters = |card: &Card| {
        ["events", "completions", "ring_wakeups"].map(|a| sysfs_u64(card, a).unwrap_or(0))
    };
    let (irqs0, seen0) = (virtio_interrupts(), counters(&card));
    edu_marker(args.start_tag)?;
    let mut events = Vec::new();
    let mut completions = 0;
    for _ in 0..args.ops {
        completions += u32::from(ring.run(&one, TIMEOUT)?.error == TfError::Ok);
    }
    for _ in 0..args.ops {
        let index = ring.submit(&raise_one, 0)?;
        if ring
            .wait_completion(index, TIMEOUT, TIMEOUT, &mut events)?
            .result
            .error
            == TfError::Ok
        {
            completions += 1;
        }
    }
    // The last event may follow its task file's completion.
    let deadline = Instant::now() + TIMEOUT;
    while events.iter().filter(|e| e.cause == Cause::Test).count() < args.ops as usize
        && Instant::now() < deadline
    {
        if let Some(RingEntry::Event(e)) = ring.peek()? {
            events.push(e);
        }
    }
    edu_marker(args.end_tag)?;
    let (irqs1, seen1) = (virtio_interrupts(), counters(&card));
    let kicks = ring.stats().kicks - kicks0;
    let tests = events.iter().filter(|e| e.cause == Cause::Test).count();
    let delta: Vec<u64> = seen1.iter().zip(seen0).map(|(b, a)| b - a).collect();
    println!(
        "ring-crossings: {} task files completed, {tests} TEST events taken from the ring, {kicks} kicks; meanwhile {} virtio interrupts, driver events +{} completions +{} ring_wakeups +{}",
        completions,
        irqs1.saturating_sub(irqs0),
        delta[0],
        delta[1],
        delta[2],
    );
    card.enable_interrupts(Causes::empty(), 1, 0)?;
    let ok = completions == 2 * args.ops && tests == args.ops as usize && kicks == 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
