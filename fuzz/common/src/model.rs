//! Fuzzing entry points for the task-file executor of `xxcapture-model`
//! (targets `task_file` and `card_sequence`).
//!
//! Each entry point takes arbitrary bytes, drives a [`Card`] and panics when
//! the card breaks a promise of `SPEC.md` §5-§6:
//!
//! - the result header is sane: `error` and `count` match the [`Outcome`],
//!   and nothing but the header's `error`/`count`, GET outputs and DMA output
//!   lengths ever changes in the buffer;
//! - a failing task file is a transaction: no register changes except
//!   REQUEST_COUNT and DEVICE_TIME_NS, and the error names a check the failing
//!   command can fail;
//! - a committed task file does what a sequential reading of its commands
//!   says (a shadow of the registers each command writes, and GET outputs
//!   against it);
//! - the register file stays consistent: read-only identity registers never
//!   change, read/write registers hold only writable bits and values their
//!   rule allows, STATUS.CAPTURING follows CONTROL.CAPTURE;
//! - DMA goes through the port only as the port's contract says.

use arbitrary::{Result, Unstructured};
use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::regs::{self, value_allowed, Access, ValueRule, Width, REGISTERS};
use xxcapture_abi::{
    caps, control, irq, source, status, Command, Op, SgEntry, TaskFileHeader, TfError, ABI_VERSION,
    CMD_SIZE, MAGIC, MAX_COMMANDS, TF_HEADER_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

use xxcapture_model::capture::BUSY_WHILE_CAPTURING;
use xxcapture_model::dma::{DmaDirection, DmaFault, DmaPort};
use xxcapture_model::interrupts::InterruptController;
use xxcapture_model::{
    Card, CardConfig, FrameDefaults, FrameGeometry, Outcome, ALL_CAPS, CAPTURE_CARD_CAPS,
    MAX_CARD_RAM, MIN_CARD_RAM,
};

/// Guest memory as the fake DMA port sees it: entries below this address
/// move, entries reaching past it fault.
const FAKE_GUEST_SIZE: u64 = 1 << 30;

/// The scatter-gather table the single-task-file target gives every DMA
/// command: entries 0..=3 are good, entry 4 lies outside guest memory.
const FIXED_SG: [(u64, u32); 6] = [
    (0x1000, 0x1000),
    (0x2_0000, 0x800),
    (0x3_0001, 1),
    (0x4_0000, 0x10_0000),
    (FAKE_GUEST_SIZE - 0x100, 0x1000),
    (0x5_0000, 0x2000),
];

/// One arbitrary task file (the raw bytes of `data`) against a fresh capture
/// card, run twice so that the second run sees the state the first left.
pub fn task_file(data: &[u8]) {
    let config = CardConfig {
        card_ram_size: 64 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        file_source: Some(FrameGeometry {
            format: PixelFormat::Nv12,
            width: 1280,
            height: 720,
        }),
        ..CardConfig::default()
    };
    let Ok(card) = Card::new(config) else {
        panic!("the fixed configuration is valid");
    };
    let irq = card.interrupt_controller();
    let mut harness = Harness {
        card,
        irq,
        now: 1_000,
    };
    let sg: Vec<SgEntry> = FIXED_SG
        .iter()
        .map(|&(addr, len)| SgEntry::new(addr, len))
        .collect();
    for _ in 0..2 {
        harness.now += 1_000_000;
        harness.execute(data, &sg);
    }
}

/// Seed inputs for [`task_file`]: valid task files of every kind (and a
/// few refused ones), as a driver would send them.
pub fn task_file_seeds() -> Vec<Vec<u8>> {
    use xxcapture_abi::{dma_dir, format, TaskFile};
    let mut seeds = Vec::new();
    let mut every = TaskFile::new();
    for desc in REGISTERS {
        match desc.width {
            Width::W32 => every.get_register(desc.offset),
            Width::W64 => every.get_address(desc.offset),
        };
    }
    seeds.push(every);
    let mut scratch = TaskFile::new();
    scratch.set_register(regs::SCRATCH, 0xdead_beef);
    scratch.set_to_register(regs::SCRATCH, 0xff, 0xf0);
    scratch.clear_register(regs::INT_COALESCE_COUNT);
    scratch.set_address(regs::SCRATCH64, u64::MAX);
    scratch.get_register(regs::SCRATCH);
    seeds.push(scratch);
    let mut irq_tf = TaskFile::new();
    irq_tf.set_register(regs::INT_MASK, irq::ALL);
    irq_tf.set_register(regs::INT_RAISE, irq::TEST);
    irq_tf.get_register(regs::INT_STATUS);
    irq_tf.set_register(regs::INT_ACK, irq::TEST);
    irq_tf.set_register(regs::INT_COALESCE_USEC, 1000);
    seeds.push(irq_tf);
    let mut start = TaskFile::new();
    start.set_register(regs::FRAME_FORMAT, format::YUYV);
    start.set_register(regs::FRAME_WIDTH, 1920);
    start.set_register(regs::FRAME_HEIGHT, 1080);
    start.set_register(regs::FRAME_RATE, 60);
    start.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
    start.get_register(regs::RING_SLOTS);
    start.set_register(regs::RING_RELEASE, 3);
    seeds.push(start);
    let mut file = TaskFile::new();
    file.set_register(regs::FRAME_SOURCE, source::FILE);
    file.set_register(regs::CONTROL, control::ENABLE | control::CAPTURE);
    file.set_register(regs::FRAME_WIDTH, 640);
    file.set_register(regs::CONTROL, control::ENABLE);
    seeds.push(file);
    let mut dma = TaskFile::new();
    dma.dma(true, dma_dir::TO_CARD, 0, 0, 0x1800);
    dma.dma(false, dma_dir::FROM_CARD, 3, 0x10_0000, 0x10_0000);
    dma.dma(true, dma_dir::FROM_CARD, 2, 64 << 20, 1);
    dma.set_register(regs::CONTROL, control::ENABLE | control::DMA_RESET);
    dma.get_address(regs::DMA_CARD_ADDR);
    seeds.push(dma);
    let mut fault = TaskFile::new();
    fault.dma(true, dma_dir::TO_CARD, 4, 0, 0x1000);
    seeds.push(fault);
    let mut refused = TaskFile::new();
    refused.set_register(regs::SCRATCH, 1);
    refused.push_raw(Command::raw(9, regs::SCRATCH, 0, 0, 0));
    seeds.push(refused);
    let mut bytes: Vec<Vec<u8>> = seeds.iter().map(TaskFile::to_bytes).collect();
    let mut bad_header = TaskFile::new().to_bytes();
    bad_header[8] = 1;
    bytes.push(bad_header);
    bytes
}

/// A card configuration, then a sequence of task files (built from a
/// grammar of mostly-valid commands, or raw), resets, capture progress
/// reports and clock jumps.
pub fn card_sequence(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = card_config(&mut u) else {
        return;
    };
    let Ok(card) = Card::new(config) else {
        return;
    };
    let irq = card.interrupt_controller();
    let mut harness = Harness { card, irq, now: 0 };
    harness.check_invariants();
    while !u.is_empty() {
        if harness.step(&mut u).is_err() {
            break;
        }
    }
}

fn card_config(u: &mut Unstructured<'_>) -> Result<CardConfig> {
    let capabilities = *u.choose(&[
        caps::TASK_FILE,
        caps::TASK_FILE | caps::DMA,
        caps::TASK_FILE | caps::CAPTURE,
        CAPTURE_CARD_CAPS,
        ALL_CAPS,
    ])?;
    let card_ram_size = *u.choose(&[MIN_CARD_RAM, 64 << 20, MAX_CARD_RAM])?;
    let geometry = |u: &mut Unstructured<'_>| -> Result<FrameGeometry> {
        Ok(FrameGeometry {
            format: *u.choose(&[PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Rgb24])?,
            width: *u.choose(&[320, 640, 1280, 1920, 3840, 642])?,
            height: *u.choose(&[240, 480, 720, 1080, 2160, 482])?,
        })
    };
    let file_source = if u.arbitrary()? {
        Some(geometry(u)?)
    } else {
        None
    };
    let defaults = if u.arbitrary()? {
        FrameDefaults {
            geometry: geometry(u)?,
            fps: u.int_in_range(0..=1000)?,
        }
    } else {
        FrameDefaults::default()
    };
    Ok(CardConfig {
        card_ram_size,
        capabilities,
        file_source,
        defaults,
        ..CardConfig::default()
    })
}

