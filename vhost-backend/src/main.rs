//! `xxcapd`: serves the emulated Double X capture card to QEMU over vhost-user.

use std::process::ExitCode;

mod ctl;

use clap::{CommandFactory, Parser};
use xxcapd::daemon;
use xxcapd::options::{capabilities_json, usage_error, Cli};

fn main() -> ExitCode {
    // QEMU's backend conventions: other options are ignored, even bad ones.
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "--print-capabilities")
    {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return ctl::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if cli.print_man {
        return print_man();
    }
    daemon::init_logging(cli.verbose);
    match daemon::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xxcapd: {e}");
            e.exit_code()
        }
    }
}

/// Writes the manual page generated from the command-line definitions.
fn print_man() -> ExitCode {
    let man = clap_mangen::Man::new(Cli::command());
    match man.render(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xxcapd: cannot write the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}
