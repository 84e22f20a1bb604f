//! The card: identity, reset state and the entry point for task files.

use thiserror::Error;
use xxcapture_abi::{
    caps, control, fill_c_string, format, irq, regs, status, Identity, ABI_VERSION, CONFIG_SIZE,
    MAGIC, MAX_COMMANDS, MODEL_DOUBLE_X,
};
use zerocopy::IntoBytes;

use crate::regfile::RegisterFile;
use crate::taskfile::{self, Outcome};

const PAGE_SIZE: u64 = 4096;
/// Smallest card RAM: one 1080p YUYV frame plus slack.
pub const MIN_CARD_RAM: u64 = 4 << 20;
/// Largest card RAM: CARD_RAM_PAGES is a 32-bit page count, and guests must
/// fit the region in a PCI BAR.
pub const MAX_CARD_RAM: u64 = 4 << 30;

/// How the card is built: fixed for its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardConfig {
    /// Bytes of on-card RAM: a multiple of 4 KiB in `MIN_CARD_RAM..=MAX_CARD_RAM`.
    pub card_ram_size: u64,
    /// Serial number, at most 15 bytes.
    pub serial: String,
    /// Hardware revision reported in the identity.
    pub revision: u32,
}

impl Default for CardConfig {
    fn default() -> Self {
        Self {
            card_ram_size: 64 << 20,
            serial: "XX-0000001".into(),
            revision: 1,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("card RAM size {0} is not a multiple of 4 KiB")]
    RamNotPageAligned(u64),
    #[error("card RAM size {size} is outside {min}..={max} bytes")]
    RamOutOfRange { size: u64, min: u64, max: u64 },
    #[error("serial number {0:?} is longer than 15 bytes")]
    SerialTooLong(String),
}

impl CardConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.card_ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(ConfigError::RamNotPageAligned(self.card_ram_size));
        }
        if !(MIN_CARD_RAM..=MAX_CARD_RAM).contains(&self.card_ram_size) {
            return Err(ConfigError::RamOutOfRange {
                size: self.card_ram_size,
                min: MIN_CARD_RAM,
                max: MAX_CARD_RAM,
            });
        }
        if self.serial.len() > 15 {
            return Err(ConfigError::SerialTooLong(self.serial.clone()));
        }
        Ok(())
    }
}

/// Product name in the identity.
pub const PRODUCT_NAME: &str = "Double X capture (emulated)";

/// The Double X card.
#[derive(Clone, Debug)]
pub struct Card {
    config: CardConfig,
    capabilities: u32,
    regs: RegisterFile,
    epoch_ns: u64,
    requests: u64,
    commands: u64,
}

impl Card {
    pub fn new(config: CardConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut card = Card {
            config,
            // DMA, card-RAM mapping, events and capture come with later
            // revisions; their ops answer NOT_SUPPORTED until then.
            capabilities: caps::TASK_FILE,
            regs: RegisterFile::default(),
            epoch_ns: 0,
            requests: 0,
            commands: 0,
        };
        card.reset(0);
        Ok(card)
    }

    pub fn config(&self) -> &CardConfig {
        &self.config
    }

    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// Power-on state. `now_ns` becomes time zero of DEVICE_TIME_NS.
    pub fn reset(&mut self, now_ns: u64) {
        self.epoch_ns = now_ns;
        self.requests = 0;
        self.commands = 0;
        let mut r = RegisterFile::default();
        r.store(regs::ID, MAGIC.into());
        r.store(regs::VERSION, ABI_VERSION.into());
        r.store(regs::CAPS, self.capabilities.into());
        r.store(regs::CONTROL, control::ENABLE.into());
        r.store(regs::STATUS, status::READY.into());
        r.store(regs::INT_MASK, irq::ALL.into());
        r.store(regs::INT_COALESCE_COUNT, 1);
        r.store(regs::FRAME_FORMAT, format::YUYV.into());
        r.store(regs::FRAME_WIDTH, 640);
        r.store(regs::FRAME_HEIGHT, 480);
        r.store(regs::FRAME_RATE, 30);
        r.store(regs::CARD_RAM_PAGES, self.config.card_ram_size / PAGE_SIZE);
        self.regs = r;
    }

