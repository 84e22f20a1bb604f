//! The Debian guest image (`images/mkdebian`) as a boot target for the VM:
//! its own kernel, initramfs and root disk, booted read-only through a
//! QEMU snapshot, with the project's guest tools on a second small disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::build::{cache_dir, repo_root, run, target_dir, Artifacts};
use crate::vm::BootTarget;
use crate::{Error, Result};

/// A Debian image built by `images/mkdebian`.
#[derive(Clone, Debug)]
pub struct DebianImage {
    pub dist: String,
    pub kernel_abi: String,
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl DebianImage {
    /// Builds the image of `dist` (`bookworm`, `trixie`, `trixie-backports`)
    /// unless an up-to-date build is in the cache, and returns it.
    pub fn build(dist: &str) -> Result<Self> {
        eprintln!("xxvm: Debian {dist} image (images/mkdebian; minutes when it must be built)");
        let status = Command::new(repo_root().join("images/mkdebian"))
            .args(["--dist", dist])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| Error::Step(format!("cannot start images/mkdebian: {e}")))?;
        if !status.success() {
            return Err(Error::Step(format!("images/mkdebian failed ({status})")));
        }
        Self::load(dist)
    }

    /// Reads `images/debian-<dist>.env` from the cache.
    pub fn load(dist: &str) -> Result<Self> {
        let path = cache_dir().join(format!("images/debian-{dist}.env"));
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::Missing(format!(
                "{} (run `images/mkdebian --dist {dist}`)",
                path.display()
            ))
        })?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |key: &str| -> Result<String> {
            vars.get(key)
                .map(|v| v.to_string())
                .ok_or_else(|| Error::Missing(format!("{key} in {}", path.display())))
        };
        let file = |key: &str| -> Result<PathBuf> {
            let p = PathBuf::from(get(key)?);
            match p.exists() {
                true => Ok(p),
                false => Err(Error::Missing(format!("{} ({key})", p.display()))),
            }
        };
        Ok(DebianImage {
            dist: get("XXCAP_IMAGE_DIST")?,
            kernel_abi: get("XXCAP_IMAGE_KABI")?,
            root: file("XXCAP_IMAGE_ROOT")?,
            kernel: file("XXCAP_IMAGE_KERNEL")?,
            initrd: file("XXCAP_IMAGE_INITRD")?,
        })
    }

    /// How to boot it: root by label from the image (changes go to a
    /// throw-away snapshot), `tools` as a second read-only disk, and with
    /// `run_script` that script as fw_cfg `opt/xxcapture/run` (the image
    /// runs it once the system is up, prints its output and powers off).
    pub fn boot_target(&self, tools: &Path, run_script: Option<&Path>) -> BootTarget {
        let mut qemu_args = vec![
            "-drive".to_string(),
            format!(
                "file={},if=virtio,format=raw,snapshot=on",
                self.root.display()
            ),
            "-drive".to_string(),
            format!("file={},if=virtio,format=raw,readonly=on", tools.display()),
        ];
        if let Some(script) = run_script {
            qemu_args.push("-fw_cfg".into());
            qemu_args.push(format!("name=opt/xxcapture/run,file={}", script.display()));
        }
        BootTarget {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: "root=LABEL=xxcap-root rw console=ttyS0 panic=-1 quiet loglevel=4".into(),
            qemu_args,
        }
    }
}

/// The files of the C library's installation kit, relative to
/// `guest-userland/capi` (what its `install.sh` reads), and the examples.
const CAPI_KIT: &[&str] = &[
    "install.sh",
    "Cargo.toml",
    "xxcapture.pc.in",
    "include/xxcapture.h",
    "examples/capture.c",
    "examples/api_tour.c",
];

