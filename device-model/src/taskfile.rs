//! The task-file executor.
//!
//! A task file runs as one transaction: the commands execute in order against
//! a copy of the register file, and the copy replaces the card's registers
//! only when every command succeeded. On the first failure no register has
//! changed and the header names the error and the failing command's index.
//! Data that DMA commands before the failing one moved stays moved: the
//! transaction covers registers, not memory.
//! The checks and their order are in `SPEC.md` ("Validation order"); the
//! guest driver applies the same static checks before a request is sent.

use xxcapture_abi::regs::{self, value_allowed, Access, RegisterDesc, ValueRule, Width};
use xxcapture_abi::{
    caps, control, irq, source, status, Command, Op, SgEntry, TaskFileHeader, TfError, CMD_SIZE,
    MAX_COMMANDS, TF_HEADER_SIZE,
};
use zerocopy::FromBytes;

use crate::capture::{FrameGeometry, Ring, BUSY_WHILE_CAPTURING};
use crate::dma::{command_entries, DmaDirection, DmaPort};
use crate::regfile::RegisterFile;

/// What the executor needs to know about the card.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub card_ram_size: u64,
    pub capabilities: u32,
    pub file_source: Option<FrameGeometry>,
    /// The request is an asynchronous submission: DMA_TRANSFER_NONBLOCK is
    /// allowed (elsewhere BAD_OP: a waiting caller cannot also not wait).
    pub asynchronous: bool,
    /// STATUS.DMA_ERROR latched by the card when the request started:
    /// reads of STATUS show it until a DMA_RESET in this task file.
    pub dma_error: bool,
    /// The task file came from the submission ring (SPEC §15): raw-address
    /// DMA (DMA_TRANSFER_BLOCK / NONBLOCK) is REFUSED.
    pub ring: bool,
}

/// The DMA engine of one request: its scatter-gather table and the port
/// that moves the data.
pub(crate) struct Dma<'a> {
    pub sg: &'a [SgEntry],
    pub port: &'a mut dyn DmaPort,
    /// DMA_DONE / DMA_ERROR of the commands that ran: they latch even when
    /// the task file fails (the data moved, or the transfer failed).
    pub latched: u32,
}

/// Effects of a committed task file beyond its registers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Effects {
    /// CONTROL.CAPTURE went from 0 to 1 (at least once).
    pub capture_started: bool,
    /// Writes of 1 to INT_RAISE.TEST while INT_MASK enabled TEST: each one
    /// event record, in command order.
    pub test_records: u32,
    /// CONTROL.DMA_RESET was written: the card's DMA_ERROR latch clears.
    pub dma_reset: bool,
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

pub(crate) fn execute(
    regs: &mut RegisterFile,
    limits: Limits,
    dma: &mut Dma<'_>,
    buf: &mut [u8],
) -> (Outcome, Effects) {
    let mut effects = Effects::default();
    let outcome = run(regs, limits, dma, &mut effects, buf);
    if let Ok((header, _)) = TaskFileHeader::mut_from_prefix(buf) {
        header.error = (outcome.error as u32).into();
        header.count = outcome.index.into();
    }
    if outcome.error != TfError::Ok {
        effects = Effects::default();
    }
    (outcome, effects)
}

/// Output of one command, written into its block when the task file commits.
enum Output {
    Value(u64),
    Length(u64),
}

fn run(
    regs: &mut RegisterFile,
    limits: Limits,
    dma: &mut Dma<'_>,
    effects: &mut Effects,
    buf: &mut [u8],
) -> Outcome {
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
    let mut outputs: Vec<(usize, Output)> = Vec::new();
    for (index, cmd) in commands.iter().enumerate() {
        let index_u32 = u32::try_from(index).unwrap_or(u32::MAX);
        match run_command(&mut scratch, limits, dma, effects, cmd) {
            Ok(Some(out)) => outputs.push((index, out)),
            Ok(None) => {}
            Err(error) => return Outcome::fail(error, index_u32),
        }
    }
    *regs = scratch;
    for (index, out) in outputs {
        match out {
            Output::Value(value) => commands[index].value = value.into(),
            Output::Length(moved) => commands[index].length = moved.into(),
        }
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

/// Where the guest side of a DMA command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DmaBuffer {
    /// Entries of the request, from this index (the wire `value`).
    Entries { first_entry: u64 },
    /// A registered buffer (`flags`) and the offset in it (`value`).
    Registered { id: u32, offset: u64 },
}

/// A DMA command that passed the card's range checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DmaCommand {
    pub direction: DmaDirection,
    pub buffer: DmaBuffer,
    pub card_offset: u64,
    pub length: u64,
}

