//! The card: identity, reset state and the entry point for task files.

use thiserror::Error;
use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::{
    caps, control, fill_c_string, irq, regs, source, status, Identity, SgEntry, ABI_VERSION,
    CONFIG_SIZE, MAGIC, MAX_COMMANDS, MODEL_DOUBLE_X,
};
use zerocopy::IntoBytes;

use crate::capture::{CaptureSession, FrameGeometry, Ring};
use crate::dma::{DmaPort, NoDma};
use crate::interrupts::{InterruptController, IrqConfig};
use crate::regfile::RegisterFile;
use crate::taskfile::{self, Outcome};

const PAGE_SIZE: u64 = 4096;
/// Smallest card RAM: one 1080p YUYV frame plus slack.
pub const MIN_CARD_RAM: u64 = 4 << 20;
/// Largest card RAM: CARD_RAM_PAGES is a 32-bit page count, and guests must
/// fit the region in a PCI BAR.
pub const MAX_CARD_RAM: u64 = 4 << 30;

/// Every capability bit this ABI defines.
pub const ALL_CAPS: u32 = caps::TASK_FILE
    | caps::DMA
    | caps::CARD_RAM_SHM
    | caps::EVENTS
    | caps::CAPTURE
    | caps::STREAMING
    | caps::RING;

/// The capabilities of a capture-capable card (what `xxcapd` serves).
pub const CAPTURE_CARD_CAPS: u32 = ALL_CAPS;

/// Reset values of the frame registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameDefaults {
    pub geometry: FrameGeometry,
    /// Frames per second, `0..=regs::MAX_FRAME_RATE`; 0: free-running.
    pub fps: u32,
}

impl Default for FrameDefaults {
    fn default() -> Self {
        FrameDefaults {
            geometry: FrameGeometry {
                format: PixelFormat::Yuyv,
                width: 640,
                height: 480,
            },
            fps: 30,
        }
    }
}

/// How the card is built: fixed for its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardConfig {
    /// Bytes of on-card RAM: a multiple of 4 KiB in `MIN_CARD_RAM..=MAX_CARD_RAM`.
    pub card_ram_size: u64,
    /// Serial number, at most 15 bytes.
    pub serial: String,
    /// Hardware revision reported in the identity.
    pub revision: u32,
    /// Capability bits (`caps::*`); must include `TASK_FILE`. The default is
    /// `TASK_FILE` only (revision 1); a capture card has
    /// [`CAPTURE_CARD_CAPS`].
    pub capabilities: u32,
    /// Reset values of FRAME_FORMAT/WIDTH/HEIGHT/RATE.
    pub defaults: FrameDefaults,
    /// Geometry of the file video source, if the card has one
    /// (`xxcapd --source-file`); without one, FRAME_SOURCE = FILE is refused.
    pub file_source: Option<FrameGeometry>,
}

