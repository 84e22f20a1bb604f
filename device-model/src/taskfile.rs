//! The task-file executor.
//!
//! A task file runs as one transaction: the commands execute in order against
//! a copy of the register file, and the copy replaces the card's registers
//! only when every command succeeded. On the first failure nothing has taken
//! effect and the header names the error and the failing command's index.
//! The checks and their order are in `SPEC.md` ("Validation order"); the
//! guest driver applies the same static checks before a request is sent.

use xxcapture_abi::regs::{self, value_allowed, Access, RegisterDesc, ValueRule, Width};
use xxcapture_abi::{
    caps, control, status, Command, Op, TaskFileHeader, TfError, CMD_SIZE, MAX_COMMANDS,
    TF_HEADER_SIZE,
};
use zerocopy::FromBytes;

use crate::regfile::RegisterFile;

/// What the executor needs to know about the card.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub card_ram_size: u64,
    pub capabilities: u32,
}

/// Result of one task file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub error: TfError,
    /// Index of the failing command, or the command count on success.
    pub index: u32,
    /// Commands that took effect (all or none).
    pub executed: u32,
}

impl Outcome {
    fn fail(error: TfError, index: u32) -> Self {
        Outcome {
            error,
            index,
            executed: 0,
        }
    }
}

type CmdResult = Result<(), TfError>;

pub(crate) fn execute(regs: &mut RegisterFile, limits: Limits, buf: &mut [u8]) -> Outcome {
    let outcome = run(regs, limits, buf);
    if let Ok((header, _)) = TaskFileHeader::mut_from_prefix(buf) {
        header.error = (outcome.error as u32).into();
        header.count = outcome.index.into();
    }
    outcome
}

fn run(regs: &mut RegisterFile, limits: Limits, buf: &mut [u8]) -> Outcome {
    let Ok((header, body)) = TaskFileHeader::mut_from_prefix(buf) else {
        return Outcome::fail(TfError::BadCount, 0);
    };
    if header.flags.get() != 0 || header.reserved.get() != 0 {
        return Outcome::fail(TfError::Reserved, 0);
    }
    let count = header.count.get();
    let expected_len = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(CMD_SIZE));
    if count == 0 || count > MAX_COMMANDS || expected_len != Some(body.len()) {
        return Outcome::fail(TfError::BadCount, 0);
    }
    debug_assert_eq!(
        TF_HEADER_SIZE + body.len(),
        TF_HEADER_SIZE + count as usize * CMD_SIZE
    );

    let Ok(commands) = <[Command]>::mut_from_bytes(body) else {
        return Outcome::fail(TfError::BadCount, 0);
    };
    let mut scratch = regs.clone();
    let mut outputs: Vec<(usize, u64)> = Vec::new();
    for (index, cmd) in commands.iter().enumerate() {
        let index_u32 = u32::try_from(index).unwrap_or(u32::MAX);
        match run_command(&mut scratch, limits, cmd) {
            Ok(Some(value)) => outputs.push((index, value)),
            Ok(None) => {}
            Err(error) => return Outcome::fail(error, index_u32),
        }
    }
    *regs = scratch;
    for (index, value) in outputs {
        commands[index].value = value.into();
    }
    Outcome {
        error: TfError::Ok,
        index: count,
        executed: count,
    }
}

fn is_write(op: Op) -> bool {
    matches!(
        op,
        Op::SetRegister | Op::SetAddress | Op::ClearRegister | Op::SetToRegister
    )
}

