use super::*;
use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use xxcapture_abi::{
    regs, ring_setup, Command, Op, RingSetupReq, TaskFileHeader, TaskFileResult, TfError, CMD_SIZE,
    MAGIC, MAX_COMMANDS, RING_MAX_SQ_IDLE_US,
};
use xxcapture_model::{Card, CardConfig, InterruptController, CAPTURE_CARD_CAPS};

use crate::card_ram::{CardRam, GuestDma};
use crate::registered::{RegisteredBuffers, RegisteredPort};
use crate::ring::RingError;

const MEM_SIZE: u64 = 8 << 20;
const QUEUE_SIZE: u16 = 256;
/// Data buffers live above the queue structures.
const DATA: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
}

/// A card with DMA over a small card RAM, and a scripted ATTACH.
struct TestDevice {
    card: Card,
    irq: InterruptController,
    ram: CardRam,
    attaches: u32,
    attach_fails: bool,
    flushes: u32,
    aborted: Vec<Vec<u64>>,
    registered: RegisteredBuffers,
    /// RING_SETUPs and RING_KICKs that reached the device.
    ring_setups: Vec<RingSetupReq>,
    ring_kicks: u32,
}

impl TestDevice {
    fn request_count(&self) -> u64 {
        self.card.request_count()
    }

    fn command_count(&self) -> u64 {
        self.card.command_count()
    }
}

impl Device for TestDevice {
    fn execute(
        &mut self,
        tf: &mut [u8],
        sg: &[SgEntry],
        mem: &GuestMemoryMmap,
        asynchronous: bool,
    ) -> Outcome {
        let mut guest = GuestDma {
            ram: &self.ram,
            mem,
        };
        let mut port = RegisteredPort {
            inner: &mut guest,
            buffers: &self.registered,
            owner: None,
        };
        self.card
            .execute_request(tf, sg, &mut port, &mut self.irq, 42, asynchronous)
    }

    fn abort_buffers(&mut self, tags: &[u64]) -> usize {
        self.aborted.push(tags.to_vec());
        0
    }

    fn register_buffer(
        &mut self,
        id: u32,
        owner: u32,
        length: u64,
        entries: Vec<SgEntry>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RegisterError> {
        self.registered.register(id, owner, length, entries, mem)
    }

    fn unregister_buffer(&mut self, id: u32) -> Result<(), RegisterError> {
        self.registered.unregister(id)
    }

    fn ring_setup(&mut self, req: RingSetupReq) -> Result<(), RingError> {
        self.ring_setups.push(req);
        if req.flags.get() != 0 {
            return Err(RingError::Unsupported("no SQPOLL here"));
        }
        Ok(())
    }

    fn ring_kick(&mut self, _mem: &GuestMemoryMmap) -> Result<(), RingError> {
        self.ring_kicks += 1;
        Ok(())
    }

    fn flush_buffers(&mut self) -> Result<(), String> {
        self.flushes += 1;
        Ok(())
    }

    fn device_time_ns(&self) -> u64 {
        4242
    }

    fn attach(&mut self) -> Result<(), String> {
        self.attaches += 1;
        if self.attach_fails {
            Err("refused".into())
        } else {
            Ok(())
        }
    }
}

const CARD_RAM: u64 = 4 << 20;

fn card() -> TestDevice {
    let config = CardConfig {
        card_ram_size: CARD_RAM,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    };
    let card = Card::new(config).expect("card");
    TestDevice {
        irq: card.interrupt_controller(),
        card,
        ram: CardRam::new(CARD_RAM).expect("card RAM"),
        attaches: 0,
        attach_fails: false,
        flushes: 0,
        aborted: Vec::new(),
        registered: RegisteredBuffers::default(),
        ring_setups: Vec::new(),
        ring_kicks: 0,
    }
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// A task file reading the ID register `count` times.
fn task_file(count: u32) -> Vec<u8> {
    let header = TaskFileHeader {
        count: count.into(),
        ..TaskFileHeader::default()
    };
    let cmd = Command {
        op: (Op::GetRegister as u16).into(),
        reg: regs::ID.into(),
        ..Command::default()
    };
    let mut tf = header.as_bytes().to_vec();
    for _ in 0..count {
        tf.extend_from_slice(cmd.as_bytes());
    }
    tf
}

fn request(req: u32, flags: u32, tf: &[u8]) -> Vec<u8> {
    let header = VqRequest {
        req_type: req.into(),
        flags: flags.into(),
        tag: 0x1234.into(),
        sg_count: 0.into(),
        reserved: 0.into(),
    };
    let mut buf = header.as_bytes().to_vec();
    buf.extend_from_slice(tf);
    buf
}

/// Writes `bytes` at `addr`.
fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(addr)).expect("write");
}

fn get(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr)).expect("read");
    out
}

fn status_at(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    let raw = get(mem, addr, STATUS_SIZE);
    VqStatus::read_from_bytes(&raw)
        .expect("status")
        .status
        .get()
}

/// Builds `descs` as one chain on a mock queue and processes it.
fn run(mem: &GuestMemoryMmap, card: &mut TestDevice, descs: &[RawDescriptor]) -> Completion {
    let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
    let chain = vq.build_desc_chain(descs).expect("chain");
    process_chain(card, &chain)
}

/// Lays the request out in pieces of `piece` bytes from `DATA`, then a
/// writable area of `writable` bytes, and returns descriptors and the
/// writable area's address.
fn split_layout(
    req: &[u8],
    piece: usize,
    writable: usize,
    wpiece: usize,
) -> (Vec<RawDescriptor>, u64) {
    let mut descs = Vec::new();
    let mut addr = DATA;
    for chunk in req.chunks(piece) {
        descs.push(desc(addr, chunk.len() as u32, 0));
        addr += chunk.len() as u64;
    }
    let out = addr.next_multiple_of(0x1000);
    let mut waddr = out;
    let mut left = writable;
    while left > 0 {
        let n = left.min(wpiece);
        descs.push(desc(waddr, n as u32, W));
        waddr += n as u64;
        left -= n;
    }
    (descs, out)
}

