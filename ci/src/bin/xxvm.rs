//! `xxvm`: launch a VM with the xxcapture card (`cargo xxvm run|shell|build`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use xxcapture_hil::image::DebianImage;
use xxcapture_hil::{build_all, parse_steps, Accel, Mode, Vm, VmOptions};

#[derive(Parser)]
#[command(
    name = "xxvm",
    about = "Boot a QEMU VM with the xxcapture card and drive it"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ImageArg {
    /// The busybox initramfs on the provisioned kernel (fast).
    Initramfs,
    /// The Debian image of images/mkdebian (built on first use).
    Debian,
}

#[derive(clap::Args, Clone)]
struct VmArgs {
    /// What the VM boots (run and shell only).
    #[arg(long, value_enum, default_value = "initramfs")]
    image: ImageArg,
    /// The Debian release of `--image debian`: bookworm, trixie or
    /// trixie-backports.
    #[arg(long, default_value = "bookworm")]
    dist: String,
    /// Accelerator: TCG works everywhere; KVM where /dev/kvm works.
    #[arg(long, value_enum, default_value = "tcg")]
    accel: AccelArg,
    /// Seconds the guest may take before it is killed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Card RAM size handed to xxcapd.
    #[arg(long, default_value = "64M")]
    card_ram: String,
    /// Guest RAM in MiB [default: 512, with `--image debian` 1024].
    #[arg(long)]
    memory: Option<u32>,
    /// Do not replace the card when xxcapd dies (by default the launcher
    /// unplugs the dead card over QMP, restarts xxcapd and plugs a new one).
    #[arg(long)]
    no_supervise: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provision and build everything the VM needs.
    Build,
    /// Boot, load the driver, print what the card reports, run the selftest.
    Run(VmArgs),
    /// Boot into an interactive shell on the serial console (leave with
    /// `poweroff -f`, or Ctrl-A X).
    Shell(VmArgs),
    /// Measure every way to reach the card, DMA, capture and the kernel's
    /// vivid driver in one VM run, next to host memcpy and the card's
    /// executor; writes target/bench/{bench.md,bench.json,crossings.png}
    /// and the generated docs/benchmarks.md with docs/crossings.png.
    Bench(VmArgs),
    /// Boot a fresh VM with the card(s), copy files in, run one command
    /// with the driver loaded, copy files out, and exit with the command's
    /// status (124: timeout, 125: the harness failed). See docs/xxvm.md.
    Exec(ExecArgs),
    /// Measure where the seconds go from QEMU's start to the first user
    /// command of `xxvm exec` (firmware, kernel, initramfs, modules,
    /// driver), over a few boots; prints a table with the median.
    BootTime(BootTimeArgs),
}