struct Harness {
    card: Card,
    /// The card's interrupt controller (the backend keeps it beside the
    /// card); records it collects are drained after each task file.
    irq: InterruptController,
    now: u64,
}

impl Harness {
    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=9u8)? {
            0..=5 => {
                let sg = sg_table(u)?;
                let tf = grammar_task_file(u, &sg, self.card.config().card_ram_size)?;
                self.tick(u)?;
                self.execute(&tf, &sg);
            }
            6 => {
                let len = u.int_in_range(0..=600usize)?;
                let bytes = u.bytes(len)?.to_vec();
                let sg = sg_table(u)?;
                self.tick(u)?;
                self.execute(&bytes, &sg);
            }
            7 => {
                self.tick(u)?;
                self.card.reset(self.now);
                self.check_invariants();
                assert_eq!(self.card.request_count(), 0);
                assert_eq!(self.card.command_count(), 0);
                assert_eq!(self.card.capture_session(), None);
            }
            8 => {
                let generation = self.card.capture_session().map_or(0, |s| s.generation);
                let generation = generation
                    .wrapping_add(u.int_in_range(0..=2)?)
                    .wrapping_sub(1);
                let (frames, dropped) = (u.arbitrary()?, u.arbitrary()?);
                let before = self.card.clone();
                self.card.set_capture_progress(generation, frames, dropped);
                // Progress reports touch only the two progress registers.
                for desc in REGISTERS {
                    if ![regs::FRAME_COUNTER, regs::DROPPED_FRAMES].contains(&desc.offset) {
                        assert_eq!(
                            before.registers().peek(desc.offset),
                            self.card.registers().peek(desc.offset),
                            "progress report changed {}",
                            desc.name
                        );
                    }
                }
                self.check_invariants();
            }
            _ => {
                // The clock may also jump backwards (a broken host clock).
                self.now = u.arbitrary()?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        self.now = self
            .now
            .saturating_add(u.int_in_range(0..=2_000_000_000u64)?);
        Ok(())
    }

    /// Executes `input` with table `sg` (twice, on the card and on a clone,
    /// which must agree) and checks everything the result promises.
    fn execute(&mut self, input: &[u8], sg: &[SgEntry]) {
        let before = self.card.clone();
        let mut twin = self.card.clone();
        let mut twin_irq = self.irq.clone();
        let mut buf = input.to_vec();
        let mut port = FakePort::new(self.card.config().card_ram_size);
        let outcome = self
            .card
            .execute_dma(&mut buf, sg, &mut port, &mut self.irq, self.now);
        let mut twin_buf = input.to_vec();
        let mut twin_port = FakePort::new(self.card.config().card_ram_size);
        let twin_outcome =
            twin.execute_dma(&mut twin_buf, sg, &mut twin_port, &mut twin_irq, self.now);
        // Records must not pile up across a long fuzz input.
        let _ = self.irq.take_due(self.now, usize::MAX);
        assert_eq!(outcome, twin_outcome, "execution is not deterministic");
        assert_eq!(buf, twin_buf, "execution is not deterministic");
        assert_eq!(port.transfers, twin_port.transfers);
        let check = Check {
            before: &before,
            after: &self.card,
            input,
            output: &buf,
            outcome,
            sg,
            transfers: &port.transfers,
            now: self.now,
        };
        check.result();
        self.check_invariants();
    }

    fn check_invariants(&self) {
        invariants(&self.card);
    }
}

