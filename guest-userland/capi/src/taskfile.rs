//! Task files: build a batch of register commands and DMA transfers,
//! execute it as one request, read the results.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

use xx::abi::{dma_dir, TaskFile, TaskFileResult, TfError, MAX_COMMANDS};

use crate::card::xxcap_card;
use crate::error::{guard, Failure, Outcome};
use crate::{handle, handle_mut, put};

/// DMA direction: from the caller's buffer into card RAM.
pub const XXCAP_DMA_TO_CARD: u32 = 0;
/// DMA direction: from card RAM into the caller's buffer.
pub const XXCAP_DMA_FROM_CARD: u32 = 1;

/// Commands one task file holds at most.
pub const XXCAP_MAX_COMMANDS: u32 = 4096;

/// A task file being built, and the results of its last execution
/// (opaque).
pub struct xxcap_taskfile {
    tf: TaskFile,
    result: Option<TaskFileResult>,
}

/// The outcome of `xxcap_tf_execute`.
#[repr(C)]
pub struct xxcap_tf_result {
    /// The card's task-file error code: 0 when every command ran
    /// (`xxcap_tf_error_string` names the others).
    pub error: u32,
    /// Index of the failing command; the command count on success.
    pub index: u32,
}

/// Makes an empty task file.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_new(out: *mut *mut xxcap_taskfile) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let tf = Box::new(xxcap_taskfile {
            tf: TaskFile::new(),
            result: None,
        });
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(tf)) };
        Ok(0)
    })
}

/// Frees a task file. NULL is accepted.
///
/// # Safety
/// `tf` is NULL or a live task file, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_free(tf: *mut xxcap_taskfile) {
    let _ = guard(|| {
        if !tf.is_null() {
            // SAFETY: made by Box::into_raw in xxcap_tf_new, freed once.
            drop(unsafe { Box::from_raw(tf) });
        }
        Ok(0)
    });
}

/// Removes every command and result, to build a new task file.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_reset(tf: *mut xxcap_taskfile) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { handle_mut(tf, "tf") }?;
        t.tf = TaskFile::new();
        t.result = None;
        Ok(0)
    })
}

/// Commands in the task file.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_count(tf: *const xxcap_taskfile) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { handle(tf, "tf") }?;
        Ok(crate::count(t.tf.len()))
    })
}

/// Appends a command; returns its index, or -E2BIG when full.
fn add(tf: *mut xxcap_taskfile, push: impl FnOnce(&mut TaskFile) -> usize) -> c_int {
    guard(|| {
        // SAFETY: every caller passes its own `tf` argument, which its
        // contract says is a live task file.
        let t = unsafe { handle_mut(tf, "tf") }?;
        if t.tf.len() >= MAX_COMMANDS as usize {
            return Err(Failure::new(
                libc::E2BIG,
                format!("a task file holds at most {MAX_COMMANDS} commands"),
            ));
        }
        t.result = None;
        Ok(crate::count(push(&mut t.tf)))
    })
}

/// Appends GET of the 32-bit register at `reg`; returns the command's
/// index, for `xxcap_tf_value` after execution.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_get(tf: *mut xxcap_taskfile, reg: u16) -> c_int {
    add(tf, |t| t.get_register(reg))
}

/// Appends GET of the 64-bit register at `reg`; returns its index.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_get64(tf: *mut xxcap_taskfile, reg: u16) -> c_int {
    add(tf, |t| t.get_address(reg))
}

/// Appends SET of the 32-bit register at `reg`; returns its index.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_set(tf: *mut xxcap_taskfile, reg: u16, value: u32) -> c_int {
    add(tf, |t| t.set_register(reg, value))
}

/// Appends SET of the 64-bit register at `reg`; returns its index.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_set64(tf: *mut xxcap_taskfile, reg: u16, value: u64) -> c_int {
    add(tf, |t| t.set_address(reg, value))
}

/// Appends CLEAR (write 0) of the register at `reg`; returns its index.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_clear(tf: *mut xxcap_taskfile, reg: u16) -> c_int {
    add(tf, |t| t.clear_register(reg))
}

/// Appends SET_TO: the bits of `mask` take the value of the same bits of
/// `value`, atomically. Returns its index.
///
/// # Safety
/// `tf` is a live task file.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_set_to(
    tf: *mut xxcap_taskfile,
    reg: u16,
    value: u32,
    mask: u32,
) -> c_int {
    add(tf, |t| t.set_to_register(reg, value, mask))
}

