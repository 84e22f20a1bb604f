//! `--accel auto`: KVM where it boots a guest, TCG everywhere else.
//!
//! A `/dev/kvm` that opens read-write is not enough: on some hosts (nested
//! virtualisation among them) it opens and creates VMs, yet QEMU hangs
//! before the guest kernel prints anything. So auto boots the provisioned
//! kernel once under KVM with an init that powers off at once, and takes
//! KVM only if QEMU exits within [`PROBE_TIMEOUT`]. The verdict is kept in
//! the cache per host boot (`kvm-probe`, keyed by the kernel's boot id and
//! the QEMU binary), so only the first run after a reboot pays for it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::{cache_dir, Artifacts};
use crate::vm::Accel;

/// How long the KVM probe may take: a working KVM boots it in about 1 s.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Whether `/dev/kvm` opens read-write.
pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The accelerator `--accel auto` picks, and why.
pub fn auto(artifacts: &Artifacts) -> (Accel, String) {
    if !kvm_opens() {
        return (Accel::Tcg, "/dev/kvm does not open read-write".into());
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let key = format!(
        "{} {}",
        boot_id.trim(),
        artifacts.provisioned.qemu.display()
    );
    let cache = cache_dir().join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((verdict, cached_key)) = text.trim().split_once(' ') {
            if cached_key == key {
                return verdict_of(verdict == "kvm", "cached");
            }
        }
    }
    let works = probe(artifacts);
    let verdict = if works { "kvm" } else { "tcg" };
    let _ = std::fs::write(&cache, format!("{verdict} {key}\n"));
    verdict_of(works, "probed")
}

fn verdict_of(works: bool, how: &str) -> (Accel, String) {
    match works {
        true => (Accel::Kvm, format!("KVM boots a guest ({how})")),
        false => (
            Accel::Tcg,
            format!("/dev/kvm opens but a KVM guest does not boot ({how})"),
        ),
    }
}

/// Boots the provisioned kernel under KVM with `rdinit=/bin/poweroff`
/// (busybox as PID 1 ends at once; the kernel's panic ends QEMU).
fn probe(artifacts: &Artifacts) -> bool {
    let p = &artifacts.provisioned;
    let Ok(mut child) = Command::new(&p.qemu)
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-serial", "none"])
        .arg("-kernel")
        .arg(&artifacts.boot_kernel)
        .arg("-initrd")
        .arg(&artifacts.initramfs)
        .args(["-append", "panic=-1 quiet rdinit=/bin/poweroff"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}