/// A scatter-gather table: a few entries, mostly inside fake guest memory.
fn sg_table(u: &mut Unstructured<'_>) -> Result<Vec<SgEntry>> {
    let n = u.int_in_range(0..=5usize)?;
    let mut table = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = match u.int_in_range(0..=3u8)? {
            0 => FAKE_GUEST_SIZE - 0x10,
            1 => u.arbitrary()?,
            _ => u.int_in_range(0..=FAKE_GUEST_SIZE / 2)?,
        };
        let len = match u.int_in_range(0..=3u8)? {
            0 => 0x1000,
            1 => u.arbitrary()?,
            _ => u.int_in_range(0..=0x2_0000u32)?,
        };
        let mut entry = SgEntry::new(addr, len);
        if u.ratio(1u8, 16)? {
            entry.reserved = u.arbitrary::<u32>()?.into();
        }
        table.push(entry);
    }
    Ok(table)
}

/// A task file of mostly well-formed commands that name real registers and
/// values their rules accept, so that sequences reach deep states (capture
/// running, file source selected), with a chance of any field going wrong.
pub fn grammar_task_file(u: &mut Unstructured<'_>, sg: &[SgEntry], ram: u64) -> Result<Vec<u8>> {
    let count = u.int_in_range(0..=12u32)?;
    let mut header = TaskFileHeader {
        count: count.into(),
        ..TaskFileHeader::default()
    };
    if u.ratio(1u8, 32)? {
        header.count = u.arbitrary::<u32>()?.into();
    }
    if u.ratio(1u8, 32)? {
        header.flags = u.arbitrary::<u32>()?.into();
    }
    if u.ratio(1u8, 32)? {
        header.reserved = u.arbitrary::<u32>()?.into();
    }
    let mut out = header.as_bytes().to_vec();
    for _ in 0..count {
        out.extend_from_slice(grammar_command(u, sg, ram)?.as_bytes());
    }
    if u.ratio(1u8, 32)? {
        let cut = u.int_in_range(0..=out.len())?;
        out.truncate(cut);
    }
    Ok(out)
}

