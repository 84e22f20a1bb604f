//! Plugin API v7 shim: the only parts of the API this plugin uses whose C
//! signatures differ from the v5 bindings of `qemu-plugin-sys` 10.1.0-v2.
//!
//! QEMU 11.1.3 loads only plugins that export `qemu_plugin_version` = 7
//! (minimum = current = 7), and v7 added a `userdata` argument to the
//! callbacks registered here:
//!
//! | registration (id, cb, userdata)          | v7 callback             |
//! |------------------------------------------|-------------------------|
//! | `qemu_plugin_register_vcpu_tb_trans_cb`  | `cb(tb, userdata)`      |
//! | `qemu_plugin_register_vcpu_init_cb`      | `cb(vcpu_index, userdata)` |
//! | `qemu_plugin_register_atexit_cb`         | `cb(userdata)`          |
//!
//! Everything else used here (instruction and memory-callback registration,
//! meminfo and hwaddr queries) is unchanged and comes from `qemu-plugin-sys`.
//! Drop this file when that crate speaks v7.

use std::ffi::{c_int, c_uint, c_void};

use qemu_plugin_sys::{qemu_plugin_id_t, qemu_plugin_tb};

/// The API version this plugin is built against; QEMU reads this symbol
/// before calling `qemu_plugin_install`.
pub const API_VERSION: c_int = 7;

#[no_mangle]
#[used]
pub static qemu_plugin_version: c_int = API_VERSION;

pub type TbTransCb = unsafe extern "C" fn(tb: *mut qemu_plugin_tb, userdata: *mut c_void);
pub type VcpuCb = unsafe extern "C" fn(vcpu_index: c_uint, userdata: *mut c_void);
pub type AtexitCb = unsafe extern "C" fn(userdata: *mut c_void);

mod raw {
    use super::*;

    unsafe extern "C" {
        pub fn qemu_plugin_register_vcpu_tb_trans_cb(
            id: qemu_plugin_id_t,
            cb: TbTransCb,
            userdata: *mut c_void,
        );
        pub fn qemu_plugin_register_vcpu_init_cb(
            id: qemu_plugin_id_t,
            cb: VcpuCb,
            userdata: *mut c_void,
        );
        pub fn qemu_plugin_register_atexit_cb(
            id: qemu_plugin_id_t,
            cb: AtexitCb,
            userdata: *mut c_void,
        );
    }
}

// The wrappers pass a null userdata: the plugin's state is a process-wide
// `OnceLock` (ffi/mod.rs), which needs no pointer to stay valid.

pub fn register_vcpu_tb_trans(id: qemu_plugin_id_t, cb: TbTransCb) {
    // SAFETY: `id` is the id QEMU handed to `qemu_plugin_install`; `cb` has
    // exactly the v7 signature declared above and lives as long as the
    // library; a null userdata is allowed and never dereferenced by QEMU.
    unsafe { raw::qemu_plugin_register_vcpu_tb_trans_cb(id, cb, std::ptr::null_mut()) }
}

pub fn register_vcpu_init(id: qemu_plugin_id_t, cb: VcpuCb) {
    // SAFETY: as in `register_vcpu_tb_trans`.
    unsafe { raw::qemu_plugin_register_vcpu_init_cb(id, cb, std::ptr::null_mut()) }
}

pub fn register_atexit(id: qemu_plugin_id_t, cb: AtexitCb) {
    // SAFETY: as in `register_vcpu_tb_trans`.
    unsafe { raw::qemu_plugin_register_atexit_cb(id, cb, std::ptr::null_mut()) }
}
