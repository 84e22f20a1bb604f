//! Hardware-in-the-loop harness for the xxcapture card: builds the guest
//! pieces, boots QEMU (TCG by default) with `xxcapd` behind the card, and
//! reads what the guest reports on its serial console.

pub mod accel;
pub mod activate;
pub mod bench;
pub mod bench_events;
pub mod boot_time;
pub mod build;
pub mod exec;
pub mod image;
pub mod qmp;
pub mod supervise;
pub mod vm;

pub use activate::ActivatedBackend;
pub use build::{build_all, Artifacts, Provisioned};
pub use supervise::Recovery;
pub use vm::{parse_steps, Accel, BootTarget, FinishedRun, Mode, Step, Vm, VmOptions};
pub use xxcapture_results as results;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing: {0}")]
    Missing(String),
    #[error("{0}")]
    Step(String),
    #[error("timeout: {0}")]
    Timeout(String),
}

pub type Result<T> = std::result::Result<T, Error>;
