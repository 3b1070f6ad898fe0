//! `queue_chain`: structured descriptor chains through the reference [`SplitQueue`] and
//! rust-vmm's `virtio-queue` 0.18, over the same rings in one small guest memory that both
//! queues share (so both see identical bytes at every step).
//!
//! # Input
//!
//! A [`QcHeader`] (queue size, EVENT_IDX, INDIRECT_DESC, what to do after a malformed chain,
//! start index near the 16-bit wrap) and then [`QcOp`]s until the bytes run out (at most
//! [`MAX_OPS`]). Chains are valid by default; a chain's `knob` byte selects one rare
//! [`Corruption`] (1 in 8), and a kick's `knob` rarely makes `avail.idx` jump.
//!
//! # What runs
//!
//! The driver side (this module) lays out descriptors, indirect tables and the available ring
//! in guest memory. A kick pops every available chain from both queues; for each chain the
//! reference's is handed to a [`BufferFiller`] that writes into its device-writable buffers
//! (as the entropy device would, from a fixed table instead of a ChaCha stream), and both
//! queues `add_used` the head with the number of bytes written. After the kick the reference
//! publishes `avail_event` and decides whether to notify. The end of the input is one more kick
//! (reported as the operation after the last one).
//!
//! # Oracles
//!
//! - no panic; bounded work (a step [`Budget`] per kick, and no more pops than entries made
//!   available);
//! - every recorded access of the reference lies inside guest memory and inside what the phase
//!   may touch: reads of the descriptor table, the available ring and the indirect tables of
//!   the chain; writes only into the chain's device-writable buffers (VQ-DEV-03) and the used
//!   ring (`avail_event` only with EVENT_IDX); the descriptor table (VQ-DEV-05) and the
//!   available ring (VQ-DEV-22) are never written;
//! - used elements name a head that was made available and is outstanding (VQ-DEV-17), with a
//!   length no larger than the chain's writable bytes (VQ-DEV-15), and `used.idx` advances by
//!   one per element across the 16-bit wrap (VQ-DEV-21);
//! - notification suppression follows §2.7.7.2 exactly (VQ-DEV-09/10 without EVENT_IDX,
//!   VQ-DEV-12/13 with it);
//! - differential: the chains yielded (head, then `addr`, `len`, `flags` of every descriptor)
//!   and the consumed available entries agree with `virtio-queue`, unless the reference
//!   rejected the chain for a fault listed in [`JUSTIFIED_DIFFERENCES`] *and* that fault is
//!   really present in guest memory at the point where the reference stopped, with
//!   `virtio-queue` agreeing on everything before it. `virtio-queue` returning the same used
//!   element must leave the used ring the reference wrote unchanged, byte for byte.

use super::buffer_filler::BufferFiller;
use super::encode::{variant, Encode};
use super::Finding;
use arbitrary::Arbitrary;
use std::cell::RefCell;
use std::fmt;
use virtio_queue::{Queue, QueueT};
use virtio_reference_device::queue::MAX_INDIRECT_ENTRIES;
use virtio_reference_device::regs::{
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use virtio_reference_device::{
    AccessKind, Budget, Descriptor, GuestRam, MemoryAccess, Mutant, QueueError, SplitQueue,
};

const TARGET: &str = "queue_chain";

/// Bytes of guest memory (at guest physical address 0) each side gets.
pub const RAM_SIZE: u64 = 0x2000;
/// Guest physical address of the descriptor table (16 entries at most).
pub const DESC_TABLE: u64 = 0x100;
/// Guest physical address of the available ring.
pub const AVAIL_RING: u64 = 0x200;
/// Guest physical address of the used ring.
pub const USED_RING: u64 = 0x240;
/// Indirect table of the descriptor with index `d` lives at `INDIRECT_TABLES + d * 0x80`.
pub const INDIRECT_TABLES: u64 = 0x400;
/// Buffer number `p` of a chain lives at `DATA + p * 0x80` (at most 128 bytes each).
pub const DATA: u64 = 0xc00;
/// Upper bound on operations decoded from one input.
pub const MAX_OPS: usize = 32;
/// Descriptor reads the reference may spend on one kick.
pub const KICK_BUDGET: u64 = 2048;
/// Upper bound on buffers per chain.
pub const MAX_BUFS: usize = 8;
const STRIDE: u64 = 0x80;
const TRACE_LIMIT: usize = 96;
/// Bytes per bit of a [`Blocks`] set.
const BLOCK: u64 = 64;
const _: () = assert!(RAM_SIZE == 128 * BLOCK);

/// A set of 64-byte blocks of the guest memory (bit `i`: bytes `[64 i, 64 i + 64)`), for
/// what was written since a point: zeroing only those blocks moves far fewer bytes than one
/// span from the lowest to the highest address written.
type Blocks = u128;

/// The blocks `len` bytes at `gpa` touch (clamped to guest memory).
fn blocks(gpa: u64, len: u64) -> Blocks {
    let (lo, hi) = (gpa.min(RAM_SIZE), gpa.saturating_add(len).min(RAM_SIZE));
    if lo >= hi {
        return 0;
    }
    let (first, last) = (lo / BLOCK, (hi - 1) / BLOCK);
    ones(last - first + 1) << first
}

/// The lowest `n` bits set (`n` <= 128).
fn ones(n: u64) -> Blocks {
    if n >= 128 {
        Blocks::MAX
    } else {
        (1 << n) - 1
    }
}

/// The `[start, end)` byte ranges of the runs of consecutive blocks in `set`, lowest first.
fn block_runs(mut set: Blocks) -> impl Iterator<Item = (u64, u64)> {
    std::iter::from_fn(move || {
        if set == 0 {
            return None;
        }
        let start = u64::from(set.trailing_zeros());
        let len = u64::from((set >> start).trailing_ones());
        set &= !(ones(len) << start);
        Some((start * BLOCK, (start + len) * BLOCK))
    })
}

/// Bytes from [`USED_RING`] that `virtio-queue` may write (a used ring of up to 16 entries
/// and `avail_event`): its writes are not in the access log, so no written set records them.
const USED_RING_BYTES: u64 = 4 + 8 * 16 + 2;
const VQ_LIMIT: usize = 96;

/// First bytes of an input: the queue configuration.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QcHeader {
    /// Bits 0..=2: queue size `1 << min(v, 4)`; bit 3: VIRTIO_F_EVENT_IDX; bit 4:
    /// VIRTIO_F_INDIRECT_DESC; bit 5: after a malformed chain return it with `len` 0 and go on
    /// (otherwise stop, as a device entering DEVICE_NEEDS_RESET does); bit 6: start both ring
    /// indices just below the 16-bit wrap.
    pub flags: u8,
    /// With bit 6 of `flags`: the start index is `0 - 1 - start % 32` (mod 2^16).
    pub start: u8,
}

/// One chain the driver lays out and makes available.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainSpec {
    /// Number of buffers: `1 + n % 8`.
    pub n: u8,
    /// Per buffer: bit 7 = device-writable, bits 0..=6 = length - 1 (1..=128 bytes).
    /// Readable buffers are put first unless the corruption says otherwise.
    pub bufs: [u8; MAX_BUFS],
    /// Bit 7: with INDIRECT_DESC negotiated, put buffers from `(v & 0x7f) % n` on into one
    /// indirect table (the direct part is capped below the queue size).
    pub indirect: u8,
    /// `0..=0xdf`: a valid chain; `0xe0..`: one [`Corruption`].
    pub knob: u8,
    /// Parameter of the corruption (which buffer, how far out).
    pub arg: u8,
}

/// One driver operation.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QcOp {
    /// Lay out a chain and make it available (kicking first if the table is full).
    Chain(ChainSpec),
    /// Available-buffer notification: the device processes everything available. A knob
    /// `>= 0xf000` first moves `avail.idx` ahead by `knob & 0xfff` without filling the ring
    /// (a driver error when it runs past the queue size).
    Kick(u16),
    /// Sets (`true`) or clears `VIRTQ_AVAIL_F_NO_INTERRUPT` in `avail.flags`.
    NoInterrupt(bool),
    /// Sets `used_event` to the driver's used index plus this value.
    UsedEvent(u8),
}

const QC_OP_VARIANTS: u32 = 4;

/// A rare invalid (or edge) knob applied to one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The last descriptor links back to the first (a loop, §2.7.5.2).
    Loop,
    /// The last descriptor has NEXT with a `next` at or past the table length.
    NextOutOfRange,
    /// A buffer ends exactly at the end of guest memory (valid: an edge case).
    AddrAtEnd,
    /// A buffer runs past the end of guest memory.
    AddrPastEnd,
    /// A buffer's `addr + len` overflows 64 bits.
    AddrLenOverflow,
    /// A buffer of length 0 (the spec is silent; the reference accepts it).
    ZeroLength,
    /// The indirect table length is 0 or not a multiple of 16.
    OddIndirectLen,
    /// An indirect table entry is itself indirect.
    NestedIndirect,
    /// A device-writable buffer comes before a readable one (§2.7.4.2).
    WritableBeforeReadable,
    /// The indirect descriptor also has NEXT.
    IndirectWithNext,
    /// The available ring names a head at or past the queue size.
    HeadOutOfRange,
    /// An indirect table even when VIRTIO_F_INDIRECT_DESC was not negotiated.
    ForceIndirect,
    /// A buffer of almost 4 GiB.
    HugeLen,
    /// The indirect table ends exactly at the end of guest memory (valid: an edge case).
    IndirectTableAtEnd,
}

