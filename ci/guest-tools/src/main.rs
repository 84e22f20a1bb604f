//! `xxcap-test`: the card's tests and benchmarks, run in the guest by the
//! hardware-in-the-loop harness (`ci/guest/init`) next to the user's tool
//! `xxcap`. Records meant for the host are printed as result lines (see
//! `xxcapture-results`).

mod abort;
mod bench;
mod crossings;
mod faults;
mod flood;
mod fuzz;
mod hotplug;
mod irq;
mod props;
mod ram_mark;
mod regbuf;
mod ring;
mod selftest;
mod selftest_dma;
mod syncasync;
mod vivid;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xxcap-test",
    version,
    about = "Tests and benchmarks of the xxcapture card and its driver"
)]
struct Cli {
    /// Card device node.
    #[arg(short, long, default_value = "/dev/xxcapture0", global = true)]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the card and driver contract end to end; prints one line per check.
    Selftest,
    /// DMA throughput by transfer size and direction.
    BenchDma(bench::BenchDmaArgs),
    /// Cost per operation of each way to reach the card.
    BenchCrossings(crossings::CrossingsArgs),
    /// Cost of one register read through device config space, from user
    /// space: unbinds the card from virtio-pci, maps its BAR, binds it again.
    BenchConfigSpace(crossings::ConfigSpaceArgs),
    /// Frames per second and CPU per frame of the kernel's vivid driver.
    BenchVivid(vivid::VividArgs),
    /// Execute one task file of N register writes.
    Batch(bench::BatchArgs),
    /// Read the mapped status block N times (no system call per read).
    StatusRead(bench::StatusReadArgs),
    /// Raise TEST interrupts singly and in bursts; check each record arrives
    /// exactly once, in order, and the counts agree on every side.
    IrqTest(irq::IrqTestArgs),
    /// Latency from raising an interrupt to a user thread waking, by stage,
    /// and the sustained record rate (optionally next to edu through uio).
    BenchIrq(irq::BenchIrqArgs),
    /// Check that signals interrupt blocking waits with EINTR and leak nothing.
    EintrTest,
    /// Overflow an open's record queue with device events while task files
    /// and capture buffers are outstanding: every completion must arrive.
    CompletionFlood(flood::FloodArgs),
    /// Keep asynchronous DMA in flight for a while.
    DmaAsync(irq::DmaAsyncArgs),
    /// Synchronous vs asynchronous DMA at fixed request rates: CPU and latency.
    BenchSyncAsync(syncasync::SyncAsyncArgs),
    /// Random and hostile use of the driver from several processes and threads.
    FuzzDriver(fuzz::FuzzArgs),
    /// Hostile DMA cannot touch memory its caller does not own (canary check).
    CanaryTest(fuzz::CanaryArgs),
    /// ABORT, DMA_TRANSFER_NONBLOCK in EXEC, STATUS.DMA_BUSY and DMA_ERROR.
    AbortTest,
    /// The card's writable properties: each set and shown to act, bad
    /// values and writes under a controlling open refused.
    PropsTest,
    /// Read the mark the last run left in card RAM and leave the next one.
    RamMark,
    /// Registered buffers: round trip, canaries, foreign and stale ids,
    /// limits, and nothing pinned after a kill.
    RegbufTest(regbuf::RegbufArgs),
    /// Register buffers and wait to be killed (for regbuf-test).
    RegbufHold(regbuf::HoldArgs),
    /// The submission and completion rings: round trips, refusals,
    /// canaries, exactly-once events, overflow, wake-ups, a killed user.
    RingTest(ring::RingArgs),
    /// Set up a ring with DMA in flight and wait to be killed (for ring-test).
    RingHold(ring::HoldArgs),
    /// Round trips by the rings: task files and events, spinning and sleeping.
    BenchRing(ring::BenchRingArgs),
    /// Task files and events by the rings between two tracer markers.
    RingCrossings(ring::RingCrossingsArgs),
    /// The driver's reaction to a fault the host armed in xxcapd, repeated.
    FaultLoop(faults::FaultLoopArgs),
    /// Live through card removals: stream, DMA, a blocked reader and
    /// mappings on the card until the host removes it, then wait for the
    /// card added back (see `hotplug.rs`).
    Hotplug(hotplug::HotplugArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let device = cli.device.as_str();
    let result = match cli.command {
        Command::Selftest => selftest::run(device),
        Command::BenchDma(args) => bench::run(device, args),
        Command::Batch(args) => bench::batch(device, args),
        Command::BenchCrossings(args) => crossings::run(device, args),
        Command::BenchConfigSpace(args) => crossings::config_space(args),
        Command::BenchVivid(args) => vivid::run(args),
        Command::StatusRead(args) => bench::status_read(device, args),
        Command::IrqTest(args) => irq::irq_test(device, args),
        Command::BenchIrq(args) => irq::bench_irq(device, args),
        Command::EintrTest => irq::eintr_test(device),
        Command::CompletionFlood(args) => flood::run(device, args),
        Command::DmaAsync(args) => irq::dma_async(device, args),
        Command::BenchSyncAsync(args) => syncasync::run(device, args),
        Command::FuzzDriver(args) => fuzz::run(device, args),
        Command::CanaryTest(args) => fuzz::canary_test(device, args),
        Command::AbortTest => abort::run(device),
        Command::PropsTest => props::run(device),
        Command::RegbufTest(args) => regbuf::run(device, args),
        Command::RegbufHold(args) => regbuf::hold(device, args),
        Command::RamMark => ram_mark::run(device),
        Command::RingTest(args) => ring::run(device, args),
        Command::RingHold(args) => ring::hold(device, args),
        Command::BenchRing(args) => ring::bench(device, args),
        Command::RingCrossings(args) => ring::crossings(device, args),
        Command::FaultLoop(args) => faults::run(device, args),
        Command::Hotplug(args) => Ok(hotplug::run(args).unwrap_or_else(|e| {
            eprintln!("xxcap-test hotplug: {e}");
            ExitCode::FAILURE
        })),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xxcap-test: {err}");
            ExitCode::FAILURE
        }
    }
}
