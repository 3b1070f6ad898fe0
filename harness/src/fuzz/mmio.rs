//! The operation stream shared by `mmio_regs` and `diff_mmio`, and the driver that executes
//! it against any [`Target`].
//!
//! # Input
//!
//! One [`MmioHeader`] byte (transport version, device type) and then [`MmioOp`]s until the
//! bytes run out (at most [`MAX_MMIO_OPS`]). Raw register reads and writes reach every offset
//! of the 0x200-byte window with widths 1, 2, 4 and 8 (mostly 4, mostly at named registers);
//! the structured operations (status steps, feature pages, queue setup, a full initialization,
//! descriptor chains, ring pokes, interrupt acknowledgement, reset, host configuration changes)
//! are valid by default and take a rare knob (a byte `>= 0xe0` or `>= 0xf0`) that breaks one
//! rule.
//!
//! # Guest memory layout (guest physical addresses)
//!
//! Rings at [`RING_BASE`] (the modern layout of [`DriverQueue::modern`], or legacy PFN 1 with
//! 4096-byte pages), an indirect table at [`INDIRECT_TABLE`], buffers at [`DATA`] (slot `p` at
//! `DATA + p * 0x400`). Everything fits below 64 KiB.

use super::encode::{variant, Encode};
use super::Finding;
use crate::target::{DeviceKind, IrqEvent, Target, TargetError, TargetMemory, SENTINEL};
use arbitrary::{Arbitrary, Unstructured};
use std::fmt;
use virtio_reference_device::backend::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_reference_device::devices::block::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_reference_device::regs::*;
use virtio_reference_device::{Descriptor, DriverQueue, MemoryAccess, TransportVersion};

/// Upper bound on operations decoded from one input.
pub const MAX_MMIO_OPS: usize = 64;
/// Guest physical address of the rings (descriptor table first).
pub const RING_BASE: u64 = 0x1000;
/// Guest physical address of the indirect table a chain may use.
pub const INDIRECT_TABLE: u64 = 0x7000;
/// Guest physical address of buffer slot 0.
pub const DATA: u64 = 0x8000;
const SLOT: u64 = 0x400;
/// Largest used ring (in bytes) recorded after a notification.
const MAX_USED_BYTES: u64 = 2048;

/// First byte of an input.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmioHeader {
    /// Bit 0: legacy transport (version 1) instead of version 2; bit 1: block device
    /// (DeviceID 2) instead of entropy (DeviceID 4).
    pub flags: u8,
}

/// One driver operation.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// Register read: `reg` picks the offset (see [`reg_offset`]), `width` the size
    /// (see [`width`]).
    Read {
        /// Offset selector.
        reg: u16,
        /// Width selector.
        width: u8,
    },
    /// Register write of `value` (truncated to the width; widened with zeros to 8 bytes).
    Write {
        /// Offset selector.
        reg: u16,
        /// Width selector.
        width: u8,
        /// The value.
        value: u32,
    },
    /// Status write: `step % 8` in 0..=3 sets the next handshake bit (ACKNOWLEDGE, DRIVER,
    /// FEATURES_OK, DRIVER_OK), 4 writes all four at once, 5 adds FAILED, 6 writes 0 (reset),
    /// 7 writes the raw byte `step.rotate_right(3)`.
    Status {
        /// Step selector.
        step: u8,
    },
    /// One feature page: DriverFeaturesSel/DeviceFeaturesSel = `page % 2` (`page >= 0xf0`:
    /// `page` itself, a page beyond the defined ones), then DriverFeatures = by `mode % 8`:
    /// 0..=3 the offered bits, 4..=5 offered & `bits`, 6 `bits` raw, 7 offered plus bit
    /// `bits % 32`.
    Features {
        /// Page selector.
        page: u8,
        /// Value selector.
        mode: u8,
        /// Bits for modes 4..=7.
        bits: u32,
    },
    /// Queue setup: QueueSel (`sel >= 0xf0`: queue `sel & 0xf`, else 0), QueueNum (`size <
    /// 0xf0`: `1 << (size % 9)` capped at QueueNumMax, else an invalid value), the ring
    /// addresses (`layout >= 0xe0`: by `layout & 7` one misplaced area, or for 5 and 6 the
    /// available ring or the descriptor table ending at the last byte of RAM, a valid
    /// placement; legacy: GuestPageSize
    /// 0, QueueAlign 0, 3 or 1, QueuePFN past the end of RAM or all ones, or both
    /// GuestPageSize and QueuePFN all ones) and QueueReady = 1 (legacy: QueuePFN).
    Queue {
        /// Queue selector.
        sel: u8,
        /// Size selector.
        size: u8,
        /// Layout selector.
        layout: u8,
    },
    /// A complete, valid initialization (§3.1.1): reset, ACKNOWLEDGE, DRIVER, features (bit 0
    /// of `features`: EVENT_IDX, bit 1: INDIRECT_DESC, bit 2: RING_RESET, bit 3: the device
    /// type's bits; `0xff`: VERSION_1 not accepted), FEATURES_OK, queue 0 of size selector
    /// `size`, DRIVER_OK.
    Init {
        /// Feature selector.
        features: u8,
        /// Size selector as in [`MmioOp::Queue`].
        size: u8,
    },
    /// Lays out a chain in the queue last set up and makes it available. Entropy: `1 + n % 4`
    /// buffers from `bufs` (bit 7 writable, `((b & 0x7f) + 1) * 8` bytes), readable first;
    /// block: a request of type `req % 5` (IN, OUT, FLUSH, GET_ID, unknown) for sector
    /// `req / 5 % 8`; in place of the unknown type, `bufs[1] >= 0xf0` makes a DISCARD (bit 0
    /// clear) or WRITE_ZEROES (set) request of `1 + (bufs[1] >> 1) % 8` segments (see
    /// [`block_request_type`], [`dwz_segments`]). `knob >= 0xe0` applies one corruption.
    Chain {
        /// Buffer descriptions.
        bufs: [u8; 4],
        /// Buffer count selector.
        n: u8,
        /// Corruption selector.
        knob: u8,
        /// Block request selector.
        req: u8,
    },
    /// QueueNotify with queue 0 (`queue >= 0xf0`: `queue & 0xf`).
    Notify {
        /// Queue selector.
        queue: u8,
    },
    /// Driver-side ring write: `field % 4` = 0 `avail.flags` (`value & 1`), 1 `used_event`, 2
    /// `avail.idx` (raw), 3 one available-ring slot (`value % size`) = head `value >> 8`.
    Ring {
        /// Field selector.
        field: u8,
        /// The value.
        value: u16,
    },
    /// Reads InterruptStatus, writes it back to InterruptACK (`mask >= 0xf0`: `mask & 0xf`
    /// instead) and reads InterruptStatus again.
    Ack {
        /// Mask selector.
        mask: u8,
    },
    /// Device reset: Status 0, then reads of Status, InterruptStatus and (QueueSel 0)
    /// QueueReady or, for legacy, QueuePFN.
    Reset,
    /// The host changes 4 bytes of the configuration space at `offset % 32`.
    Config {
        /// Offset selector.
        offset: u8,
        /// New bytes (little-endian).
        value: u32,
    },
}