fn check_executed(mem: &GuestMemoryMmap, out: u64, count: u32, c: Completion) {
    let tf_len = TF_HEADER_SIZE + count as usize * CMD_SIZE;
    assert_eq!(c.used_len as usize, tf_len + STATUS_SIZE);
    match c.disposition {
        Disposition::Executed(o) => {
            assert_eq!(o.error, TfError::Ok);
            assert_eq!(o.executed, count);
        }
        other => panic!("not executed: {other:?}"),
    }
    let result = get(mem, out, tf_len);
    let (header, body) = TaskFileHeader::read_from_prefix(&result).expect("header");
    assert_eq!(header.error.get(), TfError::Ok as u32);
    assert_eq!(header.count.get(), count);
    for block in body.chunks(CMD_SIZE) {
        let cmd = Command::read_from_bytes(block).expect("command");
        assert_eq!(cmd.value.get(), u64::from(MAGIC));
    }
    assert_eq!(status_at(mem, out + tf_len as u64), vq_status::OK);
}

#[test]
fn good_request_with_64_commands_executes() {
    let mem = memory();
    let mut card = card();
    let tf = task_file(64);
    let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
    put(&mem, DATA, &req);
    let out = 0x20_0000;
    let descs = [
        desc(DATA, req.len() as u32, 0),
        desc(out, (tf.len() + STATUS_SIZE) as u32, W),
    ];
    let c = run(&mem, &mut card, &descs);
    check_executed(&mem, out, 64, c);
    assert_eq!(card.request_count(), 1);
    assert_eq!(card.command_count(), 64);
}

#[test]
fn readable_and_writable_parts_split_over_many_descriptors() {
    let mem = memory();
    let mut card = card();
    let tf = task_file(10);
    let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
    put(&mem, DATA, &req);
    // 7-byte pieces split the headers and every command; 5-byte writable pieces.
    let (descs, out) = split_layout(&req, 7, tf.len() + STATUS_SIZE, 5);
    assert!(descs.len() > 100);
    let c = run(&mem, &mut card, &descs);
    check_executed(&mem, out, 10, c);
}

#[test]
fn largest_task_file_through_an_indirect_page_scatterlist() {
    let mem = memory();
    let mut card = card();
    let tf = task_file(MAX_COMMANDS);
    assert_eq!(tf.len(), MAX_TASK_FILE_SIZE);
    let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
    put(&mem, DATA, &req);
    let (descs, out) = split_layout(&req, 4096, tf.len() + STATUS_SIZE, 4096);
    // Write the descriptors as an indirect table with proper next links.
    let table = 0x60_0000;
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let d = SplitDescriptor::from(*d);
        let flags = if i + 1 < n {
            d.flags() | VRING_DESC_F_NEXT as u16
        } else {
            d.flags()
        };
        let raw = RawDescriptor::from(SplitDescriptor::new(
            d.addr().0,
            d.len(),
            flags,
            (i + 1) as u16,
        ));
        mem.write_obj(raw, GuestAddress(table + 16 * i as u64))
            .expect("table");
    }
    let head = [desc(table, (16 * n) as u32, VRING_DESC_F_INDIRECT as u16)];
    let c = run(&mem, &mut card, &head);
    check_executed(&mem, out, MAX_COMMANDS, c);
}

#[test]
fn bigger_writable_area_still_gets_result_then_status() {
    let mem = memory();
    let mut card = card();
    let tf = task_file(3);
    let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
    put(&mem, DATA, &req);
    let out = 0x20_0000;
    let descs = [desc(DATA, req.len() as u32, 0), desc(out, 4096, W)];
    let c = run(&mem, &mut card, &descs);
    check_executed(&mem, out, 3, c);
}

#[test]
fn task_file_errors_are_reported_in_the_header_with_status_ok() {
    let mem = memory();
    let mut card = card();
    let mut tf = task_file(4);
    tf[4..8].copy_from_slice(&5u32.to_le_bytes()); // count disagrees with the size
    let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
    put(&mem, DATA, &req);
    let out = 0x20_0000;
    let descs = [
        desc(DATA, req.len() as u32, 0),
        desc(out, (tf.len() + STATUS_SIZE) as u32, W),
    ];
    let c = run(&mem, &mut card, &descs);
    assert!(matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::BadCount));
    let header = TaskFileHeader::read_from_bytes(&get(&mem, out, TF_HEADER_SIZE)).expect("h");
    assert_eq!(header.error.get(), TfError::BadCount as u32);
    assert_eq!(status_at(&mem, out + tf.len() as u64), vq_status::OK);
}

/// Runs a chain that must be rejected with `status` written at the end of
/// the `wlen`-byte writable area at `out`, without touching the card.
fn expect_rejected(
    descs: &[RawDescriptor],
    mem: &GuestMemoryMmap,
    out: u64,
    wlen: u32,
) -> ChainError {
    let mut card = card();
    let c = run(mem, &mut card, descs);
    assert_eq!(card.request_count(), 0, "card must not run");
    assert_eq!(c.used_len, wlen);
    let Disposition::Rejected(e) = c.disposition else {
        panic!("not rejected: {c:?}");
    };
    assert_eq!(
        status_at(mem, out + u64::from(wlen) - STATUS_SIZE as u64),
        e.status()
    );
    e
}

fn good_req(mem: &GuestMemoryMmap) -> Vec<u8> {
    let req = request(req_type::EXEC_TASK_FILE, 0, &task_file(2));
    put(mem, DATA, &req);
    req
}

#[test]
fn no_writable_part_is_dropped() {
    let mem = memory();
    let req = good_req(&mem);
    let mut card = card();
    let c = run(&mem, &mut card, &[desc(DATA, req.len() as u32, 0)]);
    assert_eq!(c, Completion::dropped(ChainError::NoStatusRoom(0)));
    assert_eq!(card.request_count(), 0);
}

#[test]
fn writable_part_too_small_for_a_status_is_dropped() {
    let mem = memory();
    let req = good_req(&mem);
    let mut card = card();
    let descs = [desc(DATA, req.len() as u32, 0), desc(0x20_0000, 7, W)];
    let c = run(&mem, &mut card, &descs);
    assert_eq!(c, Completion::dropped(ChainError::NoStatusRoom(7)));
}

#[test]
fn writable_part_outside_guest_memory_is_dropped() {
    let mem = memory();
    let req = good_req(&mem);
    let mut card = card();
    for (addr, len) in [(MEM_SIZE, 64u32), (MEM_SIZE - 8, 64), (u64::MAX - 4, 64)] {
        let descs = [desc(DATA, req.len() as u32, 0), desc(addr, len, W)];
        let c = run(&mem, &mut card, &descs);
        assert_eq!(c, Completion::dropped(ChainError::WritableOutOfBounds));
    }
    assert_eq!(card.request_count(), 0);
}

