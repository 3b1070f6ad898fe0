//! The stream devices of `device_chains`: the console (§5.3) and the network device (§5.1),
//! whose queues carry byte streams and frames between the driver and the host side.
//!
//! # Input
//!
//! Three header bytes and then operations until the bytes run out (at most [`MAX_OPS`]):
//!
//! - `device`: `device % 4` is 1 (console) or 2 (network device) here; see
//!   [`super::device_chains_on`].
//! - `features`: bit 0 accepts VIRTIO_F_INDIRECT_DESC; the other bits pick device-type
//!   features ([`StreamDevice::wanted`]).
//! - `mode`: bit 0 runs the legacy transport (version 1) instead of version 2; bit 1 withholds
//!   DRIVER_OK after each initialization until a [`StreamOp::DriverOk`] operation.
//!
//! Operations ([`StreamOp`]): a chain on one queue (the driver's bytes or the device-writable
//! space split into 1 to 5 descriptors at arbitrary cut points; direct or through an indirect
//! table; optionally a device-writable descriptor before a request, or one descriptor outside
//! guest RAM), a notification, host input on a port, configuration reads and writes,
//! DRIVER_OK, and a device reset followed by a fresh initialization.
//!
//! # Guest memory (guest physical addresses, 320 KiB of RAM at 0)
//!
//! Queue `q` (16 entries when `q` is even, 8 when odd) at `(q + 1) * 0x2000` (descriptor table and available ring in the first
//! page, used ring in the second, for both transports), buffer slots of 2 KiB from
//! [`DATA`] (one per queue entry), indirect tables from [`TABLES`].
//!
//! # Oracles
//!
//! Always (they hold for any conforming device):
//!
//! | oracle | requirement |
//! |---|---|
//! | no panic, no hang (step budget) | SPLIT-DEV-MALFORMED-CHAIN |
//! | the device writes only the used rings and device-writable buffers of chains it was given | VQ-DEV-03, VQ-DEV-05 |
//! | a used element names an outstanding head; its `len` is at most the chain's device-writable bytes | VQ-DEV-01 |
//! | before `used.idx` moves, the device wrote at least `len` bytes into the chain | VQ-DEV-15 |
//! | over the modern transport nothing is used or written before DRIVER_OK | STATUS-DEV-01 |
//! | the device type's own oracles ([`super::console`], [`super::net`]) | see there |
//!
//! With a [`Mutant`] pinned, an unmodified reference device runs the same operations beside
//! it, and any difference in what the driver and the host can observe (register reads, the
//! device's memory writes and their bytes, the used rings, the host records) is a
//! `divergence`: the differential oracle that measures which mutants the body can see.

use super::super::Finding;
use super::err;
use super::Reader;
use crate::target::reference::guarded_call;
use crate::target::TargetError;
use std::collections::BTreeMap;
use std::fmt;
use virtio_reference_device::regs::*;
use virtio_reference_device::{
    AccessKind, Descriptor, DeviceBackend, DeviceConfig, DriverMemory, DriverQueue, GuestRam,
    MmioDevice, Mutant, TransportVersion,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM of one case: 320 KiB at guest physical address 0.
pub const RAM: u64 = 0x5_0000;
/// Entries of the largest queue (slots and tables are laid out for it).
pub const QUEUE_SIZE: u16 = 16;

/// Entries of queue `q`: 16 for even queues, 8 for odd ones, so that a device keeping one
/// queue size for all queues (MMIO-REG-05) shows.
pub fn queue_size(q: u16) -> u16 {
    if q.is_multiple_of(2) {
        QUEUE_SIZE
    } else {
        QUEUE_SIZE / 2
    }
}
/// Most queues driven (console with MULTIPORT and two ports).
pub const MAX_QUEUES: u16 = 6;
/// Start of the buffer slots (one per queue entry).
pub const DATA: u64 = 0x1_0000;
/// Bytes per buffer slot.
pub const SLOT: u64 = 0x800;
/// Start of the indirect tables (256 bytes per queue entry).
pub const TABLES: u64 = 0x4_0000;
/// Largest request or device-writable space of one chain, in bytes.
pub const MAX_CHAIN_BYTES: usize = 2040;
/// Most operations decoded from one input.
pub const MAX_OPS: usize = 64;
const STEP_BUDGET: u64 = 1 << 12;

/// Chain flag: put the descriptors into an indirect table.
pub const F_INDIRECT: u8 = 1;
/// Chain flag: a device-writable descriptor before the driver's bytes (a malformed chain).
pub const F_WRITABLE_FIRST: u8 = 4;
/// Chain flag: one descriptor points (partly) outside guest RAM.
pub const F_OUTSIDE_RAM: u8 = 8;
/// Chain flag: make the chain available without a notification.
pub const F_NO_NOTIFY: u8 = 16;

/// Queue `q` starts at `(q + 1) * 0x2000`: never at 0, which a legacy QueuePFN cannot name
/// (PFN 0 stops the queue, §4.2.4).
fn queue_base(q: u16) -> u64 {
    (u64::from(q) + 1) * 0x2000
}

fn slot(q: u16, i: u16) -> u64 {
    DATA + (u64::from(q) * u64::from(QUEUE_SIZE) + u64::from(i)) * SLOT
}

fn table(q: u16, i: u16) -> u64 {
    TABLES + (u64::from(q) * u64::from(QUEUE_SIZE) + u64::from(i)) * 0x100
}

/// One operation of a stream-device case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// A chain on queue `queue % queues`: on a queue the driver writes to, the request that
    /// [`StreamDevice::request`] builds from `kind` and `len`; on a receive queue,
    /// `(len + 1) * 8` device-writable bytes. Split at `cut * bytes / 255`; `F_*` `flags`.
    Chain {
        queue: u8,
        kind: u8,
        len: u8,
        cuts: Vec<u8>,
        flags: u8,
    },
    /// QueueNotify for `queue % queues`.
    Notify { queue: u8 },
    /// Host input ([`StreamDevice::host_input`]).
    Host { port: u8, kind: u8, len: u8 },
    /// 16-bit reads of the first 12 bytes of the configuration space.
    ConfigRead,
    /// A 32-bit driver write of `value` at configuration offset `4 * (offset % 3)`.
    ConfigWrite { offset: u8, value: u8 },
    /// Sets DRIVER_OK when the initialization withheld it.
    DriverOk,
    /// Status 0, then a fresh initialization.
    Reset,
}

