//! `xxcap`: the xxcapture card from the guest's command line.

mod capture;
mod stream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nix::sys::signal::{signal, SigHandler, Signal};
use xxcapture::abi::{caps, regs, Access as RegAccess, Width, MAGIC};
use xxcapture::{Access, Card, Error, TaskFile};

#[derive(Parser)]
#[command(
    name = "xxcap",
    version,
    about = "Drive the xxcapture video-capture card"
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
    /// Print the card identity, read through config space and through a task file.
    Info,
    /// Peek and poke registers.
    Regs {
        #[command(subcommand)]
        action: RegsAction,
    },
    /// Capture frames by DMA or from mapped card RAM; optionally verify, write Y4M and a PNG.
    Capture(capture::CaptureArgs),
    /// Stream frames into this process's own buffers, with live statistics.
    /// Exits non-zero if any frame was dropped, corrupt or out of order, or
    /// a page stayed pinned.
    Stream(stream::StreamArgs),
    /// Print one line per card added or removed (kernel uevents; no udev
    /// daemon needed): `added /dev/xxcaptureN`, `removed /dev/xxcaptureN`,
    /// or `lost` when uevents were lost (list the cards again).
    Monitor(MonitorArgs),
}

#[derive(clap::Args)]
struct MonitorArgs {
    /// First print `present /dev/xxcaptureN` for each card already there.
    #[arg(long)]
    present: bool,
    /// Exit after this many changes.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds without a change (status 0 if
    /// `--count` was not given, else 1).
    #[arg(long)]
    idle: Option<f64>,
}

#[derive(Subcommand)]
enum RegsAction {
    /// List the register map.
    List,
    /// Read registers (names or offsets), all in one task file.
    Get {
        #[arg(required = true)]
        registers: Vec<String>,
    },
    /// Write registers (NAME=VALUE), all in one task file: all or none.
    Set {
        #[arg(required = true)]
        assignments: Vec<String>,
    },
}

fn main() -> ExitCode {
    // A reader that goes away (`xxcap regs list | head`) ends the tool
    // quietly, as it does any Unix filter, instead of a panic in println!.
    // SAFETY: no other thread exists yet, and SIG_DFL installs no handler.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("xxcap: cannot restore SIGPIPE: {e}");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line, like every other error of this tool.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "xxcap: {} (see --help)",
                first.strip_prefix("error: ").unwrap_or(first)
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            print!("{}", e.render());
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::Info => info(&cli.device),
        Command::Regs { action } => regs_cmd(&cli.device, action),
        Command::Capture(args) => capture::run(&cli.device, args),
        Command::Stream(args) => stream::run(&cli.device, args),
        Command::Monitor(args) => monitor(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xxcap: {err}");
            ExitCode::FAILURE
        }
    }
}

fn monitor(args: MonitorArgs) -> Result<ExitCode, Error> {
    let idle = match args.idle {
        Some(s) => Some(
            std::time::Duration::try_from_secs_f64(s)
                .map_err(|_| Error::BadFormat(format!("--idle {s}: not a duration")))?,
        ),
        None => None,
    };
    // Listening before listing: a card added in between is in both.
    let mut monitor = xxcapture::Monitor::new()?;
    if args.present {
        for card in xxcapture::cards()? {
            println!("present {}", card.dev_path.display());
        }
    }
    let mut seen = 0u64;
    if args.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    monitor.watch(idle, |change| {
        match change {
            xxcapture::CardChange::Added(card) => println!("added {}", card.dev_path.display()),
            xxcapture::CardChange::Removed(card) => {
                println!("removed {}", card.dev_path.display())
            }
            xxcapture::CardChange::Lost => println!("lost"),
        }
        seen += 1;
        match args.count.is_some_and(|n| seen >= n) {
            true => std::ops::ControlFlow::Break(()),
            false => std::ops::ControlFlow::Continue(()),
        }
    })?;
    Ok(match args.count {
        Some(n) if seen < n => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

fn caps_names(bits: u32) -> String {
    let names: Vec<&str> = [
        (caps::TASK_FILE, "task-file"),
        (caps::DMA, "dma"),
        (caps::CARD_RAM_SHM, "card-ram-shm"),
        (caps::EVENTS, "events"),
        (caps::CAPTURE, "capture"),
        (caps::STREAMING, "streaming"),
        (caps::RING, "ring"),
    ]
    .iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    names.join(",")
}

fn info(device: &str) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Observe)?;
    let i = card.info().clone();
    println!("card {}", card.path().display());
    println!("  name         {}", i.name);
    println!("  model        {:#010x}", i.model);
    println!("  revision     {}", i.revision);
    println!(
        "  abi          {}.{}",
        i.abi_version >> 16,
        i.abi_version & 0xffff
    );
    println!("  serial       {}", i.serial);
    println!("  card RAM     {} MiB", i.card_ram_size >> 20);
    println!(
        "  capabilities {:#010x} ({})",
        i.capabilities,
        caps_names(i.capabilities)
    );
    println!("  max commands {}", i.max_commands);
    // Registers need a controlling open; the identity above needs none.
    let control = Card::open(device, Access::Control)?;
    let (magic, version, capabilities, ram) = control.identity_from_registers()?;
    println!(
        "identity via config space: magic={MAGIC:#010x} abi={:#010x} caps={:#010x} ram={}",
        i.abi_version, i.capabilities, i.card_ram_size
    );
    println!(
        "identity via task file:    magic={magic:#010x} abi={version:#010x} caps={capabilities:#010x} ram={ram}"
    );
    if (magic, version, capabilities, ram)
        == (MAGIC, i.abi_version, i.capabilities, i.card_ram_size)
    {
        println!("identity check: config space and task file agree");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("identity check: MISMATCH between config space and task file");
        Ok(ExitCode::FAILURE)
    }
}

fn parse_number(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        t.parse().ok()
    }
}

