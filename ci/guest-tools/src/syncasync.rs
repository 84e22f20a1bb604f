//! `xxcap-test bench-sync-async`: synchronous versus asynchronous data
//! transfer (a design question of the Double X card) as a measured table. The same small DMA is issued at a
//! fixed request rate, either by a thread that waits for each (EXEC) or by
//! one that submits and takes completions as event records (SUBMIT + read).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use xxcapture::measure::{busy_cpu_seconds, Percentiles};
use xxcapture::{monotonic_ns, Access, AsyncDma, Card, Direction, Error};
use xxcapture_results::{Record, SyncAsyncCrossover, SyncAsyncRow};

#[derive(clap::Args)]
pub struct SyncAsyncArgs {
    /// Request rates per second; 0 means as fast as possible.
    #[arg(long, value_delimiter = ',', default_values_t = [100u32, 300, 1000, 2000, 4000, 8000, 0])]
    rates: Vec<u32>,
    /// Seconds per rate and model.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Bytes per DMA (from card RAM).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Requests the asynchronous model keeps in flight at most.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
}

struct Row {
    achieved: f64,
    cpu_us: f64,
    lat: Percentiles,
}

fn print_row(model: &str, target: u32, row: &mut Row) {
    let r = SyncAsyncRow {
        model: model.to_string(),
        target_per_s: (target != 0).then_some(target),
        achieved_per_s: row.achieved,
        cpu_us_per_request: row.cpu_us,
        p50_us: row.lat.percentile(50.0),
        p99_us: row.lat.percentile(99.0),
    };
    println!(
        "syncasync: model={model} target={} achieved_per_s={:.0} cpu_us_per_req={:.1} p50_us={:.1} p99_us={:.1}",
        r.target_per_s.map_or("max".to_string(), |t| t.to_string()),
        r.achieved_per_s,
        r.cpu_us_per_request,
        r.p50_us,
        r.p99_us
    );
    Record::SyncAsync(r).print();
}

fn pace(started: Instant, k: u64, rate: u32) {
    if rate == 0 {
        return;
    }
    let due = started + Duration::from_secs_f64(k as f64 / f64::from(rate));
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

fn run_sync(card: &Card, rate: u32, seconds: f64, size: usize) -> Result<Row, Error> {
    let mut buffer = vec![0u8; size];
    let mut lat = Percentiles::default();
    let cpu0 = busy_cpu_seconds();
    let started = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let mut k = 0u64;
    while started.elapsed() < limit {
        pace(started, k, rate);
        let t0 = monotonic_ns();
        card.read_blocks(0, &mut buffer)?;
        lat.push((monotonic_ns() - t0) as f64 / 1e3);
        k += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, busy_cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) * 1e6 / k.max(1) as f64,
        _ => f64::NAN,
    };
    Ok(Row {
        achieved: k as f64 / secs,
        cpu_us: cpu,
        lat,
    })
}

fn run_async(
    card: &Card,
    rate: u32,
    seconds: f64,
    size: usize,
    inflight: usize,
) -> Result<Row, Error> {
    let mut queue = AsyncDma::new(card);
    let mut submitted_at: HashMap<u64, u64> = HashMap::new();
    let mut lat = Percentiles::default();
    let mut spare: Vec<Vec<u8>> = (0..inflight).map(|_| vec![0u8; size]).collect();
    let cpu0 = busy_cpu_seconds();
    let started = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let (mut k, mut done) = (0u64, 0u64);
    while started.elapsed() < limit || queue.outstanding() > 0 {
        let submitting = started.elapsed() < limit;
        // Submit every request that is due, while a buffer is free.
        while submitting && queue.outstanding() < inflight {
            if rate != 0 {
                let due = started + Duration::from_secs_f64(k as f64 / f64::from(rate));
                if due > Instant::now() {
                    break;
                }
            }
            let Some(buffer) = spare.pop() else { break };
            let id = queue.dma(Direction::FromCard, buffer, 0, k)?;
            submitted_at.insert(id, monotonic_ns());
            k += 1;
        }
        // Wait for completions until the next request is due.
        let wait = if rate == 0 || !submitting {
            Duration::from_millis(100)
        } else {
            let due = started + Duration::from_secs_f64(k as f64 / f64::from(rate));
            due.saturating_duration_since(Instant::now())
        };
        if queue.outstanding() == 0 {
            std::thread::sleep(wait);
            continue;
        }
        for c in queue.poll(Some(wait))? {
            let now = monotonic_ns();
            if let Some(t0) = submitted_at.remove(&c.request_id) {
                lat.push(now.saturating_sub(t0) as f64 / 1e3);
            }
            if c.error.is_some() {
                return Err(Error::Command {
                    index: 0,
                    code: c.error.unwrap_or(xxcapture::TfError::Device),
                });
            }
            done += 1;
            spare.push(c.buffer);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, busy_cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) * 1e6 / done.max(1) as f64,
        _ => f64::NAN,
    };
    Ok(Row {
        achieved: done as f64 / secs,
        cpu_us: cpu,
        lat,
    })
}

pub fn run(device: &str, args: SyncAsyncArgs) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let size = args.size.clamp(1, card.info().card_ram_size as usize);
    let mut crossover: Option<String> = None;
    for &rate in &args.rates {
        let mut sync = run_sync(&card, rate, args.seconds, size)?;
        let mut asynchronous = run_async(&card, rate, args.seconds, size, args.inflight.max(1))?;
        print_row("sync", rate, &mut sync);
        print_row("async", rate, &mut asynchronous);
        // The crossover: the lowest rate the blocking model cannot sustain
        // (below 95% of it) while the asynchronous one can. Guest CPU is
        // reported, not judged: under TCG it is counted in 10 ms ticks, too
        // coarse to rank the models at low rates.
        let target = f64::from(rate);
        let wins = if rate == 0 {
            asynchronous.achieved > sync.achieved * 1.05
        } else {
            sync.achieved < 0.95 * target && asynchronous.achieved >= 0.95 * target
        };
        if wins && crossover.is_none() {
            crossover = Some(if rate == 0 {
                "max".into()
            } else {
                rate.to_string()
            });
        }
    }
    println!(
        "syncasync: crossover={}",
        crossover.as_deref().unwrap_or("none")
    );
    Record::SyncAsyncCrossover(SyncAsyncCrossover { rate: crossover }).print();
    Ok(ExitCode::SUCCESS)
}