#[test]
fn readable_part_outside_guest_memory_is_a_bad_request() {
    let mem = memory();
    let out = 0x20_0000;
    for (addr, len) in [(MEM_SIZE, 96u32), (MEM_SIZE - 32, 96), (u64::MAX - 8, 96)] {
        let descs = [desc(addr, len, 0), desc(out, 96, W)];
        let e = expect_rejected(&descs, &mem, out, 96);
        assert_eq!(e, ChainError::ReadableOutOfBounds);
    }
}

#[test]
fn short_readable_part_is_a_bad_request() {
    let mem = memory();
    good_req(&mem);
    let out = 0x20_0000;
    for len in [0u32, 8, 16, 31] {
        let descs = [desc(DATA, len, 0), desc(out, 64, W)];
        let e = expect_rejected(&descs, &mem, out, 64);
        assert_eq!(e, ChainError::TooShort(u64::from(len)));
    }
    // No readable descriptor at all.
    let e = expect_rejected(&[desc(out, 64, W)], &mem, out, 64);
    assert_eq!(e, ChainError::TooShort(0));
}

#[test]
fn absurd_readable_lengths_are_refused_without_reading() {
    let mem = memory();
    let out = 0x20_0000;
    // One byte over the limit, inside guest memory.
    let over = (MAX_READABLE + 1) as u32;
    let e = expect_rejected(&[desc(DATA, over, 0), desc(out, 64, W)], &mem, out, 64);
    assert_eq!(e, ChainError::TooLong(u64::from(over)));
    // Nearly 4 GiB, far beyond guest memory.
    let huge = u32::MAX - 64;
    let e = expect_rejected(&[desc(DATA, huge, 0), desc(out, 64, W)], &mem, out, 64);
    assert_eq!(e, ChainError::TooLong(u64::from(huge)));
}

#[test]
fn readable_after_writable_is_a_bad_request() {
    let mem = memory();
    let req = good_req(&mem);
    let out = 0x20_0000;
    let descs = [
        desc(DATA, 16, 0),
        desc(out, 64, W),
        desc(DATA + 16, req.len() as u32 - 16, 0),
        desc(out + 64, 64, W),
    ];
    let e = expect_rejected(&descs, &mem, out, 128);
    assert_eq!(e, ChainError::Misordered);
}

#[test]
fn unknown_request_type_or_flags_are_unsupported() {
    let mem = memory();
    let tf = task_file(2);
    let out = 0x20_0000;
    let wlen = (tf.len() + STATUS_SIZE) as u32;
    for (req_type, flags) in [
        (0u32, 0u32),
        (3, 0),
        (10, 0),
        (u32::MAX, 0),
        // Bit 0 (ASYNC) is the only flag, and only a task file's.
        (req_type::EXEC_TASK_FILE, 2),
        (req_type::EXEC_TASK_FILE, 3),
        (req_type::ATTACH, 1),
        (req_type::FLUSH_BUFFERS, 1),
        (req_type::REGISTER_BUFFER, 1),
        (req_type::UNREGISTER_BUFFER, 1),
        (req_type::ABORT, 1),
        (req_type::RING_SETUP, 1),
        (req_type::RING_KICK, 1),
    ] {
        let req = request(req_type, flags, &tf);
        put(&mem, DATA, &req);
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, wlen, W)];
        let e = expect_rejected(&descs, &mem, out, wlen);
        assert_eq!(e, ChainError::Unsupported { req_type, flags });
        assert_eq!(e.status(), vq_status::UNSUPPORTED);
    }
}

#[test]
fn result_area_too_small_is_a_bad_request() {
    let mem = memory();
    let req = good_req(&mem);
    let tf_len = (req.len() - REQUEST_HEADER_SIZE) as u32;
    let out = 0x20_0000;
    let wlen = tf_len + STATUS_SIZE as u32 - 1;
    let descs = [desc(DATA, req.len() as u32, 0), desc(out, wlen, W)];
    let e = expect_rejected(&descs, &mem, out, wlen);
    assert_eq!(
        e,
        ChainError::ResultTooSmall {
            got: u64::from(wlen),
            need: u64::from(wlen) + 1
        }
    );
}