/// A decoded stream-device case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCase {
    /// Device selector (`% 4`: 1 console, 2 network device).
    pub device: u8,
    /// Feature selector.
    pub features: u8,
    /// Bit 0: legacy transport; bit 1: DRIVER_OK withheld until [`StreamOp::DriverOk`].
    pub mode: u8,
    /// The operations.
    pub ops: Vec<StreamOp>,
}

/// Decodes `data` leniently (missing bytes read as zeros).
pub fn decode(data: &[u8]) -> StreamCase {
    let mut r = Reader { data, at: 0 };
    let device = r.byte();
    let features = r.byte();
    let mode = r.byte();
    let mut ops = Vec::new();
    while !r.done() && ops.len() < MAX_OPS {
        let op = match r.byte() % 8 {
            0 | 1 => {
                let queue = r.byte();
                let kind = r.byte();
                let len = r.byte();
                let pieces = 1 + r.byte() % 5;
                let cuts = (1..pieces).map(|_| r.byte()).collect();
                let flags = r.byte();
                StreamOp::Chain {
                    queue,
                    kind,
                    len,
                    cuts,
                    flags,
                }
            }
            2 => StreamOp::Notify { queue: r.byte() },
            3 => StreamOp::Host {
                port: r.byte(),
                kind: r.byte(),
                len: r.byte(),
            },
            4 => StreamOp::ConfigRead,
            5 => StreamOp::ConfigWrite {
                offset: r.byte(),
                value: r.byte(),
            },
            6 => StreamOp::DriverOk,
            _ => StreamOp::Reset,
        };
        ops.push(op);
    }
    StreamCase {
        device,
        features,
        mode,
        ops,
    }
}

fn encode_op(op: &StreamOp) -> Vec<u8> {
    match op {
        StreamOp::Chain {
            queue,
            kind,
            len,
            cuts,
            flags,
        } => {
            let cuts = &cuts[..cuts.len().min(4)];
            let mut v = vec![0, *queue, *kind, *len, cuts.len() as u8];
            v.extend_from_slice(cuts);
            v.push(*flags);
            v
        }
        StreamOp::Notify { queue } => vec![2, *queue],
        StreamOp::Host { port, kind, len } => vec![3, *port, *kind, *len],
        StreamOp::ConfigRead => vec![4],
        StreamOp::ConfigWrite { offset, value } => vec![5, *offset, *value],
        StreamOp::DriverOk => vec![6],
        StreamOp::Reset => vec![7],
    }
}

impl StreamCase {
    /// The bytes [`decode`] turns back into this case (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.device, self.features, self.mode];
        for op in &self.ops {
            v.extend(encode_op(op));
        }
        v
    }
}

impl fmt::Display for StreamCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.device % 4 == 1 {
            "console"
        } else {
            "net"
        };
        writeln!(
            f,
            "device {name} (selector {}), features selector {:#04x}, {} transport{}",
            self.device,
            self.features,
            if self.mode & 1 != 0 {
                "legacy"
            } else {
                "modern"
            },
            if self.mode & 2 != 0 {
                ", DRIVER_OK withheld"
            } else {
                ""
            }
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            write!(f, "#{i} ")?;
            match op {
                StreamOp::Chain {
                    queue,
                    kind,
                    len,
                    cuts,
                    flags,
                } => writeln!(
                    f,
                    "chain queue {queue} kind {kind:#04x} len {len} cuts {cuts:?} flags {flags:#04x}"
                )?,
                StreamOp::Notify { queue } => writeln!(f, "notify queue {queue}")?,
                StreamOp::Host { port, kind, len } => {
                    writeln!(f, "host input port {port} kind {kind:#04x} len {len}")?
                }
                StreamOp::ConfigRead => writeln!(f, "config read")?,
                StreamOp::ConfigWrite { offset, value } => {
                    writeln!(f, "config write offset {} value {value}", 4 * (offset % 3))?
                }
                StreamOp::DriverOk => writeln!(f, "DRIVER_OK")?,
                StreamOp::Reset => writeln!(f, "reset")?,
            }
        }
        Ok(())
    }
}

/// What a queue is for, under the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Device-writable buffers for host input of a port (console) or queue pair (net).
    Receive(u32),
    /// The driver's output on a port or queue pair.
    Transmit(u32),
    /// Device-writable buffers for control messages (console control receiveq).
    ControlReceive,
    /// The driver's control messages or commands (with a device-writable ack for net).
    ControlTransmit,
}

/// A request the driver puts on a [`Role::Transmit`] or [`Role::ControlTransmit`] queue.
pub struct Request {
    /// The device-readable bytes.
    pub bytes: Vec<u8>,
    /// Device-writable bytes after them (the network controlq's ack), 0 for none.
    pub writable: u32,
}

/// A used chain as the device-type oracles see it.
pub struct UsedChain<'a> {
    /// Queue index and role.
    pub queue: u16,
    pub role: Role,
    /// The driver's bytes (empty for receive chains).
    pub request: &'a [u8],
    /// The first `len` bytes of the device-writable part, as the device left them.
    pub written: &'a [u8],
    /// Whether the chain broke a rule of the device type or of §2.7 (only the generic
    /// oracles apply to it).
    pub ill_formed: bool,
    /// Operation that made it available.
    pub op: usize,
}