fn grammar_command(u: &mut Unstructured<'_>, sg: &[SgEntry], ram: u64) -> Result<Command> {
    let op = if u.ratio(1u8, 32)? {
        u.arbitrary::<u16>()?
    } else {
        u.int_in_range(0..=8u16)?
    };
    let mut cmd = if op == Op::DmaTransferBlock as u16 || op == Op::DmaTransferNonBlock as u16 {
        dma_command(u, op, sg, ram)?
    } else if op == Op::DmaBuffer as u16 {
        // A registered buffer's id (the harnesses register none).
        let mut cmd = dma_command(u, op, sg, ram)?;
        cmd.flags = u.int_in_range(0..=3u32)?.into();
        cmd
    } else {
        let desc = u.choose(REGISTERS)?;
        let value = register_value(u, desc)?;
        let mask = if op == Op::SetToRegister as u16 {
            match u.int_in_range(0..=2u8)? {
                0 => desc.writable,
                1 => u.arbitrary::<u32>()?.into(),
                _ => 1 << u.int_in_range(0..=31u32)?,
            }
        } else {
            0
        };
        let reg = if u.ratio(1u8, 32)? {
            u.arbitrary()?
        } else {
            desc.offset
        };
        Command::raw(op, reg, value, mask, 0)
    };
    if u.ratio(1u8, 64)? {
        cmd.flags = u.arbitrary::<u32>()?.into();
    }
    if u.ratio(1u8, 64)? {
        cmd.length = u.arbitrary::<u64>()?.into();
    }
    Ok(cmd)
}

/// A value for `desc`: mostly one its rule accepts.
fn register_value(u: &mut Unstructured<'_>, desc: &regs::RegisterDesc) -> Result<u64> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => 0,
        1 => u.arbitrary::<u32>()?.into(),
        2 => u.arbitrary()?,
        3 => u.int_in_range(0..=16)?,
        _ => match desc.rule {
            ValueRule::OneOf(values) => (*u.choose(values)?).into(),
            ValueRule::EvenRange { min, max } => (u.int_in_range(min / 2..=max / 2)? * 2).into(),
            ValueRule::Range { min, max } => u.int_in_range(min..=max)?.into(),
            ValueRule::CardRamOffset => u.int_in_range(0..=1u64 << 33)?,
            ValueRule::Any if desc.offset == regs::CONTROL => {
                // Mostly ENABLE and CAPTURE, sometimes STREAM or DMA_RESET.
                u64::from(control::ENABLE | control::CAPTURE)
                    & u.arbitrary::<u64>()?
                    & desc.writable
            }
            ValueRule::Any => u.arbitrary::<u64>()? & desc.writable,
        },
    })
}

fn dma_command(u: &mut Unstructured<'_>, op: u16, sg: &[SgEntry], ram: u64) -> Result<Command> {
    let direction = if u.ratio(1u8, 16)? {
        u.arbitrary()?
    } else {
        u.int_in_range(0..=1u16)?
    };
    let first = if sg.is_empty() || u.ratio(1u8, 16)? {
        u.arbitrary::<u64>()?
    } else {
        u.int_in_range(0..=sg.len() as u64 - 1)?
    };
    // Mostly the exact sum of some entries from `first` on.
    let length = match usize::try_from(first).ok().and_then(|f| sg.get(f..)) {
        Some(rest) if !rest.is_empty() && !u.ratio(1u8, 8)? => {
            let take = u.int_in_range(1..=rest.len())?;
            rest[..take].iter().map(|e| u64::from(e.len.get())).sum()
        }
        _ => u.int_in_range(0..=0x10_0000u64)?,
    };
    let offset = match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => ram.saturating_sub(length),
        2 => u.arbitrary()?,
        _ => u.int_in_range(0..=ram)?,
    };
    Ok(Command::raw(op, direction, first, offset, length))
}

/// A DMA port over fake guest memory below [`FAKE_GUEST_SIZE`]; records
/// what it was asked to move and checks the port's contract.
struct FakePort {
    card_ram_size: u64,
    transfers: Vec<(DmaDirection, u64, u64)>,
}

impl FakePort {
    fn new(card_ram_size: u64) -> Self {
        FakePort {
            card_ram_size,
            transfers: Vec::new(),
        }
    }
}

