//! Writable properties of a card: the driver's sysfs attributes in
//! `/sys/class/xxcapture/xxcaptureN/`, read and written without opening the
//! card (see the driver's README, "Writable properties").

use std::ffi::c_int;

use xx::Properties;

use crate::error::{guard, Failure, Outcome};
use crate::put;

/// Property: the driver's time limit of this card's requests, in ms
/// (1..3600000; writing 0 follows the module parameter again).
pub const XXCAP_PROP_TIMEOUT_MS: u32 = 0;
/// Property: device events each later open of this card queues
/// (16..65536; writing 0 follows the module parameter again).
pub const XXCAP_PROP_EVENT_QUEUE_DEPTH: u32 = 1;
/// Property: the card's INT_COALESCE_COUNT (0..65535).
pub const XXCAP_PROP_INT_COALESCE_COUNT: u32 = 2;
/// Property: the card's INT_COALESCE_USEC (0..1000000).
pub const XXCAP_PROP_INT_COALESCE_USEC: u32 = 3;

fn prop_name(prop: u32) -> Outcome<&'static str> {
    use xx::props::name;
    match prop {
        XXCAP_PROP_TIMEOUT_MS => Ok(name::TIMEOUT_MS),
        XXCAP_PROP_EVENT_QUEUE_DEPTH => Ok(name::EVENT_QUEUE_DEPTH),
        XXCAP_PROP_INT_COALESCE_COUNT => Ok(name::INT_COALESCE_COUNT),
        XXCAP_PROP_INT_COALESCE_USEC => Ok(name::INT_COALESCE_USEC),
        other => Err(Failure::inval(format!("unknown property {other}"))),
    }
}

/// Reads property `prop` (`XXCAP_PROP_*`) of card `index` into `*value`.
/// `-EINVAL` for an unknown property; the two interrupt properties ask the
/// card (`-ETIMEDOUT`, `-EIO`, `-ENODEV` as the driver says).
///
/// # Safety
/// `value` is valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn xxcap_get_property(index: u32, prop: u32, value: *mut u32) -> c_int {
    guard(|| {
        let v = Properties::for_index(index).get(prop_name(prop)?)?;
        // SAFETY: the caller's contract.
        unsafe { put(value, v, "value") }?;
        Ok(0)
    })
}

/// Sets property `prop` (`XXCAP_PROP_*`) of card `index` to `value`.
/// `-EINVAL` for an unknown property or a value out of its range (nothing
/// changes), `-EBUSY` while a controlling open holds the card (this
/// process's included), `-EACCES` without root.
#[no_mangle]
pub extern "C" fn xxcap_set_property(index: u32, prop: u32, value: u32) -> c_int {
    guard(|| {
        Properties::for_index(index).set(prop_name(prop)?, value)?;
        Ok(0)
    })
}
