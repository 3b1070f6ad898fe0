//! The split virtqueue (VIRTIO 1.3 §2.7), device side.
//!
//! [`SplitQueue`] pops descriptor chains from the available ring, validates every descriptor
//! before any buffer is touched, and publishes used elements. All guest-memory traffic goes
//! through [`GuestRam`], so accesses are bounds-checked and can be recorded.
//!
//! What the reference enforces (each a [`QueueError`]):
//! - the available index may run at most `size` entries ahead of the next available index
//!   (§2.7.6, §2.7.13.3: the 16-bit index wraps naturally, a larger jump is a driver error);
//! - a head or `next` index must be below the table length (§2.7.5);
//! - a chain may not be longer than the queue size, or than the indirect table (§2.7.5.2,
//!   §2.7.5.3.1), which also bounds a looped chain;
//! - `addr + len` of every buffer must lie inside guest memory, computed without overflow;
//! - device-readable descriptors come before device-writable ones (§2.7.4.2);
//! - `VIRTQ_DESC_F_INDIRECT` only when VIRTIO_F_INDIRECT_DESC was negotiated, never together
//!   with `VIRTQ_DESC_F_NEXT`, never inside an indirect table, with a table length that is a
//!   non-zero multiple of 16 (§2.7.5.3). The WRITE flag of the descriptor that points at an
//!   indirect table is ignored (§2.7.5.3.2).

use crate::memory::{GuestRam, OutOfBounds};
use crate::mutant::Mutant;
use crate::regs::{
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

/// Largest queue size a split virtqueue may have (§2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest number of entries the reference accepts in one indirect table, whatever the
/// queue size (the queue size itself is the first bound, §2.7.5.3.1).
pub const MAX_INDIRECT_ENTRIES: u32 = 65536;

/// One descriptor of a chain as the device resolved it (§2.7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// The descriptor's flags as read from guest memory.
    pub flags: u16,
    /// The descriptor's `next` field as read from guest memory.
    pub next: u16,
}