#[test]
fn nested_indirect_table_ends_the_chain_and_is_refused() {
    let mem = memory();
    good_req(&mem);
    let table = 0x60_0000;
    // An indirect table whose only entry is itself indirect: the chain
    // walk stops, so no writable part is seen.
    let inner = RawDescriptor::from(SplitDescriptor::new(
        table,
        16,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    mem.write_obj(inner, GuestAddress(table)).expect("table");
    let mut card = card();
    let c = run(
        &mem,
        &mut card,
        &[desc(table, 16, VRING_DESC_F_INDIRECT as u16)],
    );
    assert_eq!(c.used_len, 0);
    assert_eq!(card.request_count(), 0);
}

// ---- DMA and scatter-gather tables -------------------------------

fn sg(addr: u64, len: u32) -> SgEntry {
    SgEntry::new(addr, len)
}

fn dma_cmd(dir: u16, first: u64, offset: u64, length: u64) -> Command {
    Command {
        op: (Op::DmaTransferBlock as u16).into(),
        reg: dir.into(),
        value: first.into(),
        mask: offset.into(),
        length: length.into(),
        ..Command::default()
    }
}

/// Request header (with `sg_count`), task file of `cmds`, then `table`.
fn dma_request(cmds: &[Command], table: &[SgEntry], sg_count: u32) -> (Vec<u8>, usize) {
    let header = VqRequest {
        req_type: req_type::EXEC_TASK_FILE.into(),
        sg_count: sg_count.into(),
        ..VqRequest::default()
    };
    let tf_header = TaskFileHeader {
        count: (cmds.len() as u32).into(),
        ..TaskFileHeader::default()
    };
    let mut buf = header.as_bytes().to_vec();
    buf.extend_from_slice(tf_header.as_bytes());
    for c in cmds {
        buf.extend_from_slice(c.as_bytes());
    }
    let tf_len = buf.len() - REQUEST_HEADER_SIZE;
    for e in table {
        buf.extend_from_slice(e.as_bytes());
    }
    (buf, tf_len)
}

/// Sends `req` in 100-byte readable pieces with a writable area of
/// `wlen` at OUT; returns the completion.
fn send(mem: &GuestMemoryMmap, dev: &mut TestDevice, req: &[u8], wlen: usize) -> Completion {
    put(mem, DATA, req);
    let (descs, out) = split_layout(req, 100, wlen, 64);
    assert_eq!(out, out_at(req.len()));
    run(mem, dev, &descs)
}

fn out_at(req_len: usize) -> u64 {
    (DATA + req_len as u64).next_multiple_of(0x1000)
}

fn tf_result(mem: &GuestMemoryMmap, out: u64, len: usize) -> TaskFileResult {
    TaskFileResult::parse(&get(mem, out, len)).expect("result")
}

/// Guest buffers for DMA live at 0x40_0000..: page-split, unaligned.
const BUF: u64 = 0x40_0000;

#[test]
fn dma_both_directions_with_entries_split_across_pages() {
    let mem = memory();
    let mut dev = card();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
    // The source buffer: 3 pieces on different pages, unaligned.
    let pieces = [
        (BUF + 0xf00, 0x100u32),
        (BUF + 0x3000, 0x1000),
        (BUF + 0x5123, 0),
    ];
    let rest = 10_000 - 0x1100;
    let pieces = [pieces[0], pieces[1], (pieces[2].0, rest as u32)];
    let mut at = 0usize;
    for (addr, len) in pieces {
        put(&mem, addr, &data[at..at + len as usize]);
        at += len as usize;
    }
    let mut table: Vec<SgEntry> = pieces.iter().map(|&(a, l)| sg(a, l)).collect();
    // The destination: 2 pieces elsewhere.
    table.push(sg(BUF + 0x1_0ffc, 4));
    table.push(sg(BUF + 0x2_0000, 9_996));
    let cmds = [
        dma_cmd(0, 0, 0x2_0000, 10_000),
        dma_cmd(1, 3, 0x2_0000, 10_000),
    ];
    let (req, tf_len) = dma_request(&cmds, &table, table.len() as u32);
    let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
    assert!(
        matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::Ok),
        "{c:?}"
    );
    let out = out_at(req.len());
    let res = tf_result(&mem, out, tf_len);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.commands[1].length.get(), 10_000);
    assert_eq!(status_at(&mem, out + tf_len as u64), vq_status::OK);
    assert_eq!(dev.ram.read(0x2_0000, 10_000).expect("card RAM"), data);
    let mut back = get(&mem, BUF + 0x1_0ffc, 4);
    back.extend_from_slice(&get(&mem, BUF + 0x2_0000, 9_996));
    assert_eq!(back, data);
    assert_eq!(dev.card.registers().peek(regs::DMA_TRANSFERRED), 10_000);
}

#[test]
fn dma_entry_outside_guest_memory_faults_and_writes_nothing() {
    let mem = memory();
    let mut dev = card();
    dev.ram.write(0, &[0x5a; 0x2000]).expect("fill card RAM");
    put(&mem, BUF, &[0x11; 0x1000]);
    let sentinel = vec![0xeeu8; 0x1000];
    put(&mem, BUF + 0x1000, &sentinel);
    for bad in [
        sg(MEM_SIZE - 0x800, 0x1000),
        sg(u64::MAX - 0x7ff, 0x1000),
        sg(MEM_SIZE, 0x1000),
    ] {
        // FROM_CARD: a good entry then one past guest memory.
        let table = [sg(BUF + 0x1000, 0x1000), bad];
        let cmds = [dma_cmd(1, 0, 0, 0x2000)];
        let (req, tf_len) = dma_request(&cmds, &table, 2);
        let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
        assert!(matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::DmaFault));
        let res = tf_result(&mem, out_at(req.len()), tf_len);
        assert_eq!((res.error, res.index), (TfError::DmaFault, 0));
        assert_eq!(get(&mem, BUF + 0x1000, 0x1000), sentinel);
        assert_eq!(get(&mem, MEM_SIZE - 0x800, 0x800), vec![0u8; 0x800]);
        // TO_CARD: card RAM stays as it was.
        let cmds = [dma_cmd(0, 0, 0, 0x2000)];
        let (req, tf_len) = dma_request(&cmds, &table, 2);
        send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
        assert_eq!(
            tf_result(&mem, out_at(req.len()), tf_len).error,
            TfError::DmaFault
        );
        assert_eq!(dev.ram.read(0, 0x2000).expect("read"), vec![0x5a; 0x2000]);
    }
}

#[test]
fn malformed_sg_tables_are_bad_requests() {
    let mem = memory();
    let cmds = [dma_cmd(0, 0, 0, 0x100)];
    let good = [sg(BUF, 0x100)];
    let mut zero_len = good;
    zero_len[0].len = 0.into();
    let mut reserved = good;
    reserved[0].reserved = 1.into();
    let cases: Vec<(Vec<u8>, ChainError)> = vec![
        (dma_request(&cmds, &zero_len, 1).0, ChainError::BadEntry(0)),
        (dma_request(&cmds, &reserved, 1).0, ChainError::BadEntry(0)),
        (
            dma_request(&cmds, &good, MAX_SG_ENTRIES + 1).0,
            ChainError::TooManyEntries(MAX_SG_ENTRIES + 1),
        ),
    ];
    for (req, expected) in cases {
        put(&mem, DATA, &req);
        let out = 0x30_0000;
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, 64, W)];
        assert_eq!(expect_rejected(&descs, &mem, out, 64), expected);
    }
    // sg_count claims more entries than the readable part holds: what is
    // left for the task file is too short.
    let (req, _) = dma_request(&cmds, &good, 5);
    put(&mem, DATA, &req);
    let descs = [desc(DATA, req.len() as u32, 0), desc(0x30_0000, 64, W)];
    assert_eq!(
        expect_rejected(&descs, &mem, 0x30_0000, 64),
        ChainError::TooShort(req.len() as u64)
    );
    // sg_count too small for the table: the extra bytes count as task
    // file, which the card answers BAD_COUNT.
    let (req, tf_len) = dma_request(&cmds, &good, 0);
    let mut dev = card();
    let c = send(&mem, &mut dev, &req, tf_len + 16 + STATUS_SIZE);
    assert!(matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::BadCount));
    // A reserved request-header field.
    let (mut req, _) = dma_request(&cmds, &good, 1);
    req[20] = 1;
    put(&mem, DATA, &req);
    let descs = [desc(DATA, req.len() as u32, 0), desc(0x30_0000, 64, W)];
    assert_eq!(
        expect_rejected(&descs, &mem, 0x30_0000, 64),
        ChainError::Reserved(1)
    );
}

