//! `xxcapd ctl`: arms, lists and clears faults of a running xxcapd through
//! its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xxcapd::control::{ControlClient, Reply};
use xxcapd::options::usage_error;

/// Drive a running xxcapd's control socket (`xxcapd --control-socket PATH`).
#[derive(Debug, Parser)]
#[command(name = "xxcapd ctl")]
struct Ctl {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control_socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Arm a fault (grammar: `xxcapd --help`, e.g. dma-error@3).
    Fault { spec: String },
    /// Print the armed faults and the count of injected faults.
    List,
    /// Disarm every fault.
    Clear,
}

fn print(reply: &Reply) {
    println!("injected {}", reply.injected);
    for f in &reply.faults {
        let state = if f.spent { " (spent)" } else { "" };
        println!("{} injected {}{state}", f.spec, f.injected);
    }
}

/// Runs `xxcapd ctl ARGS`: exit 0 when the daemon accepted the command, 1
/// when it refused it or cannot be reached, 2 on a usage error.
pub fn main() -> ExitCode {
    let ctl = match Ctl::try_parse_from(std::env::args_os().skip(1)) {
        Ok(ctl) => ctl,
        Err(e) => return usage_error(&e),
    };
    let result =
        ControlClient::connect(&ctl.control_socket).and_then(|mut client| match &ctl.command {
            Command::Fault { spec } => client.fault(spec),
            Command::List => client.list(),
            Command::Clear => client.clear(),
        });
    match result {
        Ok(reply) => {
            print(&reply);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xxcapd ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
