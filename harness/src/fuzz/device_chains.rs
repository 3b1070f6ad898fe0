//! `device_chains`: device-level oracles over arbitrary framings of device requests.
//!
//! The first input byte picks the device type (`% 4`): 1 the console and 2 the network
//! device, both driven by the stream body of [`stream`] (see there, [`console`] and [`net`]
//! for their inputs and oracles); 0 and 3 the traditional memory balloon (§5.5), below.
//!
//! For the balloon, the input is a stream of driver operations against the reference
//! [`MmioDevice`] in process, over 128 KiB of guest RAM, modern transport (version 2), split
//! queues of 16 entries. The driver side uses [`DriverQueue`] from the reference crate.
//!
//! Operations: a chain on one queue (the request bytes split over 1 to 5 descriptors at
//! arbitrary cut points, so zero-length descriptors occur; direct or through an indirect
//! table; optionally a device-writable descriptor after or before the request, or one
//! descriptor pointing outside guest RAM), a notification, a host request for statistics, a
//! host change of `num_pages`, a driver write of `actual`, and a device reset followed by a
//! fresh initialization.
//!
//! Oracles (they hold for any device conforming to the spec, not only the reference):
//!
//! | oracle | requirement |
//! |---|---|
//! | no panic, no hang (step budget) | SPLIT-DEV-MALFORMED-CHAIN |
//! | the device writes only the used rings and device-writable buffers of chains it was given | VQ-DEV-03, VQ-DEV-05 |
//! | a used element names a head the driver made available and its `len` is at most the chain's device-writable bytes | VQ-DEV-01 |
//! | the page frame numbers the host receives for a used inflate/deflate request equal (as a multiset) the 32-bit little-endian numbers the driver wrote, whatever the split | BAL-DEV-05, VQ-DEV-01 |
//! | the statistics the host receives for a used statsq buffer equal the recognized tag/value pairs the driver wrote, whatever the split and the tag order; unknown tags are ignored | BAL-DEV-11, BAL-DEV-12, VQ-DEV-01 |
//! | every inflate/deflate request made available after DRIVER_OK is used (the in-process device works synchronously) | BAL-DEV-06 |
//! | a host request for statistics uses the held statsq buffer | BAL-DEV-10 |
//! | `num_pages` reads what the host set; `actual` as the device uses it is what the driver wrote | BAL-DEV-07, BAL-DEV-08 |
//!
//! A chain the balloon's request format does not allow (a device-writable descriptor, a
//! buffer outside RAM, an indirect table without VIRTIO_F_INDIRECT_DESC, a request that is not
//! whole entries) is "ill-formed": only the memory, used-element and robustness oracles apply
//! to it, and once the device reports DEVICE_NEEDS_RESET nothing more is expected of it.

pub mod console;
pub mod net;
pub mod stream;