/// A command that passed the static checks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Checked {
    Register(Op, &'static RegisterDesc),
    Dma(DmaCommand),
}

/// Static checks 1-7 of the validation order: those that depend only on the
/// command, the register table and the card's fixed limits.
pub(crate) fn check_static(cmd: &Command, limits: Limits) -> Result<Checked, TfError> {
    let op = Op::from_raw(cmd.op.get()).ok_or(TfError::BadOp)?;
    // The ring names memory only by registered buffer: checked before
    // anything else about a raw DMA command, so it neither runs nor
    // latches DMA_ERROR.
    if limits.ring && matches!(op, Op::DmaTransferBlock | Op::DmaTransferNonBlock) {
        return Err(TfError::Refused);
    }
    if op == Op::DmaTransferNonBlock && !limits.asynchronous {
        return Err(TfError::BadOp);
    }
    if op == Op::DmaBuffer {
        // flags names the registered buffer.
        return check_dma(cmd, limits).map(Checked::Dma);
    }
    if cmd.flags.get() != 0 {
        return Err(TfError::Reserved);
    }
    if matches!(op, Op::DmaTransferBlock | Op::DmaTransferNonBlock) {
        return check_dma(cmd, limits).map(Checked::Dma);
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
        check_rule(desc, value, limits)?;
    }
    Ok(Checked::Register(op, desc))
}

/// Check 3 for DMA ops: the card must have a DMA engine, the direction must
/// be one of the two, and the transfer must lie inside card RAM.
fn check_dma(cmd: &Command, limits: Limits) -> Result<DmaCommand, TfError> {
    if limits.capabilities & caps::DMA == 0 {
        return Err(TfError::NotSupported);
    }
    let direction = DmaDirection::from_raw(cmd.reg.get()).ok_or(TfError::BadValue)?;
    let (card_offset, length) = (cmd.mask.get(), cmd.length.get());
    let end = card_offset.checked_add(length);
    if length == 0 || end.is_none_or(|end| end > limits.card_ram_size) {
        return Err(TfError::DmaRange);
    }
    let buffer = if cmd.op.get() == Op::DmaBuffer as u16 {
        DmaBuffer::Registered {
            id: cmd.flags.get(),
            offset: cmd.value.get(),
        }
    } else {
        DmaBuffer::Entries {
            first_entry: cmd.value.get(),
        }
    };
    Ok(DmaCommand {
        direction,
        buffer,
        card_offset,
        length,
    })
}

fn check_rule(desc: &RegisterDesc, value: u64, limits: Limits) -> CmdResult {
    let ok = match desc.rule {
        ValueRule::CardRamOffset => value < limits.card_ram_size,
        _ => value_allowed(desc, value),
    };
    // The file source exists only when the backend was given a file.
    let missing_file = desc.offset == regs::FRAME_SOURCE
        && value == u64::from(source::FILE)
        && limits.file_source.is_none();
    if ok && !missing_file {
        Ok(())
    } else {
        Err(TfError::BadValue)
    }
}