impl DmaPort for FakePort {
    fn transfer(
        &mut self,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> std::result::Result<(), DmaFault> {
        let total: u64 = sg.iter().map(|e| u64::from(e.len.get())).sum();
        assert!(
            !sg.is_empty() && total > 0,
            "empty transfer reached the port"
        );
        assert!(
            card_offset
                .checked_add(total)
                .is_some_and(|end| end <= self.card_ram_size),
            "transfer {card_offset:#x}+{total:#x} outside card RAM reached the port"
        );
        self.transfers.push((direction, card_offset, total));
        for (index, e) in sg.iter().enumerate() {
            let end = e.addr.get().checked_add(u64::from(e.len.get()));
            if end.is_none_or(|end| end > FAKE_GUEST_SIZE) {
                return Err(DmaFault::OutsideGuestMemory { index });
            }
        }
        Ok(())
    }
}

/// What one execution must satisfy.
struct Check<'a> {
    before: &'a Card,
    after: &'a Card,
    input: &'a [u8],
    output: &'a [u8],
    outcome: Outcome,
    sg: &'a [SgEntry],
    transfers: &'a [(DmaDirection, u64, u64)],
    now: u64,
}

impl Check<'_> {
    fn result(&self) {
        let (before, after, outcome) = (self.before, self.after, self.outcome);
        assert_eq!(after.request_count(), before.request_count() + 1);
        assert_eq!(
            after.registers().peek(regs::DEVICE_TIME_NS),
            self.now.saturating_sub(after.epoch_ns())
        );
        assert_eq!(self.output.len(), self.input.len());
        if self.input.len() < TF_HEADER_SIZE {
            assert_eq!(self.output, self.input, "a headerless buffer was written");
            assert_eq!((outcome.error, outcome.index), (TfError::BadCount, 0));
        } else {
            let Ok((header, _)) = TaskFileHeader::read_from_prefix(self.output) else {
                panic!("a buffer of {} bytes has a header", self.output.len());
            };
            assert_eq!(header.error.get(), outcome.error as u32);
            assert_eq!(header.count.get(), outcome.index);
            assert_eq!(
                self.output[8..16],
                self.input[8..16],
                "header flags changed"
            );
        }
        if outcome.error == TfError::Ok {
            self.committed();
        } else {
            self.failed();
        }
    }

    fn input_commands(&self) -> Vec<Command> {
        self.input
            .get(TF_HEADER_SIZE..)
            .unwrap_or_default()
            .chunks_exact(CMD_SIZE)
            .filter_map(|c| Command::read_from_bytes(c).ok())
            .collect()
    }

    fn failed(&self) {
        let (before, after, outcome) = (self.before, self.after, self.outcome);
        assert_eq!(outcome.executed, 0);
        assert_eq!(after.command_count(), before.command_count());
        if self.input.len() >= TF_HEADER_SIZE {
            assert_eq!(
                self.output[TF_HEADER_SIZE..],
                self.input[TF_HEADER_SIZE..],
                "a failing task file's commands were written"
            );
        }
        for desc in REGISTERS {
            // Counted for the request itself, or the interrupt controller's
            // view (DMA latches outside the transaction, SPEC §10).
            if [
                regs::REQUEST_COUNT,
                regs::DEVICE_TIME_NS,
                regs::INT_STATUS,
                regs::EVENT_COUNT,
                regs::EVENTS_LOST,
            ]
            .contains(&desc.offset)
            {
                continue;
            }
            assert_eq!(
                before.registers().peek(desc.offset),
                after.registers().peek(desc.offset),
                "failing task file ({:?} at {}) changed {}",
                outcome.error,
                outcome.index,
                desc.name
            );
        }
        assert_eq!(before.capture_session(), after.capture_session());
        assert!(
            !matches!(
                outcome.error,
                TfError::Ok | TfError::Device | TfError::Cancelled
            ),
            "unexpected error {:?}",
            outcome.error
        );
        let header = TaskFileHeader::read_from_prefix(self.input)
            .ok()
            .map(|h| h.0);
        let header_bad = header.is_none_or(|h| {
            let count = h.count.get();
            h.flags.get() != 0
                || h.reserved.get() != 0
                || count == 0
                || count > MAX_COMMANDS
                || TF_HEADER_SIZE + CMD_SIZE * count as usize != self.input.len()
        });
        match outcome.error {
            TfError::Reserved | TfError::BadCount if header_bad => {
                assert_eq!(outcome.index, 0, "header errors report index 0");
                return;
            }
            _ => assert!(!header_bad, "a bad header was not refused as such"),
        }
        let commands = self.input_commands();
        let Some(cmd) = commands.get(outcome.index as usize) else {
            panic!("failing index {} out of range", outcome.index);
        };
        // Every command before the failing one passed checks 1 and 2.
        for earlier in &commands[..outcome.index as usize] {
            assert!(earlier.op.get() <= 7 && earlier.flags.get() == 0);
        }
        self.plausible_error(cmd);
    }

    /// The error names a check that `cmd` can fail.
    fn plausible_error(&self, cmd: &Command) {
        let error = self.outcome.error;
        let op = Op::from_raw(cmd.op.get());
        let is_dma = matches!(
            op,
            Some(Op::DmaTransferBlock | Op::DmaTransferNonBlock | Op::DmaBuffer)
        );
        let desc = regs::find(cmd.reg.get());
        let caps = self.before.capabilities();
        let ok = match error {
            TfError::BadOp => op.is_none(),
            TfError::Reserved => {
                op.is_some()
                    && ((cmd.flags.get() != 0 && op != Some(Op::DmaBuffer))
                        || (!is_dma
                            && (cmd.length.get() != 0
                                || (cmd.mask.get() != 0 && op != Some(Op::SetToRegister))
                                || (cmd.value.get() != 0 && op == Some(Op::ClearRegister)))))
            }
            TfError::BadRegister => {
                !is_dma
                    && desc.is_none_or(|d| {
                        let wants = match op {
                            Some(Op::GetAddress | Op::SetAddress) => Width::W64,
                            _ => Width::W32,
                        };
                        d.width != wants
                    })
            }
            TfError::ReadOnly => !is_dma && !matches!(op, Some(Op::GetRegister | Op::GetAddress)),
            TfError::BadValue => is_dma || desc.is_some(),
            TfError::NotSupported => {
                (is_dma && caps & caps::DMA == 0)
                    || (cmd.reg.get() == regs::CONTROL
                        && (caps & caps::CAPTURE == 0 || caps & caps::STREAMING == 0))
            }
            TfError::DmaRange | TfError::DmaFault => is_dma && caps & caps::DMA != 0,
            // CONTROL: changing STREAM while capture stays on (SPEC §5).
            TfError::Busy => {
                BUSY_WHILE_CAPTURING.contains(&cmd.reg.get()) || cmd.reg.get() == regs::CONTROL
            }
            // REFUSED: only task files of the submission ring (SPEC §15).
            TfError::BadCount
            | TfError::Ok
            | TfError::Device
            | TfError::Cancelled
            | TfError::Refused => false,
        };
        assert!(ok, "{error:?} is not an error {cmd:?} can fail with");
        // No harness registers a buffer: every DMA_BUFFER faults.
        if error == TfError::DmaFault && op != Some(Op::DmaBuffer) {
            // A fault found before the port moved anything, or by the port.
            let first = usize::try_from(cmd.value.get()).ok();
            let in_table = first.is_some_and(|f| f < self.sg.len());
            assert!(
                !in_table || !self.transfers.is_empty() || {
                    let rest = &self.sg[first.unwrap_or(0)..];
                    let mut sum = 0u64;
                    !rest.iter().any(|e| {
                        sum += u64::from(e.len.get());
                        sum == cmd.length.get()
                    })
                },
                "DMA_FAULT without a reason"
            );
        }
    }

    fn committed(&self) {
        let (before, after, outcome) = (self.before, self.after, self.outcome);
        let commands = self.input_commands();
        let count = outcome.index;
        assert!((1..=MAX_COMMANDS).contains(&count));
        assert_eq!(outcome.executed, count);
        assert_eq!(commands.len(), count as usize);
        assert_eq!(self.input.len(), TF_HEADER_SIZE + CMD_SIZE * count as usize);
        assert_eq!(
            after.command_count(),
            before.command_count() + u64::from(count)
        );
        let outputs: Vec<Command> = self.output[TF_HEADER_SIZE..]
            .chunks_exact(CMD_SIZE)
            .filter_map(|c| Command::read_from_bytes(c).ok())
            .collect();
        let mut shadow = Shadow::new(before, self.now);
        let mut transfers = self.transfers.iter();
        for (cmd, out) in commands.iter().zip(&outputs) {
            let Some(op) = Op::from_raw(cmd.op.get()) else {
                panic!("committed an unknown op {cmd:?}");
            };
            assert_eq!(cmd.flags.get(), 0);
            let mut expected = *cmd;
            match op {
                Op::GetRegister | Op::GetAddress => {
                    if let Some(v) = shadow.read(cmd.reg.get()) {
                        assert_eq!(
                            out.value.get(),
                            v,
                            "GET {:#x} returned a stale value",
                            cmd.reg.get()
                        );
                    }
                    expected.value = out.value;
                }
                Op::DmaBuffer => panic!("a DMA_BUFFER committed without a registered buffer"),
                Op::DmaTransferBlock | Op::DmaTransferNonBlock => {
                    let Some(&(direction, offset, total)) = transfers.next() else {
                        panic!("a committed DMA command did not reach the port");
                    };
                    assert_eq!(
                        (direction.raw(), offset, total),
                        (cmd.reg.get(), cmd.mask.get(), cmd.length.get())
                    );
                    assert_eq!(out.length.get(), cmd.length.get());
                    shadow.dma(direction, offset, total);
                }
                _ => shadow.write(op, cmd, self.before),
            }
            assert_eq!(*out, expected, "command bytes changed beyond its outputs");
        }
        assert!(
            transfers.next().is_none(),
            "more transfers than DMA commands"
        );
        shadow.matches(after);
    }
}