/// Appends a DMA transfer of `len` bytes between `buffer` and card RAM at
/// `card_offset`, `direction` `XXCAP_DMA_TO_CARD` or `XXCAP_DMA_FROM_CARD`.
/// `blocking` nonzero: the transfer finishes before the next command.
/// Returns its index; after execution `xxcap_tf_length` gives the bytes
/// moved.
///
/// # Safety
/// `tf` is a live task file. `buffer` must stay valid for `len` bytes
/// (writable for `XXCAP_DMA_FROM_CARD`) until the task file has executed,
/// or, when submitted, until its completion.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_dma(
    tf: *mut xxcap_taskfile,
    direction: u32,
    buffer: *mut c_void,
    len: u64,
    card_offset: u64,
    blocking: c_int,
) -> c_int {
    let dir = match direction {
        XXCAP_DMA_TO_CARD => dma_dir::TO_CARD,
        XXCAP_DMA_FROM_CARD => dma_dir::FROM_CARD,
        _ => return guard(|| Err(Failure::inval(format!("unknown direction {direction}")))),
    };
    if buffer.is_null() && len > 0 {
        return guard(|| Err(Failure::null("buffer")));
    }
    add(tf, |t| {
        t.dma(blocking != 0, dir, buffer as u64, card_offset, len)
    })
}

pub(crate) fn task_file(tf: &xxcap_taskfile) -> &TaskFile {
    &tf.tf
}

/// Executes the task file as one request and waits for it. Returns 0 when
/// every command ran, -EIO when the card failed a command (`result`, if
/// not NULL, says which and why; the commands before it ran), or another
/// negative errno when the request itself failed. Results of GET and DMA
/// commands are then read with `xxcap_tf_value` and `xxcap_tf_length`.
///
/// # Safety
/// `card` is a live handle, `tf` a live task file whose DMA buffers are
/// valid; `result` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_execute(
    card: *const xxcap_card,
    tf: *mut xxcap_taskfile,
    result: *mut xxcap_tf_result,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let t = unsafe { handle_mut(tf, "tf") }?;
        t.result = None;
        let res = c.card.execute(&t.tf)?;
        let out = xxcap_tf_result {
            error: res.error as u32,
            index: res.index,
        };
        let failed = res.error != TfError::Ok;
        let message = format!(
            "task file failed at command {}: {}",
            res.index,
            res.error.description()
        );
        t.result = Some(res);
        // SAFETY: the caller's contract.
        unsafe { crate::put_opt(result, out) };
        if failed {
            return Err(Failure::new(libc::EIO, message));
        }
        Ok(0)
    })
}

fn command_output(tf: *const xxcap_taskfile, index: usize) -> Outcome<xx::abi::Command> {
    // SAFETY: every caller passes its own `tf` argument, which its
    // contract says is a live task file.
    let t = unsafe { handle(tf, "tf") }?;
    let res = t
        .result
        .as_ref()
        .ok_or_else(|| Failure::inval("the task file has not been executed"))?;
    res.commands
        .get(index)
        .copied()
        .ok_or_else(|| Failure::new(libc::ERANGE, format!("no command {index}")))
}

/// The value a GET command at `index` read, after execution.
///
/// # Safety
/// `tf` is a live task file; `value` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_value(
    tf: *const xxcap_taskfile,
    index: usize,
    value: *mut u64,
) -> c_int {
    guard(|| {
        let cmd = command_output(tf, index)?;
        // SAFETY: the caller's contract.
        unsafe { put(value, cmd.value.get(), "value") }?;
        Ok(0)
    })
}

/// The bytes a DMA command at `index` moved, after execution.
///
/// # Safety
/// `tf` is a live task file; `length` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_tf_length(
    tf: *const xxcap_taskfile,
    index: usize,
    length: *mut u64,
) -> c_int {
    guard(|| {
        let cmd = command_output(tf, index)?;
        // SAFETY: the caller's contract.
        unsafe { put(length, cmd.length.get(), "length") }?;
        Ok(0)
    })
}

/// A description of a task-file error code (`xxcap_tf_result.error`,
/// `xxcap_completion.status`). Static; never NULL.
#[no_mangle]
pub extern "C" fn xxcap_tf_error_string(code: u32) -> *const c_char {
    static TABLE: OnceLock<Vec<(u32, CString)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        TfError::ALL
            .iter()
            .map(|e| {
                let text = CString::new(e.description()).unwrap_or_default();
                (*e as u32, text)
            })
            .collect()
    });
    match table.iter().find(|(c, _)| *c == code) {
        Some((_, text)) => text.as_ptr(),
        None => c"unknown task-file error".as_ptr(),
    }
}