impl Corruption {
    /// Every corruption, in knob order.
    pub const ALL: [Corruption; 14] = [
        Corruption::Loop,
        Corruption::NextOutOfRange,
        Corruption::AddrAtEnd,
        Corruption::AddrPastEnd,
        Corruption::AddrLenOverflow,
        Corruption::ZeroLength,
        Corruption::OddIndirectLen,
        Corruption::NestedIndirect,
        Corruption::WritableBeforeReadable,
        Corruption::IndirectWithNext,
        Corruption::HeadOutOfRange,
        Corruption::ForceIndirect,
        Corruption::HugeLen,
        Corruption::IndirectTableAtEnd,
    ];

    /// The corruption a chain knob selects, `None` for a valid chain.
    pub fn from_knob(knob: u8) -> Option<Corruption> {
        (knob >= 0xe0).then(|| Corruption::ALL[(knob - 0xe0) as usize % Corruption::ALL.len()])
    }

    /// The knob value that selects `self`.
    pub fn knob(self) -> u8 {
        let i = Corruption::ALL.iter().position(|&c| c == self).unwrap_or(0);
        0xe0 + i as u8
    }

    fn needs_indirect(self) -> bool {
        matches!(
            self,
            Corruption::OddIndirectLen
                | Corruption::NestedIndirect
                | Corruption::IndirectWithNext
                | Corruption::ForceIndirect
                | Corruption::IndirectTableAtEnd
        )
    }
}

/// The queue configuration a header decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QcConfig {
    /// Queue size in entries (1, 2, 4, 8 or 16).
    pub size: u16,
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
    /// Malformed chains are returned with `len` 0 and processing goes on; otherwise the
    /// queue stops for the rest of the case.
    pub skip_malformed: bool,
    /// Initial value of both ring indices.
    pub start: u16,
}

impl From<QcHeader> for QcConfig {
    fn from(h: QcHeader) -> Self {
        QcConfig {
            size: 1 << (h.flags & 7).min(4),
            event_idx: h.flags & 8 != 0,
            indirect: h.flags & 16 != 0,
            skip_malformed: h.flags & 32 != 0,
            start: if h.flags & 64 != 0 {
                0u16.wrapping_sub(1 + (h.start % 32) as u16)
            } else {
                0
            },
        }
    }
}

/// A decoded `queue_chain` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueChainCase {
    /// The raw header.
    pub header: QcHeader,
    /// The operations, in order.
    pub ops: Vec<QcOp>,
}

impl QueueChainCase {
    /// The configuration the header selects.
    pub fn config(&self) -> QcConfig {
        self.header.into()
    }

    /// The bytes that decode to this case (used to write seed corpora).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.header.flags.encode(&mut out);
        self.header.start.encode(&mut out);
        for op in &self.ops {
            match op {
                QcOp::Chain(c) => {
                    variant(&mut out, 0, QC_OP_VARIANTS);
                    c.n.encode(&mut out);
                    c.bufs.encode(&mut out);
                    c.indirect.encode(&mut out);
                    c.knob.encode(&mut out);
                    c.arg.encode(&mut out);
                }
                QcOp::Kick(k) => {
                    variant(&mut out, 1, QC_OP_VARIANTS);
                    k.encode(&mut out);
                }
                QcOp::NoInterrupt(b) => {
                    variant(&mut out, 2, QC_OP_VARIANTS);
                    b.encode(&mut out);
                }
                QcOp::UsedEvent(v) => {
                    variant(&mut out, 3, QC_OP_VARIANTS);
                    v.encode(&mut out);
                }
            }
        }
        out
    }
}

/// Decodes `data` leniently: every byte string is a case (missing bytes read as zeros).
///
/// The same mapping as the derived `Arbitrary` impls of [`QcHeader`] and [`QcOp`] (integers
/// little-endian and zero-padded, `bool` the low bit of a byte, the variant from a `u32` `x`
/// as `(x * 4) >> 32`; pinned by a test against `arbitrary`), written out by hand: through
/// `Unstructured` every byte costs a call and several traced comparisons, which made decoding
/// a twentieth of the fuzz target's time.
pub fn decode_queue_chain(data: &[u8]) -> QueueChainCase {
    let mut r = ByteReader { data, pos: 0 };
    let header = QcHeader {
        flags: r.u8(),
        start: r.u8(),
    };
    let mut ops = Vec::with_capacity(MAX_OPS.min(data.len() / 2 + 1));
    while r.pos < data.len() && ops.len() < MAX_OPS {
        let x = r.u32();
        ops.push(match (x as u64 * QC_OP_VARIANTS as u64) >> 32 {
            0 => {
                let n = r.u8();
                let mut bufs = [0u8; MAX_BUFS];
                for b in &mut bufs {
                    *b = r.u8();
                }
                QcOp::Chain(ChainSpec {
                    n,
                    bufs,
                    indirect: r.u8(),
                    knob: r.u8(),
                    arg: r.u8(),
                })
            }
            1 => QcOp::Kick(r.u16()),
            2 => QcOp::NoInterrupt(r.u8() & 1 == 1),
            _ => QcOp::UsedEvent(r.u8()),
        });
    }
    QueueChainCase { header, ops }
}

/// Reads the input front to back; past the end every byte reads as 0.
struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl ByteReader<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

impl fmt::Display for QueueChainCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.config();
        let mut feats = Vec::new();
        if c.event_idx {
            feats.push("EVENT_IDX");
        }
        if c.indirect {
            feats.push("INDIRECT_DESC");
        }
        writeln!(
            f,
            "queue_chain: queue size {}, features [{}], malformed chains: {}, start index {}",
            c.size,
            feats.join(", "),
            if c.skip_malformed {
                "returned with len 0"
            } else {
                "stop the queue"
            },
            c.start
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            write!(f, "#{i} ")?;
            match op {
                QcOp::Chain(s) => {
                    let n = 1 + s.n as usize % MAX_BUFS;
                    let bufs: Vec<String> = s.bufs[..n]
                        .iter()
                        .map(|b| {
                            format!(
                                "{}{}",
                                if b & 0x80 != 0 { "W" } else { "R" },
                                (b & 0x7f) as u32 + 1
                            )
                        })
                        .collect();
                    write!(f, "chain [{}]", bufs.join(" "))?;
                    if s.indirect & 0x80 != 0 {
                        write!(
                            f,
                            " indirect from buffer {}",
                            (s.indirect & 0x7f) as usize % n
                        )?;
                    }
                    if let Some(k) = Corruption::from_knob(s.knob) {
                        write!(f, " corruption {k:?} (arg {})", s.arg)?;
                    }
                }
                QcOp::Kick(k) if *k >= 0xf000 => {
                    write!(f, "avail.idx jumps by {}, then kick", k & 0xfff)?
                }
                QcOp::Kick(_) => write!(f, "kick")?,
                QcOp::NoInterrupt(b) => write!(f, "avail.flags NO_INTERRUPT = {}", *b as u8)?,
                QcOp::UsedEvent(v) => write!(f, "used_event = driver used index + {v}")?,
            }
            writeln!(f)?;
        }
        writeln!(f, "#{} kick (end of input)", self.ops.len())
    }
}

/// A difference between the reference and `virtio-queue` 0.18 that the spec justifies: the
/// reference rejects a chain the driver must not build, where `virtio-queue` carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JustifiedDifference {
    /// The reference's [`QueueError`] variant.
    pub error: &'static str,
    /// Spec section (VIRTIO 1.2/1.3 numbering) of the rule the chain breaks.
    pub section: &'static str,
    /// What the reference does.
    pub reference: &'static str,
    /// What `virtio-queue` does.
    pub virtio_queue: &'static str,
}