/// What the registers must hold after a committed task file, as far as a
/// sequential reading of its commands tells (`None`: not predicted here).
struct Shadow {
    values: Vec<Option<u64>>,
}

impl Shadow {
    fn new(card: &Card, now: u64) -> Self {
        let mut shadow = Shadow {
            values: REGISTERS
                .iter()
                .map(|d| Some(card.registers().peek(d.offset)))
                .collect(),
        };
        // The card counts the request before running it.
        shadow.set(
            regs::REQUEST_COUNT,
            Some((card.request_count() + 1) & 0xffff_ffff),
        );
        shadow.set(
            regs::DEVICE_TIME_NS,
            Some(now.saturating_sub(card.epoch_ns())),
        );
        // A GET reads STATUS with the card's DMA_ERROR latch in it.
        shadow.set(regs::STATUS, Some(u64::from(card.status())));
        // Updated after the run.
        shadow.set(regs::COMMAND_COUNT, None);
        // The interrupt controller's view, refreshed at the request's start
        // and latched by DMA outside the transaction (SPEC §9, §10).
        for live in [regs::INT_STATUS, regs::EVENT_COUNT, regs::EVENTS_LOST] {
            shadow.set(live, None);
        }
        shadow
    }

    fn slot(offset: u16) -> Option<usize> {
        REGISTERS.iter().position(|d| d.offset == offset)
    }