impl Default for CardConfig {
    fn default() -> Self {
        Self {
            card_ram_size: 64 << 20,
            serial: "XX-0000001".into(),
            revision: 1,
            capabilities: caps::TASK_FILE,
            defaults: FrameDefaults::default(),
            file_source: None,
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
    #[error("capabilities {0:#x} are not a TASK_FILE card's capability bits")]
    BadCapabilities(u32),
    #[error("{} {}x{} is not a frame size the card accepts (even, 320..=3840 x 240..=2160)", .0.format, .0.width, .0.height)]
    BadFrameSize(FrameGeometry),
    #[error("frame rate {0} is above {max} fps", max = regs::MAX_FRAME_RATE)]
    BadFrameRate(u32),
    #[error("{} {}x{} frames do not fit twice in {ram} bytes of card RAM", .geometry.format, .geometry.width, .geometry.height)]
    RingTooSmall { geometry: FrameGeometry, ram: u64 },
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
        if self.capabilities & !ALL_CAPS != 0 || self.capabilities & caps::TASK_FILE == 0 {
            return Err(ConfigError::BadCapabilities(self.capabilities));
        }
        let geometries = std::iter::once(self.defaults.geometry).chain(self.file_source);
        for geometry in geometries {
            if geometry.frame_size().is_none() {
                return Err(ConfigError::BadFrameSize(geometry));
            }
            // A file whose frames cannot form a ring could never play.
            if Ring::plan(geometry, self.card_ram_size).is_none()
                && Some(geometry) == self.file_source
            {
                return Err(ConfigError::RingTooSmall {
                    geometry,
                    ram: self.card_ram_size,
                });
            }
        }
        if self.defaults.fps > regs::MAX_FRAME_RATE {
            return Err(ConfigError::BadFrameRate(self.defaults.fps));
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
    /// Generation of the last capture start (0: none yet).
    capture_generation: u64,
    /// Whether progress reports for `capture_generation` still count (until
    /// the next reset).
    progress_open: bool,
    /// STATUS.DMA_ERROR, latched by a failed DMA command until DMA_RESET.
    dma_error: bool,
}

impl Card {
    pub fn new(config: CardConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut card = Card {
            // Operations of capabilities the card lacks answer NOT_SUPPORTED.
            capabilities: config.capabilities,
            config,
            regs: RegisterFile::default(),
            epoch_ns: 0,
            requests: 0,
            commands: 0,
            capture_generation: 0,
            dma_error: false,
            progress_open: false,
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

    /// Power-on state. `now_ns` becomes time zero of DEVICE_TIME_NS. Stops
    /// capture; card RAM (the backend's) is not the model's to clear.
    pub fn reset(&mut self, now_ns: u64) {
        self.epoch_ns = now_ns;
        self.progress_open = false;
        self.dma_error = false;
        self.requests = 0;
        self.commands = 0;
        let mut r = RegisterFile::default();
        r.store(regs::ID, MAGIC.into());
        r.store(regs::VERSION, ABI_VERSION.into());
        r.store(regs::CAPS, self.capabilities.into());
        r.store(regs::CONTROL, control::ENABLE.into());
        r.store(regs::STATUS, status::READY.into());
        // No event records until a driver asks for them.
        r.store(regs::INT_MASK, 0);
        r.store(regs::INT_COALESCE_COUNT, 1);
        let d = self.config.defaults;
        r.store(regs::FRAME_FORMAT, d.geometry.format.code().into());
        r.store(regs::FRAME_WIDTH, d.geometry.width.into());
        r.store(regs::FRAME_HEIGHT, d.geometry.height.into());
        r.store(regs::FRAME_RATE, d.fps.into());
        r.store(regs::FRAME_SOURCE, source::TEST_PATTERN.into());
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

    /// STATUS as a reader sees it: the register with the DMA_ERROR latch
    /// (as a task file's GET of STATUS reads it). DMA_BUSY is the
    /// transfer's own (the backend shows it in the status block).
    pub fn status(&self) -> u32 {
        let st = u32::try_from(self.regs.peek(regs::STATUS)).unwrap_or(0);
        if self.dma_error {
            st | status::DMA_ERROR
        } else {
            st
        }
    }

    /// Task files received since reset.
    pub fn request_count(&self) -> u64 {
        self.requests
    }

    /// Commands executed since reset.
    pub fn command_count(&self) -> u64 {
        self.commands
    }

    /// Time zero of DEVICE_TIME_NS, in the caller's clock.
    pub fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }

    /// A fresh interrupt controller for this card, in its reset state.
    pub fn interrupt_controller(&self) -> InterruptController {
        InterruptController::new(self.capabilities & caps::EVENTS != 0)
    }

    /// Executes a task file in place: `buf` holds the header and the command
    /// blocks; on return it holds the result. Never panics, whatever `buf`
    /// holds. A buffer too short for a header is left untouched. There is no
    /// scatter-gather table: DMA commands fault (`DMA_FAULT`).
    pub fn execute(
        &mut self,
        buf: &mut [u8],
        irq: &mut InterruptController,
        now_ns: u64,
    ) -> Outcome {
        self.execute_dma(buf, &[], &mut NoDma, irq, now_ns)
    }

    /// Executes a task file whose DMA commands use the scatter-gather table
    /// `sg` (the entries that followed the task file in the request) and
    /// move their data through `port`. `irq` is the card's interrupt
    /// controller: the task file reads INT_STATUS, EVENT_COUNT and
    /// EVENTS_LOST from it and, when it commits, updates INT_STATUS and the
    /// coalescing registers and raises its TEST records there (released at
    /// once: the end of a task file delivers its records).
    ///
    /// The request counts as an asynchronous submission (DMA_TRANSFER_NONBLOCK
    /// allowed); [`Card::execute_request`] says which it is.
    pub fn execute_dma(
        &mut self,
        buf: &mut [u8],
        sg: &[SgEntry],
        port: &mut dyn DmaPort,
        irq: &mut InterruptController,
        now_ns: u64,
    ) -> Outcome {
        self.execute_request(buf, sg, port, irq, now_ns, true)
    }

    /// As [`Card::execute_dma`], for a request that is an asynchronous
    /// submission (`asynchronous`, the request's `XXCAP_VQ_FLAG_ASYNC`) or
    /// not: only the former may hold DMA_TRANSFER_NONBLOCK (else BAD_OP).
    pub fn execute_request(
        &mut self,
        buf: &mut [u8],
        sg: &[SgEntry],
        port: &mut dyn DmaPort,
        irq: &mut InterruptController,
        now_ns: u64,
        asynchronous: bool,
    ) -> Outcome {
        self.execute_path(buf, sg, port, irq, now_ns, asynchronous, false)
    }

    /// Executes a task file of the submission ring (SPEC §15): as an
    /// asynchronous request of the command queue without a scatter-gather
    /// table, except that DMA_TRANSFER_BLOCK and DMA_TRANSFER_NONBLOCK fail
    /// `REFUSED` (their index in the header, nothing executed): the ring
    /// names memory only by registered buffer, which `port` resolves.
    pub fn execute_ring(
        &mut self,
        buf: &mut [u8],
        port: &mut dyn DmaPort,
        irq: &mut InterruptController,
        now_ns: u64,
    ) -> Outcome {
        self.execute_path(buf, &[], port, irq, now_ns, true, true)
    }

    // The arguments of execute_request and which path the task file came by.
    #[allow(clippy::too_many_arguments)]
    fn execute_path(
        &mut self,
        buf: &mut [u8],
        sg: &[SgEntry],
        port: &mut dyn DmaPort,
        irq: &mut InterruptController,
        now_ns: u64,
        asynchronous: bool,
        ring: bool,
    ) -> Outcome {
        self.requests = self.requests.wrapping_add(1);
        // The card's own registers reflect this request before it runs, so a
        // task file can read the counters including itself.
        self.regs
            .store(regs::REQUEST_COUNT, self.requests & 0xffff_ffff);
        let device_time = now_ns.saturating_sub(self.epoch_ns);
        self.regs.store(regs::DEVICE_TIME_NS, device_time);
        self.regs.store(regs::INT_STATUS, irq.status().into());
        self.regs
            .store(regs::EVENT_COUNT, irq.generated() & 0xffff_ffff);
        self.regs.store(regs::EVENTS_LOST, irq.lost() & 0xffff_ffff);
        let limits = taskfile::Limits {
            asynchronous,
            ring,
            dma_error: self.dma_error,
            ..self.limits()
        };
        let mut dma = taskfile::Dma {
            sg,
            port,
            latched: 0,
        };
        let (outcome, effects) = taskfile::execute(&mut self.regs, limits, &mut dma, buf);
        if outcome.error == xxcapture_abi::TfError::Ok {
            self.commands = self.commands.wrapping_add(u64::from(outcome.executed));
            if effects.capture_started {
                self.capture_generation += 1;
                self.progress_open = true;
            }
            let narrow = |offset| u32::try_from(self.regs.peek(offset)).unwrap_or(0);
            irq.set_status(narrow(regs::INT_STATUS));
            irq.set_config(IrqConfig {
                mask: narrow(regs::INT_MASK),
                count: narrow(regs::INT_COALESCE_COUNT),
                usec: narrow(regs::INT_COALESCE_USEC),
            });
            for _ in 0..effects.test_records {
                irq.record(irq::TEST, 0, device_time);
            }
            if effects.test_records > 0 {
                irq.release_all();
            }
        } else {
            irq.latch(dma.latched);
        }
        // STATUS.DMA_ERROR: set by a failed DMA command, also when the task
        // file fails (outside the transaction, like INT_STATUS.DMA_ERROR);
        // cleared only by a committed DMA_RESET (or a device reset). It
        // lives beside the register file, which never holds it, and is
        // merged into every read of STATUS.
        if dma.latched & irq::DMA_ERROR != 0 {
            self.dma_error = true;
        } else if effects.dma_reset {
            self.dma_error = false;
        }
        self.regs
            .store(regs::COMMAND_COUNT, self.commands & 0xffff_ffff);
        outcome
    }

    fn limits(&self) -> taskfile::Limits {
        taskfile::Limits {
            card_ram_size: self.config.card_ram_size,
            capabilities: self.capabilities,
            file_source: self.config.file_source,
            asynchronous: true,
            dma_error: false,
            ring: false,
        }
    }

    /// The running capture session, if CONTROL.CAPTURE is set.
    pub fn capture_session(&self) -> Option<CaptureSession> {
        let r = &self.regs;
        if r.peek(regs::CONTROL) & u64::from(control::CAPTURE) == 0 {
            return None;
        }
        let narrow = |offset| u32::try_from(r.peek(offset)).unwrap_or(0);
        let geometry = FrameGeometry {
            format: PixelFormat::from_code(narrow(regs::FRAME_FORMAT))?,
            width: narrow(regs::FRAME_WIDTH),
            height: narrow(regs::FRAME_HEIGHT),
        };
        // STREAM cannot change while capturing: this is its value at start.
        let stream = narrow(regs::CONTROL) & control::STREAM != 0;
        // The same plan the CONTROL write stored in RING_SLOTS/RING_SLOT_SIZE.
        let ring = if stream {
            Ring::none(geometry)?
        } else {
            Ring::plan(geometry, self.config.card_ram_size)?
        };
        Some(CaptureSession {
            generation: self.capture_generation,
            geometry,
            fps: narrow(regs::FRAME_RATE),
            source: narrow(regs::FRAME_SOURCE),
            ring,
            stream,
        })
    }

    /// Records in FAULTS_INJECTED (low 32 bits) how many faults the backend
    /// injected (a test-and-CI feature of the backend, not of the card).
    pub fn set_faults_injected(&mut self, injected: u64) {
        self.regs
            .store(regs::FAULTS_INJECTED, injected & 0xffff_ffff);
    }

    /// Records the progress of capture session `generation` in
    /// FRAME_COUNTER and DROPPED_FRAMES (low 32 bits). Also accepted after
    /// that session stopped (its final counts), but ignored once a newer
    /// session started or the card was reset, so a late report cannot
    /// overwrite the zeroes of a new start.
    pub fn set_capture_progress(&mut self, generation: u64, frames: u64, dropped: u64) {
        if self.progress_open && generation == self.capture_generation {
            self.regs.store(regs::FRAME_COUNTER, frames & 0xffff_ffff);
            self.regs.store(regs::DROPPED_FRAMES, dropped & 0xffff_ffff);
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
            ..ok.clone()
        };
        assert!(matches!(
            long.validate(),
            Err(ConfigError::SerialTooLong(_))
        ));
        for capabilities in [0, caps::DMA, 1 << 7] {
            let bad = CardConfig {
                capabilities,
                ..ok.clone()
            };
            assert_eq!(
                bad.validate(),
                Err(ConfigError::BadCapabilities(capabilities))
            );
        }
        let mut odd_size = ok.clone();
        odd_size.defaults.geometry.width = 641;
        assert!(matches!(
            odd_size.validate(),
            Err(ConfigError::BadFrameSize(_))
        ));
        let mut fast = ok.clone();
        fast.defaults.fps = 1001;
        assert_eq!(fast.validate(), Err(ConfigError::BadFrameRate(1001)));
        let huge_file = CardConfig {
            card_ram_size: MIN_CARD_RAM,
            file_source: Some(FrameGeometry {
                format: PixelFormat::Rgb24,
                width: 1920,
                height: 1080,
            }),
            ..ok
        };
        assert!(matches!(
            huge_file.validate(),
            Err(ConfigError::RingTooSmall { .. })
        ));
    }

    #[test]
    fn reset_values_follow_the_configured_defaults() {
        let config = CardConfig {
            capabilities: CAPTURE_CARD_CAPS,
            defaults: FrameDefaults {
                geometry: FrameGeometry {
                    format: PixelFormat::Nv12,
                    width: 1280,
                    height: 720,
                },
                fps: 0,
            },
            ..CardConfig::default()
        };
        let card = Card::new(config).expect("card");
        let r = card.registers();
        assert_eq!(
            r.peek(regs::FRAME_FORMAT),
            u64::from(xxcapture_abi::format::NV12)
        );
        assert_eq!(r.peek(regs::FRAME_WIDTH), 1280);
        assert_eq!(r.peek(regs::FRAME_HEIGHT), 720);
        assert_eq!(r.peek(regs::FRAME_RATE), 0);
        assert_eq!(r.peek(regs::CAPS), u64::from(CAPTURE_CARD_CAPS));
        assert_eq!(card.identity().capabilities.get(), CAPTURE_CARD_CAPS);
        assert_eq!(card.capture_session(), None);
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
