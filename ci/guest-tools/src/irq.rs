//! Interrupts as seen from a user thread: `xxcap-test irq-test` (exactly-once
//! delivery), `xxcap-test bench-irq` (raise-to-wake latency and sustained rate,
//! next to QEMU's edu device through uio_pci_generic), `xxcap-test eintr-test`
//! and `xxcap-test dma-async` (a load of asynchronous DMA, for kill tests).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use memmap2::MmapOptions;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
use xxcapture::abi::{dma_dir, irq, regs};
use xxcapture::{
    monotonic_ns, Access, AsyncDma, Card, Cause, Causes, Direction, Error, Event, TaskFile,
};

use xxcapture::measure::Percentiles;
use xxcapture_results::{IrqLatency, IrqSustained, IrqTestSummary, Record, Unavailable};

#[derive(clap::Args)]
pub struct IrqTestArgs {
    /// TEST interrupts raised one task file each.
    #[arg(long, default_value_t = 5000)]
    singles: u32,
    /// Bursts: task files of --burst-size raises each.
    #[arg(long, default_value_t = 20)]
    bursts: u32,
    #[arg(long, default_value_t = 250)]
    burst_size: u32,
}

#[derive(clap::Args)]
pub struct BenchIrqArgs {
    /// TEST interrupts timed one by one.
    #[arg(long, default_value_t = 10_000)]
    events: u32,
    /// Seconds of back-to-back bursts for the sustained rate.
    #[arg(long, default_value_t = 3.0)]
    sustained_seconds: f64,
    /// Also time QEMU's edu device through uio_pci_generic (needs the edu
    /// device and the uio modules in the guest).
    #[arg(long)]
    edu: bool,
    /// Wait with one blocking read() (as uio's users do) instead of poll()
    /// and read().
    #[arg(long)]
    blocking_read: bool,
}

#[derive(clap::Args)]
pub struct DmaAsyncArgs {
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Transfers kept in flight.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Bytes per transfer.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
}

pub(crate) fn raise_task_file(count: u32) -> TaskFile {
    let mut tf = TaskFile::new();
    for _ in 0..count {
        tf.set_register(regs::INT_RAISE, irq::TEST);
    }
    tf
}

pub(crate) fn sysfs_u64(card: &Card, name: &str) -> Option<u64> {
    card.sysfs_attribute(name).ok()?.parse().ok()
}

/// Opens the card for TEST records only, each delivered at once.
fn open_for_test_events(device: &str) -> Result<Card, Error> {
    let card = Card::open(device, Access::Control)?;
    card.subscribe(Causes::TEST)?;
    card.enable_interrupts(Causes::TEST, 1, 0)?;
    Ok(card)
}

/// Collects `n` TEST records (skipping completions), checking sequence.
struct SequenceCheck {
    next: Option<u64>,
    received: u64,
    gaps: u64,
    out_of_order: u64,
    lost: u64,
    other: u64,
}

impl SequenceCheck {
    fn new() -> Self {
        SequenceCheck {
            next: None,
            received: 0,
            gaps: 0,
            out_of_order: 0,
            lost: 0,
            other: 0,
        }
    }

    fn take(&mut self, ev: &Event) {
        match ev.cause {
            Cause::Test => {
                self.received += 1;
                match self.next {
                    Some(n) if ev.sequence < n => self.out_of_order += 1,
                    Some(n) if ev.sequence > n => self.gaps += ev.sequence - n,
                    _ => {}
                }
                self.next = Some(ev.sequence + 1);
            }
            Cause::Lost => self.lost += u64::from(ev.count),
            _ => self.other += 1,
        }
    }

    fn collect(&mut self, card: &Card, want: u64, buf: &mut Vec<Event>) -> Result<(), Error> {
        let goal = self.received + want;
        while self.received < goal {
            buf.clear();
            if card.wait_events(buf, 256, Some(Duration::from_secs(2)))? == 0 {
                return Err(Error::timeout(
                    format!("TEST record {} of {goal}", self.received + 1),
                    Duration::from_secs(2),
                ));
            }
            for ev in buf.iter() {
                self.take(ev);
            }
        }
        Ok(())
    }
}