#[test]
fn sg_entries_that_do_not_sum_to_the_length_are_dma_faults() {
    let mem = memory();
    let mut dev = card();
    let table = [sg(BUF, 0x100), sg(BUF + 0x1000, 0x100)];
    for cmd in [
        dma_cmd(0, 0, 0, 0x180), // overshoots inside entry 1
        dma_cmd(0, 1, 0, 0x200), // runs past sg_count
        dma_cmd(0, 2, 0, 0x100), // first entry past the table
    ] {
        let (req, tf_len) = dma_request(&[cmd], &table, 2);
        send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
        let res = tf_result(&mem, out_at(req.len()), tf_len);
        assert_eq!((res.error, res.index), (TfError::DmaFault, 0), "{cmd:?}");
    }
}

// ---- ATTACH ----------------------------------------------------------

fn attach_request(sg_count: u32, extra: usize) -> Vec<u8> {
    let header = VqRequest {
        req_type: req_type::ATTACH.into(),
        sg_count: sg_count.into(),
        ..VqRequest::default()
    };
    let mut buf = header.as_bytes().to_vec();
    buf.resize(buf.len() + extra, 0);
    buf
}

#[test]
fn attach_answers_ok_or_device_error() {
    let mem = memory();
    let mut dev = card();
    let req = attach_request(0, 0);
    put(&mem, DATA, &req);
    let out = 0x30_0000;
    let descs = [desc(DATA, 24, 0), desc(out, 16, W)];
    let c = run(&mem, &mut dev, &descs);
    assert_eq!(c.used_len, 16);
    assert_eq!(c.disposition, Disposition::Attached(Ok(())));
    assert_eq!(status_at(&mem, out), vq_status::OK);
    dev.attach_fails = true;
    let c = run(&mem, &mut dev, &descs);
    assert_eq!(c.disposition, Disposition::Attached(Err("refused".into())));
    assert_eq!(status_at(&mem, out), vq_status::DEVICE_ERROR);
    assert_eq!(dev.attaches, 2);
    assert_eq!(dev.request_count(), 0, "ATTACH runs no task file");
}

#[test]
fn malformed_attach_is_a_bad_request() {
    let mem = memory();
    let out = 0x30_0000;
    for (req, flags) in [(attach_request(1, 0), 0u32), (attach_request(0, 16), 0)] {
        put(&mem, DATA, &req);
        let descs = [desc(DATA, req.len() as u32, 0), desc(out, 16, W)];
        let e = expect_rejected(&descs, &mem, out, 16);
        assert!(matches!(e, ChainError::BadAttach { .. }), "{e:?} {flags}");
    }
    let mut req = attach_request(0, 0);
    req[4] = 1; // flags
    put(&mem, DATA, &req);
    let descs = [desc(DATA, 24, 0), desc(out, 16, W)];
    let e = expect_rejected(&descs, &mem, out, 16);
    assert_eq!(e.status(), vq_status::UNSUPPORTED);
}

#[test]
fn statuses_carry_the_device_clock() {
    let mem = memory();
    let req = good_req(&mem);
    let tf_len = req.len() - REQUEST_HEADER_SIZE;
    let out = 0x20_0000;
    let descs = [
        desc(DATA, req.len() as u32, 0),
        desc(out, (tf_len + STATUS_SIZE) as u32, W),
    ];
    let mut dev = card();
    run(&mem, &mut dev, &descs);
    let raw = get(&mem, out + tf_len as u64, STATUS_SIZE);
    let st = VqStatus::read_from_bytes(&raw).expect("status");
    assert_eq!(
        (st.status.get(), st.device_time_ns.get()),
        (vq_status::OK, 4242)
    );
    // Rejections too.
    let descs = [desc(DATA, 8, 0), desc(out, 64, W)];
    run(&mem, &mut dev, &descs);
    let raw = get(&mem, out + 48, STATUS_SIZE);
    let st = VqStatus::read_from_bytes(&raw).expect("status");
    assert_eq!(
        (st.status.get(), st.device_time_ns.get()),
        (vq_status::BAD_REQUEST, 4242)
    );
}

// ---- FLUSH_BUFFERS and STREAM_BUFFER ------------------------------

fn header(req: u32, sg_count: u32) -> VqRequest {
    VqRequest {
        req_type: req.into(),
        sg_count: sg_count.into(),
        tag: 77.into(),
        ..VqRequest::default()
    }
}