impl Descriptor {
    /// A device-readable buffer of `len` bytes at guest physical address `addr`, last of its
    /// chain (flags 0, next 0).
    pub fn readable(addr: u64, len: u32) -> Self {
        Descriptor {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    /// A device-writable buffer (`VIRTQ_DESC_F_WRITE`) of `len` bytes at guest physical
    /// address `addr`, last of its chain.
    pub fn writable(addr: u64, len: u32) -> Self {
        Descriptor {
            addr,
            len,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        }
    }

    /// Whether the buffer is device-writable (`VIRTQ_DESC_F_WRITE`).
    pub fn is_write_only(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }

    fn parse(raw: &[u8; 16]) -> Self {
        Descriptor {
            addr: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
            flags: u16::from_le_bytes([raw[12], raw[13]]),
            next: u16::from_le_bytes([raw[14], raw[15]]),
        }
    }
}

/// Which part of a queue a [`QueueError::RingOutOfMemory`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table (QueueDesc).
    DescriptorTable,
    /// The available ring (QueueDriver).
    AvailRing,
    /// The used ring (QueueDevice).
    UsedRing,
}

/// Why the device refused a queue or a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue size is 0, not a power of 2, or above QueueNumMax (§2.7, §4.2.2).
    #[error("queue size {size} is invalid (must be a power of 2 in 1..={max})")]
    InvalidSize {
        /// The size the driver wrote.
        size: u32,
        /// QueueNumMax of the queue.
        max: u16,
    },
    /// A ring area is misaligned (§2.7.1: 16 / 2 / 4 bytes).
    #[error("{part:?} at {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The area.
        part: RingPart,
        /// Its guest physical address.
        addr: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// A ring area does not lie inside guest memory.
    #[error("{part:?} at {addr:#x} ({len} bytes) is not inside guest memory")]
    RingOutOfMemory {
        /// The area.
        part: RingPart,
        /// Its guest physical address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// `avail.idx` ran more than the queue size ahead of the device's next available index.
    #[error("avail.idx {avail_idx} is {ahead} entries ahead of next_avail {next_avail}, more than the queue size {size}")]
    AvailIdxJump {
        /// The index read from the available ring.
        avail_idx: u16,
        /// The device's next available index.
        next_avail: u16,
        /// `avail_idx - next_avail` modulo 2^16.
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// A head index read from the available ring is not below the queue size.
    #[error("head index {head} is not below the queue size {size}")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A `next` field is not below the length of the table it indexes.
    #[error("descriptor {index} has next {next}, not below the table length {table_len}")]
    NextOutOfRange {
        /// Index of the descriptor carrying the bad `next`.
        index: u16,
        /// The `next` value.
        next: u16,
        /// Entries in the table (queue size, or indirect table length / 16).
        table_len: u32,
    },
    /// The chain is longer than its table allows: a loop, or simply too long.
    #[error("descriptor chain longer than {limit} descriptors (a loop?)")]
    ChainTooLong {
        /// The limit that was exceeded.
        limit: u32,
    },
    /// `addr + len` of a descriptor overflows 64 bits.
    #[error("descriptor {index}: addr {addr:#x} + len {len} overflows")]
    AddrLenOverflow {
        /// Index of the descriptor in its table.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A buffer (or an indirect table) is not inside guest memory.
    #[error("descriptor {index}: buffer {addr:#x}+{len} is not inside guest memory")]
    BufferOutOfMemory {
        /// Index of the descriptor in its table.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A zero-length buffer while [`ZeroLengthPolicy::Reject`] is configured.
    #[error("descriptor {index} has length 0")]
    ZeroLength {
        /// Index of the descriptor in its table.
        index: u16,
    },
    /// A device-readable descriptor follows a device-writable one (§2.7.4.2).
    #[error("descriptor {index} is device-readable but follows a device-writable one")]
    ReadableAfterWritable {
        /// Index of the descriptor in its table.
        index: u16,
    },
    /// `VIRTQ_DESC_F_INDIRECT` without VIRTIO_F_INDIRECT_DESC negotiated.
    #[error("descriptor {index} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated {
        /// Index of the descriptor.
        index: u16,
    },
    /// `VIRTQ_DESC_F_INDIRECT` inside an indirect table (§2.7.5.3.1).
    #[error("descriptor {index} inside an indirect table is itself indirect")]
    NestedIndirect {
        /// Index of the descriptor in the indirect table.
        index: u16,
    },
    /// `VIRTQ_DESC_F_INDIRECT` together with `VIRTQ_DESC_F_NEXT` (§2.7.5.3.1).
    #[error("descriptor {index} has both INDIRECT and NEXT")]
    IndirectWithNext {
        /// Index of the descriptor.
        index: u16,
    },
    /// The indirect table length is 0, not a multiple of 16, or too large.
    #[error("descriptor {index}: indirect table length {len} is not a non-zero multiple of 16 (at most {max} entries)")]
    IndirectTableLength {
        /// Index of the descriptor.
        index: u16,
        /// The table length in bytes.
        len: u32,
        /// Entry limit.
        max: u32,
    },
    /// The per-notification step budget ran out.
    #[error("step budget exhausted")]
    BudgetExhausted,
}

impl From<(RingPart, OutOfBounds)> for QueueError {
    fn from((part, e): (RingPart, OutOfBounds)) -> Self {
        QueueError::RingOutOfMemory {
            part,
            addr: e.gpa,
            len: e.len,
        }
    }
}

/// What the device does with a zero-length descriptor: the spec is silent (implementation
/// defined).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroLengthPolicy {
    /// Accept it as an empty buffer (default).
    #[default]
    Accept,
    /// Treat it as a malformed chain.
    Reject,
}

/// A bound on the work done for one notification, counted in descriptors read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Steps left.
    pub remaining: u64,
}

impl Budget {
    /// A budget of `steps` descriptor reads.
    pub fn new(steps: u64) -> Self {
        Budget { remaining: steps }
    }