const MMIO_OP_VARIANTS: u32 = 12;

/// Register offsets the offset selector picks from when its bit 15 is clear.
pub const KNOWN_REGS: [u64; 40] = [
    MAGIC,
    VERSION,
    DEVICE_ID,
    VENDOR_ID,
    DEVICE_FEATURES,
    DEVICE_FEATURES_SEL,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    GUEST_PAGE_SIZE,
    QUEUE_SEL,
    QUEUE_NUM_MAX,
    QUEUE_NUM,
    QUEUE_ALIGN,
    QUEUE_PFN,
    QUEUE_READY,
    QUEUE_NOTIFY,
    INTERRUPT_STATUS,
    INTERRUPT_ACK,
    STATUS,
    QUEUE_DESC_LOW,
    QUEUE_DESC_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DEVICE_HIGH,
    SHM_SEL,
    SHM_LEN_LOW,
    SHM_LEN_HIGH,
    SHM_BASE_LOW,
    SHM_BASE_HIGH,
    QUEUE_RESET,
    CONFIG_GENERATION,
    CONFIG,
    CONFIG + 1,
    CONFIG + 4,
    CONFIG + 8,
    CONFIG + 12,
    CONFIG + 16,
    CONFIG + 18,
    CONFIG + 20,
];

/// Offset selected by `reg`: bit 15 clear picks from [`KNOWN_REGS`], set gives the raw offset
/// `reg & 0x1ff` (anything in the window).
pub fn reg_offset(reg: u16) -> u64 {
    if reg & 0x8000 == 0 {
        KNOWN_REGS[reg as usize % KNOWN_REGS.len()]
    } else {
        (reg & 0x1ff) as u64
    }
}

/// Access width in bytes selected by `w`: 4 (five times in eight), 1, 2 or 8.
pub fn width(w: u8) -> usize {
    [4, 4, 4, 4, 4, 1, 2, 8][w as usize % 8]
}

/// The selector value that makes [`reg_offset`] pick `offset` from [`KNOWN_REGS`] (raw
/// otherwise).
pub fn reg_selector(offset: u64) -> u16 {
    KNOWN_REGS
        .iter()
        .position(|&o| o == offset)
        .map_or(0x8000 | (offset as u16 & 0x1ff), |i| i as u16)
}

/// A decoded `mmio_regs` input (also the part of a `diff_mmio` input after its first byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioCase {
    /// The header.
    pub header: MmioHeader,
    /// The operations, in order.
    pub ops: Vec<MmioOp>,
}

impl MmioCase {
    /// Transport version the header selects.
    pub fn version(&self) -> TransportVersion {
        if self.header.flags & 1 != 0 {
            TransportVersion::Legacy
        } else {
            TransportVersion::Modern
        }
    }

    /// Device type the header selects.
    pub fn device(&self) -> DeviceKind {
        if self.header.flags & 2 != 0 {
            DeviceKind::Block
        } else {
            DeviceKind::Entropy
        }
    }