    pub fn identity(&self) -> Identity {
        let mut id = Identity {
            magic: MAGIC.into(),
            abi_version: ABI_VERSION.into(),
            model: MODEL_DOUBLE_X.into(),
            revision: self.config.revision.into(),
            capabilities: self.capabilities.into(),
            max_commands: MAX_COMMANDS.into(),
            card_ram_size: self.config.card_ram_size.into(),
            status: u32::try_from(self.regs.peek(regs::STATUS))
                .unwrap_or(0)
                .into(),
            ..Identity::default()
        };
        fill_c_string(&mut id.serial, &self.config.serial);
        fill_c_string(&mut id.name, PRODUCT_NAME);
        id
    }

    /// The device config space, as QEMU reads it (whole, little-endian).
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut out = [0u8; CONFIG_SIZE];
        out.copy_from_slice(self.identity().as_bytes());
        out
    }

    pub fn registers(&self) -> &RegisterFile {
        &self.regs
    }

    /// Task files received since reset.
    pub fn request_count(&self) -> u64 {
        self.requests
    }

    /// Commands executed since reset.
    pub fn command_count(&self) -> u64 {
        self.commands
    }

    /// Executes a task file in place: `buf` holds the header and the command
    /// blocks; on return it holds the result. Never panics, whatever `buf`
    /// holds. A buffer too short for a header is left untouched.
    pub fn execute(&mut self, buf: &mut [u8], now_ns: u64) -> Outcome {
        self.requests = self.requests.wrapping_add(1);
        // The card's own registers reflect this request before it runs, so a
        // task file can read the counters including itself.
        self.regs
            .store(regs::REQUEST_COUNT, self.requests & 0xffff_ffff);
        self.regs
            .store(regs::DEVICE_TIME_NS, now_ns.saturating_sub(self.epoch_ns));
        let limits = self.limits();
        let outcome = taskfile::execute(&mut self.regs, limits, buf);
        if outcome.error == xxcapture_abi::TfError::Ok {
            self.commands = self.commands.wrapping_add(u64::from(outcome.executed));
        }
        self.regs
            .store(regs::COMMAND_COUNT, self.commands & 0xffff_ffff);
        outcome
    }

    fn limits(&self) -> taskfile::Limits {
        taskfile::Limits {
            card_ram_size: self.config.card_ram_size,
            capabilities: self.capabilities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxcapture_abi::read_c_string;

    #[test]
    fn config_is_validated() {
        let ok = CardConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let odd = CardConfig {
            card_ram_size: (64 << 20) + 1,
            ..ok.clone()
        };
        assert_eq!(
            odd.validate(),
            Err(ConfigError::RamNotPageAligned((64 << 20) + 1))
        );
        let tiny = CardConfig {
            card_ram_size: 4096,
            ..ok.clone()
        };
        assert!(matches!(
            tiny.validate(),
            Err(ConfigError::RamOutOfRange { .. })
        ));
        let long = CardConfig {
            serial: "0123456789abcdef".into(),
            ..ok
        };
        assert!(matches!(
            long.validate(),
            Err(ConfigError::SerialTooLong(_))
        ));
    }

    #[test]
    fn identity_and_config_space_agree() {
        let card = Card::new(CardConfig::default()).expect("card");
        let id = card.identity();
        assert_eq!(id.magic.get(), MAGIC);
        assert_eq!(id.card_ram_size.get(), 64 << 20);
        assert_eq!(read_c_string(&id.serial), "XX-0000001");
        assert_eq!(read_c_string(&id.name), PRODUCT_NAME);
        assert_eq!(id.status.get() & status::READY, status::READY);
        let bytes = card.config_space();
        assert_eq!(&bytes[0..4], b"XXCP");
        assert_eq!(&bytes[24..32], &(64u64 << 20).to_le_bytes());
    }
}