/// A device type driven by the stream body: its backend, its queues and its oracles.
pub trait StreamDevice {
    /// The reference backend.
    fn backend(&self) -> Box<dyn DeviceBackend>;
    /// Device-type feature bits the driver accepts (when offered) for feature selector
    /// `features`.
    fn wanted(&self, features: u8) -> u64;
    /// Oracle on the offered features (device-type dependencies).
    fn check_offer(&self, offered: u64) -> Result<(), Finding>;
    /// The negotiated features (and transport) of a new initialization; forgets what the
    /// device did before the reset.
    fn negotiated(&mut self, features: u64, legacy: bool);
    /// Queues of the negotiated layout (at most [`MAX_QUEUES`]).
    fn queue_count(&self) -> u16;
    /// What queue `q` is for.
    fn role(&self, q: u16) -> Role;
    /// The request of a chain on a driver-to-device queue.
    fn request(&self, role: Role, kind: u8, len: u8) -> Request;
    /// A request made available on `queue` (before the device may have read it).
    fn published(&mut self, _role: Role, _bytes: &[u8]) {}
    /// Host input for operation `Host { port, kind, len }`: the port and the bytes.
    fn host_input(&self, port: u8, kind: u8, len: u8) -> (u32, Vec<u8>);
    /// The host input was accepted by the device's host side.
    fn sent(&mut self, _port: u32, _bytes: &[u8]) {}
    /// Host ports to collect output from.
    fn ports(&self) -> u32;
    /// A driver write to the configuration space.
    fn config_written(&mut self, _offset: u64, _value: u32) {}
    /// Oracle on a used chain.
    fn used(&mut self, chain: &UsedChain) -> Result<(), Finding>;
    /// What the host received from `port` since the last call.
    fn host_records(&mut self, port: u32, records: Vec<Vec<u8>>) -> Result<(), Finding>;
    /// Configuration bytes that must read as given after the operation (offset, bytes,
    /// oracle, requirements).
    fn config_expectation(
        &mut self,
    ) -> Option<(u64, Vec<u8>, &'static str, &'static [&'static str])> {
        None
    }
}

fn target_error(e: TargetError, who: &str) -> Finding {
    match e {
        TargetError::Hung(m) => err(
            "hang",
            &["SPLIT-DEV-MALFORMED-CHAIN"],
            format!("{who}: {m}"),
        ),
        other => err(
            "panic",
            &["SPLIT-DEV-MALFORMED-CHAIN"],
            format!("{who}: {other}"),
        ),
    }
}

struct Outstanding {
    descs: Vec<u16>,
    writable: Vec<(u64, u64)>,
    writable_bytes: u64,
    written: u64,
    request: Vec<u8>,
    ill_formed: bool,
    op: usize,
}

struct Side {
    dev: Option<MmioDevice>,
    mem: GuestMemoryMmap,
    name: &'static str,
}

impl Side {
    fn new(
        backend: Box<dyn DeviceBackend>,
        version: TransportVersion,
        mutant: Option<Mutant>,
        name: &'static str,
    ) -> Result<Self, Finding> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)])
            .map_err(|e| err("setup", &[], e.to_string()))?;
        let mut ram = GuestRam::new(mem.clone());
        ram.set_recording(true);
        let mut cfg = DeviceConfig::new(version);
        cfg.mutant = mutant;
        cfg.step_budget = STEP_BUDGET;
        cfg.queue_num_max = vec![256; usize::from(backend.num_queues())];
        Ok(Side {
            dev: Some(MmioDevice::new(cfg, backend, ram)),
            mem,
            name,
        })
    }

    fn call<R>(&mut self, f: impl FnOnce(&mut MmioDevice) -> R) -> Result<R, Finding> {
        let who = self.name;
        guarded_call(&mut self.dev, f).map_err(|e| target_error(e, who))
    }

    /// The device's non-empty memory writes (guest physical address, bytes) since the last
    /// call.
    fn take_writes(&mut self) -> Result<Vec<(u64, u64)>, Finding> {
        let Some(d) = self.dev.as_mut() else {
            return Err(err("panic", &[], format!("{} gone", self.name)));
        };
        Ok(d.ram_mut()
            .take_accesses()
            .iter()
            .filter(|a| a.kind == AccessKind::Write && a.len > 0)
            .map(|a| (a.gpa, a.len))
            .collect())
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        let _ = self.mem.read_slice(&mut b, GuestAddress(gpa));
        b
    }
}

/// Programs the selected queue with `dq` (§4.2.3.2; legacy §4.2.4: QueueNum, QueueAlign 4096
/// and QueuePFN of the descriptor table's page; modern: QueueNum, the three addresses and
/// QueueReady), through `wr` (offset, value).
pub(super) fn program_queue(
    wr: &mut impl FnMut(u64, u32) -> Result<(), Finding>,
    dq: &DriverQueue,
    legacy: bool,
) -> Result<(), Finding> {
    wr(QUEUE_NUM, u32::from(dq.size))?;
    if legacy {
        wr(QUEUE_ALIGN, 4096)?;
        return wr(QUEUE_PFN, (dq.desc / 4096) as u32);
    }
    for (lo, addr) in [
        (QUEUE_DESC_LOW, dq.desc),
        (QUEUE_DRIVER_LOW, dq.avail),
        (QUEUE_DEVICE_LOW, dq.used),
    ] {
        wr(lo, addr as u32)?;
        wr(lo + 4, (addr >> 32) as u32)?;
    }
    wr(QUEUE_READY, 1)
}

/// Both memories at once: the driver's writes go to the subject and, when present, the
/// reference twin.
struct Mems<'a>(&'a GuestMemoryMmap, Option<&'a GuestMemoryMmap>);

impl DriverMemory for Mems<'_> {
    type Error = vm_memory::GuestMemoryError;
    fn write_bytes(&mut self, gpa: u64, data: &[u8]) -> Result<(), Self::Error> {
        if let Some(t) = self.1 {
            let _ = t.write_slice(data, GuestAddress(gpa));
        }
        self.0.write_slice(data, GuestAddress(gpa))
    }
    fn read_bytes(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read_slice(buf, GuestAddress(gpa))
    }
}

/// One stream-device case in progress.
pub struct Run<D: StreamDevice> {
    dev: D,
    subject: Side,
    twin: Option<Side>,
    legacy: bool,
    late_driver_ok: bool,
    features: u8,
    /// DRIVER_OK is set (or the transport is legacy, where the device may start earlier).
    live: bool,
    stopped: bool,
    indirect: bool,
    queues: Vec<(DriverQueue, Vec<u16>, BTreeMap<u16, Outstanding>)>,
    step: usize,
    /// The first difference from the twin seen since the last check, reported after the spec
    /// oracles had their say.
    divergence: Option<Finding>,
}

fn div(what: impl fmt::Display) -> Finding {
    err(
        "divergence",
        &[],
        format!("the mutant and the unmodified reference differ: {what}"),
    )
}

/// Runs `case` against `dev`'s backend with `mutant` (and a reference twin when a mutant is
/// given).
pub fn run<D: StreamDevice>(
    case: &StreamCase,
    dev: D,
    mutant: Option<Mutant>,
) -> Result<(), Finding> {
    run_with(case, dev, mutant, mutant.is_some())
}