fn lookup(name: &str) -> Result<&'static xxcapture::RegisterDesc, Error> {
    regs::find_by_name(name)
        .or_else(|| {
            parse_number(name)
                .and_then(|n| u16::try_from(n).ok())
                .and_then(regs::find)
        })
        .ok_or_else(|| Error::UnknownRegister(name.to_string()))
}

fn regs_cmd(device: &str, action: RegsAction) -> Result<ExitCode, Error> {
    match action {
        RegsAction::List => {
            println!(
                "{:<20} {:>6} {:>5} {:<5} {:>18}  description",
                "name", "offset", "width", "access", "writable"
            );
            for r in regs::REGISTERS {
                let access = match r.access {
                    RegAccess::ReadOnly => "ro",
                    RegAccess::ReadWrite => "rw",
                    RegAccess::WriteOneToClear => "w1c",
                    RegAccess::WriteOneToSet => "w1s",
                };
                let width = if r.width == Width::W32 { 32 } else { 64 };
                println!(
                    "{:<20} {:#06x} {:>5} {:<6} {:#018x}  {}",
                    r.name, r.offset, width, access, r.writable, r.doc
                );
            }
        }
        RegsAction::Get { registers } => {
            let descs = registers
                .iter()
                .map(|n| lookup(n))
                .collect::<Result<Vec<_>, _>>()?;
            let card = Card::open(device, Access::Control)?;
            let mut tf = TaskFile::new();
            let slots: Vec<usize> = descs
                .iter()
                .map(|d| match d.width {
                    Width::W32 => tf.get_register(d.offset),
                    Width::W64 => tf.get_address(d.offset),
                })
                .collect();
            let res = card.run(&tf)?;
            for (d, slot) in descs.iter().zip(slots) {
                let v = res.value(slot).unwrap_or(0);
                println!("{:<20} {:#x} ({v})", d.name, v);
            }
        }
        RegsAction::Set { assignments } => {
            let card = Card::open(device, Access::Control)?;
            let mut tf = TaskFile::new();
            for a in &assignments {
                let (name, value) = a
                    .split_once('=')
                    .ok_or_else(|| Error::UnknownRegister(format!("{a} (expected NAME=VALUE)")))?;
                let d = lookup(name)?;
                let v = parse_number(value)
                    .ok_or_else(|| Error::BadFormat(format!("{value:?} is not a number")))?;
                match d.width {
                    Width::W32 => {
                        let narrow = u32::try_from(v).map_err(|_| Error::ValueTooWide {
                            name: d.name,
                            value: v,
                        })?;
                        tf.set_register(d.offset, narrow)
                    }
                    Width::W64 => tf.set_address(d.offset, v),
                };
            }
            card.run(&tf)?;
            println!("set {} register(s) in one task file", assignments.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