pub fn irq_test(device: &str, args: IrqTestArgs) -> Result<ExitCode, Error> {
    let card = open_for_test_events(device)?;
    let count_before = card.read_register(regs::EVENT_COUNT)?;
    let lost_before = card.read_register(regs::EVENTS_LOST)?;
    let driver_before = sysfs_u64(&card, "events");
    let mut check = SequenceCheck::new();
    let mut buf = Vec::new();
    let single = raise_task_file(1);
    for _ in 0..args.singles {
        card.run(&single)?;
        check.collect(&card, 1, &mut buf)?;
    }
    let burst = raise_task_file(args.burst_size);
    for _ in 0..args.bursts {
        card.run(&burst)?;
        check.collect(&card, u64::from(args.burst_size), &mut buf)?;
    }
    // Nothing more may arrive: a duplicate would show up here.
    buf.clear();
    let extra = card.wait_events(&mut buf, 256, Some(Duration::from_millis(300)))?;
    let raised = u64::from(args.singles) + u64::from(args.bursts) * u64::from(args.burst_size);
    let count_delta = card
        .read_register(regs::EVENT_COUNT)?
        .wrapping_sub(count_before);
    let lost_delta = card
        .read_register(regs::EVENTS_LOST)?
        .wrapping_sub(lost_before);
    let driver_delta = match (driver_before, sysfs_u64(&card, "events")) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let r = IrqTestSummary {
        raised,
        singles: args.singles,
        bursts: args.bursts,
        burst_size: args.burst_size,
        received: check.received,
        extra: extra as u64,
        gaps: check.gaps,
        out_of_order: check.out_of_order,
        lost: check.lost,
        other: check.other,
        event_count_delta: u64::from(count_delta),
        events_lost_delta: u64::from(lost_delta),
        driver_events_delta: driver_delta,
    };
    println!(
        "irq-test: raised {raised} ({} singly, {} bursts of {}), received {}, extra {extra}, gaps {}, out of order {}, lost {}, other records {}; device EVENT_COUNT +{count_delta} EVENTS_LOST +{lost_delta}; driver events +{}",
        args.singles,
        args.bursts,
        args.burst_size,
        check.received,
        check.gaps,
        check.out_of_order,
        check.lost,
        check.other,
        driver_delta.map_or("n/a".to_string(), |d| d.to_string()),
    );
    Record::IrqTest(r).print();
    let ok = check.received == raised
        && extra == 0
        && check.gaps == 0
        && check.out_of_order == 0
        && check.lost == 0
        && u64::from(count_delta) == raised
        && lost_delta == 0
        && driver_delta.is_none_or(|d| d == raised);
    card.enable_interrupts(Causes::empty(), 1, 0)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report(method: &str, lat: &mut Percentiles) {
    let r = IrqLatency {
        method: method.to_string(),
        events: lat.len() as u64,
        p50_us: lat.percentile(50.0),
        p99_us: lat.percentile(99.0),
        max_us: lat.max(),
        mean_us: lat.mean(),
    };
    println!(
        "irq: method={method} events={} p50_us={:.1} p99_us={:.1} max_us={:.1} mean_us={:.1}",
        r.events, r.p50_us, r.p99_us, r.max_us, r.mean_us
    );
    Record::IrqLatency(r).print();
}

pub fn bench_irq(device: &str, args: BenchIrqArgs) -> Result<ExitCode, Error> {
    let card = open_for_test_events(device)?;
    let single = raise_task_file(1);
    let mut total = Percentiles::default();
    let mut submit = Percentiles::default();
    let mut to_driver = Percentiles::default();
    let mut wake = Percentiles::default();
    let mut buf = Vec::new();
    let mut outstanding_completions = 0u64;
    if args.blocking_read {
        // A lost record must end the run, not hang it: a stuck read
        // fails with EINTR when the alarm rings.
        alarm_interrupts()?;
    }
    for i in 0..args.events {
        if args.blocking_read && i % 1000 == 0 {
            nix::unistd::alarm::set(30);
        }
        let t0 = monotonic_ns();
        // SAFETY: the task file has no DMA command, so no buffer to keep.
        unsafe { card.submit(&single, 0)? };
        let t_submitted = monotonic_ns();
        outstanding_completions += 1;
        let test = loop {
            buf.clear();
            if args.blocking_read {
                // One syscall per wake-up; the alarm armed above bounds it.
                card.read_events(&mut buf, 64)?;
            } else if card.wait_events(&mut buf, 64, Some(Duration::from_secs(2)))? == 0 {
                return Err(Error::timeout(
                    format!("the TEST record of round {i}"),
                    Duration::from_secs(2),
                ));
            }
            let now = monotonic_ns();
            let mut found = None;
            for ev in &buf {
                match ev.cause {
                    Cause::Test => found = Some((*ev, now)),
                    Cause::DmaDone | Cause::DmaError if ev.completion => {
                        outstanding_completions -= 1
                    }
                    _ => {}
                }
            }
            if let Some(hit) = found {
                break hit;
            }
        };
        let (ev, t1) = test;
        total.push((t1 - t0) as f64 / 1e3);
        submit.push((t_submitted - t0) as f64 / 1e3);
        to_driver.push(ev.guest_time_ns.saturating_sub(t_submitted) as f64 / 1e3);
        wake.push(t1.saturating_sub(ev.guest_time_ns) as f64 / 1e3);
        // Take the submit's completion before the next round so that it
        // does not share a wake-up with the next TEST record.
        while outstanding_completions > 0 {
            buf.clear();
            if card.wait_events(&mut buf, 64, Some(Duration::from_secs(2)))? == 0 {
                return Err(Error::timeout(
                    format!("the completion of round {i}'s task file"),
                    Duration::from_secs(2),
                ));
            }
            outstanding_completions -= buf
                .iter()
                .filter(|e| e.completion && matches!(e.cause, Cause::DmaDone | Cause::DmaError))
                .count() as u64;
        }
    }
    if args.blocking_read {
        nix::unistd::alarm::cancel();
    }
    report(
        if args.blocking_read {
            "xxcapture-raise-to-wake-read"
        } else {
            "xxcapture-raise-to-wake"
        },
        &mut total,
    );
    report("stage-submit-syscall", &mut submit);
    report("stage-submit-to-driver-irq", &mut to_driver);
    report("stage-driver-to-user-wake", &mut wake);

    let r = sustained(&card, args.sustained_seconds, &mut buf)?;
    println!(
        "irq: method=xxcapture-sustained raised={} received={} lost={} gaps={} events_per_s={:.0} burst={} unread_limit={}",
        r.raised, r.received, r.lost, r.gaps, r.events_per_s, r.burst, r.unread_limit
    );
    Record::IrqSustained(r).print();
    card.enable_interrupts(Causes::empty(), 1, 0)?;

    if args.edu {
        match edu_round_trips(args.events.min(10_000)) {
            Ok(mut lat) => report("edu-uio-raise-to-wake", &mut lat),
            Err(why) => {
                println!("irq: method=edu-uio-raise-to-wake unavailable: {why}");
                Record::IrqUnavailable(Unavailable {
                    method: "edu-uio-raise-to-wake".into(),
                    reason: why,
                })
                .print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Device events one open's queue holds (the driver's `event_queue_depth`).
fn event_queue_depth() -> Option<u64> {
    std::fs::read_to_string("/sys/module/xxcapture/parameters/event_queue_depth")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The sustained record rate: bursts of TEST raises, one task file each,
/// for `seconds`. Flow control counts records, not completions: a task
/// file's completion can arrive before the records it raised, so the next
/// burst goes out only while the records raised and not yet read (received
/// or counted lost) leave room for it within two bursts, well inside the
/// open's queue. Records are read as fast as they arrive; none should be
/// lost, and any that are is reported, not hidden.
fn sustained(card: &Card, seconds: f64, buf: &mut Vec<Event>) -> Result<IrqSustained, Error> {
    const WAIT: Duration = Duration::from_secs(2);
    let depth = event_queue_depth().unwrap_or(4096);
    let burst = (depth / 2).clamp(1, 1024);
    let unread_limit = 2 * burst;
    let tf = raise_task_file(burst as u32);
    let mut check = SequenceCheck::new();
    let started = Instant::now();
    let limit = Duration::from_secs_f64(seconds.max(0.1));
    let (mut raised, mut submitted, mut completed) = (0u64, 0u64, 0u64);
    let mut last_record = started;
    loop {
        let accounted = check.received + check.lost;
        let running = started.elapsed() < limit;
        while running && raised - accounted + burst <= unread_limit {
            // SAFETY: no DMA command in the task file.
            unsafe { card.submit(&tf, 0)? };
            submitted += 1;
            raised += burst;
        }
        if !running && accounted >= raised && completed == submitted {
            break;
        }
        buf.clear();
        if card.wait_events(buf, 256, Some(WAIT))? == 0 {
            return Err(Error::timeout(
                format!(
                    "TEST records ({} of {raised} raised read or lost) and completions ({completed} of {submitted} task files)",
                    check.received + check.lost
                ),
                WAIT,
            ));
        }
        for ev in buf.iter() {
            if ev.completion {
                completed += 1;
            } else {
                check.take(ev);
                last_record = Instant::now();
            }
        }
    }
    let secs = last_record.duration_since(started).as_secs_f64();
    Ok(IrqSustained {
        raised,
        received: check.received,
        lost: check.lost,
        gaps: check.gaps,
        events_per_s: check.received as f64 / secs.max(1e-9),
        burst,
        unread_limit,
    })
}

/// edu (PCI 1234:11e8) interrupt round trips to user space through
/// uio_pci_generic: raise by a BAR write, wake from a blocking read of
/// /dev/uioN, as the kernel's UIO HOWTO does it.
fn edu_round_trips(n: u32) -> Result<Percentiles, String> {
    const EDU_INTR_STATUS: usize = 0x24;
    const EDU_INTR_RAISE: usize = 0x60;
    const EDU_INTR_ACK: usize = 0x64;
    let dev = crate::crossings::find_pci(0x1234, 0x11e8).ok_or("no edu device")?;
    let driver = Path::new("/sys/bus/pci/drivers/uio_pci_generic");
    if !driver.exists() {
        return Err("uio_pci_generic is not loaded".into());
    }
    let uio_dir = dev.join("uio");
    if !uio_dir.exists() {
        let _ = std::fs::write(driver.join("new_id"), "1234 11e8");
    }
    let uio = std::fs::read_dir(&uio_dir)
        .map_err(|e| format!("{}: {e}", uio_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| PathBuf::from("/dev").join(e.file_name()))
        .next()
        .ok_or("edu has no uio node")?;
    let mut uio_file = std::fs::File::open(&uio).map_err(|e| format!("{}: {e}", uio.display()))?;
    let bar = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_SYNC)
        .open(dev.join("resource0"))
        .map_err(|e| format!("edu resource0: {e}"))?;
    // SAFETY: edu's BAR0 mapped from sysfs; accessed only with aligned
    // volatile 32-bit loads and stores below 0x100.
    let mut map = unsafe { MmapOptions::new().len(4096).map_mut(&bar) }
        .map_err(|e| format!("mmap edu BAR0: {e}"))?;
    let base = map.as_mut_ptr();
    let write = |off: usize, v: u32| {
        // SAFETY: `off` is a 4-aligned register offset inside the mapping.
        unsafe { std::ptr::write_volatile(base.add(off) as *mut u32, v) }
    };
    let read = |off: usize| {
        // SAFETY: as above.
        unsafe { std::ptr::read_volatile(base.add(off) as *const u32) }
    };
    let mut config = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev.join("config"))
        .map_err(|e| format!("edu config: {e}"))?;
    // uio_pci_generic masks INTx in its handler; unmask by clearing
    // PCI_COMMAND bit 10 (bit 2 of byte 5) before every round.
    let mut unmask = || -> Result<(), String> {
        let mut byte = [0u8; 1];
        config
            .seek(SeekFrom::Start(5))
            .and_then(|_| config.read_exact(&mut byte))
            .map_err(|e| format!("read PCI_COMMAND: {e}"))?;
        byte[0] &= !0x04;
        config
            .seek(SeekFrom::Start(5))
            .and_then(|_| config.write_all(&byte))
            .map_err(|e| format!("write PCI_COMMAND: {e}"))
    };
    let mut lat = Percentiles::default();
    let mut count = [0u8; 4];
    for _ in 0..n {
        write(EDU_INTR_ACK, read(EDU_INTR_STATUS));
        unmask()?;
        let t0 = monotonic_ns();
        write(EDU_INTR_RAISE, 1);
        uio_file
            .read_exact(&mut count)
            .map_err(|e| format!("read {}: {e}", uio.display()))?;
        lat.push((monotonic_ns() - t0) as f64 / 1e3);
    }
    write(EDU_INTR_ACK, read(EDU_INTR_STATUS));
    Ok(lat)
}

extern "C" fn on_alarm(_: nix::libc::c_int) {}

/// Installs a SIGALRM handler without SA_RESTART, so that a blocking call
/// the alarm interrupts fails with EINTR instead of being restarted.
fn alarm_interrupts() -> Result<(), Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_alarm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { nix::sys::signal::sigaction(Signal::SIGALRM, &action) }
        .map(drop)
        .map_err(|source| Error::Ioctl {
            call: "sigaction",
            source,
        })
}

pub fn eintr_test(device: &str) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    alarm_interrupts()?;
    card.subscribe(Causes::empty())?;
    let mut ok = true;

    // 1. A blocking read with nothing to come.
    nix::unistd::alarm::set(1);
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = card.read_events(&mut buf, 1);
    let waited = started.elapsed();
    let read_eintr = matches!(
        read,
        Err(Error::Ioctl {
            source: nix::errno::Errno::EINTR,
            ..
        })
    );
    println!(
        "eintr: blocking read returned {} after {:.0} ms",
        match &read {
            Ok(n) => format!("{n} records"),
            Err(e) => e.to_string(),
        },
        waited.as_secs_f64() * 1e3
    );
    ok &= read_eintr;

    // 2. Blocking DMA interrupted by a fast interval timer.
    let size = (16usize << 20).min(card.info().card_ram_size as usize);
    let mut buffer = vec![0u8; size];
    let timer_every = Duration::from_micros(1500);
    let mut timer = nix::sys::timer::Timer::new(
        nix::time::ClockId::CLOCK_MONOTONIC,
        nix::sys::signal::SigEvent::new(nix::sys::signal::SigevNotify::SigevSignal {
            signal: Signal::SIGALRM,
            si_value: 0,
        }),
    )
    .map_err(|source| Error::Ioctl {
        call: "timer_create",
        source,
    })?;
    timer
        .set(
            nix::sys::timer::Expiration::Interval(timer_every.into()),
            nix::sys::timer::TimerSetTimeFlags::empty(),
        )
        .map_err(|source| Error::Ioctl {
            call: "timer_settime",
            source,
        })?;
    let (mut attempts, mut interrupted, mut completed, mut other) = (0u32, 0u32, 0u32, 0u32);
    while attempts < 200 && interrupted < 20 {
        attempts += 1;
        let mut tf = TaskFile::new();
        tf.dma(
            true,
            dma_dir::FROM_CARD,
            buffer.as_mut_ptr() as u64,
            0,
            size as u64,
        );
        match card.execute(&tf) {
            Ok(_) => completed += 1,
            Err(Error::Ioctl {
                source: nix::errno::Errno::EINTR,
                ..
            }) => interrupted += 1,
            Err(e) => {
                other += 1;
                println!("eintr: DMA failed otherwise: {e}");
            }
        }
    }
    drop(timer);
    // Interrupted requests finish in the background; their pins go then.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pinned = sysfs_u64(&card, "pinned_pages");
    while pinned != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        pinned = sysfs_u64(&card, "pinned_pages");
    }
    let answers = card.read_register(regs::ID).is_ok();
    println!(
        "eintr: {attempts} blocking DMAs of {} MiB under a {} us timer: {completed} completed, {interrupted} EINTR, {other} other errors; pinned pages afterwards {}; card answers {answers}",
        size >> 20,
        timer_every.as_micros(),
        pinned.map_or("n/a".into(), |p| p.to_string()),
    );
    ok &= interrupted > 0 && other == 0 && pinned == Some(0) && answers;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Keeps asynchronous DMA in flight for a while: the victim of kill tests,
/// and a check that data survives the round trip.
pub fn dma_async(device: &str, args: DmaAsyncArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let size = args
        .size
        .clamp(4096, card.info().card_ram_size as usize / 2);
    let slots = (card.info().card_ram_size as usize / size).max(1) as u64;
    let mut queue = AsyncDma::new(&card);
    let started = Instant::now();
    let limit = Duration::from_secs_f64(args.seconds.max(0.0));
    let (mut done, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    let mut next = 0u64;
    // Buffers are reused: a fresh 1 MiB allocation per transfer would cost
    // more in page faults than the transfer itself.
    let mut spare: Vec<Vec<u8>> = (0..args.inflight.max(1)).map(|_| vec![0u8; size]).collect();
    while started.elapsed() < limit {
        while let Some(mut buffer) = spare.pop() {
            let dir = if next.is_multiple_of(2) {
                Direction::ToCard
            } else {
                Direction::FromCard
            };
            let offset = (next % slots) * size as u64;
            buffer[0] = (next & 0xff) as u8;
            queue.dma(dir, buffer, offset, next)?;
            next += 1;
        }
        for c in queue.poll(Some(Duration::from_millis(200)))? {
            match c.error {
                None => {
                    done += 1;
                    bytes += c.buffer.len() as u64;
                }
                Some(_) => failed += 1,
            }
            spare.push(c.buffer);
        }
    }
    drop(queue);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "dma-async: {done} transfers of {size} bytes ({failed} failed), {:.0} transfers/s, {:.1} MB/s",
        done as f64 / secs.max(1e-9),
        bytes as f64 / secs.max(1e-9) / 1e6
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