use super::Finding;
use crate::target::reference::guarded_call;
use crate::target::TargetError;
use std::collections::BTreeMap;
use std::fmt;
use virtio_reference_device::devices::balloon::{
    canonical_stats, ACTUAL_OFFSET, MAX_KNOWN_TAG, PORT_ACTUAL, PORT_DEFLATE, PORT_INFLATE,
    PORT_STATS, STAT_LEN, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_MUST_TELL_HOST,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use virtio_reference_device::regs::*;
use virtio_reference_device::{
    AccessKind, BalloonBackend, Descriptor, DeviceBackend, DeviceConfig, DriverQueue, GuestRam,
    MmioDevice, Mutant, TransportVersion,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const TARGET: &str = "device_chains";

/// Guest RAM of one case: 128 KiB at guest physical address 0.
pub const RAM: u64 = 0x2_0000;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 16;
/// Queues of the balloon driven here: inflateq, deflateq, statsq.
const QUEUES: u16 = 3;
/// Most operations decoded from one input.
pub const MAX_OPS: usize = 64;
/// Descriptors the device may read per notification before the case counts as a hang.
const STEP_BUDGET: u64 = 1 << 12;
/// Start of the per-descriptor data slots (1 KiB each, one per queue entry).
const DATA: u64 = 0x8000;
const SLOT: u64 = 0x400;
/// Offset of the buffers behind an indirect table inside a slot.
const INDIRECT_DATA: u64 = 0x80;

fn queue_base(q: u16) -> u64 {
    u64::from(q) * 0x2000
}

fn slot(q: u16, i: u16) -> u64 {
    DATA + (u64::from(q) * u64::from(QUEUE_SIZE) + u64::from(i)) * SLOT
}

/// Chain flag: put the descriptors into an indirect table.
pub const F_INDIRECT: u8 = 1;
/// Chain flag: append a device-writable descriptor (wrong direction for the balloon).
pub const F_WRITABLE_AFTER: u8 = 2;
/// Chain flag: put the device-writable descriptor first (a malformed chain, §2.7.4.2).
pub const F_WRITABLE_FIRST: u8 = 4;
/// Chain flag: one descriptor points (partly) outside guest RAM.
pub const F_OUTSIDE_RAM: u8 = 8;
/// Chain flag: make the chain available without a notification.
pub const F_NO_NOTIFY: u8 = 16;

/// One driver or host operation of a [`DeviceChainsCase`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DcOp {
    /// A request on `queue % 3`: `entries` raw 4-byte entries (an inflate/deflate request
    /// takes each as a little-endian page frame number; a statsq buffer makes one 10-byte
    /// statistic of each: tag `e[0] % 12`, value from the other three bytes), split into
    /// `1 + cuts.len()` pieces at `cut * len / 255`, with the `F_*` `flags`; `extra` is the
    /// writable descriptor's length (`extra % 64`) and which descriptor leaves RAM.
    Chain {
        queue: u8,
        entries: Vec<[u8; 4]>,
        cuts: Vec<u8>,
        flags: u8,
        extra: u8,
    },
    /// QueueNotify for `queue % 3`.
    Notify { queue: u8 },
    /// The host asks for memory statistics.
    StatsRequest,
    /// The host sets `num_pages` to `value`.
    NumPages { value: u16 },
    /// The driver writes `actual` = `value` (one 32-bit write).
    Actual { value: u16 },
    /// Status 0, then a fresh initialization.
    Reset,
}

const KINDS: u8 = 7;

/// A decoded `device_chains` input: the header and the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChainsCase {
    /// Device type selector (`% 4`: 0 and 3 the balloon; 1 and 2 select the stream body).
    pub device: u8,
    /// Bit 0: accept VIRTIO_F_INDIRECT_DESC; bit 1: accept VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
    /// bit 2: the legacy interface (transport version 1); bit 3, legacy only: do not accept
    /// VIRTIO_BALLOON_F_MUST_TELL_HOST (legacy drivers may not know it, §5.5.3.2.1).
    pub features: u8,
    /// The operations, at most [`MAX_OPS`].
    pub ops: Vec<DcOp>,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Decodes `data` leniently: every byte string is a case; missing bytes read as zeros.
pub fn decode_device_chains(data: &[u8]) -> DeviceChainsCase {
    let mut r = Reader { data, at: 0 };
    let device = r.byte();
    let features = r.byte();
    let mut ops = Vec::new();
    while !r.done() && ops.len() < MAX_OPS {
        let op = match r.byte() % KINDS {
            0 | 1 => {
                let queue = r.byte() % QUEUES as u8;
                let n = r.byte() % 17;
                let entries = (0..n)
                    .map(|_| [r.byte(), r.byte(), r.byte(), r.byte()])
                    .collect();
                let pieces = 1 + r.byte() % 5;
                let cuts = (1..pieces).map(|_| r.byte()).collect();
                let flags = r.byte();
                let extra = r.byte();
                DcOp::Chain {
                    queue,
                    entries,
                    cuts,
                    flags,
                    extra,
                }
            }
            2 => DcOp::Notify {
                queue: r.byte() % QUEUES as u8,
            },
            3 => DcOp::StatsRequest,
            4 => DcOp::NumPages {
                value: u16::from_le_bytes([r.byte(), r.byte()]),
            },
            5 => DcOp::Actual {
                value: u16::from_le_bytes([r.byte(), r.byte()]),
            },
            _ => DcOp::Reset,
        };
        ops.push(op);
    }
    DeviceChainsCase {
        device,
        features,
        ops,
    }
}

impl DeviceChainsCase {
    /// The bytes [`decode_device_chains`] turns back into this case (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.device, self.features];
        for op in &self.ops {
            match op {
                DcOp::Chain {
                    queue,
                    entries,
                    cuts,
                    flags,
                    extra,
                } => {
                    v.extend([0, *queue, entries.len().min(16) as u8]);
                    for e in entries.iter().take(16) {
                        v.extend_from_slice(e);
                    }
                    let cuts = &cuts[..cuts.len().min(4)];
                    v.push(cuts.len() as u8);
                    v.extend_from_slice(cuts);
                    v.extend([*flags, *extra]);
                }
                DcOp::Notify { queue } => v.extend([2, *queue]),
                DcOp::StatsRequest => v.push(3),
                DcOp::NumPages { value } => {
                    v.push(4);
                    v.extend(value.to_le_bytes());
                }
                DcOp::Actual { value } => {
                    v.push(5);
                    v.extend(value.to_le_bytes());
                }
                DcOp::Reset => v.push(6),
            }
        }
        v
    }
}

impl fmt::Display for DeviceChainsCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "device balloon (selector {}), indirect {}, deflate_on_oom {}, {}{}",
            self.device,
            self.features & 1 != 0,
            self.features & 2 != 0,
            if self.features & 4 != 0 {
                "legacy"
            } else {
                "modern"
            },
            if self.features & 12 == 12 {
                ", MUST_TELL_HOST not accepted"
            } else {
                ""
            }
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            write!(f, "#{i} ")?;
            match op {
                DcOp::Chain {
                    queue,
                    entries,
                    cuts,
                    flags,
                    extra,
                } => writeln!(
                    f,
                    "chain queue {queue} entries {} cuts {cuts:?} flags {flags:#04x} extra {extra}",
                    entries.len()
                )?,
                DcOp::Notify { queue } => writeln!(f, "notify queue {queue}")?,
                DcOp::StatsRequest => writeln!(f, "host stats request")?,
                DcOp::NumPages { value } => writeln!(f, "host num_pages = {value}")?,
                DcOp::Actual { value } => writeln!(f, "driver actual = {value}")?,
                DcOp::Reset => writeln!(f, "reset")?,
            }
        }
        Ok(())
    }
}

/// Runs `data` against the reference balloon, or the mutant pinned with
/// [`MUTANT_ENV`](super::MUTANT_ENV). This is the body of the `device_chains` fuzz target.
pub fn device_chains(data: &[u8]) -> Result<(), Finding> {
    device_chains_on(data, super::pinned_mutant())
}

