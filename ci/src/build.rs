//! Provisioning and building everything the VM needs.
//!
//! `build_all` runs `images/provision`, builds `xxcapture.ko` against the
//! provisioned kernel headers, the static guest tools, `xxcapd`, and the
//! initramfs. `locate` only finds them, for tests that must not run cargo
//! (a test already runs inside cargo).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The target the guest tools are built for, statically linked.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XXCAP_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/xxcapture")
}

/// Where built artifacts go: ignored folders of the checkout.
pub fn build_dir() -> PathBuf {
    repo_root().join(".cache/build")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// What `images/provision` produced.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub qemu: PathBuf,
    pub qemu_version: String,
    pub kernel_abi: String,
    pub kernel: PathBuf,
    pub kernel_modules: PathBuf,
    pub kernel_headers: PathBuf,
}

impl Provisioned {
    /// Reads `provisioned.env` from the cache.
    pub fn load() -> Result<Self> {
        let path = cache_dir().join("provisioned.env");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::Missing(format!(
                "{} (the VM images are not provisioned: run `images/provision`)",
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
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Missing(format!(
                    "{} ({key}; re-run `images/provision`)",
                    p.display()
                )))
            }
        };
        Ok(Provisioned {
            qemu: file("XXCAP_QEMU")?,
            qemu_version: get("XXCAP_QEMU_VERSION")?,
            kernel_abi: get("XXCAP_KABI")?,
            kernel: file("XXCAP_KERNEL")?,
            kernel_modules: file("XXCAP_KMODULES")?,
            kernel_headers: file("XXCAP_KDIR")?,
        })
    }
}

/// Everything a VM run needs.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub provisioned: Provisioned,
    pub module: PathBuf,
    pub xxcap: PathBuf,
    /// The guest's test and benchmark tool.
    pub xxcap_test: PathBuf,
    pub xxcapd: PathBuf,
    pub initramfs: PathBuf,
    /// The crossings tracer (QEMU TCG plugin).
    pub crossings_plugin: PathBuf,
}

fn must_exist(path: PathBuf, how: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Missing(format!("{} ({how})", path.display())))
    }
}

const BUILD_HINT: &str = "build it with `cargo xxvm build`; `ci/test` does";