/// As [`run`], with the reference twin (the differential oracle) only when `twin` is set.
pub fn run_with<D: StreamDevice>(
    case: &StreamCase,
    dev: D,
    mutant: Option<Mutant>,
    twin: bool,
) -> Result<(), Finding> {
    let version = if case.mode & 1 != 0 {
        TransportVersion::Legacy
    } else {
        TransportVersion::Modern
    };
    let subject = Side::new(dev.backend(), version, mutant, "device")?;
    let twin = match twin {
        true => Some(Side::new(dev.backend(), version, None, "reference twin")?),
        false => None,
    };
    let mut run = Run {
        dev,
        subject,
        twin,
        legacy: version == TransportVersion::Legacy,
        late_driver_ok: case.mode & 2 != 0,
        features: case.features,
        live: false,
        stopped: false,
        indirect: false,
        queues: Vec::new(),
        step: 0,
        divergence: None,
    };
    run.init().map_err(|f| f.on(mutant))?;
    for (i, op) in case.ops.iter().enumerate() {
        run.step = i;
        run.op(op).map_err(|f| f.at(i).on(mutant))?;
    }
    Ok(())
}

impl<D: StreamDevice> Run<D> {
    /// Register write on both sides.
    fn wr(&mut self, off: u64, v: u32) -> Result<(), Finding> {
        self.subject.call(|d| d.write_u32(off, v))?;
        if let Some(t) = self.twin.as_mut() {
            t.call(|d| d.write_u32(off, v))?;
        }
        Ok(())
    }

    /// Register read on both sides; the values must agree.
    fn rd_n(&mut self, off: u64, n: usize) -> Result<u32, Finding> {
        let read = |d: &mut MmioDevice| {
            let mut b = [0u8; 4];
            d.read(off, &mut b[..n]);
            u32::from_le_bytes(b)
        };
        let v = self.subject.call(read)?;
        if let Some(t) = self.twin.as_mut() {
            let w = t.call(read)?;
            if v != w && self.divergence.is_none() {
                self.divergence = Some(div(format_args!(
                    "a {n}-byte read at {off:#x} gives {v:#x}, the reference {w:#x}"
                )));
            }
        }
        Ok(v)
    }

    fn rd(&mut self, off: u64) -> Result<u32, Finding> {
        self.rd_n(off, 4)
    }

