//! Register storage, indexed like the ABI's register table.

use xxcapture_abi::regs::{self, Access, RegisterDesc, REGISTERS};

/// The card's registers. Cloning is cheap, which lets the executor run a task
/// file against a copy and commit it only when every command succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterFile {
    values: Vec<u64>,
}

impl Default for RegisterFile {
    fn default() -> Self {
        Self {
            values: vec![0; REGISTERS.len()],
        }
    }
}

fn slot(offset: u16) -> Option<usize> {
    REGISTERS.iter().position(|r| r.offset == offset)
}

impl RegisterFile {
    /// The register's descriptor, if the offset names one.
    pub fn describe(offset: u16) -> Option<&'static RegisterDesc> {
        regs::find(offset)
    }

    /// What a read returns: the stored value, or 0 for write-only registers.
    pub fn read(&self, offset: u16) -> Option<u64> {
        let index = slot(offset)?;
        Some(match REGISTERS[index].access {
            Access::WriteOneToClear | Access::WriteOneToSet => 0,
            Access::ReadOnly | Access::ReadWrite => self.values[index],
        })
    }

    /// Stores a value with no access checks: for the card's own updates
    /// (status, counters). Unknown offsets are ignored.
    pub fn store(&mut self, offset: u16, value: u64) {
        if let Some(index) = slot(offset) {
            self.values[index] = value;
        }
    }

    /// The stored value with no read side effects (0 for unknown offsets).
    pub fn peek(&self, offset: u16) -> u64 {
        slot(offset).map_or(0, |index| self.values[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_only_registers_read_zero() {
        let mut file = RegisterFile::default();
        file.store(regs::INT_ACK, 0x1f);
        assert_eq!(file.read(regs::INT_ACK), Some(0));
        file.store(regs::SCRATCH, 7);
        assert_eq!(file.read(regs::SCRATCH), Some(7));
        assert_eq!(file.read(0x002), None);
    }
}