/// The only differences the differential oracle accepts. Each applies only when the fault is
/// verified in guest memory at the descriptor where the reference stopped, and both agree on
/// every descriptor before it.
pub const JUSTIFIED_DIFFERENCES: &[JustifiedDifference] = &[
    JustifiedDifference {
        error: "HeadOutOfRange",
        section: "2.7.6 / 2.7.5 (SPLIT-DEV-MALFORMED-CHAIN)",
        reference: "rejects an available entry that names a descriptor index at or past the queue size",
        virtio_queue: "yields an empty chain for it",
    },
    JustifiedDifference {
        error: "NextOutOfRange",
        section: "2.7.5 (SPLIT-DEV-MALFORMED-CHAIN)",
        reference: "rejects a chain whose `next` is at or past the length of its table",
        virtio_queue: "ends the chain silently before the bad index",
    },
    JustifiedDifference {
        error: "ChainTooLong",
        section: "2.7.5.2 (no loops) / 2.7.5.3.1 (no chain longer than the queue size); VQ-DEV-02",
        reference: "rejects a chain with more descriptors than its table (a loop)",
        virtio_queue: "yields table-size descriptors and then stops",
    },
    JustifiedDifference {
        error: "AddrLenOverflow",
        section: "2.7.5 (buffers are guest physical ranges); 2.7.5.2 (chain at most 2^32 bytes)",
        reference: "rejects a buffer whose addr + len overflows 64 bits",
        virtio_queue: "yields it unchecked, or stops when the chain's byte count overflows 32 bits",
    },
    JustifiedDifference {
        error: "BufferOutOfMemory",
        section: "2.7.5 (buffers are guest physical ranges; SPLIT-DEV-MALFORMED-CHAIN)",
        reference: "rejects a buffer or indirect table not inside guest memory",
        virtio_queue: "yields the descriptor unchecked (its Reader/Writer fail later), or reads an indirect table until memory ends",
    },
    JustifiedDifference {
        error: "ReadableAfterWritable",
        section: "2.7.4.2 (VQ-DRV-02)",
        reference: "rejects a device-readable descriptor after a device-writable one",
        virtio_queue: "yields it",
    },
    JustifiedDifference {
        error: "IndirectNotNegotiated",
        section: "2.7.5.3.1 (VQ-DRV-06)",
        reference: "rejects VIRTQ_DESC_F_INDIRECT when VIRTIO_F_INDIRECT_DESC was not negotiated",
        virtio_queue: "has no negotiation knob and follows the table",
    },
    JustifiedDifference {
        error: "NestedIndirect",
        section: "2.7.5.3.1 (VQ-DRV-06)",
        reference: "rejects VIRTQ_DESC_F_INDIRECT inside an indirect table",
        virtio_queue: "ends the chain silently",
    },
    JustifiedDifference {
        error: "IndirectWithNext",
        section: "2.7.5.3.1 (VQ-DRV-06)",
        reference: "rejects VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT",
        virtio_queue: "ignores NEXT and follows the table",
    },
    JustifiedDifference {
        error: "IndirectTableLength",
        section: "2.7.5.3 (a table of 16-byte descriptors); 2.7.5.3.1 (no chain longer than the queue size)",
        reference: "rejects an indirect table length that is 0, not a multiple of 16, or more entries than the queue size",
        virtio_queue: "ends the chain silently (a zero-length table yields nothing), and accepts tables of up to 65535 entries",
    },
    JustifiedDifference {
        error: "NoInterruptIgnored",
        section: "2.7.7.2 (VQ-DEV-09 is a SHOULD NOT)",
        reference: "without EVENT_IDX honours VIRTQ_AVAIL_F_NO_INTERRUPT and does not notify",
        virtio_queue: "always asks for a notification without EVENT_IDX (NO_INTERRUPT is not supported)",
    },
];

fn justified(error: &str) -> Option<&'static JustifiedDifference> {
    JUSTIFIED_DIFFERENCES.iter().find(|j| j.error == error)
}

/// Runs `data` against the reference queue, or against the mutant pinned with
/// [`MUTANT_ENV`](super::MUTANT_ENV). This is the body of the `queue_chain` fuzz target.
pub fn queue_chain(data: &[u8]) -> Result<(), Finding> {
    queue_chain_on(data, super::pinned_mutant())
}

/// Runs `data` with `mutant` injected into the queue (and the backend), `None` for the
/// reference. Returns the first oracle that fired.
pub fn queue_chain_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    let case = decode_queue_chain(data);
    // The guest memories and their wrappers are reused for every case (a fresh mapping costs
    // mmap, munmap and page faults): only the blocks the last case wrote are zeroed.
    let mut pool = match POOL.with(|p| p.borrow_mut().take()) {
        Some(p) => p,
        None => Pool::new()
            .ok_or_else(|| Finding::new(TARGET, "harness", &[], "cannot allocate guest memory"))?,
    };
    let result = pool.run(&case, mutant);
    POOL.with(|p| *p.borrow_mut() = Some(pool));
    result
}

/// The guest memory both queues work on, reused across cases.
///
/// One vm-memory mapping holds the bytes: the reference and the driver reach it through a
/// [`GuestRam`] (recording on; the driver's accesses go through [`as_driver`], with recording
/// off), `virtio-queue` through the mapping itself ([`GuestRam::memory`]). So both queues see the same bytes at
/// every step, with nothing to copy: the driver writes once, the backend's writes into
/// device-writable buffers are visible to both (a buffer may overlap a later chain's indirect
/// table), and `virtio-queue` writes its used element over the reference's, which must leave
/// the used ring unchanged byte for byte ([`Run::add_used_both`]).
struct Pool {
    /// The guest memory (recording on, except for the driver's accesses: [`as_driver`]).
    ram: GuestRam,
    /// What any side may have written since the memory was last zero.
    written: Blocks,
    /// The driver's bookkeeping and the scratch vectors, reset by each [`Run`] and kept
    /// across cases so that a case allocates almost nothing.
    drv: Driver,
    scratch: Scratch,
}

/// Vectors a [`Run`] refills as it goes, kept across chains and cases.
#[derive(Default)]
struct Scratch {
    /// Indirect tables of the chain popped last.
    tables: Vec<(u64, u64)>,
    /// `virtio-queue`'s chain.
    vbuf: Vec<Descriptor>,
    readable: Vec<(u64, u64)>,
    writable: Vec<(u64, u64)>,
    reads: Vec<(u64, u64)>,
    /// The driver-side walk of the chain popped last ([`walk`]).
    steps: Vec<Step>,
}

impl Pool {
    fn new() -> Option<Pool> {
        let mut ram = GuestRam::anonymous(RAM_SIZE).ok()?;
        ram.set_recording(true);
        Some(Pool {
            ram,
            written: Blocks::MAX,
            drv: Driver::default(),
            scratch: Scratch::default(),
        })
    }

    fn run(&mut self, case: &QueueChainCase, mutant: Option<Mutant>) -> Result<(), Finding> {
        static ZEROS: [u8; RAM_SIZE as usize] = [0; RAM_SIZE as usize];
        // Zero what the last case wrote (the used ring always: `virtio-queue`'s writes are not
        // logged).
        for (lo, hi) in block_runs(self.written | blocks(USED_RING, USED_RING_BYTES)) {
            let zeros = &ZEROS[..(hi - lo) as usize];
            let _ = as_driver(&mut self.ram, |m| m.write(lo, zeros));
        }
        self.ram.clear_accesses();
        let mut run = Run::new(case, self, mutant)?;
        let mut result = Ok(());
        for (i, op) in case.ops.iter().enumerate() {
            result = run.op(op).map_err(|f| f.at(i).on(mutant));
            if result.is_err() || run.dead {
                break;
            }
        }
        if result.is_ok() && !run.dead {
            // In the end the device processes whatever is still available.
            result = run.kick().map_err(|f| f.at(case.ops.len()).on(mutant));
        }
        run.fold_device_writes();
        let written = run.written;
        self.written = written;
        result
    }
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

fn vq_err(e: impl fmt::Display) -> Finding {
    Finding::new(TARGET, "divergence", &[], format!("virtio-queue: {e}"))
}

/// Kind of one step of the driver-side walk of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    /// An ordinary buffer.
    Buffer,
    /// A descriptor with VIRTQ_DESC_F_INDIRECT in the descriptor table.
    IndirectPtr,
    /// A descriptor with VIRTQ_DESC_F_INDIRECT inside an indirect table.
    Nested,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    d: Descriptor,
    kind: StepKind,
    /// Position inside its table segment (0-based), counting every descriptor read there.
    seg_pos: u32,
    /// Entries of the table this step was read from.
    seg_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TraceEnd {
    End,
    NextOutOfRange,
    Unreadable,
    BadIndirect,
    Limit,
    HeadOutOfRange,
}

/// The chain as laid out in guest memory, walked without validation (the driver's view).
#[derive(Debug, Clone)]
struct Trace {
    steps: Vec<Step>,
    end: TraceEnd,
}

impl Trace {
    /// The steps the reference read after accepting `accepted` buffers: the one that made it
    /// stop is among them.
    fn candidates(&self, accepted: usize) -> impl Iterator<Item = &Step> {
        let mut buffers = 0usize;
        self.steps.iter().filter(move |s| {
            let here = buffers == accepted;
            if s.kind == StepKind::Buffer {
                buffers += 1;
            }
            here
        })
    }