#[test]
fn flush_buffers_answers_after_the_device_flushed() {
    let mem = memory();
    let mut dev = card();
    put(&mem, DATA, header(req_type::FLUSH_BUFFERS, 0).as_bytes());
    let out = 0x30_0000;
    let c = run(&mem, &mut dev, &[desc(DATA, 24, 0), desc(out, 16, W)]);
    assert_eq!(c.used_len, 16);
    assert_eq!(c.disposition, Disposition::Flushed(Ok(())));
    assert_eq!(status_at(&mem, out), vq_status::OK);
    assert_eq!(dev.flushes, 1);
    // A payload, or entries: BAD_REQUEST, and no flush.
    let mut long = header(req_type::FLUSH_BUFFERS, 0).as_bytes().to_vec();
    long.extend_from_slice(&[0; 16]);
    put(&mem, DATA, &long);
    let e = expect_rejected(&[desc(DATA, 40, 0), desc(out, 16, W)], &mem, out, 16);
    assert!(matches!(e, ChainError::BadFlush { .. }));
    put(&mem, DATA, header(req_type::FLUSH_BUFFERS, 1).as_bytes());
    let e = expect_rejected(&[desc(DATA, 24, 0), desc(out, 16, W)], &mem, out, 16);
    assert!(matches!(e, ChainError::BadFlush { .. }));
    // STREAM_BUFFER belongs on the stream queue.
    put(&mem, DATA, header(req_type::STREAM_BUFFER, 0).as_bytes());
    let e = expect_rejected(&[desc(DATA, 24, 0), desc(out, 16, W)], &mem, out, 16);
    assert_eq!(e.status(), vq_status::UNSUPPORTED);
    assert_eq!(dev.flushes, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary chains never panic, never report more than the chain's
    /// writable bytes, and execute only well-formed requests.
    #[test]
    fn arbitrary_chains_never_panic(
        parts in proptest::collection::vec(
            (prop_oneof![
                Just(DATA), Just(0x20_0000u64), Just(MEM_SIZE - 16), Just(MEM_SIZE),
                any::<u64>(), DATA..MEM_SIZE
            ],
            prop_oneof![0u32..64, 0u32..0x3_0000, any::<u32>()],
            prop_oneof![Just(0u16), Just(W), Just(VRING_DESC_F_INDIRECT as u16), any::<u16>()]),
            0..12),
        req_type in prop_oneof![Just(req_type::EXEC_TASK_FILE), any::<u32>()],
        count in 0u32..8,
    ) {
        let mem = memory();
        put(&mem, DATA, &request(req_type, 0, &task_file(count)));
        let descs: Vec<_> = parts
            .iter()
            .map(|&(addr, len, flags)| desc(addr, len, flags))
            .collect();
        // An upper bound: indirect tables can only be read from guest
        // memory, which holds no writable descriptors here.
        let writable: u64 = parts
            .iter()
            .filter(|p| p.2 & W != 0)
            .map(|p| u64::from(p.1))
            .sum();
        let mut card = card();
        if descs.is_empty() {
            return Ok(());
        }
        let c = run(&mem, &mut card, &descs);
        prop_assert!(u64::from(c.used_len) <= writable);
        if !matches!(c.disposition, Disposition::Executed(_)) {
            prop_assert_eq!(card.request_count(), 0);
        }
    }
}

// ---- ABORT and ASYNC ----------------------------------------------

fn abort_request(tags: &[u64], sg_count: u32) -> Vec<u8> {
    let mut buf = header(req_type::ABORT, sg_count).as_bytes().to_vec();
    for t in tags {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    buf
}

/// The owner tag the tests register buffers for.
const OWNER: u32 = 0x77;

/// REGISTER_BUFFER (`register`) or UNREGISTER_BUFFER request bytes.
fn buffer_request(register: bool, id: u32, length: u64, table: &[SgEntry]) -> Vec<u8> {
    let header = VqRequest {
        req_type: if register {
            req_type::REGISTER_BUFFER
        } else {
            req_type::UNREGISTER_BUFFER
        }
        .into(),
        sg_count: (table.len() as u32).into(),
        ..VqRequest::default()
    };
    let desc = BufferDesc {
        id: id.into(),
        owner: if register { OWNER } else { 0 }.into(),
        length: length.into(),
    };
    let mut buf = header.as_bytes().to_vec();
    buf.extend_from_slice(desc.as_bytes());
    for e in table {
        buf.extend_from_slice(e.as_bytes());
    }
    buf
}

#[test]
fn abort_names_tags_and_answers_ok() {
    let mem = memory();
    let mut dev = card();
    let req = abort_request(&[5, 0x1234, u64::MAX], 0);
    put(&mem, DATA, &req);
    let out = 0x30_0000;
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let descs = [desc(DATA, req.len() as u32, 0), desc(out, 16, W)];
    let chain = vq.build_desc_chain(&descs).expect("chain");
    assert_eq!(abort_tags(&chain), Some(vec![5, 0x1234, u64::MAX]));
    assert_eq!(
        peek_header(&chain).map(|h| h.req_type.get()),
        Some(req_type::ABORT)
    );
    let c = process_chain(&mut dev, &chain);
    assert_eq!(c.used_len, 16);
    assert_eq!(c.disposition, Disposition::Aborted(0));
    assert_eq!(status_at(&mem, out), vq_status::OK);
    assert_eq!(dev.aborted, vec![vec![5, 0x1234, u64::MAX]]);
    // No tags, a partial tag, too many tags, or entries: BAD_REQUEST and
    // nothing aborted.
    let too_many: Vec<u64> = (0..=u64::from(MAX_ABORT_TAGS)).collect();
    let mut partial = abort_request(&[1], 0);
    partial.push(0);
    for bad in [
        abort_request(&[], 0),
        partial,
        abort_request(&too_many, 0),
        abort_request(&[1], 1),
    ] {
        put(&mem, DATA, &bad);
        let descs = [desc(DATA, bad.len() as u32, 0), desc(out, 16, W)];
        let e = expect_rejected(&descs, &mem, out, 16);
        assert!(matches!(e, ChainError::BadAbort { .. }), "{e:?}");
    }
    // The most tags is fine.
    let most: Vec<u64> = (0..u64::from(MAX_ABORT_TAGS)).collect();
    let req = abort_request(&most, 0);
    put(&mem, DATA, &req);
    let c = run(
        &mem,
        &mut dev,
        &[desc(DATA, req.len() as u32, 0), desc(out, 16, W)],
    );
    assert_eq!(c.disposition, Disposition::Aborted(0));
    assert_eq!(dev.aborted.len(), 2);
}

#[test]
fn a_cancelled_task_file_comes_back_cancelled_without_running() {
    let mem = memory();
    let mut dev = card();
    let tf = task_file(3);
    let req = request(req_type::EXEC_TASK_FILE, 0, &tf);
    put(&mem, DATA, &req);
    let out = 0x20_0000;
    let wlen = (tf.len() + STATUS_SIZE) as u32;
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let chain = vq
        .build_desc_chain(&[desc(DATA, req.len() as u32, 0), desc(out, wlen, W)])
        .expect("chain");
    assert_eq!(peek_header(&chain).map(|h| h.tag.get()), Some(0x1234));
    assert_eq!(abort_tags(&chain), None);
    let c = cancel_chain(&mut dev, &chain);
    assert_eq!(c.disposition, Disposition::Cancelled);
    assert_eq!(c.used_len, wlen);
    let res = tf_result(&mem, out, tf.len());
    assert_eq!((res.error, res.index), (TfError::Cancelled, 0));
    // GET outputs are not written: the commands come back as sent.
    assert_eq!(&get(&mem, out + 16, tf.len() - 16)[..], &tf[16..]);
    assert_eq!(status_at(&mem, out + tf.len() as u64), vq_status::OK);
    assert_eq!(dev.request_count(), 0);
    // Cancelling anything else processes it as usual.
    put(&mem, DATA, header(req_type::FLUSH_BUFFERS, 0).as_bytes());
    let chain = vq
        .build_desc_chain(&[desc(DATA, 24, 0), desc(out, 16, W)])
        .expect("chain");
    assert_eq!(
        cancel_chain(&mut dev, &chain).disposition,
        Disposition::Flushed(Ok(()))
    );
}

#[test]
fn nonblock_dma_needs_an_asynchronous_request() {
    let mem = memory();
    let table = [sg(BUF, 4096)];
    let cmd = Command {
        op: (Op::DmaTransferNonBlock as u16).into(),
        ..dma_cmd(xxcapture_abi::dma_dir::TO_CARD, 0, 0, 4096)
    };
    for (flags, want) in [
        (0, (TfError::BadOp, 0)),
        (xxcapture_abi::vq_flags::ASYNC, (TfError::Ok, 1)),
    ] {
        let mut dev = card();
        let (mut req, tf_len) = dma_request(&[cmd], &table, 1);
        req[4..8].copy_from_slice(&flags.to_le_bytes());
        let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
        assert!(matches!(c.disposition, Disposition::Executed(_)));
        let res = tf_result(&mem, out_at(req.len()), tf_len);
        assert_eq!((res.error, res.index), want, "flags {flags}");
    }
}

/// Sends a buffer request; returns the completion and the status written
/// at the start of its 16-byte writable part.
fn send_buffer(mem: &GuestMemoryMmap, dev: &mut TestDevice, req: &[u8]) -> (Completion, u32) {
    let c = send(mem, dev, req, STATUS_SIZE);
    let status = status_at(mem, out_at(req.len()));
    (c, status)
}

fn buffer_dma(dir: u16, id: u32, offset: u64, card_offset: u64, length: u64) -> Command {
    Command {
        op: (Op::DmaBuffer as u16).into(),
        reg: dir.into(),
        flags: id.into(),
        value: offset.into(),
        mask: card_offset.into(),
        length: length.into(),
    }
}

#[test]
fn registered_buffer_round_trip_leaves_the_bytes_around_it_alone() {
    let mem = memory();
    let mut dev = card();
    // Buffer 5: 0x1800 bytes in two pieces, each between canaries.
    let table = [sg(BUF + 0x100, 0x800), sg(BUF + 0x3000, 0x1000)];
    let canary = [0xc5u8; 0x100];
    for at in [BUF, BUF + 0x900, BUF + 0x2f00, BUF + 0x4000] {
        put(&mem, at, &canary);
    }
    let (c, status) = send_buffer(&mem, &mut dev, &buffer_request(true, 5, 0x1800, &table));
    assert_eq!(status, vq_status::OK, "{c:?}");
    assert_eq!(c.used_len, STATUS_SIZE as u32);
    assert!(matches!(
        c.disposition,
        Disposition::Buffer {
            register: true,
            id: 5,
            result: Ok(())
        }
    ));
    assert_eq!(dev.request_count(), 0, "REGISTER runs no task file");

    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 7 % 253) as u8).collect();
    dev.ram.write(0x1_0000, &data).expect("card RAM");
    // FROM_CARD into bytes 0x400..0x1400 of the buffer (across both pieces),
    // then TO_CARD back out of them elsewhere in card RAM.
    let cmds = [
        buffer_dma(1, 5, 0x400, 0x1_0000, 0x1000),
        buffer_dma(0, 5, 0x400, 0x2_0000, 0x1000),
    ];
    let (req, tf_len) = dma_request(&cmds, &[], 0);
    let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
    assert!(
        matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::Ok),
        "{c:?}"
    );
    let res = tf_result(&mem, out_at(req.len()), tf_len);
    assert_eq!(res.commands[0].flags.get(), 5);
    assert_eq!(res.commands[0].value.get(), 0x400);
    let mut back = get(&mem, BUF + 0x100 + 0x400, 0x400);
    back.extend_from_slice(&get(&mem, BUF + 0x3000, 0xc00));
    assert_eq!(back, data);
    assert_eq!(dev.ram.read(0x2_0000, 0x1000).expect("card RAM"), data);
    for at in [BUF, BUF + 0x900, BUF + 0x2f00, BUF + 0x4000] {
        assert_eq!(get(&mem, at, 0x100), canary, "canary at {at:#x}");
    }
    assert_eq!(get(&mem, BUF + 0x100, 0x400), vec![0u8; 0x400]);

    // Past the end, an unknown id: DMA_FAULT, nothing written.
    for cmd in [
        buffer_dma(1, 5, 0x1000, 0, 0x801),
        buffer_dma(1, 6, 0, 0, 1),
        buffer_dma(1, 5, u64::MAX, 0, 1),
    ] {
        let (req, tf_len) = dma_request(&[cmd], &[], 0);
        let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
        assert!(
            matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::DmaFault),
            "{cmd:?}: {c:?}"
        );
    }
    assert_eq!(get(&mem, BUF + 0x100, 0x400), vec![0u8; 0x400]);

    // Unregistered: the id faults, and a second UNREGISTER is refused.
    let (c, status) = send_buffer(&mem, &mut dev, &buffer_request(false, 5, 0, &[]));
    assert_eq!(status, vq_status::OK, "{c:?}");
    let (req, tf_len) = dma_request(&cmds[..1], &[], 0);
    let c = send(&mem, &mut dev, &req, tf_len + STATUS_SIZE);
    assert!(matches!(c.disposition, Disposition::Executed(o) if o.error == TfError::DmaFault));
    let (c, status) = send_buffer(&mem, &mut dev, &buffer_request(false, 5, 0, &[]));
    assert_eq!(status, vq_status::BAD_REQUEST, "{c:?}");
    assert!(dev.registered.is_empty());
}

