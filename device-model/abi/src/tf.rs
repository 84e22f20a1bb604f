//! Building task files and reading their results, in the spirit of the
//! Double X design's `cmdSetToRegister` macros: each call appends one command block.

use zerocopy::{FromBytes, IntoBytes};

use crate::{Command, Op, TaskFileHeader, TfError, CMD_SIZE, MAX_COMMANDS, TF_HEADER_SIZE};

/// A task file under construction. Each builder method returns the index of
/// the command it appended, to find its output later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFile {
    commands: Vec<Command>,
}

impl TaskFile {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Appends a raw command block (for tests that need malformed commands).
    pub fn push_raw(&mut self, cmd: Command) -> usize {
        self.commands.push(cmd);
        self.commands.len() - 1
    }

    fn push(&mut self, op: Op, reg: u16, value: u64, mask: u64) -> usize {
        self.push_raw(Command {
            op: (op as u16).into(),
            reg: reg.into(),
            flags: 0.into(),
            value: value.into(),
            mask: mask.into(),
            length: 0.into(),
        })
    }

    pub fn get_register(&mut self, reg: u16) -> usize {
        self.push(Op::GetRegister, reg, 0, 0)
    }

    pub fn set_register(&mut self, reg: u16, value: u32) -> usize {
        self.push(Op::SetRegister, reg, value.into(), 0)
    }

    pub fn clear_register(&mut self, reg: u16) -> usize {
        self.push(Op::ClearRegister, reg, 0, 0)
    }

    /// Bits in `mask` take the value of the same bits in `value`, atomically.
    pub fn set_to_register(&mut self, reg: u16, value: u32, mask: u32) -> usize {
        self.push(Op::SetToRegister, reg, value.into(), mask.into())
    }

    pub fn get_address(&mut self, reg: u16) -> usize {
        self.push(Op::GetAddress, reg, 0, 0)
    }

    pub fn set_address(&mut self, reg: u16, value: u64) -> usize {
        self.push(Op::SetAddress, reg, value, 0)
    }

    /// A DMA transfer between the buffer at user address `buffer` and card
    /// RAM at `card_offset`; `direction` is `dma_dir::TO_CARD` or
    /// `FROM_CARD`. The buffer must stay valid until the task file returns.
    pub fn dma(
        &mut self,
        blocking: bool,
        direction: u16,
        buffer: u64,
        card_offset: u64,
        length: u64,
    ) -> usize {
        let op = if blocking {
            Op::DmaTransferBlock
        } else {
            Op::DmaTransferNonBlock
        };
        self.push_raw(Command {
            op: (op as u16).into(),
            reg: direction.into(),
            flags: 0.into(),
            value: buffer.into(),
            mask: card_offset.into(),
            length: length.into(),
        })
    }

    /// A DMA transfer between `length` bytes at `buffer_offset` of the
    /// registered buffer `id` and card RAM at `card_offset`.
    pub fn dma_buffer(
        &mut self,
        direction: u16,
        id: u32,
        buffer_offset: u64,
        card_offset: u64,
        length: u64,
    ) -> usize {
        self.push_raw(Command {
            op: (Op::DmaBuffer as u16).into(),
            reg: direction.into(),
            flags: id.into(),
            value: buffer_offset.into(),
            mask: card_offset.into(),
            length: length.into(),
        })
    }

    /// Serializes header and commands into the wire format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let count = u32::try_from(self.commands.len()).unwrap_or(u32::MAX);
        let header = TaskFileHeader {
            error: 0.into(),
            count: count.into(),
            flags: 0.into(),
            reserved: 0.into(),
        };
        let mut out = Vec::with_capacity(TF_HEADER_SIZE + self.commands.len() * CMD_SIZE);
        out.extend_from_slice(header.as_bytes());
        for cmd in &self.commands {
            out.extend_from_slice(cmd.as_bytes());
        }
        out
    }
}

/// The result part of an executed task file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFileResult {
    /// `TfError::Ok`, or why the command at `index` failed.
    pub error: TfError,
    /// Index of the failing command; the command count on success.
    pub index: u32,
    /// The command blocks as the card returned them (outputs filled in).
    pub commands: Vec<Command>,
}

/// Why an executed task-file buffer could not be read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, or not header + whole command blocks.
    BadLength(usize),
    /// An error code this ABI does not define.
    UnknownError(u32),
}

impl TaskFileResult {
    /// Reads an executed task file.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let (header, rest) = TaskFileHeader::read_from_prefix(bytes)
            .map_err(|_| ParseError::BadLength(bytes.len()))?;
        if rest.len() % CMD_SIZE != 0 || rest.len() / CMD_SIZE > MAX_COMMANDS as usize {
            return Err(ParseError::BadLength(bytes.len()));
        }
        let commands = rest
            .chunks_exact(CMD_SIZE)
            .filter_map(|chunk| Command::read_from_bytes(chunk).ok())
            .collect();
        let raw = header.error.get();
        let error = TfError::from_raw(raw).ok_or(ParseError::UnknownError(raw))?;
        Ok(TaskFileResult {
            error,
            index: header.count.get(),
            commands,
        })
    }

    /// Output value of command `index` (GetRegister/GetAddress).
    pub fn value(&self, index: usize) -> Option<u64> {
        self.commands.get(index).map(|c| c.value.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs;

    #[test]
    fn builder_layout() {
        let mut tf = TaskFile::new();
        assert_eq!(tf.get_register(regs::ID), 0);
        assert_eq!(tf.set_to_register(regs::CONTROL, 0xffff_ffff, 0x4), 1);
        let bytes = tf.to_bytes();
        assert_eq!(bytes.len(), TF_HEADER_SIZE + 2 * CMD_SIZE);
        assert_eq!(&bytes[4..8], &2u32.to_le_bytes());
        let back = TaskFileResult::parse(&bytes).expect("parse");
        assert_eq!(back.error, TfError::Ok);
        assert_eq!(back.commands, tf.commands());
    }

    #[test]
    fn parse_rejects_bad_lengths() {
        assert_eq!(
            TaskFileResult::parse(&[0; 4]),
            Err(ParseError::BadLength(4))
        );
        assert_eq!(
            TaskFileResult::parse(&[0; 17]),
            Err(ParseError::BadLength(17))
        );
        let mut bytes = TaskFile::new().to_bytes();
        bytes[0] = 99;
        assert_eq!(
            TaskFileResult::parse(&bytes),
            Err(ParseError::UnknownError(99))
        );
    }
}