    /// Ranges of the indirect tables the chain points at.
    fn tables(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.steps
            .iter()
            .filter(|s| s.kind == StepKind::IndirectPtr)
            .map(|s| (s.d.addr, s.d.addr.saturating_add(s.d.len as u64)))
    }
}

fn read_desc(mem: &mut GuestRam, at: u64) -> Option<Descriptor> {
    let mut raw = [0u8; 16];
    mem.read(at, &mut raw).ok()?;
    Some(Descriptor {
        addr: u64::from_le_bytes(raw[0..8].try_into().ok()?),
        len: u32::from_le_bytes(raw[8..12].try_into().ok()?),
        flags: u16::from_le_bytes([raw[12], raw[13]]),
        next: u16::from_le_bytes([raw[14], raw[15]]),
    })
}

/// Runs `f` on the guest memory as the driver: with recording off (the driver's reads and
/// writes are not the device's accesses), then restores it.
fn as_driver<R>(ram: &mut GuestRam, f: impl FnOnce(&mut GuestRam) -> R) -> R {
    let was = ram.recording();
    ram.set_recording(false);
    let r = f(ram);
    ram.set_recording(was);
    r
}

fn read_u16(mem: &mut GuestRam, at: u64) -> u16 {
    mem.read_u16(at).unwrap_or(0)
}

/// `steps` is an empty vector kept from an earlier walk (its allocation is reused).
fn walk(mem: &mut GuestRam, size: u16, head: u16, mut steps: Vec<Step>) -> Trace {
    debug_assert!(steps.is_empty());
    if head >= size {
        return Trace {
            steps,
            end: TraceEnd::HeadOutOfRange,
        };
    }
    let (mut table, mut table_len, mut index) = (DESC_TABLE, size as u32, head);
    let mut in_indirect = false;
    let mut seg_pos = 0u32;
    let end = loop {
        if steps.len() >= TRACE_LIMIT {
            break TraceEnd::Limit;
        }
        let Some(at) = table.checked_add(16 * index as u64) else {
            break TraceEnd::Unreadable;
        };
        let Some(d) = read_desc(mem, at) else {
            break TraceEnd::Unreadable;
        };
        let step = |kind| Step {
            d,
            kind,
            seg_pos,
            seg_len: table_len,
        };
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if in_indirect {
                steps.push(step(StepKind::Nested));
                break TraceEnd::BadIndirect;
            }
            steps.push(step(StepKind::IndirectPtr));
            if d.len == 0 || d.len % 16 != 0 || d.len / 16 > MAX_INDIRECT_ENTRIES {
                break TraceEnd::BadIndirect;
            }
            (table, table_len, index) = (d.addr, d.len / 16, 0);
            in_indirect = true;
            seg_pos = 0;
            continue;
        }
        steps.push(step(StepKind::Buffer));
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            break TraceEnd::End;
        }
        if d.next as u32 >= table_len {
            break TraceEnd::NextOutOfRange;
        }
        index = d.next;
        seg_pos += 1;
    };
    Trace { steps, end }
}

fn in_memory(addr: u64, len: u32) -> bool {
    addr.checked_add(len as u64)
        .is_some_and(|end| end <= RAM_SIZE)
}

/// Checks the fault the reference names against the chain in guest memory. `accepted` is the
/// chain prefix the reference had accepted when it stopped.
fn verify_rejection(
    e: &QueueError,
    accepted: &[Descriptor],
    trace: &Trace,
    cfg: &QcConfig,
) -> Option<&'static JustifiedDifference> {
    let n = accepted.len();
    let mut c = trace.candidates(n);
    let holds = match *e {
        QueueError::HeadOutOfRange { size, .. } => {
            trace.end == TraceEnd::HeadOutOfRange && size == cfg.size
        }
        QueueError::NextOutOfRange {
            next, table_len, ..
        } => {
            trace.end == TraceEnd::NextOutOfRange
                && trace.candidates(n).next().is_none()
                && trace.steps.last().is_some_and(|s| {
                    s.kind == StepKind::Buffer
                        && s.d.next == next
                        && s.seg_len == table_len
                        && next as u32 >= table_len
                })
        }
        QueueError::ChainTooLong { limit } => c.any(|s| s.seg_pos == limit && s.seg_len == limit),
        QueueError::AddrLenOverflow { addr, len, .. } => c.any(|s| {
            s.kind != StepKind::Nested
                && s.d.addr == addr
                && s.d.len == len
                && addr.checked_add(len as u64).is_none()
        }),
        QueueError::BufferOutOfMemory { addr, len, .. } => c.any(|s| {
            s.kind != StepKind::Nested
                && s.d.addr == addr
                && s.d.len == len
                && !in_memory(addr, len)
        }),
        QueueError::ReadableAfterWritable { .. } => {
            accepted.iter().any(|d| d.is_write_only())
                && c.any(|s| s.kind == StepKind::Buffer && s.d.flags & VIRTQ_DESC_F_WRITE == 0)
        }
        QueueError::IndirectNotNegotiated { .. } => {
            !cfg.indirect && c.any(|s| s.kind == StepKind::IndirectPtr)
        }
        QueueError::NestedIndirect { .. } => c.any(|s| s.kind == StepKind::Nested),
        QueueError::IndirectWithNext { .. } => {
            c.any(|s| s.kind == StepKind::IndirectPtr && s.d.flags & VIRTQ_DESC_F_NEXT != 0)
        }
        QueueError::IndirectTableLength { len, max, .. } => {
            max == (cfg.size as u32).min(MAX_INDIRECT_ENTRIES)
                && c.any(|s| {
                    s.kind == StepKind::IndirectPtr
                        && s.d.len == len
                        && (len == 0 || len % 16 != 0 || len / 16 > max)
                })
        }
        // Zero-length buffers are accepted in this harness; ring and budget errors are never
        // chain-level differences.
        QueueError::ZeroLength { .. }
        | QueueError::InvalidSize { .. }
        | QueueError::Misaligned { .. }
        | QueueError::RingOutOfMemory { .. }
        | QueueError::AvailIdxJump { .. }
        | QueueError::BudgetExhausted => false,
    };
    if !holds {
        return None;
    }
    justified(error_name(e))
}

fn error_name(e: &QueueError) -> &'static str {
    match e {
        QueueError::InvalidSize { .. } => "InvalidSize",
        QueueError::Misaligned { .. } => "Misaligned",
        QueueError::RingOutOfMemory { .. } => "RingOutOfMemory",
        QueueError::AvailIdxJump { .. } => "AvailIdxJump",
        QueueError::HeadOutOfRange { .. } => "HeadOutOfRange",
        QueueError::NextOutOfRange { .. } => "NextOutOfRange",
        QueueError::ChainTooLong { .. } => "ChainTooLong",
        QueueError::AddrLenOverflow { .. } => "AddrLenOverflow",
        QueueError::BufferOutOfMemory { .. } => "BufferOutOfMemory",
        QueueError::ZeroLength { .. } => "ZeroLength",
        QueueError::ReadableAfterWritable { .. } => "ReadableAfterWritable",
        QueueError::IndirectNotNegotiated { .. } => "IndirectNotNegotiated",
        QueueError::NestedIndirect { .. } => "NestedIndirect",
        QueueError::IndirectWithNext { .. } => "IndirectWithNext",
        QueueError::IndirectTableLength { .. } => "IndirectTableLength",
        QueueError::BudgetExhausted => "BudgetExhausted",
    }
}

/// Flag bits the split ring defines (§2.7.5). The other bits are reserved and neither queue
/// acts on them; `virtio-queue` may report them differently (it showed 0x2 where the raw
/// descriptor held 0x3b02), so they are left out of the comparison.
const DEFINED_FLAGS: u16 = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT;

fn same(a: &Descriptor, b: &Descriptor) -> bool {
    a.addr == b.addr && a.len == b.len && (a.flags ^ b.flags) & DEFINED_FLAGS == 0
}

fn fmt_chain(c: &[Descriptor]) -> String {
    let parts: Vec<String> = c
        .iter()
        .map(|d| format!("({:#x}, {}, {:#x})", d.addr, d.len, d.flags))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn inside(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 >= b.0 && a.1 <= b.1
}

/// What one phase of the device's work may touch.
struct Allowed<'a> {
    phase: &'static str,
    reads: &'a [(u64, u64)],
    writes: &'a [(u64, u64)],
    /// Readable buffers of the chain being processed (to name VQ-DEV-03).
    readable: &'a [(u64, u64)],
    /// Indirect tables of the chain (to name VQ-DEV-05).
    tables: &'a [(u64, u64)],
}

/// One pop's outcome after the differential comparison.
enum Popped {
    Empty,
    /// Both yielded the same chain (it is in `SplitQueue::chain`).
    Chain(u16),
    /// A malformed chain both consumed: the head read from the ring, and whether it is a
    /// valid descriptor index.
    Rejected(u16, bool),
    /// Both refused the ring (avail.idx ran too far ahead).
    Stopped,
}

#[derive(Default)]
struct Driver {
    free: Vec<u16>,
    /// Descriptor indices of the chain with head `h`, at index `h`.
    chains: Vec<Vec<u16>>,
    avail_idx: u16,
    used_idx: u16,
    signalled: u16,
    outstanding: Vec<u16>,
    /// The driver broke the ring contract (avail.idx jump): entries it made available may be
    /// stale, so VQ-DEV-17 cannot be judged any more.
    broke_contract: bool,
}

impl Driver {
    /// The state of a fresh queue of `size` entries whose indices start at `start`; the
    /// vectors keep their capacity.
    fn reset(&mut self, size: u16, start: u16) {
        self.free.clear();
        self.free.extend((0..size).rev());
        self.chains.resize_with(size as usize, Vec::new);
        self.chains.iter_mut().for_each(Vec::clear);
        self.outstanding.clear();
        (self.avail_idx, self.used_idx, self.signalled) = (start, start, start);
        self.broke_contract = false;
    }
}