/// Runs one command against `regs`. Returns the command's output.
fn run_command(
    regs: &mut RegisterFile,
    limits: Limits,
    dma: &mut Dma<'_>,
    effects: &mut Effects,
    cmd: &Command,
) -> Result<Option<Output>, TfError> {
    let checked = check_static(cmd, limits);
    let is_dma = matches!(
        Op::from_raw(cmd.op.get()),
        Some(Op::DmaTransferBlock | Op::DmaTransferNonBlock | Op::DmaBuffer)
    );
    let (op, desc) = match checked {
        Ok(Checked::Register(op, desc)) => (op, desc),
        Ok(Checked::Dma(command)) => {
            let result = run_dma(regs, dma, command);
            latch_dma(regs, dma, result.is_ok());
            return result.map(Some);
        }
        Err(error) => {
            // A DMA command the engine refused still ends as DMA_ERROR (a
            // card without a DMA engine has nothing to latch).
            if is_dma
                && !matches!(
                    error,
                    TfError::NotSupported | TfError::BadOp | TfError::Refused
                )
            {
                latch_dma(regs, dma, false);
            }
            return Err(error);
        }
    };
    let offset = desc.offset;
    let current = regs.peek(offset);
    let (value, mask) = (cmd.value.get(), cmd.mask.get());
    // The bits the command writes, and which bits it touches.
    let (bits, touched) = match op {
        Op::GetRegister | Op::GetAddress => {
            let mut value = regs.read(offset).unwrap_or(0);
            if offset == regs::STATUS && limits.dma_error && !effects.dma_reset {
                value |= u64::from(status::DMA_ERROR);
            }
            return Ok(Some(Output::Value(value)));
        }
        Op::SetRegister | Op::SetAddress => (value, desc.writable),
        Op::ClearRegister => (0, desc.writable),
        Op::SetToRegister => (value & mask, mask),
        // check_static answered these.
        Op::DmaTransferBlock | Op::DmaTransferNonBlock | Op::DmaBuffer => {
            return Err(TfError::Device)
        }
    };
    match desc.access {
        Access::ReadOnly => Err(TfError::ReadOnly),
        Access::WriteOneToClear => {
            let pending = regs.peek(regs::INT_STATUS);
            regs.store(regs::INT_STATUS, pending & !(bits & touched));
            Ok(None)
        }
        Access::WriteOneToSet => {
            let raised = bits & touched & desc.writable;
            let pending = regs.peek(regs::INT_STATUS);
            regs.store(regs::INT_STATUS, pending | raised);
            if raised & u64::from(irq::TEST) != 0
                && regs.peek(regs::INT_MASK) & u64::from(irq::TEST) != 0
            {
                effects.test_records = effects.test_records.saturating_add(1);
            }
            Ok(None)
        }
        Access::ReadWrite => {
            let new = (current & !touched) | (bits & touched);
            check_rule(desc, new, limits)?;
            if BUSY_WHILE_CAPTURING.contains(&offset) && capturing(regs) {
                return Err(TfError::Busy);
            }
            write_effects(regs, limits, effects, offset, new)?;
            Ok(None)
        }
    }
}

/// DMA_DONE or DMA_ERROR for one DMA command, in the transaction's
/// INT_STATUS and (for a task file that fails later) outside it.
/// A failure also sets STATUS.DMA_ERROR, which the card latches outside
/// the transaction (see `Card::execute_request`).
fn latch_dma(regs: &mut RegisterFile, dma: &mut Dma<'_>, ok: bool) {
    let cause = if ok { irq::DMA_DONE } else { irq::DMA_ERROR };
    dma.latched |= cause;
    let pending = regs.peek(regs::INT_STATUS);
    regs.store(regs::INT_STATUS, pending | u64::from(cause));
}

fn capturing(regs: &RegisterFile) -> bool {
    regs.peek(regs::CONTROL) & u64::from(control::CAPTURE) != 0
}

/// Moves the data of a checked DMA command and records it in the DMA
/// registers. Returns the bytes moved (the command's output `length`).
fn run_dma(
    regs: &mut RegisterFile,
    dma: &mut Dma<'_>,
    command: DmaCommand,
) -> Result<Output, TfError> {
    match command.buffer {
        DmaBuffer::Entries { first_entry } => {
            let entries = command_entries(dma.sg, first_entry, command.length)
                .map_err(|_| TfError::DmaFault)?;
            dma.port
                .transfer(command.direction, command.card_offset, entries)
                .map_err(|_| TfError::DmaFault)?;
        }
        DmaBuffer::Registered { id, offset } => {
            let entries = dma
                .port
                .registered_entries(id, offset, command.length)
                .map_err(|_| TfError::DmaFault)?;
            dma.port
                .transfer(command.direction, command.card_offset, &entries)
                .map_err(|_| TfError::DmaFault)?;
        }
    }
    let low = command.length & 0xffff_ffff;
    regs.store(regs::DMA_CARD_ADDR, command.card_offset);
    regs.store(regs::DMA_LENGTH, low);
    regs.store(regs::DMA_DIRECTION, command.direction.raw().into());
    regs.store(regs::DMA_TRANSFERRED, low);
    Ok(Output::Length(command.length))
}

