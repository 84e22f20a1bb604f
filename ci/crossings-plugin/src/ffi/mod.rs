//! The QEMU side: `qemu_plugin_install`, the callbacks, and every call into
//! QEMU's C API. All `unsafe` code of the crate is here.
//!
//! No panic crosses into QEMU: every `extern "C"` entry point runs its body
//! under `catch_unwind` and treats a panic as "do nothing" (or, at install,
//! as a refusal to load).

mod shim;

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use qemu_plugin_sys as sys;

use crate::config::Config;
use crate::counters::{attribute, is_marker_candidate, marker_tag, Event, Tracker};
use crate::report::{render, write_atomically, RunInfo};

struct Plugin {
    config: Config,
    target: String,
    tracker: Mutex<Tracker>,
    /// Serializes rendering + writing the JSON, so the file's content only
    /// moves forward.
    writer: Mutex<()>,
    vcpus: AtomicU32,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Plugin {
    fn write_report(&self, complete: bool) -> std::io::Result<()> {
        let _writing = lock(&self.writer);
        let text = {
            let tracker = lock(&self.tracker);
            render(
                &self.config,
                &tracker,
                &RunInfo {
                    api_version: shim::API_VERSION,
                    target: &self.target,
                    vcpus: self.vcpus.load(Ordering::Relaxed),
                    complete,
                },
            )
        };
        write_atomically(&self.config.out, &text)
    }

    /// Writes the report from a callback, where an error can only be told.
    fn write_report_or_warn(&self, complete: bool) {
        if let Err(e) = self.write_report(complete) {
            eprintln!(
                "xxcapture-crossings: cannot write {}: {e}",
                self.config.out.display()
            );
        }
    }
}

/// Copies the C strings QEMU passes; `None` on a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid for this call.
unsafe fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-null and NUL-terminated per this function's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// Entry point: QEMU calls this once, after checking `qemu_plugin_version`.
#[no_mangle]
pub extern "C" fn qemu_plugin_install(
    id: sys::qemu_plugin_id_t,
    info: *const sys::qemu_info_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: QEMU passes a pointer to a `qemu_info_t` valid during this
        // call (checked for null), and `argc` pointers to NUL-terminated
        // argument strings in `argv`.
        unsafe { install(id, info, argc, argv) }
    }));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            eprintln!("xxcapture-crossings: {msg}");
            -1
        }
        Err(_) => -1,
    }
}

/// # Safety
/// As for `qemu_plugin_install`: `info` valid (or null) for the call,
/// `argv` holding `argc` valid C strings.
unsafe fn install(
    id: sys::qemu_plugin_id_t,
    info: *const sys::qemu_info_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> Result<(), String> {
    // SAFETY: null-checked; the struct is only read during this call.
    let info = unsafe { info.as_ref() }.ok_or("QEMU passed no qemu_info_t")?;
    if !info.system_emulation {
        return Err("needs system emulation (qemu-system-*): user-mode has no device I/O".into());
    }
    // SAFETY: `target_name` is a C string or null, valid during this call.
    let target = unsafe { c_string(info.target_name) }.unwrap_or_default();
    let mut args = Vec::new();
    if !argv.is_null() {
        for i in 0..usize::try_from(argc).unwrap_or(0) {
            // SAFETY: `argv` has `argc` entries (QEMU's contract).
            let p = unsafe { *argv.add(i) };
            // SAFETY: each entry is a NUL-terminated string or null.
            if let Some(arg) = unsafe { c_string(p) } {
                args.push(arg);
            }
        }
    }
    let config = Config::parse(&args)?;
    let plugin = Plugin {
        config,
        target,
        tracker: Mutex::new(Tracker::default()),
        writer: Mutex::new(()),
        vcpus: AtomicU32::new(0),
    };
    if PLUGIN.set(plugin).is_err() {
        return Err("loaded twice in one QEMU: load it once".into());
    }
    let plugin = PLUGIN.get().ok_or("plugin state vanished")?;
    // Fail now, not at exit, when the output cannot be written.
    plugin
        .write_report(false)
        .map_err(|e| format!("cannot write out={}: {e}", plugin.config.out.display()))?;
    shim::register_vcpu_init(id, on_vcpu_init);
    shim::register_vcpu_tb_trans(id, on_tb_trans);
    shim::register_atexit(id, on_exit);
    Ok(())
}

unsafe extern "C" fn on_vcpu_init(vcpu_index: c_uint, _userdata: *mut c_void) {
    let _ = catch_unwind(|| {
        if let Some(p) = PLUGIN.get() {
            p.vcpus
                .fetch_max(vcpu_index.saturating_add(1), Ordering::Relaxed);
        }
    });
}

/// Translation: a memory callback on every instruction (QEMU only calls it
/// for the instructions that do load or store).
unsafe extern "C" fn on_tb_trans(tb: *mut sys::qemu_plugin_tb, _userdata: *mut c_void) {
    let _ = catch_unwind(|| {
        // SAFETY: `tb` is the block being translated, valid during this
        // callback; the instruction handles are used only inside it.
        let n = unsafe { sys::qemu_plugin_tb_n_insns(tb) };
        for i in 0..n {
            // SAFETY: `i < n` for this `tb`.
            let insn = unsafe { sys::qemu_plugin_tb_get_insn(tb, i) };
            if insn.is_null() {
                continue;
            }
            // SAFETY: `insn` belongs to `tb` and is valid during this
            // callback; `on_mem` has the (unchanged) v7 memory-callback
            // signature and needs no userdata.
            unsafe {
                sys::qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_mem),
                    sys::qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    sys::qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                    std::ptr::null_mut(),
                )
            };
        }
    });
}