struct Run<'m> {
    cfg: QcConfig,
    ram: &'m mut GuestRam,
    /// Reused vectors (see [`Scratch`]).
    s: &'m mut Scratch,
    /// Blocks written during this case.
    written: Blocks,
    /// Entries of the reference's access log already folded into `written`.
    folded: usize,
    /// Accesses in the reference's log already checked.
    seen: usize,
    rq: SplitQueue,
    vq: Queue,
    filler: BufferFiller,
    drv: &'m mut Driver,
    dead: bool,
}

impl<'m> Run<'m> {
    fn new(
        case: &QueueChainCase,
        pool: &'m mut Pool,
        mutant: Option<Mutant>,
    ) -> Result<Self, Finding> {
        let cfg = case.config();
        let Pool {
            ram, drv, scratch, ..
        } = pool;
        let mut rq = SplitQueue::new(cfg.size);
        rq.desc_table = DESC_TABLE;
        rq.avail_ring = AVAIL_RING;
        rq.used_ring = USED_RING;
        rq.event_idx = cfg.event_idx;
        rq.indirect = cfg.indirect;
        rq.mutant = mutant;
        rq.set_indices(cfg.start, cfg.start);
        rq.validate(ram, cfg.size)
            .map_err(|e| Finding::new(TARGET, "harness", &[], format!("layout rejected: {e}")))?;
        let mut vq = Queue::new(cfg.size).map_err(vq_err)?;
        vq.set_size(cfg.size);
        vq.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        vq.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        vq.set_used_ring_address(Some(USED_RING as u32), Some(0));
        vq.set_event_idx(cfg.event_idx);
        vq.set_next_avail(cfg.start);
        vq.set_next_used(cfg.start);
        vq.set_ready(true);
        let filler = BufferFiller::new(mutant == Some(Mutant::WritesReadableBuffers));
        drv.reset(cfg.size, cfg.start);
        let mut run = Run {
            cfg,
            ram,
            s: scratch,
            written: 0,
            folded: 0,
            seen: 0,
            rq,
            vq,
            filler,
            drv,
            dead: false,
        };
        run.poke_u16(AVAIL_RING + 2, cfg.start);
        run.poke_u16(USED_RING + 2, cfg.start);
        run.poke_u16(run.used_event_addr(), cfg.start);
        Ok(run)
    }

    fn used_event_addr(&self) -> u64 {
        AVAIL_RING + 4 + 2 * self.cfg.size as u64
    }

    fn avail_event_addr(&self) -> u64 {
        USED_RING + 4 + 8 * self.cfg.size as u64
    }

    /// Adds the blocks of `len` bytes at `gpa` to the written set.
    fn mark(&mut self, gpa: u64, len: u64) {
        self.written |= blocks(gpa, len);
    }

    /// Adds the reference's writes logged since the last call to the written set.
    fn fold_device_writes(&mut self) {
        let from = self.folded.min(self.ram.accesses().len());
        let mut set = 0;
        for a in &self.ram.accesses()[from..] {
            if a.kind == AccessKind::Write {
                set |= blocks(a.gpa, a.len);
            }
        }
        self.folded = self.ram.accesses().len();
        self.written |= set;
    }

    /// Driver write into guest memory (not recorded: it is not the device).
    fn poke(&mut self, gpa: u64, data: &[u8]) {
        let _ = as_driver(self.ram, |m| m.write(gpa, data));
        self.mark(gpa, data.len() as u64);
    }

    fn poke_u16(&mut self, gpa: u64, v: u16) {
        self.poke(gpa, &v.to_le_bytes());
    }