    fn mems(&self) -> Mems<'_> {
        Mems(&self.subject.mem, self.twin.as_ref().map(|t| &t.mem))
    }

    fn init(&mut self) -> Result<(), Finding> {
        self.wr(STATUS, 0)?;
        self.wr(STATUS, u32::from(ACKNOWLEDGE))?;
        self.wr(STATUS, u32::from(ACKNOWLEDGE | DRIVER))?;
        let pages = if self.legacy { 1 } else { 2 };
        let mut offered = 0u64;
        for sel in 0..pages {
            self.wr(DEVICE_FEATURES_SEL, sel)?;
            offered |= u64::from(self.rd(DEVICE_FEATURES)?) << (32 * sel);
        }
        self.dev.check_offer(offered)?;
        let mut want = self.dev.wanted(self.features);
        if self.features & 1 != 0 {
            want |= 1 << VIRTIO_F_INDIRECT_DESC;
        }
        if !self.legacy {
            want |= 1 << VIRTIO_F_VERSION_1;
        }
        let accepted = offered & want;
        self.indirect = accepted & (1 << VIRTIO_F_INDIRECT_DESC) != 0;
        for sel in 0..pages {
            self.wr(DRIVER_FEATURES_SEL, sel)?;
            self.wr(DRIVER_FEATURES, (accepted >> (32 * sel)) as u32)?;
        }
        let mut status = ACKNOWLEDGE | DRIVER;
        if !self.legacy {
            status |= FEATURES_OK;
            self.wr(STATUS, u32::from(status))?;
            if self.rd(STATUS)? as u8 & FEATURES_OK == 0 {
                self.stopped = true;
                return Ok(());
            }
        }
        self.dev.negotiated(accepted, self.legacy);
        self.queues.clear();
        if self.legacy {
            self.wr(GUEST_PAGE_SIZE, 4096)?;
        }
        for q in 0..self.dev.queue_count().min(MAX_QUEUES) {
            self.wr(QUEUE_SEL, u32::from(q))?;
            let max = self.rd(QUEUE_NUM_MAX)?;
            let size = queue_size(q);
            if max < u32::from(size) {
                return Err(err(
                    "queue-missing",
                    &[],
                    format!("queue {q} of the negotiated layout reports QueueNumMax {max}"),
                ));
            }
            let dq = if self.legacy {
                DriverQueue::legacy((queue_base(q) / 4096) as u32, 4096, size, 4096)
            } else {
                DriverQueue::modern(queue_base(q), size)
            };
            let _ = dq.clear(&mut self.mems());
            let legacy = self.legacy;
            program_queue(&mut |off, v| self.wr(off, v), &dq, legacy)?;
            self.queues
                .push((dq, (0..size).rev().collect(), BTreeMap::new()));
        }
        self.live = self.legacy;
        if !self.late_driver_ok {
            self.driver_ok()?;
        }
        self.check()
    }

    fn driver_ok(&mut self) -> Result<(), Finding> {
        let s = ACKNOWLEDGE | DRIVER | DRIVER_OK | if self.legacy { 0 } else { FEATURES_OK };
        self.wr(STATUS, u32::from(s))?;
        self.live = true;
        Ok(())
    }

    fn op(&mut self, op: &StreamOp) -> Result<(), Finding> {
        if self.stopped {
            return Ok(());
        }
        let nq = self.queues.len() as u16;
        match op {
            StreamOp::Chain {
                queue,
                kind,
                len,
                cuts,
                flags,
            } => {
                if nq > 0 {
                    self.chain(u16::from(*queue) % nq, *kind, *len, cuts, *flags)?;
                }
            }
            StreamOp::Notify { queue } => {
                if nq > 0 {
                    self.wr(QUEUE_NOTIFY, u32::from(u16::from(*queue) % nq))?;
                }
            }
            StreamOp::Host { port, kind, len } => {
                let (p, bytes) = self.dev.host_input(*port, *kind, *len);
                let r = self.subject.call(|d| d.host_send(p, &bytes))?;
                if let Some(t) = self.twin.as_mut() {
                    let r2 = t.call(|d| d.host_send(p, &bytes))?;
                    if r.is_ok() != r2.is_ok() && self.divergence.is_none() {
                        self.divergence = Some(div(format_args!(
                            "host input on port {p}: {r:?}, the reference {r2:?}"
                        )));
                    }
                }
                if r.is_ok() {
                    self.dev.sent(p, &bytes);
                }
            }
            StreamOp::ConfigRead => {
                for off in (0..12).step_by(2) {
                    self.rd_n(CONFIG + off, 2)?;
                }
            }
            StreamOp::ConfigWrite { offset, value } => {
                let off = 4 * u64::from(offset % 3);
                let v = u32::from(*value);
                self.wr(CONFIG + off, v)?;
                self.dev.config_written(off, v);
            }
            StreamOp::DriverOk => {
                if !self.live {
                    self.driver_ok()?;
                }
            }
            StreamOp::Reset => {
                self.check()?;
                self.wr(STATUS, 0)?;
                if self.rd(STATUS)? != 0 {
                    return Err(err(
                        "reset",
                        &["RESET-DEV-01"],
                        "Status does not read 0 after the driver wrote 0",
                    ));
                }
                self.check()?;
                self.queues.clear();
                return self.init();
            }
        }
        self.check()
    }

    fn chain(&mut self, q: u16, kind: u8, len: u8, cuts: &[u8], flags: u8) -> Result<(), Finding> {
        let role = self.dev.role(q);
        // (readable?, bytes or writable length)
        let (request, tail) = match role {
            Role::Receive(_) | Role::ControlReceive => (
                Vec::new(),
                ((usize::from(len) + 1) * 8).min(MAX_CHAIN_BYTES),
            ),
            Role::Transmit(_) | Role::ControlTransmit => {
                let mut r = self.dev.request(role, kind, len);
                r.bytes.truncate(MAX_CHAIN_BYTES);
                (r.bytes, r.writable as usize)
            }
        };
        // The split: the request's bytes (or, for a receive chain, the writable space).
        let receive = matches!(role, Role::Receive(_) | Role::ControlReceive);
        let total = if receive { tail } else { request.len() };
        let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * total / 255).collect();
        points.sort_unstable();
        let mut pieces: Vec<(bool, usize, usize)> = Vec::new(); // (readable, start, len)
        let mut prev = 0;
        for p in points.into_iter().chain([total]) {
            pieces.push((!receive, prev, p - prev));
            prev = p;
        }
        if !receive && tail > 0 {
            pieces.push((false, 0, tail));
        }
        let mut ill = false;
        if flags & F_WRITABLE_FIRST != 0 && !receive {
            pieces.insert(0, (false, 0, 8));
            ill = true;
        }
        let outside = (flags & F_OUTSIDE_RAM != 0).then(|| usize::from(kind) % pieces.len());
        ill |= outside.is_some();
        let indirect = flags & F_INDIRECT != 0;
        ill |= indirect && !self.indirect;
        let need = if indirect { 1 } else { pieces.len() };
        let qi = usize::from(q);
        if self.queues[qi].1.len() < need {
            return Ok(());
        }
        let idx: Vec<u16> = (0..need)
            .map(|_| self.queues[qi].1.pop().unwrap_or(0))
            .collect();
        let head = idx[0];
        let mut descs = Vec::new();
        let mut writable = Vec::new();
        let mut writable_bytes = 0u64;
        let mut at = slot(q, head);
        let mut mems = Mems(&self.subject.mem, self.twin.as_ref().map(|t| &t.mem));
        for (k, &(readable, start, n)) in pieces.iter().enumerate() {
            let addr = if indirect {
                let a = at;
                at += n as u64;
                a
            } else {
                slot(q, idx[k])
            };
            let addr = if outside == Some(k) {
                RAM - u64::from(kind % 4)
            } else {
                addr
            };
            if readable {
                let _ = mems.write_bytes(addr, &request[start..start + n]);
            } else {
                writable.push((addr, addr + n as u64));
                writable_bytes += n as u64;
            }
            let last = k + 1 == pieces.len();
            let mut f = if readable { 0 } else { VIRTQ_DESC_F_WRITE };
            if !last {
                f |= VIRTQ_DESC_F_NEXT;
            }
            let next = if indirect {
                (k + 1) as u16
            } else {
                idx.get(k + 1).copied().unwrap_or(0)
            };
            descs.push(Descriptor {
                addr,
                len: n as u32,
                flags: f,
                next: if last { 0 } else { next },
            });
        }
        let dq = &mut self.queues[qi].0;
        if indirect {
            let t = table(q, head);
            for (k, d) in descs.iter().enumerate() {
                let _ = DriverQueue::write_descriptor_at(&mut mems, t, k as u16, d);
            }
            let d = Descriptor {
                addr: t,
                len: 16 * descs.len() as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            };
            let _ = dq.write_descriptor(&mut mems, head, &d);
        } else {
            for (k, d) in descs.iter().enumerate() {
                let _ = dq.write_descriptor(&mut mems, idx[k], d);
            }
        }
        let _ = dq.publish(&mut mems, &[head]);
        if !receive {
            self.dev.published(role, &request);
        }
        self.queues[qi].2.insert(
            head,
            Outstanding {
                descs: idx,
                writable,
                writable_bytes,
                written: 0,
                request,
                ill_formed: ill,
                op: self.step,
            },
        );
        if flags & F_NO_NOTIFY == 0 {
            self.wr(QUEUE_NOTIFY, u32::from(q))?;
        }
        Ok(())
    }

    /// After every operation: the device's memory writes, the used rings, the host records,
    /// and (with a twin) the comparison with the reference.
    fn check(&mut self) -> Result<(), Finding> {
        let writes = self.subject.take_writes()?;
        let twin_writes = match self.twin.as_mut() {
            Some(t) => Some(t.take_writes()?),
            None => None,
        };
        self.spec_oracles(&writes)?;
        if let Some(d) = self.divergence.take() {
            return Err(d);
        }
        let (Some(t), Some(twrites)) = (self.twin.as_ref(), twin_writes) else {
            return Ok(());
        };
        if writes != twrites {
            return Err(div(format_args!(
                "device writes (address, bytes) {writes:#x?}, the reference's {twrites:#x?}"
            )));
        }
        for &(gpa, len) in &writes {
            let a = self.subject.read(gpa, len as usize);
            let b = t.read(gpa, len as usize);
            if a != b {
                return Err(div(format_args!(
                    "the device wrote {a:02x?} at {gpa:#x}, the reference {b:02x?}"
                )));
            }
        }
        for (dq, _, _) in &self.queues {
            let n = 4 + 8 * usize::from(dq.size);
            let a = self.subject.read(dq.used, n);
            let b = t.read(dq.used, n);
            if a != b {
                return Err(div(format_args!(
                    "the used ring at {:#x} reads {a:02x?}, the reference's {b:02x?}",
                    dq.used
                )));
            }
        }
        Ok(())
    }

    /// The oracles that hold for any conforming device, on the subject's `writes` (address,
    /// bytes) since the last check, its used rings and its host records; host records of the
    /// twin are compared here too (taking them is destructive).
    fn spec_oracles(&mut self, writes: &[(u64, u64)]) -> Result<(), Finding> {
        if !self.live && !writes.is_empty() {
            return Err(err(
                "work-before-driver-ok",
                &["STATUS-DEV-01"],
                format!(
                    "before DRIVER_OK the device wrote {} bytes at {:#x}",
                    writes[0].1, writes[0].0
                ),
            ));
        }
        for &(gpa, len) in writes {
            let end = gpa + len;
            let mut ok = false;
            for (dq, _, out) in self.queues.iter_mut() {
                let used_end = dq.used + 6 + 8 * u64::from(dq.size);
                ok |= gpa >= dq.used && end <= used_end;
                // Writable ranges of different chains can overlap (a buffer outside RAM):
                // the write counts for every chain it fits.
                for o in out.values_mut() {
                    if o.writable.iter().any(|&(s, e)| gpa >= s && end <= e) {
                        o.written += len;
                        ok = true;
                    }
                }
            }
            if !ok {
                return Err(err(
                    "write-outside-writable",
                    &["VQ-DEV-03", "VQ-DEV-05"],
                    format!(
                        "the device wrote {len} bytes at {gpa:#x}, outside the used rings and the device-writable buffers it was given"
                    ),
                ));
            }
        }
        // Used elements.
        for qi in 0..self.queues.len() {
            let q = qi as u16;
            let used = self.queues[qi]
                .0
                .take_used(&mut Mems(&self.subject.mem, None))
                .unwrap_or_default();
            for (id, len) in used {
                let Some(o) = u16::try_from(id)
                    .ok()
                    .and_then(|h| self.queues[qi].2.remove(&h))
                else {
                    return Err(err(
                        "unknown-used-id",
                        &["VQ-DEV-01"],
                        format!("queue {q}: used element id {id} is no outstanding head"),
                    ));
                };
                if !self.live {
                    return Err(err(
                        "work-before-driver-ok",
                        &["STATUS-DEV-01"],
                        format!(
                            "queue {q}: the chain of op #{} was used before DRIVER_OK",
                            o.op
                        ),
                    ));
                }
                if u64::from(len) > o.writable_bytes {
                    return Err(err(
                        "used-len-too-large",
                        &["VQ-DEV-01"],
                        format!(
                            "queue {q}: used len {len} for a chain with {} device-writable bytes",
                            o.writable_bytes
                        ),
                    ));
                }
                if u64::from(len) > o.written {
                    return Err(err(
                        "used-len-not-written",
                        &["VQ-DEV-15"],
                        format!(
                            "queue {q}: used len {len} for the chain of op #{}, into which the device wrote {} bytes",
                            o.op, o.written
                        ),
                    ));
                }
                let mut data = Vec::with_capacity(len as usize);
                for &(s, e) in &o.writable {
                    let left = len as usize - data.len();
                    let n = ((e - s) as usize).min(left);
                    data.extend(self.subject.read(s, n));
                }
                self.queues[qi].1.extend(o.descs.iter().rev());
                let chain = UsedChain {
                    queue: q,
                    role: self.dev.role(q),
                    request: &o.request,
                    written: &data,
                    ill_formed: o.ill_formed,
                    op: o.op,
                };
                self.dev.used(&chain)?;
            }
        }
        // Host records.
        for p in 0..self.dev.ports() {
            let recs = self.subject.call(|d| d.host_take(p))?.unwrap_or_default();
            if let Some(t) = self.twin.as_mut() {
                let trecs = t.call(|d| d.host_take(p))?.unwrap_or_default();
                if recs != trecs && self.divergence.is_none() {
                    self.divergence = Some(div(format_args!(
                        "the host received {recs:02x?} on port {p}, from the reference {trecs:02x?}"
                    )));
                }
            }
            self.dev.host_records(p, recs)?;
        }
        if let Some((off, want, oracle, reqs)) = self.dev.config_expectation() {
            let mut got = vec![0u8; want.len()];
            for (k, b) in got.iter_mut().enumerate() {
                *b = self.rd_n(CONFIG + off + k as u64, 1)? as u8;
            }
            if got != want {
                return Err(err(
                    oracle,
                    reqs,
                    format!(
                        "configuration bytes at offset {off} read {got:02x?}, expected {want:02x?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn chain(queue: u8, kind: u8, len: u8, cuts: &[u8], flags: u8) -> StreamOp {
    StreamOp::Chain {
        queue,
        kind,
        len,
        cuts: cuts.to_vec(),
        flags,
    }
}

fn host(port: u8, kind: u8, len: u8) -> StreamOp {
    StreamOp::Host { port, kind, len }
}

/// The committed stream-device seeds of `corpora/device_chains/` (`seed-console-*`,
/// `seed-net-*`): transmit chains split in several ways, host input into receive buffers,
/// the console's control handshake and `emerg_wr`, the network controlq, mergeable and MTU-
/// sized frames, tagged frames, multiqueue steering, DRIVER_OK withheld and the legacy
/// transport.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use StreamOp::*;
    let console = |features, mode, ops| StreamCase {
        device: 1,
        features,
        mode,
        ops,
    };
    let net = |features, mode, ops| StreamCase {
        device: 2,
        features,
        mode,
        ops,
    };
    let cases = vec![
        (
            "console-tx-rx",
            console(
                0x07,
                0,
                vec![
                    chain(1, 3, 10, &[60, 200], 0),
                    chain(1, 5, 2, &[], F_INDIRECT),
                    chain(0, 0, 7, &[100], 0),
                    host(0, 0, 20),
                    chain(0, 0, 1, &[], F_INDIRECT),
                    ConfigWrite {
                        offset: 2,
                        value: 0x41,
                    },
                    ConfigRead,
                ],
            ),
        ),
        (
            "console-control",
            console(
                0x02,
                0,
                vec![
                    chain(2, 0, 3, &[], 0),
                    chain(2, 0, 3, &[], 0),
                    chain(3, 0, 0, &[4], 0),
                    chain(2, 0, 3, &[], 0),
                    chain(3, 1, 1, &[], 0),
                    chain(2, 0, 7, &[], 0),
                    chain(2, 0, 7, &[], 0),
                    chain(2, 0, 7, &[], 0),
                    chain(5, 1, 4, &[30], 0),
                    chain(4, 0, 4, &[], 0),
                    host(1, 3, 9),
                ],
            ),
        ),
        (
            "console-driver-ok-withheld",
            console(
                0x00,
                2,
                vec![
                    chain(0, 0, 3, &[], 0),
                    host(0, 1, 5),
                    Notify { queue: 0 },
                    DriverOk,
                    Notify { queue: 0 },
                    Reset,
                    chain(1, 2, 3, &[128], 0),
                ],
            ),
        ),
        (
            "console-legacy",
            console(
                0x01,
                1,
                vec![
                    chain(1, 1, 6, &[20, 20, 240], F_INDIRECT),
                    chain(0, 0, 2, &[], 0),
                    host(0, 2, 30),
                    chain(0, 0, 2, &[], 0),
                    chain(1, 0, 1, &[], F_WRITABLE_FIRST),
                ],
            ),
        ),
        (
            "console-legacy-withheld",
            console(
                0x06,
                3,
                vec![
                    ConfigWrite {
                        offset: 2,
                        value: 0x42,
                    },
                    chain(1, 0, 2, &[], 0),
                    DriverOk,
                    ConfigWrite {
                        offset: 2,
                        value: 0x43,
                    },
                    Notify { queue: 1 },
                ],
            ),
        ),
        (
            "net-tx-split",
            net(
                0x48,
                0,
                vec![
                    chain(1, 0, 20, &[0, 30, 128], 0),
                    chain(1, 1, 5, &[], 0),
                    chain(1, 2, 9, &[9], F_INDIRECT),
                    chain(2, 2, 7, &[], 0),
                    ConfigRead,
                ],
            ),
        ),
        (
            "net-rx-mergeable",
            net(
                0x06,
                0,
                vec![
                    chain(0, 0, 20, &[], 0),
                    chain(0, 0, 20, &[80], 0),
                    chain(0, 0, 20, &[], 0),
                    host(0, 1, 100),
                    chain(0, 0, 254, &[], 0),
                    host(0, 0x81, 2),
                    host(0, 0x81, 1),
                ],
            ),
        ),
        (
            "net-rx-mtu",
            net(
                0x04,
                0,
                vec![
                    chain(0, 0, 254, &[], 0),
                    host(0, 0x81, 2),
                    host(0, 0x81, 1),
                    chain(0, 0, 3, &[], 0),
                    host(0, 1, 60),
                    chain(0, 0, 254, &[128], 0),
                ],
            ),
        ),
        (
            "net-control",
            net(
                0x78,
                0,
                vec![
                    chain(4, 2, 7, &[], 0),
                    ConfigRead,
                    chain(0, 0, 30, &[], 0),
                    chain(2, 0, 30, &[], 0),
                    host(1, 1, 10),
                    chain(4, 4, 2, &[1], 0),
                    host(1, 1, 11),
                    chain(4, 0, 0, &[], 0),
                    chain(0, 0, 30, &[], 0),
                    host(0, 4, 12),
                    chain(3, 0, 6, &[], 0),
                ],
            ),
        ),
        (
            "net-tagged",
            net(
                0x08,
                0,
                vec![
                    chain(2, 0, 0, &[], 0),
                    chain(0, 0, 30, &[], 0),
                    host(0, 0x0c, 20),
                    chain(0, 0, 30, &[], 0),
                    host(0, 0x05, 20),
                ],
            ),
        ),
        (
            "net-legacy-withheld",
            net(
                0x02,
                3,
                vec![
                    ConfigRead,
                    chain(0, 0, 30, &[], 0),
                    host(0, 1, 8),
                    DriverOk,
                    chain(1, 0, 8, &[20], 0),
                    ConfigRead,
                ],
            ),
        ),
        (
            "net-driver-ok-withheld",
            net(
                0xe0,
                2,
                vec![
                    chain(0, 0, 30, &[], 0),
                    host(0, 1, 8),
                    ConfigRead,
                    DriverOk,
                    Notify { queue: 0 },
                    host(0, 1, 9),
                ],
            ),
        ),
    ];
    cases
        .into_iter()
        .map(|(n, c)| (format!("seed-{n}"), c.encode()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::device_chains::device_chains_on;

    #[test]
    fn encode_round_trips() {
        for (name, bytes) in seeds() {
            let case = decode(&bytes);
            assert_eq!(case.encode(), bytes, "{name}");
        }
    }

    #[test]
    fn the_seeds_pass_on_the_reference() {
        for (name, bytes) in seeds() {
            assert_eq!(device_chains_on(&bytes, None), Ok(()), "{name}");
        }
    }

    /// Every console and network mutant (and the console's host-input-before-DRIVER_OK) is
    /// found from the committed seeds, and by a spec oracle, not only by the differential,
    /// where the table says so.
    #[test]
    fn stream_mutants_are_found_from_the_seeds() {
        let spec_oracle = [
            "console-tx-first-descriptor-only",
            "console-rx-len-overstated",
            "console-control-before-device-ready",
            "console-port-add-twice",
            "net-tx-header-own-descriptor",
            "net-rx-len-whole-buffer",
            "net-header-len-ignores-mrg-rxbuf",
            "net-rx-ignores-mtu",
            "net-mac-addr-set-ignored",
            "net-mq-steers-before-pairs-set",
            "net-offers-mq-without-ctrl-vq",
            "net-rx-before-driver-ok",
            "host-input-before-driver-ok",
        ];
        let mut missed = Vec::new();
        for m in Mutant::ALL.iter().copied().filter(|m| {
            let n = m.name();
            n.starts_with("console-") || n.starts_with("net-") || n == "host-input-before-driver-ok"
        }) {
            let findings: Vec<Finding> = seeds()
                .iter()
                .filter_map(|(_, b)| device_chains_on(b, Some(m)).err())
                .collect();
            if findings.is_empty() {
                missed.push(m.name());
                continue;
            }
            if spec_oracle.contains(&m.name()) {
                // The spec oracle must fire on some seed even without the reference twin.
                let alone = seeds().iter().any(|(_, b)| {
                    let case = decode(b);
                    let r = if case.device % 4 == 1 {
                        run_with(
                            &case,
                            super::super::console::Console::default(),
                            Some(m),
                            false,
                        )
                    } else {
                        run_with(&case, super::super::net::Net::default(), Some(m), false)
                    };
                    r.is_err_and(|f| f.oracle != "divergence")
                });
                assert!(
                    alone,
                    "{}: only the differential finds it: {findings:?}",
                    m.name()
                );
            }
        }
        assert!(missed.is_empty(), "not found from the seeds: {missed:?}");
    }
}

/// Devices that behave differently from the reference in ways the spec allows: none of the
/// oracles may fire on them.
#[cfg(test)]
mod permitted {
    use super::*;
    use crate::fuzz::device_chains::{console::Console, net::Net};
    use virtio_reference_device::devices::console::ConsoleBackend;
    use virtio_reference_device::devices::net::{NetBackend, NetOptions};
    use virtio_reference_device::{Completion, Descriptor as Desc};

    /// A console that fills at most 3 bytes of a receive buffer (§5.3.6 leaves the amount to
    /// the device) and forgets undelivered input at reset.
    struct Stingy(ConsoleBackend, u32);

    impl DeviceBackend for Stingy {
        fn device_id(&self) -> u32 {
            self.0.device_id()
        }
        fn features(&self) -> u64 {
            self.0.features()
        }
        fn num_queues(&self) -> u16 {
            self.0.num_queues()
        }
        fn config(&self) -> &[u8] {
            self.0.config()
        }
        fn name(&self) -> &'static str {
            "stingy-console"
        }
        fn ready_for(&self, q: u16) -> bool {
            self.0.ready_for(q)
        }
        fn process(&mut self, q: u16, chain: &[Desc], ram: &mut GuestRam) -> Completion {
            let receive = q == 0 || (q >= 4 && q.is_multiple_of(2));
            if !receive {
                return self.0.process(q, chain, ram);
            }
            // Cut the writable space to 3 bytes.
            let mut cut = Vec::new();
            let mut left = 3u32;
            for d in chain {
                if d.is_write_only() {
                    if left == 0 {
                        break;
                    }
                    let n = d.len.min(left);
                    left -= n;
                    cut.push(Desc { len: n, ..*d });
                } else {
                    cut.push(*d);
                }
            }
            self.0.process(q, &cut, ram)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            // emerg_wr bytes go to a log, not to port 0's output.
            if offset != 8 {
                self.0.write_config(offset, data)
            }
        }
        fn take_wakeups(&mut self) -> Vec<u16> {
            self.0.take_wakeups()
        }
        fn reset(&mut self) {
            self.1 += 1;
            // Undelivered input is dropped: take it all out by a fresh backend.
            let fresh = ConsoleBackend::new(80, 25, 2, 2);
            self.0 = fresh;
        }
        fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
            self.0.host_send(port, data)
        }
        fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
            self.0.host_take(port)
        }
    }

    /// A device type's model and oracles over another backend.
    struct Variant<D> {
        dev: D,
        backend: fn() -> Box<dyn DeviceBackend>,
    }

    impl<D: StreamDevice> StreamDevice for Variant<D> {
        fn backend(&self) -> Box<dyn DeviceBackend> {
            (self.backend)()
        }
        fn wanted(&self, f: u8) -> u64 {
            self.dev.wanted(f)
        }
        fn check_offer(&self, o: u64) -> Result<(), Finding> {
            self.dev.check_offer(o)
        }
        fn negotiated(&mut self, f: u64, l: bool) {
            self.dev.negotiated(f, l)
        }
        fn queue_count(&self) -> u16 {
            self.dev.queue_count()
        }
        fn role(&self, q: u16) -> Role {
            self.dev.role(q)
        }
        fn request(&self, r: Role, k: u8, l: u8) -> Request {
            self.dev.request(r, k, l)
        }
        fn published(&mut self, r: Role, b: &[u8]) {
            self.dev.published(r, b)
        }
        fn host_input(&self, p: u8, k: u8, l: u8) -> (u32, Vec<u8>) {
            self.dev.host_input(p, k, l)
        }
        fn sent(&mut self, p: u32, b: &[u8]) {
            self.dev.sent(p, b)
        }
        fn ports(&self) -> u32 {
            self.dev.ports()
        }
        fn config_written(&mut self, o: u64, v: u32) {
            self.dev.config_written(o, v)
        }
        fn used(&mut self, c: &UsedChain) -> Result<(), Finding> {
            self.dev.used(c)
        }
        fn host_records(&mut self, p: u32, r: Vec<Vec<u8>>) -> Result<(), Finding> {
            self.dev.host_records(p, r)
        }
        fn config_expectation(
            &mut self,
        ) -> Option<(u64, Vec<u8>, &'static str, &'static [&'static str])> {
            self.dev.config_expectation()
        }
    }

    fn stingy_console() -> Variant<Console> {
        Variant {
            dev: Console::default(),
            backend: || Box::new(Stingy(ConsoleBackend::new(80, 25, 2, 2), 0)),
        }
    }

    /// A network device that starts non-promiscuous and copies a header length into received
    /// headers (both left open by §5.1.6.4.1 and §5.1.6.5.1).
    fn strict_net() -> Variant<Net> {
        Variant {
            dev: Net::default(),
            backend: || {
                Box::new(NetBackend::new(NetOptions {
                    promiscuous_after_reset: false,
                    rx_hdr_len: 54,
                    ..NetOptions::default()
                }))
            },
        }
    }

    #[test]
    fn permitted_variants_and_the_reference_are_clean_on_mutated_seeds() {
        let mut inputs = seeds();
        inputs.extend(crate::fuzz::seeds::mutated_seeds("device_chains", 3000, 7));
        let mut ran = 0;
        for (name, bytes) in &inputs {
            let case = decode(bytes);
            let r = match case.device % 4 {
                1 => {
                    ran += 1;
                    run(&case, stingy_console(), None)
                        .and_then(|()| run(&case, Console::default(), None))
                }
                2 => {
                    ran += 1;
                    run(&case, strict_net(), None).and_then(|()| run(&case, Net::default(), None))
                }
                _ => Ok(()),
            };
            assert_eq!(r, Ok(()), "{name}:\n{case}");
        }
        assert!(ran > 1000, "only {ran} stream cases");
    }
}