impl Artifacts {
    /// Finds artifacts built earlier; names the first missing piece.
    pub fn locate() -> Result<Self> {
        let provisioned = Provisioned::load()?;
        Ok(Artifacts {
            provisioned,
            module: must_exist(build_dir().join("xxcapture.ko"), BUILD_HINT)?,
            xxcap: must_exist(
                target_dir().join(GUEST_TARGET).join("release/xxcap"),
                BUILD_HINT,
            )?,
            xxcap_test: must_exist(
                target_dir().join(GUEST_TARGET).join("release/xxcap-test"),
                BUILD_HINT,
            )?,
            xxcapd: must_exist(target_dir().join("release/xxcapd"), BUILD_HINT)?,
            initramfs: must_exist(build_dir().join("initramfs.cpio.gz"), BUILD_HINT)?,
            crossings_plugin: must_exist(
                target_dir().join("release/libxxcapture_crossings.so"),
                BUILD_HINT,
            )?,
        })
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xxvm: {what}");
    let status = cmd
        .status()
        .map_err(|e| Error::Step(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Step(format!("{what} failed ({status})")))
    }
}

/// Kernel modules of the benchmark VM beyond the test VM's: the kernel's
/// vivid virtual capture driver (its dependencies come along), loaded at
/// boot, for the comparison with what users would pick instead.
pub const BENCH_KMODS: &[&str] = &["vivid", "uio_pci_generic"];

/// Packs the guest's initramfs at `out`: busybox, /init, the guest tools,
/// the module, virtio (and virtio_blk for the capture tests' output disk),
/// the V4L2 and videobuf2 modules the module needs, plus `extra_kmods`
/// from the provisioned kernel, and the `extra_adds` (`SRC:DEST`).
fn pack_initramfs(out: &Path, extra_kmods: &[&str], extra_adds: &[String]) -> Result<()> {
    let root = repo_root();
    let release = target_dir().join(GUEST_TARGET).join("release");
    let mut cmd = Command::new(root.join("images/mkinitramfs"));
    cmd.arg("--out")
        .arg(out)
        .arg("--init")
        .arg(root.join("ci/guest/init"))
        .arg("--add")
        .arg(format!("{}:/bin/xxcap", release.join("xxcap").display()))
        .arg("--add")
        .arg(format!(
            "{}:/bin/xxcap-test",
            release.join("xxcap-test").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:/bin/edu-probe",
            release.join("edu-probe").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:/lib/xxcapture/xxcapture.ko",
            build_dir().join("xxcapture.ko").display()
        ))
        .args(["--kmod", "virtio_blk"])
        // xxcapture.ko's V4L2 node: the modules it links against (with
        // videodev, videobuf2-common, -memops and mc), loaded before it.
        .args(["--kmod", "videobuf2-v4l2", "--kmod", "videobuf2-dma-sg"])
        .stdout(std::process::Stdio::null());
    for kmod in extra_kmods {
        cmd.args(["--kmod", kmod]);
    }
    for add in extra_adds {
        cmd.arg("--add").arg(add);
    }
    run(&format!("packing {}", out.display()), &mut cmd)
}

/// The benchmark VM's initramfs (the test one plus [`BENCH_KMODS`]), next
/// to the test one; call after [`build_all`].
pub fn bench_initramfs() -> Result<PathBuf> {
    let out = build_dir().join("initramfs-bench.cpio.gz");
    pack_initramfs(&out, BENCH_KMODS, &[])?;
    Ok(out)
}

/// The V4L2 test VM's initramfs: the test one plus `v4l2-compliance` and
/// `v4l2-ctl` from Debian 13's v4l-utils with their libraries (fetched
/// once by `ci/guest/fetch-v4l-utils` into the build directory), and
/// vivid, whose buffers the DMABUF tests import; next to the test one;
/// call after [`build_all`].
pub fn v4l2_initramfs() -> Result<PathBuf> {
    let tools = build_dir().join("v4l-utils");
    run(
        "fetching v4l-utils (ci/guest/fetch-v4l-utils)",
        Command::new(repo_root().join("ci/guest/fetch-v4l-utils"))
            .arg(&tools)
            .stdout(std::process::Stdio::null()),
    )?;
    let adds = [
        ("bin/v4l2-compliance", "/bin/v4l2-compliance"),
        ("bin/v4l2-ctl", "/bin/v4l2-ctl"),
        ("lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"),
        ("lib64", "/lib64"),
    ]
    .map(|(src, dest)| format!("{}:{dest}", tools.join(src).display()));
    let out = build_dir().join("initramfs-v4l2.cpio.gz");
    pack_initramfs(&out, &["vivid"], &adds)?;
    Ok(out)
}

/// Provisions, builds and packs everything; returns where it all is.
pub fn build_all() -> Result<Artifacts> {
    let root = repo_root();
    run(
        "provisioning QEMU, guest kernel and headers (images/provision)",
        Command::new(root.join("images/provision")).stdout(std::process::Stdio::null()),
    )?;
    let provisioned = Provisioned::load()?;
    std::fs::create_dir_all(build_dir())
        .map_err(|e| Error::Step(format!("create {}: {e}", build_dir().display())))?;

    run(
        &format!("building xxcapture.ko for {}", provisioned.kernel_abi),
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(root.join("guest-driver"))
            .arg(format!("KDIR={}", provisioned.kernel_headers.display())),
    )?;
    std::fs::copy(
        root.join("guest-driver/xxcapture.ko"),
        build_dir().join("xxcapture.ko"),
    )
    .map_err(|e| Error::Step(format!("copy xxcapture.ko: {e}")))?;

    run(
        "building the guest tools (static xxcap, xxcap-test, edu-probe)",
        Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                GUEST_TARGET,
                "-p",
                "xxcap",
                "-p",
                "xxcap-test",
                "-p",
                "edu-probe",
            ])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
    )?;
    run(
        "building xxcapd and the crossings tracer",
        Command::new(env!("CARGO")).current_dir(&root).args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "xxcapd",
            "-p",
            "xxcapture-crossings",
        ]),
    )?;
    pack_initramfs(&build_dir().join("initramfs.cpio.gz"), &[], &[])?;
    Artifacts::locate()
}