    fn poke_desc(&mut self, table: u64, index: u16, d: &Descriptor) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        if let Some(at) = table.checked_add(16 * index as u64) {
            self.poke(at, &raw);
        }
    }

    fn op(&mut self, op: &QcOp) -> Result<(), Finding> {
        match *op {
            QcOp::Chain(spec) => self.chain(&spec),
            QcOp::Kick(knob) => {
                if knob >= 0xf000 && knob & 0xfff != 0 {
                    self.drv.avail_idx = self.drv.avail_idx.wrapping_add(knob & 0xfff);
                    self.drv.broke_contract = true;
                    self.poke_u16(AVAIL_RING + 2, self.drv.avail_idx);
                }
                self.kick()
            }
            QcOp::NoInterrupt(on) => {
                let v = if on { VIRTQ_AVAIL_F_NO_INTERRUPT } else { 0 };
                self.poke_u16(AVAIL_RING, v);
                Ok(())
            }
            QcOp::UsedEvent(delta) => {
                let v = self.drv.used_idx.wrapping_add(delta as u16);
                self.poke_u16(self.used_event_addr(), v);
                Ok(())
            }
        }
    }

    fn chain(&mut self, spec: &ChainSpec) -> Result<(), Finding> {
        let size = self.cfg.size as usize;
        let corr = Corruption::from_knob(spec.knob);
        let n = 1 + spec.n as usize % MAX_BUFS;
        let arg = spec.arg;
        // Fixed arrays, not vectors: a chain has at most MAX_BUFS buffers (plus one indirect
        // descriptor), and this runs for every chain of every input.
        let mut bufs = [(0u32, false); MAX_BUFS];
        for (b, &v) in bufs.iter_mut().zip(&spec.bufs[..n]) {
            *b = ((v & 0x7f) as u32 + 1, v & 0x80 != 0);
        }
        let bufs = &mut bufs[..n];
        if corr == Some(Corruption::WritableBeforeReadable) {
            if n >= 2 {
                bufs[0].1 = true;
                bufs[n - 1].1 = false;
            }
        } else {
            bufs.sort_by_key(|b| b.1);
        }
        const UNSET: Descriptor = Descriptor {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        };
        let mut descs = [UNSET; MAX_BUFS];
        for (p, (d, &(len, w))) in descs.iter_mut().zip(bufs.iter()).enumerate() {
            *d = Descriptor {
                addr: DATA + p as u64 * STRIDE,
                len,
                flags: if w { VIRTQ_DESC_F_WRITE } else { 0 },
                next: 0,
            };
        }
        let j = arg as usize % n;
        match corr {
            Some(Corruption::AddrAtEnd) => descs[j].addr = RAM_SIZE - descs[j].len as u64,
            Some(Corruption::AddrPastEnd) => {
                descs[j].addr = RAM_SIZE - descs[j].len as u64 + 1 + (arg >> 4) as u64 % 8
            }
            Some(Corruption::AddrLenOverflow) => {
                descs[j].addr = u64::MAX - (arg as u64 % descs[j].len as u64)
            }
            Some(Corruption::ZeroLength) => descs[j].len = 0,
            Some(Corruption::HugeLen) => descs[j].len = 0xffff_ff00 | arg as u32,
            _ => {}
        }
        let use_indirect = (self.cfg.indirect && spec.indirect & 0x80 != 0)
            || corr.is_some_and(Corruption::needs_indirect);
        let direct = if use_indirect {
            ((spec.indirect & 0x7f) as usize % n).min(size - 1)
        } else {
            n.min(size)
        };
        let need = direct + use_indirect as usize;
        if self.drv.free.len() < need {
            self.kick()?;
            if self.dead || self.drv.free.len() < need {
                return Ok(());
            }
        }
        let Some(split) = self.drv.free.len().checked_sub(need) else {
            return Ok(());
        };
        // The chain's descriptor indices go into the vector kept for its head (reused).
        let head = self.drv.free[self.drv.free.len() - 1];
        let mut indices = std::mem::take(&mut self.drv.chains[head as usize]);
        indices.clear();
        indices.extend(self.drv.free.drain(split..).rev());
        // The descriptor-table part (with room for the indirect descriptor) and the
        // indirect table's part.
        let mut head_buf = [UNSET; MAX_BUFS + 1];
        head_buf[..direct].copy_from_slice(&descs[..direct]);
        let mut head_len = direct;
        let mut table_buf = [UNSET; MAX_BUFS];
        let mut m = 0;
        if use_indirect {
            // §2.7.5.3.1: an indirect table holds at most queue-size descriptors.
            m = (n - direct).min(size);
            table_buf[..m].copy_from_slice(&descs[direct..direct + m]);
        }
        let table_part = &mut table_buf[..m];
        for i in 0..direct {
            if i + 1 < need {
                head_buf[i].flags |= VIRTQ_DESC_F_NEXT;
                head_buf[i].next = indices[i + 1];
            }
        }
        if use_indirect {
            for (i, d) in table_part.iter_mut().enumerate() {
                if i + 1 < m {
                    d.flags |= VIRTQ_DESC_F_NEXT;
                    d.next = i as u16 + 1;
                }
            }
            let table = if corr == Some(Corruption::IndirectTableAtEnd) {
                RAM_SIZE - 16 * m as u64
            } else {
                INDIRECT_TABLES + indices[direct] as u64 * STRIDE
            };
            let mut ptr = Descriptor {
                addr: table,
                len: 16 * m as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            };
            match corr {
                Some(Corruption::OddIndirectLen) => {
                    ptr.len = if arg.is_multiple_of(4) {
                        0
                    } else {
                        16 * m as u32 + 1 + arg as u32 % 15
                    }
                }
                Some(Corruption::IndirectWithNext) => {
                    ptr.flags |= VIRTQ_DESC_F_NEXT;
                    ptr.next = indices[0];
                }
                Some(Corruption::NestedIndirect) => {
                    let k = arg as usize % m;
                    table_part[k].flags |= VIRTQ_DESC_F_INDIRECT;
                    table_part[k].addr = table;
                    table_part[k].len = 16;
                }
                Some(Corruption::Loop) => {
                    table_part[m - 1].flags |= VIRTQ_DESC_F_NEXT;
                    table_part[m - 1].next = 0;
                }
                Some(Corruption::NextOutOfRange) => {
                    table_part[m - 1].flags |= VIRTQ_DESC_F_NEXT;
                    table_part[m - 1].next = m as u16 + (arg % 4) as u16;
                }
                _ => {}
            }
            head_buf[head_len] = ptr;
            head_len += 1;
            for (i, d) in table_part.iter().enumerate() {
                self.poke_desc(table, i as u16, d);
            }
        } else {
            let last = direct - 1;
            match corr {
                Some(Corruption::Loop) => {
                    head_buf[last].flags |= VIRTQ_DESC_F_NEXT;
                    head_buf[last].next = indices[0];
                }
                Some(Corruption::NextOutOfRange) => {
                    head_buf[last].flags |= VIRTQ_DESC_F_NEXT;
                    head_buf[last].next = self.cfg.size + (arg % 4) as u16;
                }
                _ => {}
            }
        }
        for (i, d) in head_buf[..head_len].iter().enumerate() {
            self.poke_desc(DESC_TABLE, indices[i], d);
        }
        let published = if corr == Some(Corruption::HeadOutOfRange) {
            self.drv.free.extend(indices.drain(..).rev());
            self.drv.chains[head as usize] = indices;
            self.cfg.size + (arg % 16) as u16
        } else {
            self.drv.chains[head as usize] = indices;
            head
        };
        let slot = (self.drv.avail_idx & (self.cfg.size - 1)) as u64;
        self.poke_u16(AVAIL_RING + 4 + 2 * slot, published);
        self.drv.avail_idx = self.drv.avail_idx.wrapping_add(1);
        self.poke_u16(AVAIL_RING + 2, self.drv.avail_idx);
        self.drv.outstanding.push(published);
        Ok(())
    }

    /// Checks the reference's accesses since the last check against `allowed`.
    fn check(&mut self, allowed: &Allowed<'_>) -> Result<(), Finding> {
        let (a, b) = self.unchecked();
        check_accesses(&self.ram.accesses()[a..b], allowed, &self.cfg)
    }

    /// The range of the reference's access log not checked yet (now counted as checked).
    fn unchecked(&mut self) -> (usize, usize) {
        let to = self.ram.accesses().len();
        let from = self.seen.min(to);
        self.seen = to;
        (from, to)
    }

    fn kick(&mut self) -> Result<(), Finding> {
        if self.dead {
            return Ok(());
        }
        let size = self.cfg.size as u64;
        let rings = [
            (DESC_TABLE, DESC_TABLE + 16 * size),
            (AVAIL_RING, AVAIL_RING + 6 + 2 * size),
        ];
        let used = [(USED_RING, USED_RING + 4 + 8 * size)];
        let mut budget = Budget::new(KICK_BUDGET);
        let mut used_any = false;
        let max_pops = 2 * self.cfg.size as usize + 2;
        let mut pops = 0;
        loop {
            if pops == max_pops {
                return Err(Finding::new(
                    TARGET,
                    "bounded-work",
                    &["SPLIT-DEV-MALFORMED-CHAIN"],
                    format!(
                        "one kick popped {max_pops} chains from a queue of size {}; the device keeps consuming entries that were never made available",
                        self.cfg.size
                    ),
                ));
            }
            pops += 1;
            let popped = self.pop_both(&mut budget, &rings)?;
            let (head, len) = match popped {
                Popped::Empty => break,
                Popped::Stopped => {
                    self.dead = true;
                    break;
                }
                Popped::Rejected(head, valid) => {
                    if !self.cfg.skip_malformed {
                        self.dead = true;
                        break;
                    }
                    if !valid {
                        // Nothing to return: the index names no descriptor.
                        if let Some(pos) = self.drv.outstanding.iter().position(|&h| h == head) {
                            self.drv.outstanding.swap_remove(pos);
                        }
                        continue;
                    }
                    (head, 0)
                }
                Popped::Chain(head) => {
                    if !self.drv.broke_contract && !self.drv.outstanding.contains(&head) {
                        return Err(Finding::new(
                            TARGET,
                            "used-id-unknown",
                            &["VQ-DEV-17"],
                            format!("the device popped head {head}, which is not an outstanding chain the driver made available (outstanding: {:?})", self.drv.outstanding),
                        ));
                    }
                    let len = self.filler.fill(self.rq.chain(), self.ram);
                    self.s.readable.clear();
                    self.s.writable.clear();
                    for d in self.rq.chain() {
                        let r = (d.addr, d.addr.saturating_add(d.len as u64));
                        if d.is_write_only() {
                            self.s.writable.push(r);
                        } else {
                            self.s.readable.push(r);
                        }
                    }
                    let (a, b) = self.unchecked();
                    check_accesses(
                        &self.ram.accesses()[a..b],
                        &Allowed {
                            phase: "backend write",
                            reads: &[],
                            writes: &self.s.writable,
                            readable: &self.s.readable,
                            tables: &self.s.tables,
                        },
                        &self.cfg,
                    )?;
                    let capacity: u64 = self.s.writable.iter().map(|(a, b)| b - a).sum();
                    if len as u64 > capacity {
                        return Err(Finding::new(
                            TARGET,
                            "used-len-exceeds-writable",
                            &["VQ-DEV-15"],
                            format!("used len {len} for head {head} exceeds the chain's {capacity} device-writable bytes"),
                        ));
                    }
                    (head, len)
                }
            };
            self.add_used_both(head, len, &used)?;
            used_any = true;
        }
        if !used_any {
            return Ok(());
        }
        // avail_event (§2.7.10): only with EVENT_IDX.
        self.rq.publish_avail_event(self.ram).map_err(|e| {
            Finding::new(
                TARGET,
                "ring-error",
                &[],
                format!("publish avail_event: {e}"),
            )
        })?;
        let ae = self.avail_event_addr();
        let ev_write = [(ae, ae + 2)];
        let acc = &self.ram.accesses()[self.seen.min(self.ram.accesses().len())..];
        for a in acc {
            if a.kind == AccessKind::Write && !self.cfg.event_idx {
                return Err(Finding::new(
                    TARGET,
                    "avail-event-without-event-idx",
                    &[],
                    format!("the device wrote {} bytes at {:#x} (avail_event) although VIRTIO_F_EVENT_IDX was not negotiated", a.len, a.gpa),
                ));
            }
        }
        self.check(&Allowed {
            phase: "avail_event",
            reads: &[],
            writes: &ev_write,
            readable: &[],
            tables: &[],
        })?;
        self.notification()?;
        if self.ram.accesses().len() > 4096 {
            self.fold_device_writes();
            self.ram.clear_accesses();
            self.seen = 0;
            self.folded = 0;
        }
        Ok(())
    }

    /// Pops one chain from both queues and compares them.
    fn pop_both(&mut self, budget: &mut Budget, rings: &[(u64, u64)]) -> Result<Popped, Finding> {
        let r = self.rq.pop(self.ram, budget);
        let (acc_from, acc_to) = self.unchecked();
        let mut vd = std::mem::take(&mut self.s.vbuf);
        vd.clear();
        let v = self.vq.pop_descriptor_chain(self.ram.memory()).map(|c| {
            let head = c.head_index();
            vd.extend(c.take(VQ_LIMIT).map(|d| Descriptor {
                addr: d.addr().0,
                len: d.len(),
                flags: d.flags(),
                next: d.next(),
            }));
            head
        });
        let result = self.compare_pops(r, v, &vd, rings, acc_from, acc_to);
        self.s.vbuf = vd;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn compare_pops(
        &mut self,
        r: Result<Option<u16>, QueueError>,
        v: Option<u16>,
        vd: &[Descriptor],
        rings: &[(u64, u64)],
        acc_from: usize,
        acc_to: usize,
    ) -> Result<Popped, Finding> {
        if let Err(QueueError::BudgetExhausted) = r {
            return Err(Finding::new(
                TARGET,
                "bounded-work",
                &["SPLIT-DEV-MALFORMED-CHAIN"],
                format!("one kick exhausted the budget of {KICK_BUDGET} descriptor reads (a chain the device never stops walking)"),
            ));
        }
        let head_read = !matches!(
            r,
            Ok(None)
                | Err(QueueError::AvailIdxJump { .. })
                | Err(QueueError::RingOutOfMemory { .. })
        );
        // The driver-side walk of the chain is needed to judge a rejection, or when the device
        // read outside the rings (the chain's indirect tables).
        let acc = self.ram.accesses().get(acc_from..acc_to).unwrap_or(&[]);
        let in_rings = acc.iter().all(|a| {
            a.kind == AccessKind::Read && rings.iter().any(|&r| inside((a.gpa, a.end()), r))
        });
        let need_trace = head_read && (!in_rings || r.is_err());
        let mut steps = std::mem::take(&mut self.s.steps);
        steps.clear();
        let trace = if need_trace {
            let (size, head) = (self.cfg.size, self.rq.last_head());
            as_driver(self.ram, |m| walk(m, size, head, steps))
        } else {
            Trace {
                steps,
                end: TraceEnd::End,
            }
        };
        self.s.tables.clear();
        self.s.tables.extend(trace.tables());
        if !in_rings {
            self.s.reads.clear();
            self.s.reads.extend_from_slice(rings);
            self.s.reads.extend_from_slice(&self.s.tables);
            check_accesses(
                self.ram.accesses().get(acc_from..acc_to).unwrap_or(&[]),
                &Allowed {
                    phase: "pop",
                    reads: &self.s.reads,
                    writes: &[],
                    readable: &[],
                    tables: &self.s.tables,
                },
                &self.cfg,
            )?;
        }
        let (ra, va) = (self.rq.next_avail(), self.vq.next_avail());
        let popped = match (r, v) {
            (Ok(None), None) => Popped::Empty,
            (Ok(Some(h)), Some(vh)) => {
                let p = self.rq.chain();
                if h != vh || p.len() != vd.len() || !p.iter().zip(vd).all(|(a, b)| same(a, b)) {
                    return Err(Finding::new(
                        TARGET,
                        "divergence",
                        &[],
                        format!(
                            "chain differs: reference head {h} {}, virtio-queue head {vh} {}",
                            fmt_chain(p),
                            fmt_chain(vd)
                        ),
                    ));
                }
                Popped::Chain(h)
            }
            (Err(QueueError::AvailIdxJump { ahead, .. }), None) => {
                let avail = as_driver(self.ram, |m| read_u16(m, AVAIL_RING + 2));
                let real = avail.wrapping_sub(self.vq.next_avail());
                if real != ahead || ahead <= self.cfg.size {
                    return Err(Finding::new(
                        TARGET,
                        "divergence",
                        &["VQ-DEV-21"],
                        format!("the reference claims avail.idx is {ahead} entries ahead, the ring says {real} (queue size {})", self.cfg.size),
                    ));
                }
                Popped::Stopped
            }
            (Err(e), Some(vh)) => {
                let head = self.rq.last_head();
                let p = self.rq.chain();
                // On a `next` out of range, virtio-queue ends the chain at the faulting
                // descriptor and reports it without NEXT: compare that one without NEXT.
                let next_fault = matches!(
                    e,
                    virtio_reference_device::QueueError::NextOutOfRange { .. }
                );
                let last = p.len().saturating_sub(1);
                let prefix_ok = vh == head
                    && vd.len() >= p.len()
                    && p.iter().zip(vd).enumerate().all(|(i, (a, b))| {
                        if next_fault && i == last {
                            same(
                                a,
                                &Descriptor {
                                    flags: b.flags | (a.flags & VIRTQ_DESC_F_NEXT),
                                    ..*b
                                },
                            )
                        } else {
                            same(a, b)
                        }
                    });
                let why = verify_rejection(&e, p, &trace, &self.cfg);
                match (prefix_ok, why) {
                    (true, Some(_)) => Popped::Rejected(head, head < self.cfg.size),
                    _ => {
                        return Err(Finding::new(
                            TARGET,
                            "divergence",
                            &[],
                            format!(
                                "the reference rejected head {head} ({e}) after accepting {}; virtio-queue yielded head {vh} {}; {}",
                                fmt_chain(p),
                                fmt_chain(vd),
                                if prefix_ok {
                                    "the fault the reference names is not in guest memory"
                                } else {
                                    "they disagree before the fault"
                                }
                            ),
                        ))
                    }
                }
            }
            (r, v) => {
                let rs = match &r {
                    Ok(None) => "nothing available".to_string(),
                    Ok(Some(h)) => format!("head {h} {}", fmt_chain(self.rq.chain())),
                    Err(e) => format!("error: {e}"),
                };
                let vs = match &v {
                    None => "nothing (empty ring or avail.idx too far ahead)".to_string(),
                    Some(h) => format!("head {h} {}", fmt_chain(vd)),
                };
                return Err(Finding::new(
                    TARGET,
                    "divergence",
                    &[],
                    format!("the reference popped {rs}; virtio-queue popped {vs}"),
                ));
            }
        };
        if ra != va {
            return Err(Finding::new(
                TARGET,
                "divergence",
                &["VQ-DEV-17"],
                format!("after the pop the reference's next available index is {ra}, virtio-queue's {va}: they consumed different numbers of entries"),
            ));
        }
        self.s.steps = trace.steps;
        Ok(popped)
    }

    fn add_used_both(&mut self, head: u16, len: u32, used: &[(u64, u64)]) -> Result<(), Finding> {
        self.rq
            .add_used(self.ram, head, len)
            .map_err(|e| Finding::new(TARGET, "ring-error", &[], format!("add_used: {e}")))?;
        self.check(&Allowed {
            phase: "add_used",
            reads: &[],
            writes: used,
            readable: &[],
            tables: &[],
        })?;
        self.drv.used_idx = self.drv.used_idx.wrapping_add(1);
        // The used ring as the reference left it (flags, idx, every element; `avail_event`
        // excluded), read once: the checks below and the differential use this copy.
        let n = 4 + 8 * self.cfg.size as usize;
        let (mut before, mut after) = ([0u8; 4 + 8 * 16], [0u8; 4 + 8 * 16]);
        let _ = as_driver(self.ram, |m| m.read(USED_RING, &mut before[..n]));
        let idx = u16::from_le_bytes([before[2], before[3]]);
        if idx != self.drv.used_idx {
            return Err(Finding::new(
                TARGET,
                "used-idx",
                &["VQ-DEV-21", "VQ-DEV-19"],
                format!(
                    "used.idx reads {idx} after {} used elements from {}; expected {} (16-bit wrap)",
                    self.drv.used_idx.wrapping_sub(self.cfg.start),
                    self.cfg.start,
                    self.drv.used_idx
                ),
            ));
        }
        let slot = (self.drv.used_idx.wrapping_sub(1) & (self.cfg.size - 1)) as usize;
        let elem = &before[4 + 8 * slot..12 + 8 * slot];
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let ulen = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        if id != head as u32 || ulen != len {
            return Err(Finding::new(
                TARGET,
                "used-element",
                &["VQ-DEV-17", "VQ-DEV-14"],
                format!("used element {slot} reads (id {id}, len {ulen}); the device returned (id {head}, len {len})"),
            ));
        }
        // Differential: virtio-queue returns the same element over the reference's used ring;
        // it must not change a byte.
        self.vq
            .add_used(self.ram.memory(), head, len)
            .map_err(|e| vq_err(format!("add_used({head}, {len}): {e}")))?;
        let _ = as_driver(self.ram, |m| m.read(USED_RING, &mut after[..n]));
        if before[..n] != after[..n] {
            return Err(Finding::new(
                TARGET,
                "divergence",
                &[],
                format!(
                    "after add_used({head}, {len}) the used rings differ: reference {:02x?}, virtio-queue {:02x?}",
                    &before[..n],
                    &after[..n]
                ),
            ));
        }
        if let Some(pos) = self.drv.outstanding.iter().position(|&h| h == head) {
            self.drv.outstanding.swap_remove(pos);
        }
        if let Some(ix) = self.drv.chains.get_mut(head as usize) {
            self.drv.free.extend(ix.drain(..).rev());
        }
        Ok(())
    }

    /// §2.7.7.2: compare the reference's (and virtio-queue's) decision with the spec formula.
    fn notification(&mut self) -> Result<(), Finding> {
        let new = self.drv.used_idx;
        let old = std::mem::replace(&mut self.drv.signalled, new);
        let got = self.rq.needs_notification(self.ram).map_err(|e| {
            Finding::new(
                TARGET,
                "ring-error",
                &[],
                format!("needs_notification: {e}"),
            )
        })?;
        let ue = self.used_event_addr();
        let reads = [(AVAIL_RING, AVAIL_RING + 2), (ue, ue + 2)];
        self.check(&Allowed {
            phase: "needs_notification",
            reads: &reads,
            writes: &[],
            readable: &[],
            tables: &[],
        })?;
        // The field the decision rests on: `used_event` with EVENT_IDX, `avail.flags` without.
        let (want, ids, field) = if self.cfg.event_idx {
            let used_event = as_driver(self.ram, |m| read_u16(m, ue));
            let want = new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old);
            (
                want,
                if want {
                    &["VQ-DEV-12"][..]
                } else {
                    &["VQ-DEV-13"][..]
                },
                used_event,
            )
        } else {
            let flags = as_driver(self.ram, |m| read_u16(m, AVAIL_RING));
            let want = flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0;
            (
                want,
                if want {
                    &["VQ-DEV-10"][..]
                } else {
                    &["VQ-DEV-09"][..]
                },
                flags,
            )
        };
        // Formatted only for a finding (this runs after every kick).
        let event_idx = self.cfg.event_idx;
        let why = || {
            if event_idx {
                format!("EVENT_IDX: used_event {field}, used idx moved {old} -> {new}")
            } else {
                format!("no EVENT_IDX: avail.flags {field:#x}")
            }
        };
        if got != want {
            let why = why();
            return Err(Finding::new(
                TARGET,
                "notification",
                ids,
                format!(
                    "the device {} a used-buffer notification; the spec says it {} ({why})",
                    if got { "asked for" } else { "suppressed" },
                    if want { "must send one" } else { "should not" }
                ),
            ));
        }
        let vq = self
            .vq
            .needs_notification(self.ram.memory())
            .map_err(|e| vq_err(format!("needs_notification: {e}")))?;
        // Without EVENT_IDX virtio-queue always notifies: justified ("NoInterruptIgnored").
        if vq != want && (self.cfg.event_idx || want) {
            let why = why();
            return Err(Finding::new(
                TARGET,
                "divergence",
                ids,
                format!(
                    "virtio-queue {} a notification; the spec says it {} ({why})",
                    if vq { "asked for" } else { "suppressed" },
                    if want { "must send one" } else { "should not" }
                ),
            ));
        }
        Ok(())
    }
}