/// Builds the C library (`libxxcapture.so` and `.a`, for the host's glibc,
/// which the Debian images' is not older than) and copies it with its
/// installation kit into `dir`: `install.sh --from dir/lib` installs it.
/// Returns the bytes copied.
fn capi_kit(dir: &Path) -> Result<u64> {
    let step = |what: &str, e: std::io::Error| Error::Step(format!("C library kit: {what}: {e}"));
    let root = repo_root();
    run(
        "building libxxcapture.so and libxxcapture.a (cargo build --release -p xxcapture-c)",
        Command::new(env!("CARGO")).current_dir(&root).args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "xxcapture-c",
        ]),
    )?;
    let capi = root.join("guest-userland/capi");
    let mut bytes = 0;
    for file in CAPI_KIT {
        let dest = dir.join(file);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| step("create", e))?;
        }
        bytes += std::fs::copy(capi.join(file), &dest).map_err(|e| step(file, e))?;
    }
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).map_err(|e| step("create", e))?;
    for file in ["libxxcapture.so", "libxxcapture.a"] {
        let src = target_dir().join("release").join(file);
        bytes += std::fs::copy(&src, lib.join(file)).map_err(|e| step(file, e))?;
    }
    Ok(bytes)
}

/// The QEMU options of a raw disk `file` the guest sees as
/// `/dev/disk/by-id/virtio-<serial>` (virtio-blk, by its serial, whatever
/// the order of the other disks): where a guest application writes its
/// output for the host to read.
pub fn output_disk_args(file: &Path, serial: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=none,id={serial}", file.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive={serial},serial={serial}"),
    ]
}

/// Writes `out`: a small read-only ext4 disk labelled `xxcap-tools` with
/// the static guest tools in `bin/` (the image mounts it on
/// `/opt/xxcapture` and puts `/opt/xxcapture/bin` in `PATH`) and the C
/// library's kit in `capi/` (the image installs it into `/usr/local` at
/// boot). Per run, so the image need not be rebuilt when they change.
pub fn tools_disk(artifacts: &Artifacts, out: &Path) -> Result<()> {
    tools_disk_with(artifacts, out, None)
}

/// [`tools_disk`] with the files of the folder `extra` added at its root.
pub fn tools_disk_with(artifacts: &Artifacts, out: &Path, extra: Option<&Path>) -> Result<()> {
    let step = |what: &str, e: std::io::Error| Error::Step(format!("tools disk: {what}: {e}"));
    let tree = out.with_extension("d");
    let bin = tree.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| step("create", e))?;
    capi_kit(&tree.join("capi"))?;
    if let Some(extra) = extra {
        let status = Command::new("cp")
            .arg("-a")
            .arg(extra.join("."))
            .arg(&tree)
            .status()
            .map_err(|e| step("cannot start cp", e))?;
        if !status.success() {
            return Err(Error::Step(format!(
                "tools disk: copying {}: {status}",
                extra.display()
            )));
        }
    }
    let mut bytes = dir_bytes(&tree);
    for (src, name) in [
        (&artifacts.xxcap, "xxcap"),
        (&artifacts.xxcap_test, "xxcap-test"),
    ] {
        bytes += std::fs::copy(src, bin.join(name)).map_err(|e| step(name, e))?;
    }
    // Room for the ext4 metadata and journal on top of the files.
    let mib = bytes / (1 << 20) + 16;
    let file = std::fs::File::create(out).map_err(|e| step("create", e))?;
    file.set_len(mib << 20).map_err(|e| step("size", e))?;
    let mke2fs = ["/sbin/mke2fs", "/usr/sbin/mke2fs"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mke2fs"));
    let status = Command::new(&mke2fs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "xxcap-tools",
            "-m",
            "0",
            "-d",
        ])
        .arg(&tree)
        .arg(out)
        .status()
        .map_err(|e| step(&format!("cannot start {}", mke2fs.display()), e))?;
    let _ = std::fs::remove_dir_all(&tree);
    if status.success() {
        Ok(())
    } else {
        Err(Error::Step(format!("tools disk: mke2fs failed ({status})")))
    }
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}
