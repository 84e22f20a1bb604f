//! `xxcap-test bench-dma`: DMA throughput between card RAM and this process, by
//! transfer size and direction, measured in the guest: by raw address
//! (pinned for every transfer) and through a registered buffer (pinned
//! once; directions `to-card-registered`, `from-card-registered`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use xxcapture::measure::cpu_time;
use xxcapture::{Access, Card, Error};
use xxcapture_results::{DmaThroughput, Record};

#[derive(clap::Args)]
pub struct BenchDmaArgs {
    /// Transfer sizes in bytes (default: 4 KiB to 64 MiB).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Time spent per size and direction.
    #[arg(long, default_value_t = 500)]
    millis: u64,
    /// Measure only the raw-address path.
    #[arg(long)]
    no_registered: bool,
}

pub fn run(device: &str, args: BenchDmaArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let ram = card.info().card_ram_size as usize;
    let sizes = if args.sizes.is_empty() {
        vec![4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    } else {
        args.sizes
    };
    let budget = Duration::from_millis(args.millis);
    for size in sizes.into_iter().filter(|&s| s > 0 && s <= ram) {
        let mut raw = vec![0x5au8; size];
        measure(&card, size, budget, "", &mut raw)?;
        if args.no_registered || size as u64 > xxcapture::abi::MAX_REGISTERED_SIZE {
            continue;
        }
        // read/write_blocks find the slice inside the registered buffer.
        let mut registered = card.register_buffer(size)?;
        registered.as_mut_slice().fill(0x5a);
        measure(
            &card,
            size,
            budget,
            "-registered",
            registered.as_mut_slice(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One size both ways, `buf` as the guest side; `suffix` names the path.
fn measure(
    card: &Card,
    size: usize,
    budget: Duration,
    suffix: &str,
    buf: &mut [u8],
) -> Result<(), Error> {
    {
        for (dir, to_card) in [("to-card", true), ("from-card", false)] {
            let name = format!("{dir}{suffix}");
            let started = Instant::now();
            let cpu0 = cpu_time();
            let mut transfers = 0u64;
            while started.elapsed() < budget || transfers == 0 {
                if to_card {
                    card.write_blocks(0, buf)?;
                } else {
                    card.read_blocks(0, buf)?;
                }
                transfers += 1;
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = match (cpu0, cpu_time()) {
                (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e6 / transfers as f64,
                _ => f64::NAN,
            };
            let r = DmaThroughput {
                size_bytes: size as u64,
                direction: name.clone(),
                transfers,
                seconds: secs,
                gbps: (size as f64 * transfers as f64) / secs / 1e9,
                us_per_transfer: secs * 1e6 / transfers as f64,
                cpu_us_per_transfer: cpu,
            };
            println!(
                "bench-dma: size={size} dir={name} transfers={transfers} seconds={secs:.3} gbps={:.3} us_per_transfer={:.1} cpu_us_per_transfer={cpu:.1}",
                r.gbps, r.us_per_transfer,
            );
            Record::DmaThroughput(r).print();
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BatchArgs {
    /// Commands in the one task file (SCRATCH writes).
    #[arg(long, default_value_t = 1)]
    commands: u32,
}

/// One task file of `commands` register writes: one crossing into the
/// kernel, one request to the card, whatever the count.
pub fn batch(device: &str, args: BatchArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let mut tf = xxcapture::TaskFile::new();
    for i in 0..args.commands {
        tf.set_register(xxcapture::abi::regs::SCRATCH, i);
    }
    let started = Instant::now();
    card.run(&tf)?;
    println!(
        "batch: {} commands in one task file, {:.1} us",
        args.commands,
        started.elapsed().as_secs_f64() * 1e6
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StatusReadArgs {
    /// Status-block snapshots to take.
    #[arg(long, default_value_t = 1000)]
    count: u32,
}

/// Follows the card through the mapped status block only: no system call
/// and no access to the card's registers per read.
pub fn status_read(device: &str, args: StatusReadArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Observe)?;
    let status = card.map_status()?;
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..args.count {
        last = status.snapshot()?.frame_counter.get();
    }
    println!(
        "status-read: {} snapshots, {:.2} us each, frame counter {last}",
        args.count,
        started.elapsed().as_secs_f64() * 1e6 / f64::from(args.count.max(1))
    );
    Ok(ExitCode::SUCCESS)
}