#[derive(clap::Args, Clone)]
struct BootTimeArgs {
    /// How many boots.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "tcg")]
    accel: AccelChoice,
    /// Boot as the harness used to, for comparison: the compressed kernel,
    /// a gzip initramfs and none of the boot-shortening kernel arguments.
    #[arg(long)]
    baseline: bool,
    /// Where each boot's run directory goes [default:
    /// target/hil-logs/boot-time].
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelChoice {
    /// KVM where /dev/kvm opens and a KVM guest boots, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(clap::Args, Clone)]
struct ExecArgs {
    /// Copy a host file or folder into the guest at DEST (repeatable).
    #[arg(long = "put", value_name = "SRC:DEST")]
    puts: Vec<String>,
    /// Copy a guest file or folder to the host after the command
    /// (repeatable); a missing path fails a command that succeeded (125).
    #[arg(long = "get", value_name = "GUEST_PATH:HOST_PATH")]
    gets: Vec<String>,
    /// What the VM boots: the busybox initramfs, or the Debian image of
    /// images/mkdebian (must be built already).
    #[arg(long, value_enum, default_value = "initramfs")]
    image: ImageArg,
    /// The Debian release of `--image debian`.
    #[arg(long, default_value = "bookworm")]
    dist: String,
    /// One card and its options, `key=value,...` (repeatable: one card
    /// each; none: one card with xxcapd's defaults). Keys: card-ram, size,
    /// fps, format, serial, revision, source-file, source-format,
    /// source-size, source-pixel-format, no-event-idx,
    /// reset-card-ram-on-reconnect.
    #[arg(long = "card", value_name = "KEY=VALUE,...")]
    cards: Vec<String>,
    /// One more argument for every card's xxcapd (repeatable), after the
    /// card's own.
    #[arg(long = "xxcapd-arg", value_name = "ARG", allow_hyphen_values = true)]
    xxcapd_args: Vec<String>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Seconds the whole run may take, boot included (then exit 124).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Guest RAM in MiB [default: 512, with `--image debian` 1024].
    #[arg(long)]
    memory: Option<u32>,
    /// The run directory for console.log, kernel.log, xxcapd*.log and
    /// status [default: a new /tmp/xxvm-run-* folder, kept].
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
    /// The xxcapture checkout whose built pieces to use [default:
    /// $XXVM_PROJECT, else the checkout xxvm was built from].
    #[arg(long, value_name = "DIR")]
    project: Option<std::path::PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn options(args: &VmArgs, mode: Mode) -> VmOptions {
    VmOptions {
        mode,
        accel: match args.accel {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        },
        card_ram: args.card_ram.clone(),
        guest_memory_mib: args.memory.unwrap_or(match args.image {
            ImageArg::Initramfs => 512,
            ImageArg::Debian => 1024,
        }),
        supervise: !args.no_supervise,
        echo: true,
        ..VmOptions::default()
    }
}

/// What `run` does in the Debian image: the initramfs's run steps with the
/// tools from the tools disk, then the card as V4L2 clients see it.
const DEBIAN_RUN_SCRIPT: &str = r#"step() {
	name=$1
	shift
	echo "XXCAP-STEP-BEGIN $name"
	"$@" 2>&1
	rc=$?
	echo "XXCAP-STEP-END $name rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
}
driver() {
	grep -q '^xxcapture ' /proc/modules || { echo "xxcapture.ko is not loaded"; return 1; }
	ls -l /dev/xxcapture*
}
v4l2_devices() {
	if ls /dev/video* >/dev/null 2>&1; then
		v4l2-ctl --list-devices
	else
		echo "no V4L2 device node"
	fi
}
# The image mounts the tools disk from fstab; mount it here if that gave up.
mountpoint -q /opt/xxcapture || mount -o ro LABEL=xxcap-tools /opt/xxcapture
echo "XXCAP-GUEST booted kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)s"
step driver driver
step info xxcap info
step selftest xxcap-test selftest
step v4l2-devices v4l2_devices
"#;

fn boot(args: &VmArgs, mode: Mode) -> Result<ExitCode, xxcapture_hil::Error> {
    let artifacts = build_all()?;
    let mut opts = options(args, mode);
    // Holds the Debian run's tools disk and script until the VM is down.
    let scratch = tempfile::Builder::new()
        .prefix("xxvm-image-")
        .tempdir()
        .map_err(|e| xxcapture_hil::Error::Step(format!("temp dir: {e}")))?;
    let guest = match args.image {
        ImageArg::Initramfs => format!("Linux {}", artifacts.provisioned.kernel_abi),
        ImageArg::Debian => {
            let image = DebianImage::build(&args.dist)?;
            let tools = scratch.path().join("tools.img");
            xxcapture_hil::image::tools_disk(&artifacts, &tools)?;
            let script = scratch.path().join("run.sh");
            let run_script = match mode {
                Mode::Shell => None,
                _ => {
                    std::fs::write(&script, DEBIAN_RUN_SCRIPT)
                        .map_err(|e| xxcapture_hil::Error::Step(format!("run script: {e}")))?;
                    Some(script.as_path())
                }
            };
            opts.boot = Some(image.boot_target(&tools, run_script));
            format!("Debian {} (Linux {})", image.dist, image.kernel_abi)
        }
    };
    eprintln!(
        "xxvm: booting {guest} on QEMU {} ({}), card behind xxcapd",
        artifacts.provisioned.qemu_version,
        match args.accel {
            AccelArg::Tcg => "TCG",
            AccelArg::Kvm => "KVM",
        }
    );
    let mut vm = Vm::start(&artifacts, &opts)?;
    let qemu = vm.wait_guest(Duration::from_secs(args.timeout))?;
    let backend = vm.wait_backend(Duration::from_secs(5))?;
    let elapsed = vm.started().elapsed();
    let replaced = vm.recoveries().len();
    if replaced > 0 {
        eprintln!(
            "xxvm: the card was replaced {replaced} time(s) (target/hil-logs/supervisor.log)"
        );
    }
    if let Some(why) = vm.supervisor_failure() {
        eprintln!("xxvm: FAILED: the supervisor gave up: {why}");
        return Ok(ExitCode::FAILURE);
    }
    if mode == Mode::Shell {
        eprintln!("xxvm: VM and xxcapd stopped (QEMU {qemu}, xxcapd {backend})");
        return Ok(ExitCode::SUCCESS);
    }
    let steps = parse_steps(&vm.console());
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| s.rc != 0)
        .map(|s| s.name.as_str())
        .collect();
    eprintln!(
        "xxvm: {} guest steps, {} failed; wall time {:.1} s; QEMU {qemu}; xxcapd {backend}",
        steps.len(),
        failed.len(),
        elapsed.as_secs_f64()
    );
    if steps.is_empty() || !failed.is_empty() || !qemu.success() || !backend.success() {
        eprintln!("xxvm: FAILED {failed:?} (logs in target/hil-logs/)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: &VmArgs) -> Result<ExitCode, xxcapture_hil::Error> {
    let step_err = |e: std::io::Error| xxcapture_hil::Error::Step(e.to_string());
    let mut artifacts = build_all()?;
    artifacts.initramfs = xxcapture_hil::build::bench_initramfs()?;
    eprintln!("xxvm: measuring host memcpy (64 MiB) and the card's executor...");
    let memcpy = xxcapture_hil::bench::host_memcpy_gbps(64 << 20);
    let executor = xxcapture_hil::bench::host_executor();
    let mut opts = options(args, Mode::Bench);
    opts.echo = false;
    // QEMU's in-process edu device, for the per-register comparison.
    opts.extra_qemu_args = vec!["-device".into(), "edu".into()];
    eprintln!("xxvm: booting the benchmark VM (a few minutes under TCG)...");
    let load_before = xxcapture_hil::bench::host_loadavg();
    let mut vm = Vm::start(&artifacts, &opts)?;
    vm.wait_guest(Duration::from_secs(args.timeout.max(900)))?;
    vm.wait_backend(Duration::from_secs(5))?;
    let steps = parse_steps(&vm.console());
    let clock = xxcapture_hil::bench::clock_checks(&vm.console_timed());
    let mut report = xxcapture_hil::bench::BenchReport::new(&steps, memcpy, executor, clock);
    report.host_load = format!(
        "{load_before} before, {} after",
        xxcapture_hil::bench::host_loadavg()
    );
    let markdown = report.markdown();
    println!("{markdown}");
    let dir = xxcapture_hil::build::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(step_err)?;
    std::fs::write(dir.join("bench.md"), &markdown).map_err(step_err)?;
    std::fs::write(dir.join("bench.json"), report.json()?).map_err(step_err)?;
    report.plot(&dir.join("crossings.png"))?;
    eprintln!(
        "xxvm: wrote {0}/bench.md, {0}/bench.json and {0}/crossings.png",
        dir.display()
    );
    // The published figures: generated, never edited by hand.
    let docs = xxcapture_hil::build::repo_root().join("docs");
    std::fs::create_dir_all(&docs).map_err(step_err)?;
    let host = xxcapture_hil::bench::host_description(
        &artifacts.provisioned.qemu_version,
        match opts.accel {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        },
    );
    let document = report.document(&xxcapture_hil::bench::utc_now(), &host);
    std::fs::write(docs.join("benchmarks.md"), document).map_err(step_err)?;
    std::fs::copy(dir.join("crossings.png"), docs.join("crossings.png")).map_err(step_err)?;
    eprintln!(
        "xxvm: wrote {0}/benchmarks.md and {0}/crossings.png",
        docs.display()
    );
    if steps.is_empty() || !report.failed_steps.is_empty() {
        eprintln!(
            "xxvm: bench steps failed: {:?} (console in target/hil-logs/)",
            report.failed_steps
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn exec(args: &ExecArgs) -> Result<ExitCode, xxcapture_hil::Error> {
    use xxcapture_hil::exec::{self as x, Get, Image, Put};
    let usage = |e: String| {
        eprintln!("xxvm exec: {e}");
        ExitCode::from(2)
    };
    if let Some(dir) = &args.project {
        xxcapture_hil::build::set_repo_root(std::path::absolute(dir).unwrap_or(dir.clone()));
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut puts = Vec::new();
    for p in &args.puts {
        match Put::parse(p) {
            Ok(p) => puts.push(p),
            Err(e) => return Ok(usage(e)),
        }
    }
    let mut gets = Vec::new();
    for g in &args.gets {
        match Get::parse(g) {
            Ok(g) => gets.push(g),
            Err(e) => return Ok(usage(e)),
        }
    }
    let specs = match args.cards.is_empty() {
        true => vec![String::new()],
        false => args.cards.clone(),
    };
    let mut cards = Vec::new();
    for spec in &specs {
        match x::card::parse(spec, &cwd, &args.xxcapd_args) {
            Ok(c) => cards.push(c),
            Err(e) => return Ok(usage(e)),
        }
    }
    let artifacts = xxcapture_hil::Artifacts::locate().map_err(x::missing_artifacts)?;
    let (accel, why) = match args.accel {
        AccelChoice::Tcg => (Accel::Tcg, "asked for".to_string()),
        AccelChoice::Kvm => (Accel::Kvm, "asked for".to_string()),
        AccelChoice::Auto => xxcapture_hil::accel::auto(&artifacts),
    };
    let logs = match &args.logs {
        Some(dir) => dir.clone(),
        None => x::default_run_dir()?,
    };
    let image = match args.image {
        ImageArg::Initramfs => Image::Initramfs,
        ImageArg::Debian => Image::Debian(args.dist.clone()),
    };
    let opts = x::ExecOptions {
        command: args.command.clone(),
        puts,
        gets,
        guest_memory_mib: args.memory.unwrap_or(match image {
            Image::Initramfs => 512,
            Image::Debian(_) => 1024,
        }),
        image,
        cards,
        xxcapd_args: args.xxcapd_args.clone(),
        accel,
        timeout: Duration::from_secs(args.timeout),
        logs: logs.clone(),
        echo: true,
        extra_qemu_args: Vec::new(),
        baseline_boot: false,
    };
    eprintln!(
        "xxvm: run directory {} ({}: {why})",
        logs.display(),
        match accel {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        }
    );
    let outcome = x::run(&artifacts, &opts)?;
    if let Some(why) = &outcome.failure {
        eprintln!("xxvm: {why} (logs in {})", logs.display());
    }
    eprintln!(
        "xxvm: exit {} (command: {}), {:.1} s",
        outcome.exit,
        outcome
            .command_status
            .map_or_else(|| "did not finish".to_string(), |s| s.to_string()),
        outcome.wall.as_secs_f64()
    );
    Ok(ExitCode::from(outcome.exit))
}

fn boot_time(args: &BootTimeArgs) -> Result<ExitCode, xxcapture_hil::Error> {
    let artifacts = build_all()?;
    let accel = match args.accel {
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Auto => xxcapture_hil::accel::auto(&artifacts).0,
    };
    let logs = args
        .logs
        .clone()
        .unwrap_or_else(|| xxcapture_hil::build::repo_root().join("target/hil-logs/boot-time"));
    let load_before = xxcapture_hil::bench::host_loadavg();
    let mut runs = Vec::new();
    for run in 1..=args.runs.max(1) {
        eprintln!("xxvm: boot {run} of {}", args.runs.max(1));
        runs.push(xxcapture_hil::boot_time::measure(
            &artifacts,
            accel,
            &logs.join(format!("run-{run}")),
            args.baseline,
        )?);
    }
    println!("{}", xxcapture_hil::boot_time::table(&runs));
    println!(
        "{} on QEMU {}; host load {load_before} before, {} after",
        match accel {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        },
        artifacts.provisioned.qemu_version,
        xxcapture_hil::bench::host_loadavg()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build => build_all().map(|a| {
            println!("module     {}", a.module.display());
            println!("xxcap      {}", a.xxcap.display());
            println!("xxcap-test {}", a.xxcap_test.display());
            println!("xxcapd     {}", a.xxcapd.display());
            println!("initramfs  {}", a.initramfs.display());
            println!(
                "kernel    {} ({})",
                a.provisioned.kernel.display(),
                a.provisioned.kernel_abi
            );
            println!(
                "qemu      {} ({})",
                a.provisioned.qemu.display(),
                a.provisioned.qemu_version
            );
            ExitCode::SUCCESS
        }),
        Cmd::Run(args) => boot(&args, Mode::Run),
        Cmd::Shell(args) => boot(&args, Mode::Shell),
        Cmd::Bench(args) => bench(&args),
        Cmd::BootTime(args) => boot_time(&args),
        Cmd::Exec(args) => {
            return exec(&args).unwrap_or_else(|err| {
                eprintln!("xxvm: {err}");
                ExitCode::from(xxcapture_hil::exec::EXIT_HARNESS)
            })
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("xxvm: {err}");
        ExitCode::FAILURE
    })
}
