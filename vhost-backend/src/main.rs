//! `xxcapd`: serves the emulated Double X capture card to QEMU over vhost-user.

use std::process::ExitCode;

use clap::Parser;
use xxcapd::daemon;
use xxcapd::options::{usage_error, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    daemon::init_logging(cli.verbose);
    match daemon::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xxcapd: {e}");
            e.exit_code()
        }
    }
}