    /// Spends one step; errors when none is left.
    pub fn step(&mut self) -> Result<(), QueueError> {
        if self.remaining == 0 {
            return Err(QueueError::BudgetExhausted);
        }
        self.remaining -= 1;
        Ok(())
    }
}

/// The device-side state of one split virtqueue.
///
/// Addresses are guest physical addresses; sizes are in entries. The queue does not own the
/// guest memory: every operation takes the [`GuestRam`] it works on.
#[derive(Debug, Clone)]
pub struct SplitQueue {
    /// Queue size in entries (a power of 2 once validated).
    pub size: u16,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available ring (driver area).
    pub avail_ring: u64,
    /// Guest physical address of the used ring (device area).
    pub used_ring: u64,
    /// VIRTIO_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// Handling of zero-length descriptors.
    pub zero_length: ZeroLengthPolicy,
    /// Injected bug, for mutant targets. `None` is the reference behaviour.
    pub mutant: Option<Mutant>,
    next_avail: u16,
    next_used: u16,
    signalled_used: u16,
    last_head: u16,
    chain: Vec<Descriptor>,
}

impl SplitQueue {
    /// A queue of `size` entries with all addresses 0 and both indices 0.
    pub fn new(size: u16) -> Self {
        SplitQueue {
            size,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            event_idx: false,
            indirect: false,
            zero_length: ZeroLengthPolicy::Accept,
            mutant: None,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
            last_head: 0,
            chain: Vec::with_capacity(16),
        }
    }

    fn is(&self, m: Mutant) -> bool {
        self.mutant == Some(m)
    }

    /// The device's next available index (free-running, wraps at 2^16).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The device's next used index (the value it last wrote to `used.idx`).
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Sets both ring indices, as a device does when it restores queue state.
    pub fn set_indices(&mut self, next_avail: u16, next_used: u16) {
        self.next_avail = next_avail;
        self.next_used = next_used;
        self.signalled_used = next_used;
    }

    /// Checks size, alignment and placement of the three areas (§2.7, §2.7.1).
    ///
    /// `max` is QueueNumMax. Errors name the first problem found.
    pub fn validate(&self, ram: &GuestRam, max: u16) -> Result<(), QueueError> {
        let size = self.size as u64;
        if self.size == 0 || !self.size.is_power_of_two() || self.size > max {
            return Err(QueueError::InvalidSize {
                size: self.size as u32,
                max,
            });
        }
        let parts = [
            (RingPart::DescriptorTable, self.desc_table, 16, 16 * size),
            (RingPart::AvailRing, self.avail_ring, 2, 6 + 2 * size),
            (RingPart::UsedRing, self.used_ring, 4, 6 + 8 * size),
        ];
        for (part, addr, align, len) in parts {
            if addr % align != 0 {
                return Err(QueueError::Misaligned { part, addr, align });
            }
            // RingEndOffByOne: a part ending at the last byte of RAM is taken as outside.
            let off_by_one =
                self.is(Mutant::RingEndOffByOne) && addr.checked_add(len) == Some(ram.end());
            if !ram.contains(addr, len) || off_by_one {
                return Err(QueueError::RingOutOfMemory { part, addr, len });
            }
        }
        Ok(())
    }

    /// The descriptors of the chain returned by the last successful [`pop`](Self::pop),
    /// indirect tables already resolved, in chain order.
    pub fn chain(&self) -> &[Descriptor] {
        &self.chain
    }

    /// The head index read by the last [`pop`](Self::pop) that got as far as reading one,
    /// also when its chain turned out malformed.
    pub fn last_head(&self) -> u16 {
        self.last_head
    }