    fn get(&self, offset: u16) -> Option<u64> {
        Self::slot(offset).and_then(|i| self.values[i])
    }

    fn set(&mut self, offset: u16, value: Option<u64>) {
        if let Some(i) = Self::slot(offset) {
            self.values[i] = value;
        }
    }

    fn read(&self, offset: u16) -> Option<u64> {
        let desc = regs::find(offset)?;
        match desc.access {
            Access::WriteOneToClear | Access::WriteOneToSet => Some(0),
            _ => self.get(offset),
        }
    }

    fn write(&mut self, op: Op, cmd: &Command, before: &Card) {
        let offset = cmd.reg.get();
        let Some(desc) = regs::find(offset) else {
            panic!("committed a write to unknown register {offset:#x}");
        };
        let (value, mask) = (cmd.value.get(), cmd.mask.get());
        let (bits, touched) = match op {
            Op::SetRegister | Op::SetAddress => (value, desc.writable),
            Op::ClearRegister => (0, desc.writable),
            _ => (value & mask, mask),
        };
        match desc.access {
            Access::ReadOnly => panic!("committed a write to read-only {}", desc.name),
            Access::WriteOneToClear => {
                let pending = self.get(regs::INT_STATUS);
                self.set(regs::INT_STATUS, pending.map(|p| p & !(bits & touched)));
            }
            Access::WriteOneToSet => {
                let pending = self.get(regs::INT_STATUS);
                let raise = bits & touched & desc.writable;
                self.set(regs::INT_STATUS, pending.map(|p| p | raise));
            }
            Access::ReadWrite => {
                let new = self
                    .get(offset)
                    .map(|current| (current & !touched) | (bits & touched));
                match offset {
                    regs::CONTROL => {
                        // Capture start/stop and DMA_RESET touch these.
                        for side in [
                            regs::STATUS,
                            regs::RING_SLOTS,
                            regs::RING_SLOT_SIZE,
                            regs::FRAME_COUNTER,
                            regs::DROPPED_FRAMES,
                            regs::RING_RELEASE,
                            regs::DMA_TRANSFERRED,
                        ] {
                            self.set(side, None);
                        }
                        self.set(offset, new.map(|v| v & !u64::from(control::DMA_RESET)));
                    }
                    regs::FRAME_SOURCE => {
                        if new == Some(source::FILE.into()) {
                            let file = before.config().file_source;
                            let Some(g) = file else {
                                panic!("FILE committed without a file source");
                            };
                            self.set(regs::FRAME_FORMAT, Some(g.format.code().into()));
                            self.set(regs::FRAME_WIDTH, Some(g.width.into()));
                            self.set(regs::FRAME_HEIGHT, Some(g.height.into()));
                        }
                        self.set(offset, new);
                    }
                    _ => self.set(offset, new),
                }
            }
        }
    }