/// Runs `data` against the reference device (`None`) or `mutant`; returns the first oracle
/// that fired. The first byte picks the device type (`% 4`: 1 console, 2 network device,
/// else the balloon).
pub fn device_chains_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    match data.first().copied().unwrap_or(0) % 4 {
        1 => stream::run(&stream::decode(data), console::Console::default(), mutant),
        2 => stream::run(&stream::decode(data), net::Net::default(), mutant),
        _ => run_on(data, mutant, Box::new(BalloonBackend::new(0))),
    }
}

/// The readable operation stream of `data`, for whichever device type it selects.
pub fn describe(data: &[u8]) -> String {
    match data.first().copied().unwrap_or(0) % 4 {
        1 | 2 => stream::decode(data).to_string(),
        _ => decode_device_chains(data).to_string(),
    }
}

/// Runs `data` against an MMIO device with `backend` (the balloon, or a test's variant).
fn run_on(
    data: &[u8],
    mutant: Option<Mutant>,
    backend: Box<dyn DeviceBackend>,
) -> Result<(), Finding> {
    let case = decode_device_chains(data);
    let mut run = Run::new(&case, mutant, backend).map_err(|f| f.on(mutant))?;
    for (i, op) in case.ops.iter().enumerate() {
        run.step = i;
        run.op(op).map_err(|f| f.at(i).on(mutant))?;
    }
    run.finish().map_err(|f| f.on(mutant))
}

/// A chain made available and not used yet.
struct Outstanding {
    /// Descriptor-table indices it holds.
    descs: Vec<u16>,
    /// Device-writable ranges `[start, end)` of guest memory.
    writable: Vec<(u64, u64)>,
    writable_bytes: u64,
    /// What the host must receive once it is used (`None`: ill-formed).
    expect: Option<Vec<u8>>,
    /// Whether the chain was notified (or followed by a notification) after DRIVER_OK.
    notified: bool,
    op: usize,
}

struct QueueState {
    dq: DriverQueue,
    free: Vec<u16>,
    out: BTreeMap<u16, Outstanding>,
}

struct Run {
    dev: Option<MmioDevice>,
    mem: GuestMemoryMmap,
    features: u8,
    /// The legacy interface (features bit 2).
    legacy: bool,
    /// An ill-formed chain was made available since the initialization.
    ill_given: bool,
    /// Legacy: no statsq buffer was used since the initialization; the first one's values
    /// are to be ignored (BAL-DEV-13).
    first_stats: bool,
    queues: Vec<QueueState>,
    /// FEATURES_OK was refused: nothing more is driven.
    stopped: bool,
    indirect: bool,
    /// Host records not matched yet, per port (inflate, deflate, stats).
    host: [Vec<Vec<u8>>; 3],
    /// Expected host records of used chains not matched yet, per port, with their op.
    expect: [Vec<(Vec<u8>, usize)>; 3],
    /// An ill-formed chain of that queue was used: unmatched host records are allowed.
    lenient: [bool; 3],
    step: usize,
}

/// A request as the oracles compare it: the balloon is a set of pages, so the page frame
/// numbers of one inflate/deflate request are compared in ascending order (the spec gives
/// their order no meaning); statistics are already canonical ([`canonical_stats`]).
fn host_view(q: usize, mut rec: Vec<u8>) -> Vec<u8> {
    if q < 2 {
        let mut pfns: Vec<[u8; 4]> = rec
            .chunks(4)
            .map(|c| {
                let mut e = [0u8; 4];
                e[..c.len()].copy_from_slice(c);
                e
            })
            .collect();
        pfns.sort_by_key(|e| u32::from_le_bytes(*e));
        rec = pfns.concat();
    }
    rec
}

fn err(oracle: &'static str, reqs: &[&'static str], msg: impl Into<String>) -> Finding {
    Finding::new(TARGET, oracle, reqs, msg)
}

fn target_error(e: TargetError) -> Finding {
    match e {
        TargetError::Hung(m) => err("hang", &["SPLIT-DEV-MALFORMED-CHAIN"], m),
        other => err("panic", &["SPLIT-DEV-MALFORMED-CHAIN"], other.to_string()),
    }
}