    /// The bytes that decode to this case.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.header.flags.encode(&mut out);
        for op in &self.ops {
            let k = MMIO_OP_VARIANTS;
            match *op {
                MmioOp::Read { reg, width } => {
                    variant(&mut out, 0, k);
                    reg.encode(&mut out);
                    width.encode(&mut out);
                }
                MmioOp::Write { reg, width, value } => {
                    variant(&mut out, 1, k);
                    reg.encode(&mut out);
                    width.encode(&mut out);
                    value.encode(&mut out);
                }
                MmioOp::Status { step } => {
                    variant(&mut out, 2, k);
                    step.encode(&mut out);
                }
                MmioOp::Features { page, mode, bits } => {
                    variant(&mut out, 3, k);
                    page.encode(&mut out);
                    mode.encode(&mut out);
                    bits.encode(&mut out);
                }
                MmioOp::Queue { sel, size, layout } => {
                    variant(&mut out, 4, k);
                    sel.encode(&mut out);
                    size.encode(&mut out);
                    layout.encode(&mut out);
                }
                MmioOp::Init { features, size } => {
                    variant(&mut out, 5, k);
                    features.encode(&mut out);
                    size.encode(&mut out);
                }
                MmioOp::Chain { bufs, n, knob, req } => {
                    variant(&mut out, 6, k);
                    bufs.encode(&mut out);
                    n.encode(&mut out);
                    knob.encode(&mut out);
                    req.encode(&mut out);
                }
                MmioOp::Notify { queue } => {
                    variant(&mut out, 7, k);
                    queue.encode(&mut out);
                }
                MmioOp::Ring { field, value } => {
                    variant(&mut out, 8, k);
                    field.encode(&mut out);
                    value.encode(&mut out);
                }
                MmioOp::Ack { mask } => {
                    variant(&mut out, 9, k);
                    mask.encode(&mut out);
                }
                MmioOp::Reset => variant(&mut out, 10, k),
                MmioOp::Config { offset, value } => {
                    variant(&mut out, 11, k);
                    offset.encode(&mut out);
                    value.encode(&mut out);
                }
            }
        }
        out
    }
}

/// Decodes `data` leniently into an [`MmioCase`].
pub fn decode_mmio(data: &[u8]) -> MmioCase {
    let mut u = Unstructured::new(data);
    let header = MmioHeader::arbitrary(&mut u).unwrap_or_default();
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_MMIO_OPS {
        match MmioOp::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    MmioCase { header, ops }
}

fn reg_name(off: u64, legacy: bool) -> String {
    match register_name(off, legacy) {
        Some("Config") => format!("Config+{:#x}", off - CONFIG),
        Some(n) if off.is_multiple_of(4) => n.to_string(),
        _ => format!("{off:#05x}"),
    }
}

/// Chain corruptions of the `Chain` operation, by `(knob - 0xe0) % 9`.
pub const CHAIN_CORRUPTIONS: [&str; 9] = [
    "loop",
    "next-out-of-range",
    "zero-length",
    "buffer-at-end-of-ram",
    "buffer-past-end-of-ram",
    "writable-before-readable",
    "indirect-table",
    "huge-length",
    "head-out-of-range",
];

impl MmioOp {
    /// One-line description, for the decoded stream.
    pub fn describe(&self, legacy: bool, block: bool) -> String {
        match *self {
            MmioOp::Read { reg, width: w } => {
                format!("read{} {}", width(w) * 8, reg_name(reg_offset(reg), legacy))
            }
            MmioOp::Write {
                reg,
                width: w,
                value,
            } => format!(
                "write{} {} = {value:#x}",
                width(w) * 8,
                reg_name(reg_offset(reg), legacy)
            ),
            MmioOp::Status { step } => match step % 8 {
                0..=3 => "status: set the next handshake bit".into(),
                4 => "status = ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK".into(),
                5 => "status |= FAILED".into(),
                6 => "status = 0".into(),
                _ => format!("status = {:#x} (raw)", step.rotate_right(3)),
            },
            MmioOp::Features { page, mode, bits } => {
                let page = if page < 0xf0 {
                    (page % 2) as u32
                } else {
                    page as u32
                };
                let what = match mode % 8 {
                    0..=3 => "offered".to_string(),
                    4 | 5 => format!("offered & {bits:#x}"),
                    6 => format!("{bits:#x} (raw)"),
                    _ => format!("offered | bit {}", bits % 32),
                };
                format!("features page {page}: accept {what}")
            }
            MmioOp::Queue { sel, size, layout } => {
                let q = if sel < 0xf0 { 0 } else { sel & 0xf };
                let s = if size < 0xf0 {
                    format!("{} (capped at QueueNumMax)", 1u32 << (size % 9))
                } else {
                    format!("{:#x} (invalid)", bad_size(size, 256))
                };
                let l = if layout >= 0xe0 {
                    format!(", layout knob {}", layout & 7)
                } else {
                    String::new()
                };
                format!("queue {q} setup: size {s}{l}")
            }
            MmioOp::Init { features, size } => {
                let s = if size < 0xf0 {
                    format!("{}", 1u32 << (size % 9))
                } else {
                    format!("{:#x} (invalid)", bad_size(size, 256))
                };
                format!("init: features knob {features:#x}, queue 0 size {s}")
            }
            MmioOp::Chain { bufs, n, knob, req } => {
                let mut s = if block {
                    let kind = block_request_type(req, bufs);
                    let t = match kind {
                        VIRTIO_BLK_T_IN => "IN",
                        VIRTIO_BLK_T_OUT => "OUT",
                        VIRTIO_BLK_T_FLUSH => "FLUSH",
                        VIRTIO_BLK_T_GET_ID => "GET_ID",
                        VIRTIO_BLK_T_DISCARD => "DISCARD",
                        VIRTIO_BLK_T_WRITE_ZEROES => "WRITE_ZEROES",
                        _ => "unknown",
                    };
                    if matches!(kind, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) {
                        let seg = dwz_segments(bufs);
                        let at = |i: usize| {
                            u32::from_le_bytes(seg[i..i + 4].try_into().unwrap_or_default())
                        };
                        format!(
                            "block request {t} of {} segments from sector {}, {} sectors each, flags {:#x}",
                            seg.len() / 16,
                            at(0),
                            at(8),
                            at(12)
                        )
                    } else {
                        format!(
                            "block request {t} sector {} data {}",
                            req / 5 % 8,
                            buf_len(bufs[0])
                        )
                    }
                } else {
                    let n = 1 + n as usize % 4;
                    let b: Vec<String> = bufs[..n]
                        .iter()
                        .map(|b| {
                            format!("{}{}", if b & 0x80 != 0 { "W" } else { "R" }, buf_len(*b))
                        })
                        .collect();
                    format!("chain [{}]", b.join(" "))
                };
                if knob >= 0xe0 {
                    s.push_str(&format!(
                        " corruption {}",
                        CHAIN_CORRUPTIONS[(knob - 0xe0) as usize % CHAIN_CORRUPTIONS.len()]
                    ));
                }
                s
            }
            MmioOp::Notify { queue } => {
                format!(
                    "notify queue {}",
                    if queue < 0xf0 { 0 } else { queue & 0xf }
                )
            }
            MmioOp::Ring { field, value } => match field % 4 {
                0 => format!("avail.flags = {}", value & 1),
                1 => format!("used_event = {value}"),
                2 => format!("avail.idx = {value}"),
                _ => format!("avail ring slot {} = head {}", value, value >> 8),
            },
            MmioOp::Ack { mask } => {
                if mask < 0xf0 {
                    "acknowledge all pending interrupts".into()
                } else {
                    format!("InterruptACK = {:#x}", mask & 0xf)
                }
            }
            MmioOp::Reset => "reset (Status 0) and read it back".into(),
            MmioOp::Config { offset, value } => {
                format!("host changes config[{}..+4] = {value:#010x}", offset % 32)
            }
        }
    }
}

impl fmt::Display for MmioCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let legacy = self.version() == TransportVersion::Legacy;
        writeln!(
            f,
            "{} device, transport version {}",
            self.device().name(),
            self.version().register_value()
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(
                f,
                "#{i} {}",
                op.describe(legacy, self.device() == DeviceKind::Block)
            )?;
        }
        Ok(())
    }
}