    fn dma(&mut self, direction: DmaDirection, offset: u64, length: u64) {
        self.set(regs::DMA_CARD_ADDR, Some(offset));
        self.set(regs::DMA_LENGTH, Some(length & 0xffff_ffff));
        self.set(regs::DMA_DIRECTION, Some(direction.raw().into()));
        self.set(regs::DMA_TRANSFERRED, Some(length & 0xffff_ffff));
    }

    fn matches(&self, card: &Card) {
        for (desc, value) in REGISTERS.iter().zip(&self.values) {
            if let Some(v) = value {
                // STATUS as a GET reads it: with the DMA_ERROR latch.
                let actual = if desc.offset == regs::STATUS {
                    u64::from(card.status())
                } else {
                    card.registers().peek(desc.offset)
                };
                assert_eq!(actual, *v, "{} after a committed task file", desc.name);
            }
        }
    }
}

/// What holds for the card between any two operations.
fn invariants(card: &Card) {
    let r = card.registers();
    let config = card.config();
    let caps = card.capabilities();
    assert_eq!(r.peek(regs::ID), u64::from(MAGIC));
    assert_eq!(r.peek(regs::VERSION), u64::from(ABI_VERSION));
    assert_eq!(r.peek(regs::CAPS), u64::from(caps));
    assert_eq!(r.peek(regs::CARD_RAM_PAGES), config.card_ram_size / 4096);
    for desc in REGISTERS {
        let v = r.peek(desc.offset);
        match desc.access {
            Access::ReadWrite => {
                assert_eq!(v & !desc.writable, 0, "{} has unwritable bits", desc.name);
                let allowed = match desc.rule {
                    ValueRule::CardRamOffset => v < config.card_ram_size,
                    _ => value_allowed(desc, v),
                };
                assert!(allowed, "{} = {v:#x} breaks its rule", desc.name);
            }
            Access::WriteOneToClear | Access::WriteOneToSet => {
                assert_eq!(r.read(desc.offset), Some(0), "{} reads non-zero", desc.name);
            }
            Access::ReadOnly => {}
        }
        if desc.width == Width::W32 {
            assert!(v <= u64::from(u32::MAX), "{} wider than 32 bits", desc.name);
        }
    }
    let control_bits = r.peek(regs::CONTROL);
    let status_bits = r.peek(regs::STATUS);
    assert_eq!(
        control_bits & u64::from(control::DMA_RESET),
        0,
        "DMA_RESET stuck"
    );
    assert_eq!(
        status_bits & u64::from(status::READY),
        u64::from(status::READY)
    );
    assert_eq!(
        status_bits & !u64::from(status::READY | status::CAPTURING),
        0,
        "STATUS bits this revision never sets"
    );
    let capturing = control_bits & u64::from(control::CAPTURE) != 0;
    assert_eq!(status_bits & u64::from(status::CAPTURING) != 0, capturing);
    assert_eq!(r.peek(regs::INT_STATUS) & !u64::from(irq::ALL), 0);
    assert_eq!(
        r.peek(regs::REQUEST_COUNT),
        card.request_count() & 0xffff_ffff
    );
    assert_eq!(
        r.peek(regs::COMMAND_COUNT),
        card.command_count() & 0xffff_ffff
    );
    match card.capture_session() {
        Some(session) => {
            assert!(capturing);
            assert_ne!(caps & caps::CAPTURE, 0, "capturing without CAP_CAPTURE");
            let ring = session.ring;
            // A streaming capture fills queued buffers and has no ring.
            assert!(ring.ring_slots >= 2 || session.stream && ring.ring_slots == 0);
            assert_eq!(r.peek(regs::RING_SLOTS), u64::from(ring.ring_slots));
            assert_eq!(r.peek(regs::RING_SLOT_SIZE), u64::from(ring.slot_size));
            assert!(
                ring.ring_offset + u64::from(ring.ring_slots) * u64::from(ring.slot_size)
                    <= config.card_ram_size
            );
            if session.uses_file() {
                assert_eq!(Some(session.geometry), config.file_source);
            }
        }
        None => assert!(!capturing, "CONTROL.CAPTURE without a session"),
    }
    let id = card.identity();
    assert_eq!(u64::from(id.status.get()), status_bits);
    assert_eq!(card.config_space()[..], *id.as_bytes());
}

#[cfg(test)]
mod tests;