/// Stores a validated value and applies the register's side effects.
fn write_effects(
    regs: &mut RegisterFile,
    limits: Limits,
    effects: &mut Effects,
    offset: u16,
    new: u64,
) -> CmdResult {
    match offset {
        regs::CONTROL => return write_control(regs, limits, effects, new),
        regs::FRAME_SOURCE if new == u64::from(source::FILE) => {
            // Selecting the file loads its geometry into the frame registers.
            if let Some(g) = limits.file_source {
                regs.store(regs::FRAME_FORMAT, g.format.code().into());
                regs.store(regs::FRAME_WIDTH, g.width.into());
                regs.store(regs::FRAME_HEIGHT, g.height.into());
            }
        }
        _ => {}
    }
    regs.store(offset, new);
    Ok(())
}

fn write_control(
    regs: &mut RegisterFile,
    limits: Limits,
    effects: &mut Effects,
    new: u64,
) -> CmdResult {
    let bits = u32::try_from(new).map_err(|_| TfError::BadValue)?;
    let was_capturing = capturing(regs);
    let wants_capture = bits & control::CAPTURE != 0;
    if wants_capture && limits.capabilities & caps::CAPTURE == 0 {
        return Err(TfError::NotSupported);
    }
    let stream = bits & control::STREAM != 0;
    if stream && limits.capabilities & caps::STREAMING == 0 {
        return Err(TfError::NotSupported);
    }
    // STREAM is sampled at capture start: it cannot change under a running
    // capture (a write that also stops capture may change it).
    let old_stream = regs.peek(regs::CONTROL) & u64::from(control::STREAM) != 0;
    if was_capturing && wants_capture && stream != old_stream {
        return Err(TfError::Busy);
    }
    if bits & control::DMA_RESET != 0 {
        effects.dma_reset = true;
        regs.store(regs::DMA_TRANSFERRED, 0);
        let st = regs.peek(regs::STATUS);
        regs.store(
            regs::STATUS,
            st & !u64::from(status::DMA_BUSY | status::DMA_ERROR),
        );
    }
    let st = regs.peek(regs::STATUS);
    if wants_capture && !was_capturing {
        let geometry = start_geometry(regs, limits)?;
        // Streaming capture writes into queued buffers: no ring.
        let ring = if stream {
            Ring::none(geometry).ok_or(TfError::BadValue)?
        } else {
            Ring::plan(geometry, limits.card_ram_size).ok_or(TfError::BadValue)?
        };
        regs.store(regs::RING_SLOTS, ring.ring_slots.into());
        regs.store(regs::RING_SLOT_SIZE, ring.slot_size.into());
        regs.store(regs::FRAME_COUNTER, 0);
        regs.store(regs::DROPPED_FRAMES, 0);
        regs.store(regs::RING_RELEASE, 0);
        regs.store(regs::STATUS, st | u64::from(status::CAPTURING));
        effects.capture_started = true;
    } else if !wants_capture && was_capturing {
        regs.store(regs::STATUS, st & !u64::from(status::CAPTURING));
    }
    // DMA_RESET is a strobe: it never stays set.
    regs.store(regs::CONTROL, u64::from(bits & !control::DMA_RESET));
    Ok(())
}

/// The geometry of a capture starting with the current frame registers:
/// BAD_VALUE when the file source is selected and the registers no longer
/// name its geometry. (The ring, when there is one, must hold 2 frames.)
fn start_geometry(regs: &RegisterFile, limits: Limits) -> Result<FrameGeometry, TfError> {
    let narrow = |offset| u32::try_from(regs.peek(offset)).map_err(|_| TfError::BadValue);
    let geometry = FrameGeometry {
        format: xxcapture_abi::frame::PixelFormat::from_code(narrow(regs::FRAME_FORMAT)?)
            .ok_or(TfError::BadValue)?,
        width: narrow(regs::FRAME_WIDTH)?,
        height: narrow(regs::FRAME_HEIGHT)?,
    };
    if regs.peek(regs::FRAME_SOURCE) == u64::from(source::FILE)
        && limits.file_source != Some(geometry)
    {
        return Err(TfError::BadValue);
    }
    Ok(geometry)
}

#[cfg(test)]
mod capture_tests;
#[cfg(test)]
mod dma_tests;
#[cfg(test)]
mod irq_tests;
#[cfg(test)]
mod tests;