#[test]
fn malformed_buffer_requests_are_refused() {
    let mem = memory();
    let mut dev = card();
    let good = [sg(BUF, 0x1000)];
    let mut cases: Vec<(Vec<u8>, u32)> = vec![
        // Wrong length, id 0, id too big, entries outside guest memory.
        (
            buffer_request(true, 1, 0xfff, &good),
            vq_status::BAD_REQUEST,
        ),
        (
            buffer_request(true, 0, 0x1000, &good),
            vq_status::BAD_REQUEST,
        ),
        (
            buffer_request(true, 257, 0x1000, &good),
            vq_status::BAD_REQUEST,
        ),
        (
            buffer_request(true, 1, 0x1000, &[sg(MEM_SIZE - 0x800, 0x1000)]),
            vq_status::BAD_REQUEST,
        ),
        // No entries; an empty entry; UNREGISTER with entries or a length.
        (buffer_request(true, 1, 0, &[]), vq_status::BAD_REQUEST),
        (
            buffer_request(true, 1, 0x1000, &[sg(BUF, 0x1000), sg(BUF, 0)]),
            vq_status::BAD_REQUEST,
        ),
        (buffer_request(false, 1, 0, &good), vq_status::BAD_REQUEST),
        (buffer_request(false, 1, 5, &[]), vq_status::BAD_REQUEST),
    ];
    // sg_count disagreeing with the entries that follow.
    let mut short = buffer_request(true, 1, 0x2000, &[sg(BUF, 0x1000), sg(BUF, 0x1000)]);
    short.truncate(short.len() - SG_ENTRY_SIZE);
    cases.push((short, vq_status::BAD_REQUEST));
    // REGISTER without an owner, UNREGISTER with one, and flags.
    let mut no_owner = buffer_request(true, 1, 0x1000, &good);
    no_owner[REQUEST_HEADER_SIZE + 4] = 0;
    cases.push((no_owner, vq_status::BAD_REQUEST));
    let mut owned = buffer_request(false, 1, 0, &[]);
    owned[REQUEST_HEADER_SIZE + 5] = 1;
    cases.push((owned, vq_status::BAD_REQUEST));
    let mut flags = buffer_request(true, 1, 0x1000, &good);
    flags[4] = 1;
    cases.push((flags, vq_status::UNSUPPORTED));
    // Header only.
    cases.push((
        buffer_request(false, 1, 0, &[])[..REQUEST_HEADER_SIZE].to_vec(),
        vq_status::BAD_REQUEST,
    ));
    for (req, expected) in cases {
        let out = out_at(req.len());
        put(&mem, DATA, &req);
        let (descs, _) = split_layout(&req, 100, STATUS_SIZE, 64);
        let c = run(&mem, &mut dev, &descs);
        assert_eq!(status_at(&mem, out), expected, "{c:?}");
        assert!(dev.registered.is_empty(), "{c:?}");
    }
    // An id already held is refused; the first registration stays.
    let (_, status) = send_buffer(&mem, &mut dev, &buffer_request(true, 9, 0x1000, &good));
    assert_eq!(status, vq_status::OK);
    let (_, status) = send_buffer(&mem, &mut dev, &buffer_request(true, 9, 0x1000, &good));
    assert_eq!(status, vq_status::BAD_REQUEST);
    assert_eq!(dev.registered.len(), 1);
}