/// Every guest load and store: the hot path. RAM accesses return after two
/// queries unless `range=` options are given.
unsafe extern "C" fn on_mem(
    vcpu_index: c_uint,
    info: sys::qemu_plugin_meminfo_t,
    vaddr: u64,
    _userdata: *mut c_void,
) {
    let _ = catch_unwind(|| {
        let Some(p) = PLUGIN.get() else { return };
        // SAFETY: `info` and `vaddr` are this callback's arguments; the
        // returned handle is valid until the callback returns and is not kept.
        let hw = unsafe { sys::qemu_plugin_get_hwaddr(info, vaddr) };
        if hw.is_null() {
            return;
        }
        // SAFETY: `hw` is the non-null handle of this access.
        let is_io = unsafe { sys::qemu_plugin_hwaddr_is_io(hw) };
        if !is_io && p.config.ranges.is_empty() {
            return;
        }
        // SAFETY: as above.
        let phys = unsafe { sys::qemu_plugin_hwaddr_phys_addr(hw) };
        let name: &str = if is_io {
            // SAFETY: QEMU returns an interned C string (valid for the
            // plugin's lifetime) or, defensively, null.
            let ptr = unsafe { sys::qemu_plugin_hwaddr_device_name(hw) };
            if ptr.is_null() {
                ""
            } else {
                // SAFETY: non-null interned NUL-terminated string.
                unsafe { CStr::from_ptr(ptr) }.to_str().unwrap_or("")
            }
        } else {
            "RAM"
        };
        let Some(attr) = attribute(name, is_io, phys, &p.config.ranges) else {
            return;
        };
        // SAFETY: queries on this callback's `info`.
        let is_store = unsafe { sys::qemu_plugin_mem_is_store(info) };
        // SAFETY: as above.
        let shift = unsafe { sys::qemu_plugin_mem_size_shift(info) };
        let bytes = 1u64.checked_shl(shift).unwrap_or(0);
        let marker = if p.config.markers && is_marker_candidate(attr.class, phys, bytes, is_store) {
            // SAFETY: as above; the value of a store is available in the
            // after-access memory callback (API v3 and later).
            let value = unsafe { sys::qemu_plugin_mem_get_value(info) };
            let v = match value.type_ {
                // SAFETY: the tag says which union member QEMU filled.
                sys::qemu_plugin_mem_value_type::QEMU_PLUGIN_MEM_VALUE_U32 => {
                    u64::from(unsafe { value.data.u32_ })
                }
                _ => u64::MAX,
            };
            marker_tag(v)
        } else {
            None
        };
        let event = lock(&p.tracker).access(&attr, is_io, is_store, bytes, marker, vcpu_index);
        if let Event::Snapshot(_) = event {
            p.write_report_or_warn(false);
        }
    });
}

unsafe extern "C" fn on_exit(_userdata: *mut c_void) {
    let _ = catch_unwind(|| {
        if let Some(p) = PLUGIN.get() {
            p.write_report_or_warn(true);
        }
    });
}