impl Run {
    fn new(
        case: &DeviceChainsCase,
        mutant: Option<Mutant>,
        backend: Box<dyn DeviceBackend>,
    ) -> Result<Self, Finding> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)])
            .map_err(|e| err("setup", &[], e.to_string()))?;
        let mut ram = GuestRam::new(mem.clone());
        ram.set_recording(true);
        let legacy = case.features & 4 != 0;
        let mut cfg = DeviceConfig::new(if legacy {
            TransportVersion::Legacy
        } else {
            TransportVersion::Modern
        });
        cfg.mutant = mutant;
        cfg.step_budget = STEP_BUDGET;
        cfg.queue_num_max = vec![256; QUEUES as usize];
        let dev = MmioDevice::new(cfg, backend, ram);
        let mut run = Run {
            dev: Some(dev),
            mem,
            features: case.features,
            legacy,
            ill_given: false,
            first_stats: legacy,
            queues: Vec::new(),
            stopped: false,
            indirect: false,
            host: Default::default(),
            expect: Default::default(),
            lenient: [false; 3],
            step: 0,
        };
        run.init()?;
        Ok(run)
    }

    fn call<R>(&mut self, f: impl FnOnce(&mut MmioDevice) -> R) -> Result<R, Finding> {
        guarded_call(&mut self.dev, f).map_err(target_error)
    }

    fn wr(&mut self, off: u64, v: u32) -> Result<(), Finding> {
        self.call(|d| d.write_u32(off, v))
    }

    fn rd(&mut self, off: u64) -> Result<u32, Finding> {
        self.call(|d| d.read_u32(off))
    }

    /// The `actual` value the device uses, as its host side reports it (le32).
    fn actual_used(&mut self) -> Result<Option<Vec<u8>>, Finding> {
        let r = self.call(|d| d.host_take(PORT_ACTUAL))?;
        Ok(r.ok().and_then(|r| r.into_iter().next()))
    }

    fn status(&mut self) -> Result<u8, Finding> {
        Ok(self.rd(STATUS)? as u8)
    }

    /// Driver initialization (§3.1.1) with every queue of 16 entries.
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
        // BAL-DRV-01: the driver accepts MUST_TELL_HOST when offered (a legacy driver may not
        // know it, §5.5.3.2.1).
        let mut want = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_STATS_VQ);
        if !(self.legacy && self.features & 8 != 0) {
            want |= 1 << VIRTIO_BALLOON_F_MUST_TELL_HOST;
        }
        if self.features & 1 != 0 {
            want |= 1 << VIRTIO_F_INDIRECT_DESC;
        }
        if self.features & 2 != 0 {
            want |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        let accepted = offered & want;
        self.indirect = accepted & (1 << VIRTIO_F_INDIRECT_DESC) != 0;
        for sel in 0..pages {
            self.wr(DRIVER_FEATURES_SEL, sel)?;
            self.wr(DRIVER_FEATURES, (accepted >> (32 * sel)) as u32)?;
        }
        // The legacy interface has no FEATURES_OK (§3.1.2).
        let ready = if self.legacy {
            ACKNOWLEDGE | DRIVER
        } else {
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        };
        if !self.legacy {
            self.wr(STATUS, u32::from(ready))?;
        }
        if (!self.legacy && self.status()? & FEATURES_OK == 0)
            || accepted & (1 << VIRTIO_BALLOON_F_STATS_VQ) == 0
            || (!self.legacy && accepted & (1 << VIRTIO_F_VERSION_1) == 0)
        {
            self.stopped = true;
            return Ok(());
        }
        self.first_stats = self.legacy;
        self.ill_given = false;
        // Statistics the host received before the reset match no request made after it.
        self.host[2].clear();
        self.queues.clear();
        if self.legacy {
            self.wr(GUEST_PAGE_SIZE, 4096)?;
        }
        for q in 0..QUEUES {
            self.wr(QUEUE_SEL, u32::from(q))?;
            let max = self.rd(QUEUE_NUM_MAX)?;
            if max < u32::from(QUEUE_SIZE) {
                return Err(err(
                    "queue-missing",
                    &["BAL-DEV-02"],
                    format!("queue {q} reports QueueNumMax {max}"),
                ));
            }
            // Legacy: one page pair higher, as QueuePFN 0 stops a queue (§4.2.4).
            let pfn = (queue_base(q) / 4096 + 2) as u32;
            let dq = if self.legacy {
                DriverQueue::legacy(pfn, 4096, QUEUE_SIZE, 4096)
            } else {
                DriverQueue::modern(queue_base(q), QUEUE_SIZE)
            };
            let _ = dq.clear(&mut self.mem);
            let legacy = self.legacy;
            stream::program_queue(&mut |off, v| self.wr(off, v), &dq, legacy)?;
            self.queues.push(QueueState {
                dq,
                free: (0..QUEUE_SIZE).rev().collect(),
                out: BTreeMap::new(),
            });
        }
        self.wr(STATUS, u32::from(ready | DRIVER_OK))?;
        self.check()
    }

    fn needs_reset(&mut self) -> Result<bool, Finding> {
        Ok(self.status()? & DEVICE_NEEDS_RESET != 0)
    }

    /// Whether nothing more is expected of the device: it reports DEVICE_NEEDS_RESET, or
    /// (legacy, which has no such bit) it was given an ill-formed chain since the
    /// initialization and may have stopped.
    fn broken(&mut self) -> Result<bool, Finding> {
        Ok(self.needs_reset()? || (self.legacy && self.ill_given))
    }

    fn op(&mut self, op: &DcOp) -> Result<(), Finding> {
        if self.stopped {
            return Ok(());
        }
        match op {
            DcOp::Chain {
                queue,
                entries,
                cuts,
                flags,
                extra,
            } => self.chain(
                u16::from(*queue % QUEUES as u8),
                entries,
                cuts,
                *flags,
                *extra,
            )?,
            DcOp::Notify { queue } => self.notify(u16::from(*queue % QUEUES as u8))?,
            DcOp::StatsRequest => self.stats_request()?,
            DcOp::NumPages { value } => {
                let v = u32::from(*value) * 3;
                self.call(|d| d.update_config(0, &v.to_le_bytes()))?;
                let got = self.rd(CONFIG)?;
                if got != v {
                    return Err(err(
                        "num-pages",
                        &["BAL-DEV-07"],
                        format!("the host set num_pages {v}, the driver reads {got}"),
                    ));
                }
            }
            DcOp::Actual { value } => {
                let v = u32::from(*value) * 5;
                if self.legacy && value & 1 != 0 {
                    // Byte by byte, least significant first: until the most significant byte
                    // is written the device keeps using the old value (BAL-DEV-09).
                    let old = self.actual_used()?;
                    for (k, b) in v.to_le_bytes().iter().enumerate().take(3) {
                        let off = CONFIG + (ACTUAL_OFFSET + k) as u64;
                        self.call(|d| d.write(off, &[*b]))?;
                        let now = self.actual_used()?;
                        if now != old {
                            return Err(err(
                                "actual-torn",
                                &["BAL-DEV-09"],
                                format!(
                                    "after byte {k} of actual {v} the legacy device uses {now:02x?} (before: {old:02x?})"
                                ),
                            ));
                        }
                    }
                    let off = CONFIG + (ACTUAL_OFFSET + 3) as u64;
                    let msb = v.to_le_bytes()[3];
                    self.call(|d| d.write(off, &[msb]))?;
                } else {
                    self.wr(CONFIG + ACTUAL_OFFSET as u64, v)?;
                }
                let seen = self.actual_used()?;
                if seen.as_deref() != Some(&v.to_le_bytes()[..]) {
                    return Err(err(
                        "actual",
                        &["BAL-DEV-08"],
                        format!("the driver wrote actual {v}; the device uses {seen:02x?}"),
                    ));
                }
            }
            DcOp::Reset => {
                self.wr(STATUS, 0)?;
                if self.status()? != 0 {
                    return Err(err(
                        "reset",
                        &["RESET-DEV-01"],
                        "Status does not read 0 after the driver wrote 0",
                    ));
                }
                // Chains given before the reset are gone; their writable buffers stay
                // forbidden from now on.
                self.check()?;
                self.init()?;
            }
        }
        self.check()
    }

    /// Builds and publishes one chain (skipped when the queue has too few free entries, or a
    /// statsq buffer is already outstanding: a driver gives the statsq one buffer at a time).
    fn chain(
        &mut self,
        q: u16,
        entries: &[[u8; 4]],
        cuts: &[u8],
        flags: u8,
        extra: u8,
    ) -> Result<(), Finding> {
        let stats = q == 2;
        if stats && !self.queues[2].out.is_empty() {
            return Ok(());
        }
        // The request bytes and what the host must receive.
        let (payload, expect) = if stats {
            let mut seen = [false; MAX_KNOWN_TAG as usize + 1];
            let mut p = Vec::new();
            for e in entries {
                let tag = u16::from(e[0] % 12);
                if tag <= MAX_KNOWN_TAG {
                    // One entry per recognized tag: the spec says nothing of repeated tags.
                    if std::mem::replace(&mut seen[tag as usize], true) {
                        continue;
                    }
                }
                let value = u64::from(u32::from_le_bytes([e[1], e[2], e[3], e[0]]))
                    .wrapping_mul(0x1_0000_0001);
                p.extend_from_slice(&tag.to_le_bytes());
                p.extend_from_slice(&value.to_le_bytes());
            }
            debug_assert_eq!(p.len() % STAT_LEN, 0);
            let e = canonical_stats(&p);
            (p, e)
        } else {
            let p: Vec<u8> = entries.iter().flatten().copied().collect();
            (p.clone(), p)
        };
        let len = payload.len();
        let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * len / 255).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut prev = 0;
        for p in points.into_iter().chain([len]) {
            pieces.push(&payload[prev..p]);
            prev = p;
        }
        // (readable?, bytes or writable length)
        let wlen = u32::from(extra % 64);
        let mut descs: Vec<(bool, Vec<u8>, u32)> = pieces
            .iter()
            .map(|p| (true, p.to_vec(), p.len() as u32))
            .collect();
        let mut ill = false;
        if flags & F_WRITABLE_AFTER != 0 {
            descs.push((false, Vec::new(), wlen));
            ill = true;
        }
        if flags & F_WRITABLE_FIRST != 0 {
            descs.insert(0, (false, Vec::new(), wlen));
            ill = true;
        }
        let outside = (flags & F_OUTSIDE_RAM != 0).then(|| usize::from(extra >> 6) % descs.len());
        ill |= outside.is_some();
        let indirect = flags & F_INDIRECT != 0;
        ill |= indirect && !self.indirect;
        let need = if indirect { 1 } else { descs.len() };
        let qs = &mut self.queues[usize::from(q)];
        if qs.free.len() < need {
            return Ok(());
        }
        let idx: Vec<u16> = (0..need).map(|_| qs.free.pop().unwrap_or(0)).collect();
        let head = idx[0];
        // Lay out the buffers.
        let mut table = Vec::new();
        let mut writable = Vec::new();
        let mut writable_bytes = 0u64;
        let mut at = slot(q, head) + INDIRECT_DATA;
        for (k, (readable, bytes, dlen)) in descs.iter().enumerate() {
            let addr = if indirect {
                let a = at;
                at += u64::from(*dlen) + 8;
                a
            } else {
                slot(q, idx[k])
            };
            let addr = if outside == Some(k) {
                RAM - u64::from(extra % 4)
            } else {
                addr
            };
            if *readable {
                let _ = vm_memory::Bytes::write_slice(&self.mem, bytes, GuestAddress(addr));
            } else {
                writable.push((addr, addr + u64::from(*dlen)));
                writable_bytes += u64::from(*dlen);
            }
            let last = k + 1 == descs.len();
            let mut f = if *readable { 0 } else { VIRTQ_DESC_F_WRITE };
            if !last {
                f |= VIRTQ_DESC_F_NEXT;
            }
            let next = if indirect {
                (k + 1) as u16
            } else {
                idx.get(k + 1).copied().unwrap_or(0)
            };
            table.push(Descriptor {
                addr,
                len: *dlen,
                flags: f,
                next: if last { 0 } else { next },
            });
        }
        if indirect {
            let t = slot(q, head);
            for (k, d) in table.iter().enumerate() {
                let _ = DriverQueue::write_descriptor_at(&mut self.mem, t, k as u16, d);
            }
            let d = Descriptor {
                addr: t,
                len: 16 * table.len() as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            };
            let _ = qs.dq.write_descriptor(&mut self.mem, head, &d);
        } else {
            for (k, d) in table.iter().enumerate() {
                let _ = qs.dq.write_descriptor(&mut self.mem, idx[k], d);
            }
        }
        let _ = qs.dq.publish(&mut self.mem, &[head]);
        self.ill_given |= ill;
        let notify = flags & F_NO_NOTIFY == 0;
        qs.out.insert(
            head,
            Outstanding {
                descs: idx,
                writable,
                writable_bytes,
                expect: (!ill).then_some(expect),
                notified: notify,
                op: self.step,
            },
        );
        if notify {
            self.notify(q)?;
        }
        Ok(())
    }

    fn notify(&mut self, q: u16) -> Result<(), Finding> {
        for o in self.queues[usize::from(q)].out.values_mut() {
            o.notified = true;
        }
        self.wr(QUEUE_NOTIFY, u32::from(q))?;
        self.check()
    }

    fn stats_request(&mut self) -> Result<(), Finding> {
        let held = self.queues[2]
            .out
            .values()
            .any(|o| o.expect.is_some() && o.notified);
        // The statsq buffer of the initialization may not have been given yet; the request
        // then waits in the device.
        let r = self.call(|d| d.host_send(PORT_STATS, &[]))?;
        r.map_err(|e| err("host-request", &["BAL-DEV-10"], e))?;
        self.check()?;
        if held && !self.broken()? && !self.queues[2].out.is_empty() {
            return Err(err(
                "stats-request-ignored",
                &["BAL-DEV-10"],
                "the host asked for statistics and the device kept the statsq buffer",
            ));
        }
        Ok(())
    }

    /// Checks the device's memory writes, the used rings and the host records.
    fn check(&mut self) -> Result<(), Finding> {
        let Some(dev) = self.dev.as_mut() else {
            return Err(err("panic", &[], "device gone"));
        };
        let log = dev.ram_mut().take_accesses();
        for a in log
            .iter()
            .filter(|a| a.kind == AccessKind::Write && a.len > 0)
        {
            let ok = self.queues.iter().any(|qs| {
                let used_end = qs.dq.used + 6 + 8 * u64::from(qs.dq.size);
                (a.gpa >= qs.dq.used && a.end() <= used_end)
                    || qs
                        .out
                        .values()
                        .any(|o| o.writable.iter().any(|&(s, e)| a.gpa >= s && a.end() <= e))
            });
            if !ok {
                return Err(err(
                    "write-outside-writable",
                    &["VQ-DEV-03", "VQ-DEV-05"],
                    format!(
                        "the device wrote {} bytes at {:#x}, outside the used rings and the device-writable buffers it was given",
                        a.len, a.gpa
                    ),
                ));
            }
        }
        // Used elements.
        let mut first_stats_used = None;
        for q in 0..self.queues.len() {
            let used = {
                let qs = &mut self.queues[q];
                qs.dq.take_used(&mut self.mem).unwrap_or_default()
            };
            for (id, len) in used {
                let qs = &mut self.queues[q];
                let Some(o) = u16::try_from(id).ok().and_then(|h| qs.out.remove(&h)) else {
                    return Err(err(
                        "unknown-used-id",
                        &["VQ-DEV-01"],
                        format!("queue {q}: used element id {id} is no outstanding head"),
                    ));
                };
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
                qs.free.extend(o.descs.iter().rev());
                if q == 2 && std::mem::take(&mut self.first_stats) {
                    if let Some(e) = o.expect {
                        // Legacy: the first statsq buffer's values are not to reach the host
                        // (the device may pass them on when it takes the buffer, before it
                        // uses it, so every record since counts).
                        first_stats_used = Some((o.op, host_view(2, e)));
                        continue;
                    }
                }
                match o.expect {
                    Some(e) => self.expect[q].push((host_view(q, e), o.op)),
                    None => self.lenient[q] = true,
                }
            }
        }
        // Host records of used requests.
        let dev = self.dev.as_mut().expect("checked above");
        for (q, port) in [PORT_INFLATE, PORT_DEFLATE, PORT_STATS]
            .into_iter()
            .enumerate()
        {
            let recs = dev.host_take(port).unwrap_or_default();
            self.host[q].extend(recs.into_iter().map(|r| host_view(q, r)));
        }
        if let Some((op, e)) = first_stats_used {
            if !self.lenient[2] && !e.is_empty() && self.host[2].contains(&e) {
                return Err(err(
                    "first-stats-not-ignored",
                    &["BAL-DEV-13"],
                    format!(
                        "the legacy device passed the values of the first statsq buffer (op #{op}) to the host: {e:02x?}"
                    ),
                ));
            }
        }
        for q in 0..3 {
            let mut left = Vec::new();
            for (e, op) in std::mem::take(&mut self.expect[q]) {
                if let Some(k) = self.host[q].iter().position(|h| *h == e) {
                    self.host[q].remove(k);
                } else {
                    left.push((e, op));
                }
            }
            if let Some((e, op)) = left.first() {
                let (oracle, reqs, what): (_, &[&str], _) = if q == 2 {
                    (
                        "stats-differ",
                        &["BAL-DEV-11", "BAL-DEV-12", "VQ-DEV-01"],
                        "statistics",
                    )
                } else {
                    (
                        "pfns-differ",
                        &["BAL-DEV-05", "VQ-DEV-01"],
                        "page frame numbers",
                    )
                };
                return Err(err(
                    oracle,
                    reqs,
                    format!(
                        "queue {q}: the device used the request of op #{op} but the host did not receive its {what} {e:02x?}; host records not matched: {:02x?}",
                        self.host[q]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// End of the case: notifies every queue once more; every well-formed inflate/deflate
    /// request must then be used, and the host must have received nothing that was not sent.
    fn finish(&mut self) -> Result<(), Finding> {
        if self.stopped || self.dev.is_none() {
            return Ok(());
        }
        for q in 0..2 {
            self.notify(q)?;
        }
        if self.broken()? {
            return Ok(());
        }
        for q in 0..2 {
            if let Some((h, o)) = self.queues[q].out.iter().find(|(_, o)| o.expect.is_some()) {
                return Err(err(
                    "request-not-used",
                    &["BAL-DEV-06"],
                    format!(
                        "queue {q}: the request of op #{} (head {h}) was never used",
                        o.op
                    ),
                ));
            }
            let ill_given =
                self.lenient[q] || self.queues[q].out.values().any(|o| o.expect.is_none());
            if !ill_given && !self.host[q].is_empty() {
                return Err(err(
                    "host-record-not-sent",
                    &["BAL-DEV-05"],
                    format!(
                        "queue {q}: the host received {:02x?}, which no request carried",
                        self.host[q]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The committed seeds of `corpora/device_chains/` (`seed-<name>`): inflate and deflate
/// requests split in several ways, direct and indirect, statistics with unknown and unordered
/// tags, host requests, `num_pages`/`actual` and a reset; then the console and network
/// seeds of [`stream::seeds`].
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let pfns = |n: u8, base: u8| -> Vec<[u8; 4]> {
        (0..n).map(|i| [base.wrapping_add(i), i, 1, 0]).collect()
    };
    let chain = |queue: u8, entries: Vec<[u8; 4]>, cuts: &[u8], flags: u8, extra: u8| DcOp::Chain {
        queue,
        entries,
        cuts: cuts.to_vec(),
        flags,
        extra,
    };
    // Stats entries: tag = e[0] % 12 (10 and 11 are unknown), in descending order.
    let stats: Vec<[u8; 4]> = [9u8, 11, 3, 0, 10, 5, 1]
        .iter()
        .map(|&t| [t, 0x11 * t, 2, 3])
        .collect();
    let cases = vec![
        (
            "inflate-deflate-split",
            DeviceChainsCase {
                device: 0,
                features: 1,
                ops: vec![
                    chain(0, pfns(6, 0x10), &[40, 90, 200], 0, 0),
                    chain(0, pfns(5, 0x40), &[0, 255], F_INDIRECT, 0),
                    chain(1, pfns(3, 0x10), &[128, 128], 0, 0),
                    chain(1, pfns(4, 0x40), &[60], F_INDIRECT | F_NO_NOTIFY, 0),
                    DcOp::Notify { queue: 1 },
                ],
            },
        ),
        (
            "stats",
            DeviceChainsCase {
                device: 0,
                features: 1,
                ops: vec![
                    chain(2, stats.clone(), &[], 0, 0),
                    DcOp::StatsRequest,
                    chain(2, stats.clone(), &[33, 77, 150], 0, 0),
                    DcOp::StatsRequest,
                    chain(2, stats.clone(), &[10, 250], F_INDIRECT, 0),
                    DcOp::StatsRequest,
                ],
            },
        ),
        (
            "config-reset",
            DeviceChainsCase {
                device: 0,
                features: 2,
                ops: vec![
                    DcOp::NumPages { value: 300 },
                    DcOp::Actual { value: 7 },
                    chain(0, pfns(2, 1), &[100], 0, 0),
                    DcOp::Reset,
                    chain(1, pfns(2, 1), &[], 0, 0),
                    DcOp::Actual { value: 0x1234 },
                ],
            },
        ),
        (
            "wrong-directions",
            DeviceChainsCase {
                device: 0,
                features: 0,
                ops: vec![
                    chain(0, pfns(3, 9), &[50], F_WRITABLE_AFTER, 17),
                    chain(1, pfns(3, 9), &[], F_INDIRECT, 0),
                    chain(0, pfns(2, 9), &[], F_OUTSIDE_RAM, 0x42),
                    DcOp::Reset,
                    chain(0, pfns(2, 9), &[9], F_WRITABLE_FIRST, 8),
                    DcOp::Reset,
                    chain(2, pfns(2, 3), &[], F_WRITABLE_AFTER, 12),
                    DcOp::StatsRequest,
                ],
            },
        ),
        (
            // The legacy interface (§5.5.3.2.1, §5.5.6.2.1, §5.5.6.3.3): a driver without
            // MUST_TELL_HOST, `actual` written byte by byte, a first statsq buffer whose
            // values the device ignores, then a second one it reports.
            "legacy",
            DeviceChainsCase {
                device: 0,
                features: 4 | 8,
                ops: vec![
                    chain(0, pfns(4, 0x20), &[100], 0, 0),
                    chain(1, pfns(2, 0x20), &[], 0, 0),
                    DcOp::Actual { value: 0x3333 },
                    chain(2, stats.clone(), &[64], 0, 0),
                    DcOp::StatsRequest,
                    chain(2, stats.clone(), &[], 0, 0),
                    DcOp::StatsRequest,
                    DcOp::Actual { value: 8 },
                ],
            },
        ),
    ];
    cases
        .into_iter()
        .map(|(n, c)| (format!("seed-{n}"), c.encode()))
        .chain(stream::seeds())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_reference_device::{ChainWriter, Completion};

    /// What a test balloon does besides the reference's work.
    #[derive(Clone, Copy, PartialEq)]
    enum Twist {
        /// Writes 4 bytes into the first (device-readable) buffer of an inflate request.
        WriteReadable,
        /// Reports 4 bytes more than it wrote in the used element.
        LenTooLarge,
        /// Writes into the device-writable buffers of a chain (allowed) and reports them.
        WriteWritable,
        /// Gives the host the page frame numbers of a request in reverse order (allowed).
        ReorderPfns,
        /// Gives the host all but the last page frame number of a request.
        DropLastPfn,
    }

    /// The reference balloon with one [`Twist`].
    struct Twisted(BalloonBackend, Twist);

    impl DeviceBackend for Twisted {
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
            "twisted-balloon"
        }
        fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
            let c = self.0.process(queue, chain, ram);
            match (self.1, c) {
                (Twist::WriteReadable, Completion::Written(_)) if queue == 0 => {
                    let _ = ram.write(chain[0].addr, &[0xee; 4]);
                    Completion::Written(0)
                }
                (Twist::LenTooLarge, Completion::Written(n)) => Completion::Written(n + 4),
                (Twist::WriteWritable, Completion::Written(_)) => {
                    let mut w = ChainWriter::new(chain);
                    let _ = w.write(ram, &[0x5a; 8]);
                    Completion::Written(w.written())
                }
                (_, c) => c,
            }
        }
        fn release_held(&mut self, queue: u16) -> bool {
            self.0.release_held(queue)
        }
        fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
            self.0.host_send(port, data)
        }
        fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
            let mut r = self.0.host_take(port)?;
            if self.1 == Twist::DropLastPfn && port == PORT_INFLATE {
                for rec in &mut r {
                    rec.truncate(rec.len().saturating_sub(4));
                }
            }
            if self.1 == Twist::ReorderPfns && port == PORT_INFLATE {
                for rec in &mut r {
                    let mut chunks: Vec<Vec<u8>> = rec.chunks(4).map(|c| c.to_vec()).collect();
                    chunks.reverse();
                    *rec = chunks.concat();
                }
            }
            Ok(r)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.0.write_config(offset, data)
        }
        fn reset(&mut self) {
            self.0.reset()
        }
        fn negotiated(&mut self, features: u64) {
            self.0.negotiated(features)
        }
        fn take_config_update(&mut self) -> Option<(usize, Vec<u8>)> {
            self.0.take_config_update()
        }
        fn host_config_changed(&mut self, offset: usize, data: &[u8]) {
            self.0.host_config_changed(offset, data)
        }
        fn take_driver_write(&mut self) -> Option<(usize, Vec<u8>)> {
            self.0.take_driver_write()
        }
    }

    fn run(data: &[u8], t: Twist) -> Result<(), Finding> {
        run_on(data, None, Box::new(Twisted(BalloonBackend::new(0), t)))
    }

    /// Inflate 3 PFNs split over two descriptors, then an inflate request with a trailing
    /// device-writable descriptor of 12 bytes.
    fn input() -> Vec<u8> {
        let pfns = vec![[1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]];
        DeviceChainsCase {
            device: 0,
            features: 0,
            ops: vec![
                DcOp::Chain {
                    queue: 0,
                    entries: pfns.clone(),
                    cuts: vec![100],
                    flags: 0,
                    extra: 0,
                },
                DcOp::Chain {
                    queue: 0,
                    entries: pfns,
                    cuts: vec![],
                    flags: F_WRITABLE_AFTER,
                    extra: 12,
                },
            ],
        }
        .encode()
    }

    #[test]
    fn legacy_balloon_mutants_are_found_from_the_seeds() {
        for m in [
            Mutant::BalloonNeedsMustTellHost,
            Mutant::BalloonLegacyFirstStatsUsed,
            Mutant::BalloonActualTornWrite,
        ] {
            let found: Vec<Finding> = seeds()
                .iter()
                .filter_map(|(_, b)| {
                    assert_eq!(device_chains_on(b, None), Ok(()));
                    device_chains_on(b, Some(m)).err()
                })
                .collect();
            assert!(!found.is_empty(), "no seed finds {}", m.name());
        }
    }

    #[test]
    fn encode_round_trips_through_decode() {
        // The balloon's seeds (the stream devices' round trip is tested in `stream`).
        for (_, bytes) in seeds().iter().filter(|(_, b)| matches!(b[0] % 4, 0 | 3)) {
            assert_eq!(&decode_device_chains(bytes).encode(), bytes);
        }
    }

    #[test]
    fn reference_and_permitted_variants_are_clean() {
        assert_eq!(device_chains_on(&input(), None), Ok(()));
        // Writing into the device-writable buffer it was given, and reporting those bytes,
        // is allowed even though the balloon's requests have no writable part.
        assert_eq!(run(&input(), Twist::WriteWritable), Ok(()));
        // The order of the page frame numbers within a request carries no meaning.
        assert_eq!(run(&input(), Twist::ReorderPfns), Ok(()));
    }

    #[test]
    fn oracles_fire_on_misbehaving_devices() {
        let oracle = |t| run(&input(), t).unwrap_err().oracle;
        assert_eq!(oracle(Twist::WriteReadable), "write-outside-writable");
        assert_eq!(oracle(Twist::LenTooLarge), "used-len-too-large");
        assert_eq!(oracle(Twist::DropLastPfn), "pfns-differ");
    }
}