/// The block request type a `Chain` operation makes (see [`MmioOp::Chain`]).
pub fn block_request_type(req: u8, bufs: [u8; 4]) -> u32 {
    match req % 5 {
        0 => VIRTIO_BLK_T_IN,
        1 => VIRTIO_BLK_T_OUT,
        2 => VIRTIO_BLK_T_FLUSH,
        3 => VIRTIO_BLK_T_GET_ID,
        _ if bufs[1] >= 0xf0 && bufs[1] & 1 == 0 => VIRTIO_BLK_T_DISCARD,
        _ if bufs[1] >= 0xf0 => VIRTIO_BLK_T_WRITE_ZEROES,
        _ => 0x99,
    }
}

/// The segments (16 bytes each: le64 sector, le32 num_sectors, le32 flags; §5.2.6) of a
/// DISCARD or WRITE_ZEROES request made from `bufs`: `1 + (bufs[1] >> 1) % 8` of them (more
/// than a device's usual maximum of 4 half the time), segment k for sector `bufs[2] % 20 + k`
/// (past a 16-sector disk at times), `1 + bufs[3] % 4` sectors (`bufs[3] & 0x40`: 2000,
/// above the usual maximum), the UNMAP flag when `bufs[3] & 0x80`, an undefined flag bit
/// when `bufs[2] & 0x80` and `bufs[2] & 0x40`.
pub fn dwz_segments(bufs: [u8; 4]) -> Vec<u8> {
    let n = 1 + (bufs[1] as usize >> 1) % 8;
    let num: u32 = if bufs[3] & 0x40 != 0 {
        2000
    } else {
        1 + u32::from(bufs[3]) % 4
    };
    let mut flags = if bufs[3] & 0x80 != 0 {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    if bufs[2] & 0xc0 == 0xc0 {
        flags |= 4;
    }
    let mut out = Vec::with_capacity(16 * n);
    for k in 0..n as u64 {
        out.extend_from_slice(&(u64::from(bufs[2]) % 20 + k).to_le_bytes());
        out.extend_from_slice(&num.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
    }
    out
}

fn buf_len(b: u8) -> u32 {
    ((b & 0x7f) as u32 + 1) * 8
}

fn bad_size(size: u8, max: u32) -> u32 {
    [
        0,
        3,
        0x1_0010,
        1000,
        max.wrapping_mul(2),
        max.wrapping_add(1),
        u32::MAX,
        0x8000,
    ][size as usize & 7]
}

/// Side effects of one register write or configuration change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Interrupts raised.
    pub irqs: Vec<IrqEvent>,
    /// Device accesses to guest memory.
    pub accesses: Vec<MemoryAccess>,
}

/// What a driver observed from a target, compared by `diff_mmio`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obs {
    /// A register read returned these bytes (sentinel-prefilled).
    Read {
        /// Offset.
        off: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// An access failed.
    Failed {
        /// Offset (or `u64::MAX` for a configuration change).
        off: u64,
        /// The error's kind: `crashed`, `hung`, `unsupported`, `protocol`, `unavailable`.
        kind: &'static str,
    },
    /// Side effects of a write.
    Effects {
        /// Offset written.
        off: u64,
        /// The effects.
        effects: Effects,
    },
    /// The used ring's bytes after a notification.
    Used {
        /// The bytes (flags, idx, elements).
        bytes: Vec<u8>,
    },
}

/// Kind of a [`TargetError`] as a short name.
pub fn error_kind(e: &TargetError) -> &'static str {
    match e {
        TargetError::Unsupported(_) => "unsupported",
        TargetError::Crashed(_) => "crashed",
        TargetError::Hung(_) => "hung",
        TargetError::Protocol(_) => "protocol",
        TargetError::Unavailable(_) => "unavailable",
    }
}