    /// Number of entries the driver has made available and the device not yet popped
    /// (`avail.idx - next_avail` modulo 2^16).
    pub fn pending(&self, ram: &mut GuestRam) -> Result<u16, QueueError> {
        let avail_idx = ram
            .read_u16(self.avail_ring.wrapping_add(2))
            .map_err(|e| (RingPart::AvailRing, e))?;
        Ok(avail_idx.wrapping_sub(self.next_avail))
    }

    /// Pops the next available chain.
    ///
    /// Returns `Ok(None)` when the ring is empty, `Ok(Some(head))` with the chain in
    /// [`chain`](Self::chain), or the first rule it breaks. A popped entry is consumed even when
    /// its chain is malformed, so a bad chain is never parsed twice.
    pub fn pop(
        &mut self,
        ram: &mut GuestRam,
        budget: &mut Budget,
    ) -> Result<Option<u16>, QueueError> {
        let avail_idx = ram
            .read_u16(self.avail_ring.wrapping_add(2))
            .map_err(|e| (RingPart::AvailRing, e))?;
        let ahead = avail_idx.wrapping_sub(self.next_avail);
        if ahead == 0 {
            return Ok(None);
        }
        let slot = if self.is(Mutant::QueueSizeZeroAccepted) {
            // B03: `%` by a queue size of 0 divides by zero.
            #[allow(clippy::arithmetic_side_effects)]
            {
                self.next_avail % self.size
            }
        } else {
            self.next_avail & self.size.wrapping_sub(1)
        };
        if ahead > self.size && !self.is(Mutant::AvailIdxJumpUnchecked) {
            return Err(QueueError::AvailIdxJump {
                avail_idx,
                next_avail: self.next_avail,
                ahead,
                size: self.size,
            });
        }
        let head = ram
            .read_u16(self.avail_ring.wrapping_add(4 + 2 * slot as u64))
            .map_err(|e| (RingPart::AvailRing, e))?;
        self.last_head = head;
        if !self.is(Mutant::RejectedChainNotConsumed) {
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        self.walk(ram, head, budget)?;
        if self.is(Mutant::RejectedChainNotConsumed) {
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        Ok(Some(head))
    }

    fn walk(
        &mut self,
        ram: &mut GuestRam,
        head: u16,
        budget: &mut Budget,
    ) -> Result<(), QueueError> {
        self.chain.clear();
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange {
                head,
                size: self.size,
            });
        }
        let mut table = self.desc_table;
        let mut table_len = self.size as u32;
        let mut in_indirect = false;
        let mut index = head;
        let mut count: u32 = 0;
        let mut seen_writable = false;
        loop {
            budget.step()?;
            count += 1;
            if count > table_len && !self.is(Mutant::NoChainLengthCap) {
                return Err(QueueError::ChainTooLong { limit: table_len });
            }
            let mut raw = [0u8; 16];
            let at = table.wrapping_add(16 * index as u64);
            ram.read(at, &mut raw)
                .map_err(|e| (RingPart::DescriptorTable, e))?;
            let d = Descriptor::parse(&raw);
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if in_indirect {
                    return Err(QueueError::NestedIndirect { index });
                }
                if !self.indirect {
                    return Err(QueueError::IndirectNotNegotiated { index });
                }
                if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext { index });
                }
                // §2.7.5.3.1: a chain, indirect table included, is at most Queue Size long.
                let max = (self.size as u32).min(MAX_INDIRECT_ENTRIES);
                if d.len == 0 || !d.len.is_multiple_of(16) || d.len / 16 > max {
                    return Err(QueueError::IndirectTableLength {
                        index,
                        len: d.len,
                        max,
                    });
                }
                self.check_buffer(ram, index, d.addr, d.len)?;
                table = d.addr;
                table_len = d.len / 16;
                in_indirect = true;
                index = 0;
                count = 0;
                continue;
            }
            if d.len == 0 && self.zero_length == ZeroLengthPolicy::Reject {
                return Err(QueueError::ZeroLength { index });
            }
            self.check_buffer(ram, index, d.addr, d.len)?;
            let writable = d.is_write_only();
            if !writable && seen_writable {
                return Err(QueueError::ReadableAfterWritable { index });
            }
            seen_writable |= writable;
            if d.len == 0 && self.is(Mutant::ZeroLengthLoops) {
                // B27: a zero-length buffer is "retried" forever (and not counted).
                count -= 1;
                continue;
            }
            self.chain.push(d);
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next as u32 >= table_len {
                return Err(QueueError::NextOutOfRange {
                    index,
                    next: d.next,
                    table_len,
                });
            }
            index = d.next;
        }
    }

    fn check_buffer(
        &self,
        ram: &GuestRam,
        index: u16,
        addr: u64,
        len: u32,
    ) -> Result<(), QueueError> {
        let Some(end) = addr.checked_add(len as u64) else {
            return Err(QueueError::AddrLenOverflow { index, addr, len });
        };
        let off_by_one = self.is(Mutant::BufferEndOffByOne) && end == ram.end();
        if !ram.contains(addr, len as u64) || off_by_one {
            return Err(QueueError::BufferOutOfMemory { index, addr, len });
        }
        Ok(())
    }

    /// Publishes a used element `{id: head, len}` and advances `used.idx` (§2.7.8).
    ///
    /// `len` is the number of bytes the device wrote into the chain's writable buffers. The
    /// element is written before the index.
    pub fn add_used(&mut self, ram: &mut GuestRam, head: u16, len: u32) -> Result<(), QueueError> {
        let slot = (self.next_used & self.size.wrapping_sub(1)) as u64;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        ram.write(self.used_ring.wrapping_add(4 + 8 * slot), &elem)
            .map_err(|e| (RingPart::UsedRing, e))?;
        self.next_used = if self.is(Mutant::UsedIdxSaturates) {
            self.next_used.saturating_add(1)
        } else {
            self.next_used.wrapping_add(1)
        };
        ram.write_u16(self.used_ring.wrapping_add(2), self.next_used)
            .map_err(|e| (RingPart::UsedRing, e))?;
        Ok(())
    }

    /// Writes `avail_event` (the word after the used ring) with the device's next available
    /// index, as VIRTIO_F_EVENT_IDX asks (§2.7.10). Does nothing without EVENT_IDX.
    pub fn publish_avail_event(&mut self, ram: &mut GuestRam) -> Result<(), QueueError> {
        if !self.event_idx && !self.is(Mutant::AvailEventAlwaysWritten) {
            return Ok(());
        }
        let at = self.used_ring.wrapping_add(4 + 8 * self.size as u64);
        ram.write_u16(at, self.next_avail)
            .map_err(|e| (RingPart::UsedRing, e).into())
    }

    /// Whether a used-buffer notification is due after the used elements added since the last
    /// call (§2.7.7.2).
    ///
    /// Without EVENT_IDX: unless `avail.flags` has `VIRTQ_AVAIL_F_NO_INTERRUPT`. With EVENT_IDX:
    /// when `used_event` lies in the window of indices used since the last call
    /// (`vring_need_event`), ignoring `avail.flags`.
    pub fn needs_notification(&mut self, ram: &mut GuestRam) -> Result<bool, QueueError> {
        let new = self.next_used;
        let old = std::mem::replace(&mut self.signalled_used, new);
        if self.event_idx {
            let at = self.avail_ring.wrapping_add(4 + 2 * self.size as u64);
            let used_event = ram.read_u16(at).map_err(|e| (RingPart::AvailRing, e))?;
            let off_by_one = self.is(Mutant::EventIdxOffByOne);
            let event = if off_by_one {
                used_event.wrapping_add(1)
            } else {
                used_event
            };
            Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = ram
                .read_u16(self.avail_ring)
                .map_err(|e| (RingPart::AvailRing, e))?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0 || self.is(Mutant::IgnoresNoInterrupt))
        }
    }
}