/// Static checks 1-7 of the validation order: those that depend only on the
/// command and the register table. Returns the register's descriptor.
pub(crate) fn check_static(
    cmd: &Command,
    card_ram_size: u64,
) -> Result<(Op, &'static RegisterDesc), TfError> {
    let op = Op::from_raw(cmd.op.get()).ok_or(TfError::BadOp)?;
    if cmd.flags.get() != 0 {
        return Err(TfError::Reserved);
    }
    if matches!(op, Op::DmaTransferBlock | Op::DmaTransferNonBlock) {
        // This revision has no DMA engine (no caps::DMA): refused with a
        // documented code, never silently accepted.
        return Err(TfError::NotSupported);
    }
    let desc = regs::find(cmd.reg.get()).ok_or(TfError::BadRegister)?;
    let wants = match op {
        Op::GetAddress | Op::SetAddress => Width::W64,
        _ => Width::W32,
    };
    if desc.width != wants {
        return Err(TfError::BadRegister);
    }
    let (value, mask) = (cmd.value.get(), cmd.mask.get());
    if cmd.length.get() != 0
        || (mask != 0 && op != Op::SetToRegister)
        || (value != 0 && op == Op::ClearRegister)
    {
        return Err(TfError::Reserved);
    }
    if is_write(op) && desc.access == Access::ReadOnly {
        return Err(TfError::ReadOnly);
    }
    let writable = desc.writable;
    match op {
        Op::SetRegister => {
            if value > u64::from(u32::MAX) {
                return Err(TfError::BadValue);
            }
            if value & !writable != 0 {
                return Err(TfError::ReadOnly);
            }
        }
        Op::SetAddress if value & !writable != 0 => return Err(TfError::ReadOnly),
        Op::SetToRegister => {
            if mask > u64::from(u32::MAX) || value > u64::from(u32::MAX) {
                return Err(TfError::BadValue);
            }
            if mask & !writable != 0 {
                return Err(TfError::ReadOnly);
            }
        }
        _ => {}
    }
    // Check 8 for whole-register writes, which needs no current state.
    if matches!(op, Op::SetRegister | Op::SetAddress) && desc.access == Access::ReadWrite {
        check_rule(desc, value, card_ram_size)?;
    }
    Ok((op, desc))
}

fn check_rule(desc: &RegisterDesc, value: u64, card_ram_size: u64) -> CmdResult {
    let ok = match desc.rule {
        ValueRule::CardRamOffset => value < card_ram_size,
        _ => value_allowed(desc, value),
    };
    if ok {
        Ok(())
    } else {
        Err(TfError::BadValue)
    }
}

/// Runs one command against `regs`. Returns the output value of Get ops.
fn run_command(
    regs: &mut RegisterFile,
    limits: Limits,
    cmd: &Command,
) -> Result<Option<u64>, TfError> {
    let (op, desc) = check_static(cmd, limits.card_ram_size)?;
    let offset = desc.offset;
    let current = regs.peek(offset);
    let (value, mask) = (cmd.value.get(), cmd.mask.get());
    // The bits the command writes, and which bits it touches.
    let (bits, touched) = match op {
        Op::GetRegister | Op::GetAddress => {
            return Ok(Some(regs.read(offset).unwrap_or(0)));
        }
        Op::SetRegister | Op::SetAddress => (value, desc.writable),
        Op::ClearRegister => (0, desc.writable),
        Op::SetToRegister => (value & mask, mask),
        Op::DmaTransferBlock | Op::DmaTransferNonBlock => return Err(TfError::NotSupported),
    };
    match desc.access {
        Access::ReadOnly => Err(TfError::ReadOnly),
        Access::WriteOneToClear => {
            let pending = regs.peek(regs::INT_STATUS);
            regs.store(regs::INT_STATUS, pending & !(bits & touched));
            Ok(None)
        }
        Access::WriteOneToSet => {
            let pending = regs.peek(regs::INT_STATUS);
            regs.store(regs::INT_STATUS, pending | (bits & touched & desc.writable));
            Ok(None)
        }
        Access::ReadWrite => {
            let new = (current & !touched) | (bits & touched);
            check_rule(desc, new, limits.card_ram_size)?;
            write_effects(regs, limits, offset, new)?;
            Ok(None)
        }
    }
}

/// Stores a validated value and applies the register's side effects.
fn write_effects(regs: &mut RegisterFile, limits: Limits, offset: u16, new: u64) -> CmdResult {
    if offset == regs::CONTROL {
        let bits = u32::try_from(new).map_err(|_| TfError::BadValue)?;
        if bits & control::CAPTURE != 0 && limits.capabilities & caps::CAPTURE == 0 {
            return Err(TfError::NotSupported);
        }
        if bits & control::DMA_RESET != 0 {
            regs.store(regs::DMA_TRANSFERRED, 0);
            let st = regs.peek(regs::STATUS);
            regs.store(
                regs::STATUS,
                st & !u64::from(status::DMA_BUSY | status::DMA_ERROR),
            );
        }
        // DMA_RESET is a strobe: it never stays set.
        regs.store(offset, u64::from(bits & !control::DMA_RESET));
        return Ok(());
    }
    regs.store(offset, new);
    Ok(())
}

#[cfg(test)]
mod tests;