fn ring_setup_request(owner: u32, flags: u32, sq_idle_us: u32, reserved: u32) -> Vec<u8> {
    let mut buf = header(req_type::RING_SETUP, 0).as_bytes().to_vec();
    let setup = RingSetupReq {
        owner: owner.into(),
        flags: flags.into(),
        sq_idle_us: sq_idle_us.into(),
        reserved: reserved.into(),
    };
    buf.extend_from_slice(setup.as_bytes());
    buf
}

#[test]
fn ring_requests_are_framed_exactly() {
    let mem = memory();
    let mut dev = card();
    // Good ones reach the device; its answer goes at the start.
    let (c, status) = send_buffer(&mem, &mut dev, &ring_setup_request(5, 0, 0, 0));
    assert_eq!(status, vq_status::OK);
    assert_eq!(c.used_len, STATUS_SIZE as u32);
    assert!(matches!(
        c.disposition,
        Disposition::Ring {
            kick: false,
            result: Ok(())
        }
    ));
    let (_, status) = send_buffer(
        &mem,
        &mut dev,
        &ring_setup_request(5, ring_setup::SQPOLL, RING_MAX_SQ_IDLE_US, 0),
    );
    assert_eq!(status, vq_status::UNSUPPORTED);
    let (c, status) = send_buffer(&mem, &mut dev, header(req_type::RING_KICK, 0).as_bytes());
    assert_eq!(status, vq_status::OK);
    assert!(matches!(
        c.disposition,
        Disposition::Ring { kick: true, .. }
    ));
    assert_eq!((dev.ring_setups.len(), dev.ring_kicks), (2, 1));
    // Unknown flags, reserved, an idle time too long, entries, a short or
    // long payload; a kick with a payload or entries: BAD_REQUEST, and the
    // device never sees them.
    let mut long = ring_setup_request(5, 0, 0, 0);
    long.push(0);
    let mut with_entries = ring_setup_request(5, 0, 0, 0);
    with_entries[16] = 1;
    let mut kick_entries = header(req_type::RING_KICK, 1).as_bytes().to_vec();
    kick_entries.truncate(REQUEST_HEADER_SIZE);
    let mut kick_payload = header(req_type::RING_KICK, 0).as_bytes().to_vec();
    kick_payload.extend_from_slice(&[0; 8]);
    for bad in [
        ring_setup_request(5, 2, 0, 0),
        ring_setup_request(5, 0, 0, 1),
        ring_setup_request(5, 0, RING_MAX_SQ_IDLE_US + 1, 0),
        ring_setup_request(5, 0, 0, 0)[..REQUEST_HEADER_SIZE + 12].to_vec(),
        header(req_type::RING_SETUP, 0).as_bytes().to_vec(),
        long,
        with_entries,
        kick_entries,
        kick_payload,
    ] {
        let (c, status) = send_buffer(&mem, &mut dev, &bad);
        assert_eq!(status, vq_status::BAD_REQUEST, "{c:?}");
        assert!(matches!(c.disposition, Disposition::Rejected(_)), "{c:?}");
    }
    assert_eq!((dev.ring_setups.len(), dev.ring_kicks), (2, 1));
}

#[test]
fn registered_buffers_keep_their_owner() {
    let mem = memory();
    let mut dev = card();
    let good = [sg(BUF, 0x1000)];
    let (_, status) = send_buffer(&mem, &mut dev, &buffer_request(true, 3, 0x1000, &good));
    assert_eq!(status, vq_status::OK);
    assert_eq!(dev.registered.owner(3), Some(OWNER));
    assert!(dev.registered.range_of(3, Some(OWNER), 0, 16).is_ok());
    assert!(dev.registered.range_of(3, None, 0, 16).is_ok());
    assert_eq!(
        dev.registered.range_of(3, Some(OWNER + 1), 0, 16),
        Err(xxcapture_model::DmaFault::UnknownBuffer { id: 3 })
    );
}