/// Oracles that watch every access the driver makes (used by `mmio_regs`).
pub trait Hook<T: ?Sized> {
    /// After a successful register read of `data` at `off`.
    fn read(&mut self, _t: &mut T, _off: u64, _data: &[u8]) -> Result<(), Finding> {
        Ok(())
    }
    /// After a register write of `data` at `off` (also when it failed).
    fn write(&mut self, _t: &mut T, _off: u64, _data: &[u8], _fx: &Effects) -> Result<(), Finding> {
        Ok(())
    }
    /// Before a host-side configuration change.
    fn before_config(&mut self, _t: &mut T) {}
    /// After a host-side configuration change.
    fn config(&mut self, _t: &mut T, _fx: &Effects) -> Result<(), Finding> {
        Ok(())
    }
    /// A target access failed.
    fn error(&mut self, _e: &TargetError) -> Result<(), Finding> {
        Ok(())
    }
}

/// No oracles.
pub struct NoHook;
impl<T: ?Sized> Hook<T> for NoHook {}

/// The driver's model of what it set up.
#[derive(Debug, Clone)]
pub struct DriverState {
    legacy: bool,
    block: bool,
    ram: u64,
    status: u8,
    queue: Option<DriverQueue>,
    next_desc: u16,
}

/// Executes operations against a target, recording observations.
pub struct Exec<'a, T: Target, H: Hook<T>> {
    /// The target.
    pub t: &'a mut T,
    /// The oracles.
    pub hook: H,
    /// Observations since the last [`take_obs`](Self::take_obs) (only when recording).
    pub obs: Vec<Obs>,
    record: bool,
    /// Notifications go through [`Target::notify`] and the used ring is read after
    /// [`Target::settle`] (for targets whose device work runs outside the calls; see
    /// [`Exec::via_notify_and_settle`]).
    settle: bool,
    d: DriverState,
}

/// Most [`Target::settle`] calls after one notification: settling stops earlier once the used
/// index reads the same after two calls in a row.
pub const MAX_SETTLES: usize = 16;

impl<'a, T: Target, H: Hook<T>> Exec<'a, T, H> {
    /// A driver for `t` running `case`'s device; `record` keeps observations for a diff.
    pub fn new(t: &'a mut T, hook: H, case: &MmioCase, record: bool) -> Self {
        let ram = t.ram_size();
        Exec {
            t,
            hook,
            obs: Vec::new(),
            record,
            settle: false,
            d: DriverState {
                legacy: case.version() == TransportVersion::Legacy,
                block: case.device() == DeviceKind::Block,
                ram,
                status: 0,
                queue: None,
                next_desc: 0,
            },
        }
    }

    /// Sends notifications through [`Target::notify`] (a VMM may route them to ioeventfds) and,
    /// unless the target is [`synchronous`](Target::synchronous), calls
    /// [`Target::settle`] after each until the used index holds still (at most
    /// [`MAX_SETTLES`] times) before the used ring is read. Off by default: the in-tree
    /// targets write QueueNotify and are synchronous.
    pub fn via_notify_and_settle(mut self) -> Self {
        self.settle = true;
        self
    }

    /// Takes the observations recorded so far.
    pub fn take_obs(&mut self) -> Vec<Obs> {
        std::mem::take(&mut self.obs)
    }

    fn failed(&mut self, off: u64, e: TargetError) -> Result<(), Finding> {
        if self.record {
            self.obs.push(Obs::Failed {
                off,
                kind: error_kind(&e),
            });
        }
        self.hook.error(&e)
    }

    /// Register read of `w` bytes; a failed read gives 0.
    pub fn rd(&mut self, off: u64, w: usize) -> Result<u64, Finding> {
        let mut b = [SENTINEL; 8];
        let w = w.min(8);
        match self.t.read(off, &mut b[..w]) {
            Ok(()) => {
                if self.record {
                    self.obs.push(Obs::Read {
                        off,
                        bytes: b[..w].to_vec(),
                    });
                }
                self.hook.read(&mut *self.t, off, &b[..w])?;
                let mut v = [0u8; 8];
                v[..w].copy_from_slice(&b[..w]);
                Ok(u64::from_le_bytes(v))
            }
            Err(e) => {
                self.failed(off, e)?;
                Ok(0)
            }
        }
    }

    fn rd32(&mut self, off: u64) -> Result<u32, Finding> {
        Ok(self.rd(off, 4)? as u32)
    }

    fn effects(&mut self) -> Effects {
        Effects {
            irqs: self.t.take_interrupts(),
            accesses: self.t.take_accesses().unwrap_or_default(),
        }
    }

    /// Register write of the low `w` bytes of `value`.
    pub fn wr(&mut self, off: u64, w: usize, value: u64) -> Result<(), Finding> {
        let b = value.to_le_bytes();
        let w = w.min(8);
        let r = self.t.write(off, &b[..w]);
        let fx = self.effects();
        if let Err(e) = r {
            self.failed(off, e)?;
        }
        if self.record && fx != Effects::default() {
            self.obs.push(Obs::Effects {
                off,
                effects: fx.clone(),
            });
        }
        self.hook.write(&mut *self.t, off, &b[..w], &fx)
    }

    fn wr32(&mut self, off: u64, v: u32) -> Result<(), Finding> {
        self.wr(off, 4, v as u64)
    }

    /// Driver write to guest memory (errors, e.g. outside RAM, are ignored: a driver would not
    /// notice either).
    fn mem(&mut self, gpa: u64, data: &[u8]) {
        let _ = self.t.mem_write(gpa, data);
    }