fn check_accesses(
    acc: &[MemoryAccess],
    allowed: &Allowed<'_>,
    cfg: &QcConfig,
) -> Result<(), Finding> {
    let size = cfg.size as u64;
    for a in acc {
        let range = (a.gpa, a.end());
        if a.gpa.checked_add(a.len).is_none_or(|end| end > RAM_SIZE) {
            return Err(Finding::new(
                TARGET,
                "access-outside-guest-memory",
                &["SPLIT-DEV-MALFORMED-CHAIN"],
                format!("{:?} of {} bytes at {:#x} during {} is outside guest memory (0..{RAM_SIZE:#x})", a.kind, a.len, a.gpa, allowed.phase),
            ));
        }
        let list = match a.kind {
            AccessKind::Read => allowed.reads,
            AccessKind::Write => allowed.writes,
        };
        if list.iter().any(|&r| inside(range, r)) {
            continue;
        }
        let what = format!(
            "{:?} of {} bytes at {:#x} during {}",
            a.kind, a.len, a.gpa, allowed.phase
        );
        if a.kind == AccessKind::Read {
            return Err(Finding::new(
                TARGET,
                "read-outside-chain",
                &[],
                format!("{what}: outside the rings and tables the device may read"),
            ));
        }
        let desc = (DESC_TABLE, DESC_TABLE + 16 * size);
        let avail = (AVAIL_RING, AVAIL_RING + 6 + 2 * size);
        if overlaps(range, desc) || allowed.tables.iter().any(|&t| overlaps(range, t)) {
            return Err(Finding::new(
                TARGET,
                "descriptor-table-written",
                &["VQ-DEV-05"],
                format!("{what}: the device wrote a descriptor table"),
            ));
        }
        if overlaps(range, avail) {
            return Err(Finding::new(
                TARGET,
                "avail-ring-written",
                &["VQ-DEV-22"],
                format!("{what}: the device wrote the available ring"),
            ));
        }
        if allowed.readable.iter().any(|&r| overlaps(range, r)) {
            return Err(Finding::new(
                TARGET,
                "readable-buffer-written",
                &["VQ-DEV-03"],
                format!("{what}: the device wrote a device-readable buffer"),
            ));
        }
        return Err(Finding::new(
            TARGET,
            "write-outside-chain",
            &["SPLIT-DEV-MALFORMED-CHAIN"],
            format!("{what}: outside the chain's device-writable buffers and the used ring"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block sets: clamped to guest memory, runs split where a block is missing, the whole
    /// memory one run.
    #[test]
    fn block_sets_cover_exactly_the_bytes_touched() {
        assert_eq!(blocks(0, 1), 1);
        assert_eq!(blocks(63, 2), 0b11);
        assert_eq!(blocks(64, 64), 0b10);
        assert_eq!(blocks(RAM_SIZE - 1, 10), 1 << 127);
        assert_eq!(blocks(0, RAM_SIZE), Blocks::MAX);
        assert_eq!(blocks(RAM_SIZE, 5), 0);
        assert_eq!(blocks(u64::MAX, 5), 0);
        assert_eq!(blocks(100, 0), 0);
        let runs: Vec<_> = block_runs(Blocks::MAX).collect();
        assert_eq!(runs, [(0, RAM_SIZE)]);
        let runs: Vec<_> = block_runs(0b1011 | 1 << 127).collect();
        assert_eq!(runs, [(0, 128), (192, 256), (RAM_SIZE - 64, RAM_SIZE)]);
        assert_eq!(block_runs(0).count(), 0);
    }

    #[test]
    fn encode_round_trips() {
        let case = QueueChainCase {
            header: QcHeader {
                flags: 0x5b,
                start: 3,
            },
            ops: vec![
                QcOp::Chain(ChainSpec {
                    n: 2,
                    bufs: [1, 0x85, 3, 4, 5, 6, 7, 8],
                    indirect: 0x81,
                    knob: Corruption::Loop.knob(),
                    arg: 9,
                }),
                QcOp::Kick(0xf003),
                QcOp::NoInterrupt(true),
                QcOp::UsedEvent(4),
            ],
        };
        assert_eq!(decode_queue_chain(&case.encode()), case);
    }

    /// The hand-written decoder maps every byte string as the derived `Arbitrary` impls do.
    #[test]
    fn decoding_matches_arbitrary() {
        fn with_arbitrary(data: &[u8]) -> QueueChainCase {
            use arbitrary::Unstructured;
            let mut u = Unstructured::new(data);
            let header = QcHeader::arbitrary(&mut u).unwrap_or_default();
            let mut ops = Vec::new();
            while !u.is_empty() && ops.len() < MAX_OPS {
                match QcOp::arbitrary(&mut u) {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            QueueChainCase { header, ops }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..600usize {
            let data: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Bias towards small and extreme values so every variant and padding occurs.
                    match x % 5 {
                        0 => 0,
                        1 => 0xff,
                        _ => (x >> 24) as u8,
                    }
                })
                .collect();
            assert_eq!(
                decode_queue_chain(&data),
                with_arbitrary(&data),
                "{data:02x?}"
            );
        }
    }

    #[test]
    fn every_corruption_runs_on_the_reference() {
        for flags in [0u8, 0x18, 0x38, 0x7c, 0x22, 0x3b] {
            for c in Corruption::ALL {
                for arg in [0u8, 1, 2, 7, 200] {
                    let case = QueueChainCase {
                        header: QcHeader { flags, start: 2 },
                        ops: vec![
                            QcOp::Chain(ChainSpec {
                                n: 3,
                                bufs: [10, 0x90, 0x20, 0x81, 4, 5, 6, 7],
                                indirect: 0x81,
                                knob: 0,
                                arg,
                            }),
                            QcOp::Chain(ChainSpec {
                                n: 2,
                                bufs: [10, 0x90, 0x20, 0x81, 4, 5, 6, 7],
                                indirect: 0x81,
                                knob: c.knob(),
                                arg,
                            }),
                            QcOp::Kick(0),
                            QcOp::Chain(ChainSpec::default()),
                            QcOp::Kick(0),
                        ],
                    };
                    let r = queue_chain_on(&case.encode(), None);
                    assert!(
                        r.is_ok(),
                        "{c:?} flags {flags:#x} arg {arg}: {}\n{case}",
                        r.unwrap_err()
                    );
                }
            }
        }
    }

    /// The regression case of the divergence fixed by sharing one guest memory: a
    /// device-writable buffer of 4 bytes at the end of memory, popped first, is filled by the
    /// backend over the `flags` and `next` of the one-entry indirect table of the next chain
    /// (also at the end of memory). Both queues must then read the same (overwritten) table.
    pub(crate) fn writable_buffer_over_indirect_table() -> QueueChainCase {
        QueueChainCase {
            header: QcHeader {
                flags: 0x10 | 0x20 | 3,
                start: 0,
            },
            ops: vec![
                QcOp::Chain(ChainSpec {
                    n: 0,
                    bufs: [0x80 | 3, 0, 0, 0, 0, 0, 0, 0],
                    indirect: 0,
                    knob: Corruption::AddrAtEnd.knob(),
                    arg: 0,
                }),
                QcOp::Chain(ChainSpec {
                    n: 0,
                    bufs: [0, 0, 0, 0, 0, 0, 0, 0],
                    indirect: 0x80,
                    knob: Corruption::IndirectTableAtEnd.knob(),
                    arg: 0,
                }),
                QcOp::Kick(0),
            ],
        }
    }

    #[test]
    fn writable_buffer_over_an_indirect_table_is_seen_by_both_queues() {
        let case = writable_buffer_over_indirect_table();
        let bytes = case.encode();
        if std::env::var_os("QC_PRINT").is_some() {
            println!(
                "{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            println!("{case}");
        }
        let r = queue_chain_on(&bytes, None);
        assert!(r.is_ok(), "{}\n{case}", r.unwrap_err());
    }
}