    /// Settles the target until the used index of the queue last set up reads the same twice
    /// in a row, at most [`MAX_SETTLES`] times.
    fn settle_used(&mut self) -> Result<(), Finding> {
        let Some(used) = self.d.queue.as_ref().map(|dq| dq.used) else {
            return match self.t.settle() {
                Ok(()) => Ok(()),
                Err(e) => self.failed(QUEUE_NOTIFY, e),
            };
        };
        let mut last = None;
        for _ in 0..MAX_SETTLES {
            if let Err(e) = self.t.settle() {
                return self.failed(QUEUE_NOTIFY, e);
            }
            let mut idx = [0u8; 2];
            let now = self.t.mem_read(used + 2, &mut idx).ok().map(|_| idx);
            if now.is_some() && now == last {
                break;
            }
            last = now;
        }
        Ok(())
    }

    /// Executes one operation.
    pub fn op(&mut self, op: &MmioOp) -> Result<(), Finding> {
        match *op {
            MmioOp::Read { reg, width: w } => {
                self.rd(reg_offset(reg), width(w))?;
            }
            MmioOp::Write {
                reg,
                width: w,
                value,
            } => {
                let off = reg_offset(reg);
                self.wr(off, width(w), value as u64)?;
                if off == STATUS && width(w) == 4 {
                    self.d.status = value as u8;
                }
            }
            MmioOp::Status { step } => {
                let cur = self.d.status;
                let v = match step % 8 {
                    0..=3 => {
                        let next = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK]
                            .into_iter()
                            .find(|b| cur & b == 0)
                            .unwrap_or(0);
                        cur | next
                    }
                    4 => ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
                    5 => cur | FAILED,
                    6 => 0,
                    _ => step.rotate_right(3),
                };
                self.status(v)?;
            }
            MmioOp::Features { page, mode, bits } => {
                let page = if page < 0xf0 {
                    (page % 2) as u32
                } else {
                    page as u32
                };
                self.features_page(page, mode, bits)?;
            }
            MmioOp::Queue { sel, size, layout } => {
                let q = if sel < 0xf0 { 0 } else { (sel & 0xf) as u32 };
                self.queue_setup(q, size, layout)?;
            }
            MmioOp::Init { features, size } => self.init(features, size)?,
            MmioOp::Chain { bufs, n, knob, req } => self.chain(bufs, n, knob, req),
            MmioOp::Notify { queue } => {
                let q = if queue < 0xf0 {
                    0
                } else {
                    (queue & 0xf) as u32
                };
                if self.settle {
                    let r = self.t.notify(q);
                    let fx = self.effects();
                    if let Err(e) = r {
                        self.failed(QUEUE_NOTIFY, e)?;
                    }
                    if self.record && fx != Effects::default() {
                        self.obs.push(Obs::Effects {
                            off: QUEUE_NOTIFY,
                            effects: fx.clone(),
                        });
                    }
                    self.hook
                        .write(&mut *self.t, QUEUE_NOTIFY, &q.to_le_bytes(), &fx)?;
                    if !self.t.synchronous() {
                        self.settle_used()?;
                    }
                } else {
                    self.wr32(QUEUE_NOTIFY, q)?;
                }
                if self.record {
                    if let Some(dq) = &self.d.queue {
                        let n = (4 + 8 * dq.size as u64).min(MAX_USED_BYTES) as usize;
                        let mut bytes = vec![0u8; n];
                        if self.t.mem_read(dq.used, &mut bytes).is_ok() {
                            self.obs.push(Obs::Used { bytes });
                        }
                    }
                }
            }
            MmioOp::Ring { field, value } => self.ring(field, value),
            MmioOp::Ack { mask } => {
                let v = self.rd32(INTERRUPT_STATUS)?;
                let ack = if mask < 0xf0 { v } else { (mask & 0xf) as u32 };
                self.wr32(INTERRUPT_ACK, ack)?;
                self.rd32(INTERRUPT_STATUS)?;
            }
            MmioOp::Reset => {
                self.status(0)?;
                self.rd32(STATUS)?;
                self.rd32(INTERRUPT_STATUS)?;
                self.wr32(QUEUE_SEL, 0)?;
                self.rd32(if self.d.legacy {
                    QUEUE_PFN
                } else {
                    QUEUE_READY
                })?;
            }
            MmioOp::Config { offset, value } => {
                self.hook.before_config(&mut *self.t);
                let r = self
                    .t
                    .config_change((offset % 32) as u64, &value.to_le_bytes());
                let fx = self.effects();
                if let Err(e) = r {
                    self.failed(u64::MAX, e)?;
                }
                if self.record && fx != Effects::default() {
                    self.obs.push(Obs::Effects {
                        off: u64::MAX,
                        effects: fx.clone(),
                    });
                }
                self.hook.config(&mut *self.t, &fx)?;
            }
        }
        Ok(())
    }

    fn status(&mut self, v: u8) -> Result<(), Finding> {
        self.wr32(STATUS, v as u32)?;
        self.d.status = v;
        if v == 0 {
            self.d.queue = None;
        }
        Ok(())
    }

    fn features_page(&mut self, page: u32, mode: u8, bits: u32) -> Result<(), Finding> {
        self.wr32(DEVICE_FEATURES_SEL, page)?;
        let offered = self.rd32(DEVICE_FEATURES)?;
        let v = match mode % 8 {
            0..=3 => offered,
            4 | 5 => offered & bits,
            6 => bits,
            _ => offered | 1 << (bits % 32),
        };
        self.wr32(DRIVER_FEATURES_SEL, page)?;
        self.wr32(DRIVER_FEATURES, v)
    }

    fn init(&mut self, features: u8, size: u8) -> Result<(), Finding> {
        self.status(0)?;
        self.status(ACKNOWLEDGE)?;
        self.status(ACKNOWLEDGE | DRIVER)?;
        let mut mask: u64 = bit(VIRTIO_F_VERSION_1);
        if features & 1 != 0 {
            mask |= bit(VIRTIO_F_EVENT_IDX);
        }
        if features & 2 != 0 {
            mask |= bit(VIRTIO_F_INDIRECT_DESC);
        }
        if features & 4 != 0 {
            mask |= bit(VIRTIO_F_RING_RESET);
        }
        if features & 8 != 0 {
            mask |= 0xff_ffff;
        }
        if features == 0xff {
            mask &= !bit(VIRTIO_F_VERSION_1);
        }
        let pages = if self.d.legacy { 1 } else { 2 };
        for page in 0..pages {
            self.wr32(DEVICE_FEATURES_SEL, page)?;
            let offered = self.rd32(DEVICE_FEATURES)?;
            self.wr32(DRIVER_FEATURES_SEL, page)?;
            self.wr32(DRIVER_FEATURES, offered & (mask >> (32 * page)) as u32)?;
        }
        let mut s = ACKNOWLEDGE | DRIVER;
        if !self.d.legacy {
            s |= FEATURES_OK;
            self.status(s)?;
            self.rd32(STATUS)?;
        }
        self.queue_setup(0, size, 0)?;
        self.status(s | DRIVER_OK)
    }

    fn queue_setup(&mut self, q: u32, size: u8, layout: u8) -> Result<(), Finding> {
        self.wr32(QUEUE_SEL, q)?;
        let max = self.rd32(QUEUE_NUM_MAX)?;
        let num = if size < 0xf0 {
            let mut k = size % 9;
            while k > 0 && (1u32 << k) > max {
                k -= 1;
            }
            1u32 << k
        } else {
            bad_size(size, max)
        };
        let knob = (layout >= 0xe0).then_some(layout & 7);
        let n = num as u16 as u64;
        // Zero the ring area first, as a driver allocating fresh rings does.
        let footprint = 2 * 4096 + 16 * n + 8 * n + 64;
        let zeros = vec![0u8; footprint.min(0x6000) as usize];
        self.mem(RING_BASE, &zeros);
        if self.d.legacy {
            let page = match knob {
                Some(0) => 0,
                Some(6) => u32::MAX,
                _ => 4096,
            };
            let align = match knob {
                Some(1) => 0,
                Some(2) => 3,
                Some(3) => 1,
                _ => 4096,
            };
            let pfn = match knob {
                Some(4) => (self.d.ram / 4096) as u32,
                Some(5) | Some(6) => u32::MAX,
                _ => (RING_BASE / 4096) as u32,
            };
            self.wr32(GUEST_PAGE_SIZE, page)?;
            self.wr32(QUEUE_NUM, num)?;
            self.wr32(QUEUE_ALIGN, align)?;
            self.wr32(QUEUE_PFN, pfn)?;
            self.d.queue =
                (pfn as u64 == RING_BASE / 4096 && page == 4096 && align.is_power_of_two())
                    .then(|| DriverQueue::legacy(pfn, 4096, num as u16, align));
        } else {
            let mut dq = DriverQueue::modern(RING_BASE, num as u16);
            match knob {
                Some(0) => dq.desc += 8,
                Some(1) => dq.avail = self.d.ram - 2,
                Some(2) => dq.used = 1 << 40,
                Some(3) => dq.used += 2,
                Some(4) => dq.desc |= 1 << 36,
                // Valid placements at the very top of RAM: the area ends at its last byte.
                Some(5) => dq.avail = self.d.ram.saturating_sub(6 + 2 * n),
                Some(6) => dq.desc = self.d.ram.saturating_sub(16 * n),
                _ => {}
            }
            self.wr32(QUEUE_NUM, num)?;
            for (lo, v) in [
                (QUEUE_DESC_LOW, dq.desc),
                (QUEUE_DRIVER_LOW, dq.avail),
                (QUEUE_DEVICE_LOW, dq.used),
            ] {
                self.wr32(lo, v as u32)?;
                self.wr32(lo + 4, (v >> 32) as u32)?;
            }
            self.wr32(QUEUE_READY, 1)?;
            let sane = dq.desc < self.d.ram && dq.avail < self.d.ram && dq.used < self.d.ram;
            self.d.queue = sane.then_some(dq);
        }
        self.d.next_desc = 0;
        Ok(())
    }

    fn ring(&mut self, field: u8, value: u16) {
        let Some(mut dq) = self.d.queue.clone() else {
            return;
        };
        let mut m = TargetMemory(&mut *self.t);
        let _ = match field % 4 {
            0 => dq.set_avail_flags(&mut m, value & 1),
            1 => dq.set_used_event(&mut m, value),
            2 => dq.set_avail_idx(&mut m, value),
            _ => {
                let slot = (value % dq.size.max(1)) as u64;
                m.0.mem_write(dq.avail + 4 + 2 * slot, &(value >> 8).to_le_bytes())
            }
        };
        self.d.queue = Some(dq);
    }

    fn chain(&mut self, bufs: [u8; 4], n: u8, knob: u8, req: u8) {
        let Some(mut dq) = self.d.queue.clone() else {
            return;
        };
        let size = dq.size.max(1);
        let corruption = (knob >= 0xe0).then(|| (knob - 0xe0) as usize % CHAIN_CORRUPTIONS.len());
        let is = |name: &str| corruption.is_some_and(|c| CHAIN_CORRUPTIONS[c] == name);
        // (len, writable) per buffer, and the bytes of the first readable one.
        let mut parts: Vec<(u32, bool)> = Vec::new();
        let mut header = None;
        let mut segments = None;
        if self.d.block {
            let kind = block_request_type(req, bufs);
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&((req / 5 % 8) as u64).to_le_bytes());
            header = Some(h);
            parts.push((16, false));
            match kind {
                VIRTIO_BLK_T_OUT => parts.push((buf_len(bufs[0]), false)),
                VIRTIO_BLK_T_FLUSH => {}
                VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                    let seg = dwz_segments(bufs);
                    parts.push((seg.len() as u32, false));
                    segments = Some(seg);
                }
                _ => parts.push((buf_len(bufs[0]), true)),
            }
            parts.push((1, true));
        } else {
            let n = 1 + n as usize % 4;
            parts = bufs[..n]
                .iter()
                .map(|&b| (buf_len(b), b & 0x80 != 0))
                .collect();
            parts.sort_by_key(|p| p.1);
        }
        if is("writable-before-readable") && parts.len() >= 2 {
            let last = parts.len() - 1;
            parts.swap(0, last);
            parts[0].1 = true;
            parts[last].1 = false;
        }
        let mut descs: Vec<Descriptor> = parts
            .iter()
            .enumerate()
            .map(|(p, &(len, w))| Descriptor {
                addr: DATA + p as u64 * SLOT,
                len,
                flags: if w { VIRTQ_DESC_F_WRITE } else { 0 },
                next: 0,
            })
            .collect();
        let j = req as usize % descs.len();
        let ram = self.d.ram;
        match corruption.map(|c| CHAIN_CORRUPTIONS[c]) {
            Some("zero-length") => descs[j].len = 0,
            Some("buffer-at-end-of-ram") => descs[j].addr = ram - descs[j].len as u64,
            Some("buffer-past-end-of-ram") => descs[j].addr = ram - descs[j].len as u64 + 1,
            Some("huge-length") => descs[j].len = 0xffff_f000,
            _ => {}
        }
        if let Some(h) = header {
            self.mem(DATA, &h);
        }
        if let Some(seg) = segments {
            self.mem(DATA + SLOT, &seg);
        }
        let mut m = TargetMemory(&mut *self.t);
        let head;
        if is("indirect-table") {
            // One indirect descriptor pointing at a table holding the whole chain.
            for (i, d) in descs.iter_mut().enumerate() {
                if i + 1 < parts.len() {
                    d.flags |= VIRTQ_DESC_F_NEXT;
                    d.next = i as u16 + 1;
                }
                let _ = DriverQueue::write_descriptor_at(&mut m, INDIRECT_TABLE, i as u16, d);
            }
            head = self.d.next_desc % size;
            self.d.next_desc = self.d.next_desc.wrapping_add(1);
            let ptr = Descriptor {
                addr: INDIRECT_TABLE,
                len: 16 * descs.len() as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            };
            let _ = dq.write_descriptor(&mut m, head, &ptr);
        } else {
            descs.truncate(size as usize);
            let ix: Vec<u16> = (0..descs.len() as u16)
                .map(|i| self.d.next_desc.wrapping_add(i) % size)
                .collect();
            self.d.next_desc = self.d.next_desc.wrapping_add(descs.len() as u16);
            let last = descs.len() - 1;
            for i in 0..descs.len() {
                if i < last {
                    descs[i].flags |= VIRTQ_DESC_F_NEXT;
                    descs[i].next = ix[i + 1];
                }
            }
            if is("loop") {
                descs[last].flags |= VIRTQ_DESC_F_NEXT;
                descs[last].next = ix[0];
            }
            if is("next-out-of-range") {
                descs[last].flags |= VIRTQ_DESC_F_NEXT;
                descs[last].next = size.wrapping_add(req as u16 % 4);
            }
            for (i, d) in descs.iter().enumerate() {
                let _ = dq.write_descriptor(&mut m, ix[i], d);
            }
            head = ix[0];
        }
        let published = if is("head-out-of-range") {
            size.wrapping_add(req as u16)
        } else {
            head
        };
        let _ = dq.publish(&mut m, &[published]);
        self.d.queue = Some(dq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips() {
        let case = MmioCase {
            header: MmioHeader { flags: 3 },
            ops: vec![
                MmioOp::Read { reg: 5, width: 1 },
                MmioOp::Write {
                    reg: 0x8123,
                    width: 7,
                    value: 0xdead_beef,
                },
                MmioOp::Status { step: 9 },
                MmioOp::Features {
                    page: 1,
                    mode: 6,
                    bits: 77,
                },
                MmioOp::Queue {
                    sel: 0xf1,
                    size: 0xf2,
                    layout: 0xe3,
                },
                MmioOp::Init {
                    features: 3,
                    size: 4,
                },
                MmioOp::Chain {
                    bufs: [1, 2, 3, 4],
                    n: 5,
                    knob: 0xe1,
                    req: 7,
                },
                MmioOp::Notify { queue: 0 },
                MmioOp::Ring {
                    field: 1,
                    value: 300,
                },
                MmioOp::Ack { mask: 0 },
                MmioOp::Reset,
                MmioOp::Config {
                    offset: 3,
                    value: 0x1234_5678,
                },
            ],
        };
        assert_eq!(decode_mmio(&case.encode()), case);
    }

    #[test]
    fn reg_selector_inverts_reg_offset() {
        for off in KNOWN_REGS {
            assert_eq!(reg_offset(reg_selector(off)), off);
        }
        assert_eq!(reg_offset(reg_selector(0x1f3)), 0x1f3);
    }
}
