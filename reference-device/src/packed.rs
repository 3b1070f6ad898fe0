//! The packed virtqueue (VIRTIO 1.3 §2.8), device side.
//!
//! [`PackedQueue`] reads driver descriptors from the descriptor ring in ring order, resolves
//! chains (`VIRTQ_DESC_F_NEXT`, consecutive ring entries) and indirect tables, validates every
//! descriptor before a buffer is touched, and writes used descriptors back into the ring. It
//! shares [`Descriptor`], [`Budget`] and [`QueueError`] with the split ring ([`crate::queue`]).
//!
//! Ring state (§2.8.1): the device keeps the position of the next driver descriptor it will
//! read and the Driver Ring Wrap Counter value that marks it available, and the position and
//! Device Ring Wrap Counter of the next used descriptor it will write. Both counters start at
//! 1 and flip each time the position passes the last descriptor of the ring.
//!
//! A descriptor is available when its AVAIL bit equals the expected wrap counter and its USED
//! bit does not (§2.8.1). Only the first descriptor of a list is tested: the driver makes
//! the others available before it (§2.8.6), and the device reads them as part of the list.
//! What the reference enforces (each a [`QueueError`]):
//! - a list is at most `size` descriptors long, an indirect table at most `size` entries
//!   (§2.8.5), which also bounds a list whose every descriptor has NEXT;
//! - buffers lie inside guest memory (`addr + len` without overflow);
//! - device-readable elements come before device-writable ones (§2.8.17);
//! - `VIRTQ_DESC_F_INDIRECT` only with VIRTIO_F_INDIRECT_DESC, never with NEXT, never inside a
//!   NEXT list (§2.8.19), with a table length that is a non-zero multiple of 16. Inside an
//!   indirect table only the WRITE flag counts; NEXT, INDIRECT and the buffer id are ignored
//!   (§2.8.7).
//!
//! Used descriptors: one per list, written at the position of the list's first descriptor,
//! carrying the buffer id of the list's last descriptor; id and len are written before the
//! flags (a device must not change a descriptor after changing its USED bit, §2.8.15). With
//! VIRTIO_F_IN_ORDER the device may write one used descriptor for a batch, with the id of the
//! batch's last buffer (§2.8.8); see [`PackedQueue::add_used`].

use crate::memory::GuestRam;
use crate::mutant::Mutant;
use crate::queue::{Budget, Descriptor, QueueError, RingPart, ZeroLengthPolicy};
use crate::regs::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Marks a packed descriptor available when it equals the Driver Ring Wrap Counter (§2.8.1).
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Marks a packed descriptor used when it equals the Device Ring Wrap Counter (§2.8.1).
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;
/// Event suppression flags: notifications enabled (§2.8.10).
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags: notifications disabled (§2.8.10).
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags: notify at one descriptor (offset and wrap), only with
/// VIRTIO_F_EVENT_IDX (§2.8.10).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;
/// Largest queue size of a packed virtqueue (§2.8: up to 2^15 entries).
pub const MAX_PACKED_QUEUE_SIZE: u16 = 32768;

/// One packed descriptor as read from memory (§2.8.13): `addr`, `len`, buffer `id`, `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackedDesc {
    /// Buffer address (guest physical).
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// Buffer ID.
    pub id: u16,
    /// Flags (NEXT, WRITE, INDIRECT, AVAIL, USED).
    pub flags: u16,
}

impl PackedDesc {
    /// Decodes the 16-byte little-endian layout.
    pub fn parse(raw: &[u8; 16]) -> Self {
        PackedDesc {
            addr: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
            id: u16::from_le_bytes([raw[12], raw[13]]),
            flags: u16::from_le_bytes([raw[14], raw[15]]),
        }
    }

    /// Encodes the 16-byte little-endian layout.
    pub fn encode(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.id.to_le_bytes());
        raw[14..16].copy_from_slice(&self.flags.to_le_bytes());
        raw
    }

    /// Whether the descriptor is available for a driver whose wrap counter is `wrap`.
    pub fn is_avail(&self, wrap: bool) -> bool {
        let avail = self.flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = self.flags & VIRTQ_DESC_F_USED != 0;
        avail == wrap && used != wrap
    }

    /// Whether the descriptor is used for a device whose wrap counter is `wrap`.
    pub fn is_used(&self, wrap: bool) -> bool {
        let avail = self.flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = self.flags & VIRTQ_DESC_F_USED != 0;
        avail == wrap && used == wrap
    }
}

/// The AVAIL/USED bits of a used descriptor for Device Ring Wrap Counter `wrap` (§2.8.1).
pub fn used_bits(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
    } else {
        0
    }
}

/// The AVAIL/USED bits of an available descriptor for Driver Ring Wrap Counter `wrap`.
pub fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL
    } else {
        VIRTQ_DESC_F_USED
    }
}

/// A list the device read from the ring: its buffer id and how many ring descriptors it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedChain {
    /// Buffer ID of the list (the id of its last ring descriptor).
    pub id: u16,
    /// Ring descriptors the list occupies (1 for an indirect list).
    pub count: u16,
}

/// The device-side state of one packed virtqueue.
///
/// Addresses are guest physical addresses; the queue does not own guest memory.
#[derive(Debug, Clone)]
pub struct PackedQueue {
    /// Queue size in descriptors (1..=32768; need not be a power of 2).
    pub size: u16,
    /// Descriptor ring (QueueDesc, 16-byte aligned, 16·size bytes).
    pub desc_ring: u64,
    /// Driver Event Suppression structure (QueueDriver, 4-byte aligned, 4 bytes); the device
    /// only reads it.
    pub driver_event: u64,
    /// Device Event Suppression structure (QueueDevice, 4-byte aligned, 4 bytes); the device
    /// only writes it (the reference leaves it as the driver initialised it: notifications
    /// enabled).
    pub device_event: u64,
    /// VIRTIO_F_EVENT_IDX was negotiated (RING_EVENT_FLAGS_DESC is valid).
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// VIRTIO_F_IN_ORDER was negotiated.
    pub in_order: bool,
    /// Handling of zero-length descriptors.
    pub zero_length: ZeroLengthPolicy,
    /// Injected bug, for mutant targets.
    pub mutant: Option<Mutant>,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    used_total: u64,
    signalled_total: u64,
    last: PackedChain,
    chain: Vec<Descriptor>,
}

impl PackedQueue {
    /// A queue of `size` descriptors at address 0, both wrap counters 1.
    pub fn new(size: u16) -> Self {
        PackedQueue {
            size,
            desc_ring: 0,
            driver_event: 0,
            device_event: 0,
            event_idx: false,
            indirect: false,
            in_order: false,
            zero_length: ZeroLengthPolicy::Accept,
            mutant: None,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            used_total: 0,
            signalled_total: 0,
            last: PackedChain { id: 0, count: 0 },
            chain: Vec::with_capacity(16),
        }
    }

    fn is(&self, m: Mutant) -> bool {
        self.mutant == Some(m)
    }

    /// Returns to the initial ring state: positions 0, both wrap counters 1 (§2.8.1).
    pub fn reset_state(&mut self) {
        self.next_avail = 0;
        self.avail_wrap = true;
        self.next_used = 0;
        self.used_wrap = true;
        self.used_total = 0;
        self.signalled_total = 0;
    }

    /// Position of the next driver descriptor and the wrap counter that marks it available.
    pub fn next_avail(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    /// Position of the next used descriptor and the Device Ring Wrap Counter.
    pub fn next_used(&self) -> (u16, bool) {
        (self.next_used, self.used_wrap)
    }

    /// Checks size, alignment and placement of the three areas (§2.8.10.1).
    ///
    /// `max` is QueueNumMax. Errors name the first problem found.
    pub fn validate(&self, ram: &GuestRam, max: u16) -> Result<(), QueueError> {
        if self.size == 0 || self.size > max || self.size > MAX_PACKED_QUEUE_SIZE {
            return Err(QueueError::InvalidSize {
                size: self.size as u32,
                max: max.min(MAX_PACKED_QUEUE_SIZE),
            });
        }
        let parts = [
            (
                RingPart::DescriptorTable,
                self.desc_ring,
                16,
                16 * self.size as u64,
            ),
            (RingPart::AvailRing, self.driver_event, 4, 4),
            (RingPart::UsedRing, self.device_event, 4, 4),
        ];
        for (part, addr, align, len) in parts {
            if addr % align != 0 {
                return Err(QueueError::Misaligned { part, addr, align });
            }
            if !ram.contains(addr, len) {
                return Err(QueueError::RingOutOfMemory { part, addr, len });
            }
        }
        Ok(())
    }

    /// The descriptors of the list returned by the last successful [`pop`](Self::pop),
    /// indirect tables resolved, in list order.
    pub fn chain(&self) -> &[Descriptor] {
        &self.chain
    }

    /// The list the last [`pop`](Self::pop) consumed, also when it was malformed (then `id`
    /// is the id of the last descriptor read and `count` the descriptors consumed).
    pub fn last_chain(&self) -> PackedChain {
        self.last
    }

    fn read_ring(&self, ram: &mut GuestRam, pos: u16) -> Result<PackedDesc, QueueError> {
        let mut raw = [0u8; 16];
        ram.read(self.desc_ring.wrapping_add(16 * pos as u64), &mut raw)
            .map_err(|e| (RingPart::DescriptorTable, e))?;
        Ok(PackedDesc::parse(&raw))
    }

    /// Advances a (position, wrap) pair by `n` descriptors.
    fn advance(&self, pos: u16, wrap: bool, n: u16) -> (u16, bool) {
        let size = self.size.max(1) as u32;
        let p = pos as u32 + n as u32;
        if p >= size {
            ((p - size) as u16, !wrap)
        } else {
            (p as u16, wrap)
        }
    }

    /// Reads the next available list.
    ///
    /// Returns `Ok(None)` when the next descriptor is not available, `Ok(Some(chain))` with the
    /// elements in [`chain`](Self::chain), or the first rule the list breaks. The descriptors
    /// read are consumed even when the list is malformed, so a bad list is never parsed twice.
    pub fn pop(
        &mut self,
        ram: &mut GuestRam,
        budget: &mut Budget,
    ) -> Result<Option<PackedChain>, QueueError> {
        self.chain.clear();
        if self.size == 0 {
            return Ok(None);
        }
        let first = self.read_ring(ram, self.next_avail)?;
        if !first.is_avail(self.avail_wrap) {
            return Ok(None);
        }
        let mut count: u16 = 0;
        let result = self.walk(ram, budget, &mut count);
        let indirect_list = first.flags & VIRTQ_DESC_F_INDIRECT != 0;
        let (p, w) = self.advance(self.next_avail, self.avail_wrap, count.max(1));
        let exact = p == 0 && w != self.avail_wrap;
        self.next_avail = p;
        // Mutant: the counter is not flipped when a list ends exactly at the ring's end.
        if !(exact && self.is(Mutant::PackedWrapNotFlipped)) {
            self.avail_wrap = w;
        }
        self.last = PackedChain {
            id: self.last.id,
            count: count.max(1),
        };
        // Mutant: an indirect list counts its table's entries, not its one ring descriptor.
        let used_count = if indirect_list && self.is(Mutant::PackedUsedSkipsTableEntries) {
            self.chain.len().clamp(1, self.size as usize) as u16
        } else {
            count.max(1)
        };
        result.map(|id| {
            let c = PackedChain {
                id,
                count: used_count,
            };
            self.last = c;
            Some(c)
        })
    }

    fn walk(
        &mut self,
        ram: &mut GuestRam,
        budget: &mut Budget,
        count: &mut u16,
    ) -> Result<u16, QueueError> {
        let mut pos = self.next_avail;
        let mut seen_writable = false;
        loop {
            budget.step()?;
            let limit = self.size as u32;
            if *count as u32 >= limit && !self.is(Mutant::PackedNoListCap) {
                return Err(QueueError::ChainTooLong { limit });
            }
            let d = self.read_ring(ram, pos)?;
            *count = count.wrapping_add(1);
            self.last.id = d.id;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(QueueError::IndirectNotNegotiated { index: pos });
                }
                if d.flags & VIRTQ_DESC_F_NEXT != 0 || *count > 1 {
                    return Err(QueueError::IndirectWithNext { index: pos });
                }
                self.walk_indirect(ram, budget, pos, &d)?;
                return Ok(d.id);
            }
            let next = self.advance(pos, true, 1).0;
            let mut flags = d.flags;
            if self.is(Mutant::PackedWriteFlagOfNext) && flags & VIRTQ_DESC_F_NEXT != 0 {
                let ahead = self.read_ring(ram, next)?.flags;
                flags = (flags & !VIRTQ_DESC_F_WRITE) | (ahead & VIRTQ_DESC_F_WRITE);
            }
            self.element(ram, pos, d.addr, d.len, flags, &mut seen_writable)?;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(d.id);
            }
            pos = next;
        }
    }

    fn walk_indirect(
        &mut self,
        ram: &mut GuestRam,
        budget: &mut Budget,
        pos: u16,
        d: &PackedDesc,
    ) -> Result<(), QueueError> {
        let max = self.size as u32;
        if d.len == 0 || !d.len.is_multiple_of(16) || d.len / 16 > max {
            return Err(QueueError::IndirectTableLength {
                index: pos,
                len: d.len,
                max,
            });
        }
        self.check_buffer(ram, pos, d.addr, d.len)?;
        let mut seen_writable = false;
        for k in 0..d.len / 16 {
            budget.step()?;
            let mut raw = [0u8; 16];
            ram.read(d.addr.wrapping_add(16 * k as u64), &mut raw)
                .map_err(|e| (RingPart::DescriptorTable, e))?;
            let e = PackedDesc::parse(&raw);
            // §2.8.7: only WRITE is valid inside the table; the rest is ignored.
            let flags = e.flags & VIRTQ_DESC_F_WRITE;
            self.element(ram, k as u16, e.addr, e.len, flags, &mut seen_writable)?;
        }
        Ok(())
    }

    fn element(
        &mut self,
        ram: &GuestRam,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        seen_writable: &mut bool,
    ) -> Result<(), QueueError> {
        if len == 0 && self.zero_length == ZeroLengthPolicy::Reject {
            return Err(QueueError::ZeroLength { index });
        }
        self.check_buffer(ram, index, addr, len)?;
        let writable = flags & VIRTQ_DESC_F_WRITE != 0;
        if !writable && *seen_writable {
            return Err(QueueError::ReadableAfterWritable { index });
        }
        *seen_writable |= writable;
        self.chain.push(Descriptor {
            addr,
            len,
            flags: flags & (VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT),
            next: 0,
        });
        Ok(())
    }

    fn check_buffer(
        &self,
        ram: &GuestRam,
        index: u16,
        addr: u64,
        len: u32,
    ) -> Result<(), QueueError> {
        let Some(_) = addr.checked_add(len as u64) else {
            return Err(QueueError::AddrLenOverflow { index, addr, len });
        };
        if !ram.contains(addr, len as u64) {
            return Err(QueueError::BufferOutOfMemory { index, addr, len });
        }
        Ok(())
    }

    /// Writes one used descriptor `{id, len}` at the next used position and skips `count`
    /// descriptors (§2.8.6, §2.8.8): id and len first, then the flags with AVAIL and USED
    /// equal to the Device Ring Wrap Counter and WRITE when `len` > 0 (§2.8.3).
    ///
    /// `count` is the number of ring descriptors the buffer (or, in order, the batch of
    /// buffers) occupied; `len` the bytes written into the (last) buffer.
    pub fn add_used(
        &mut self,
        ram: &mut GuestRam,
        id: u16,
        len: u32,
        count: u16,
    ) -> Result<(), QueueError> {
        let at = self.desc_ring.wrapping_add(16 * self.next_used as u64);
        let wrap = if self.is(Mutant::PackedUsedWrapBitConstant) {
            true
        } else {
            self.used_wrap
        };
        let flags = used_bits(wrap) | if len > 0 { VIRTQ_DESC_F_WRITE } else { 0 };
        let mut idlen = [0u8; 6];
        idlen[..4].copy_from_slice(&len.to_le_bytes());
        idlen[4..].copy_from_slice(&id.to_le_bytes());
        let flags_first = self.is(Mutant::PackedUsedFlagsBeforeId);
        if flags_first {
            ram.write_u16(at.wrapping_add(14), flags)
                .map_err(|e| (RingPart::DescriptorTable, e))?;
        }
        ram.write(at.wrapping_add(8), &idlen)
            .map_err(|e| (RingPart::DescriptorTable, e))?;
        if !flags_first {
            ram.write_u16(at.wrapping_add(14), flags)
                .map_err(|e| (RingPart::DescriptorTable, e))?;
        }
        let n = count.clamp(1, self.size.max(1));
        (self.next_used, self.used_wrap) = self.advance(self.next_used, self.used_wrap, n);
        self.used_total = self.used_total.wrapping_add(n as u64);
        Ok(())
    }

    /// Whether a used buffer notification is due for the used descriptors written since the
    /// last call, per the Driver Event Suppression structure (§2.8.10, §2.8.14): ENABLE
    /// notifies, DISABLE does not, DESC (with VIRTIO_F_EVENT_IDX) notifies when the used
    /// position passed the given offset with the given wrap counter. DESC without EVENT_IDX
    /// and the reserved value 3 are treated as ENABLE.
    pub fn needs_notification(&mut self, ram: &mut GuestRam) -> Result<bool, QueueError> {
        let old = std::mem::replace(&mut self.signalled_total, self.used_total);
        let new = self.used_total;
        let off_wrap = ram
            .read_u16(self.driver_event)
            .map_err(|e| (RingPart::AvailRing, e))?;
        let flags = ram
            .read_u16(self.driver_event.wrapping_add(2))
            .map_err(|e| (RingPart::AvailRing, e))?
            & 3;
        if self.is(Mutant::PackedIgnoresEventSuppression) {
            return Ok(true);
        }
        Ok(match flags {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC if self.event_idx => {
                let size = self.size.max(1) as u64;
                let off = (off_wrap & 0x7fff) as u64;
                let wrap = off_wrap & 0x8000 != 0;
                if off >= size {
                    false
                } else {
                    // Absolute descriptor counts: the wrap counter is 1 in even laps.
                    let target = off + if wrap { 0 } else { size };
                    let period = 2 * size;
                    let first = old + (target + period - old % period) % period;
                    first < new
                }
            }
            _ => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: u64 = 0x1000;
    const DRV: u64 = 0x2000;
    const DEV: u64 = 0x2004;
    const BUF: u64 = 0x8000;

    fn setup(size: u16) -> (PackedQueue, GuestRam) {
        let ram = GuestRam::anonymous(1 << 20).unwrap();
        let mut q = PackedQueue::new(size);
        q.desc_ring = RING;
        q.driver_event = DRV;
        q.device_event = DEV;
        q.indirect = true;
        (q, ram)
    }

    /// Driver side: writes `descs` (addr, len, flags) as one list at `pos` with wrap `wrap`,
    /// head flags last; returns the next (pos, wrap).
    fn post(
        ram: &mut GuestRam,
        size: u16,
        pos: u16,
        wrap: bool,
        id: u16,
        descs: &[(u64, u32, u16)],
    ) -> (u16, bool) {
        let (mut p, mut w) = (pos, wrap);
        let mut head_flags = 0;
        for (k, &(addr, len, f)) in descs.iter().enumerate() {
            let last = k + 1 == descs.len();
            let flags = f | avail_bits(w) | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let d = PackedDesc {
                addr,
                len,
                id: if last { id } else { 0xdead },
                flags: if k == 0 { 0 } else { flags },
            };
            ram.write(RING + 16 * p as u64, &d.encode()).unwrap();
            if k == 0 {
                head_flags = flags;
            }
            p += 1;
            if p == size {
                p = 0;
                w = !w;
            }
        }
        ram.write_u16(RING + 16 * pos as u64 + 14, head_flags)
            .unwrap();
        (p, w)
    }

    fn used_at(ram: &mut GuestRam, pos: u16) -> PackedDesc {
        let mut raw = [0u8; 16];
        ram.read(RING + 16 * pos as u64, &mut raw).unwrap();
        PackedDesc::parse(&raw)
    }

    #[test]
    fn empty_ring_pops_nothing() {
        let (mut q, mut ram) = setup(4);
        assert_eq!(q.pop(&mut ram, &mut Budget::new(100)), Ok(None));
    }

    #[test]
    fn chain_wraps_and_used_descriptor_skips_it() {
        let (mut q, mut ram) = setup(4);
        let mut b = Budget::new(100);
        let (mut p, mut w) = (0, true);
        for round in 0..5u16 {
            // A 3-descriptor list: crosses the ring end in later rounds.
            (p, w) = post(
                &mut ram,
                4,
                p,
                w,
                round,
                &[
                    (BUF, 8, 0),
                    (BUF + 16, 8, 0),
                    (BUF + 32, 8, VIRTQ_DESC_F_WRITE),
                ],
            );
            let start = q.next_used();
            let c = q.pop(&mut ram, &mut b).unwrap().unwrap();
            assert_eq!(
                c,
                PackedChain {
                    id: round,
                    count: 3
                }
            );
            assert_eq!(q.chain().len(), 3);
            q.add_used(&mut ram, c.id, 8, c.count).unwrap();
            let u = used_at(&mut ram, start.0);
            assert!(u.is_used(start.1), "round {round}: {u:?}");
            assert_eq!((u.id, u.len), (round, 8));
            assert_eq!(q.next_avail(), (p, w));
            assert_eq!(q.next_used(), (p, w));
        }
    }

    #[test]
    fn exact_full_ring_wrap_flips_the_counter() {
        let (mut q, mut ram) = setup(2);
        let mut b = Budget::new(100);
        let (mut p, mut w) = (0, true);
        for id in 0..8u16 {
            (p, w) = post(&mut ram, 2, p, w, id, &[(BUF, 4, VIRTQ_DESC_F_WRITE)]);
            let c = q.pop(&mut ram, &mut b).unwrap().unwrap();
            q.add_used(&mut ram, c.id, 4, c.count).unwrap();
        }
        assert_eq!(q.next_avail(), (0, true));
        let (mut q2, mut ram2) = setup(2);
        q2.mutant = Some(Mutant::PackedWrapNotFlipped);
        let (p, w) = post(&mut ram2, 2, 0, true, 0, &[(BUF, 4, VIRTQ_DESC_F_WRITE)]);
        post(&mut ram2, 2, p, w, 1, &[(BUF, 4, VIRTQ_DESC_F_WRITE)]);
        assert!(q2.pop(&mut ram2, &mut b).unwrap().is_some());
        assert!(q2.pop(&mut ram2, &mut b).unwrap().is_some());
        post(&mut ram2, 2, 0, false, 2, &[(BUF, 4, VIRTQ_DESC_F_WRITE)]);
        assert_eq!(q2.pop(&mut ram2, &mut b), Ok(None), "the mutant stalls");
    }

    #[test]
    fn list_longer_than_ring_is_refused() {
        let (mut q, mut ram) = setup(4);
        for pos in 0..4u16 {
            let d = PackedDesc {
                addr: BUF,
                len: 4,
                id: 0,
                flags: VIRTQ_DESC_F_NEXT | avail_bits(true),
            };
            ram.write(RING + 16 * pos as u64, &d.encode()).unwrap();
        }
        let r = q.pop(&mut ram, &mut Budget::new(1000));
        assert_eq!(r, Err(QueueError::ChainTooLong { limit: 4 }));
        // The mutant walks the ring round and round until the budget runs out.
        let (mut m, mut ram2) = setup(4);
        m.mutant = Some(Mutant::PackedNoListCap);
        ram2.write(RING, &[0u8; 64]).unwrap();
        for pos in 0..4u16 {
            let d = PackedDesc {
                addr: BUF,
                len: 4,
                id: 0,
                flags: VIRTQ_DESC_F_NEXT | avail_bits(true),
            };
            ram2.write(RING + 16 * pos as u64, &d.encode()).unwrap();
        }
        assert_eq!(
            m.pop(&mut ram2, &mut Budget::new(1000)),
            Err(QueueError::BudgetExhausted)
        );
        // A first descriptor that is not available is not read as a list.
        let (mut q, mut ram) = setup(4);
        for pos in 0..4u16 {
            let d = PackedDesc {
                addr: BUF,
                len: 4,
                id: 0,
                flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED,
            };
            ram.write(RING + 16 * pos as u64, &d.encode()).unwrap();
        }
        // AVAIL|USED both set is never available for wrap 1.
        assert_eq!(q.pop(&mut ram, &mut Budget::new(1000)), Ok(None));
    }

    #[test]
    fn indirect_table_resolves_and_ignores_its_flags() {
        let (mut q, mut ram) = setup(4);
        let table = 0x9000;
        let t0 = PackedDesc {
            addr: BUF,
            len: 4,
            id: 77,
            flags: VIRTQ_DESC_F_NEXT,
        };
        let t1 = PackedDesc {
            addr: BUF + 16,
            len: 4,
            id: 0,
            flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT,
        };
        ram.write(table, &t0.encode()).unwrap();
        ram.write(table + 16, &t1.encode()).unwrap();
        post(
            &mut ram,
            4,
            0,
            true,
            3,
            &[(table, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE)],
        );
        let c = q.pop(&mut ram, &mut Budget::new(100)).unwrap().unwrap();
        assert_eq!(c, PackedChain { id: 3, count: 1 });
        assert_eq!(q.chain().len(), 2);
        assert!(!q.chain()[0].is_write_only());
        assert!(q.chain()[1].is_write_only());
    }

    #[test]
    fn malformed_lists_are_refused_and_consumed() {
        /// A descriptor list (`addr`, `len`, `flags` each) and whether the device accepts it.
        type Case = (Vec<(u64, u32, u16)>, bool);
        let cases: Vec<Case> = vec![
            (vec![(BUF, 4, VIRTQ_DESC_F_WRITE), (BUF, 4, 0)], false),
            (vec![(u64::MAX - 1, 4, 0)], false),
            (vec![(0x9000, 0, VIRTQ_DESC_F_INDIRECT)], false),
            (vec![(0x9000, 24, VIRTQ_DESC_F_INDIRECT)], false),
            (
                vec![(BUF, 4, 0), (0x9000, 16, VIRTQ_DESC_F_INDIRECT)],
                false,
            ),
            (vec![(0x9000, 16, VIRTQ_DESC_F_INDIRECT)], true),
        ];
        for (descs, no_indirect) in cases {
            let (mut q, mut ram) = setup(4);
            q.indirect = !no_indirect;
            post(&mut ram, 4, 0, true, 1, &descs);
            assert!(q.pop(&mut ram, &mut Budget::new(100)).is_err(), "{descs:?}");
            assert_eq!(q.next_avail().0, descs.len() as u16 % 4, "{descs:?}");
        }
    }

    #[test]
    fn event_suppression_modes() {
        let (mut q, mut ram) = setup(4);
        q.event_idx = true;
        let mut b = Budget::new(100);
        let mut pw = (0, true);
        let mut step = |q: &mut PackedQueue, ram: &mut GuestRam, id| {
            pw = post(ram, 4, pw.0, pw.1, id, &[(BUF, 4, VIRTQ_DESC_F_WRITE)]);
            let c = q.pop(ram, &mut b).unwrap().unwrap();
            q.add_used(ram, c.id, 4, 1).unwrap();
            q.needs_notification(ram).unwrap()
        };
        assert!(step(&mut q, &mut ram, 0));
        ram.write_u16(DRV + 2, RING_EVENT_FLAGS_DISABLE).unwrap();
        assert!(!step(&mut q, &mut ram, 1));
        // DESC: notify when the used descriptor at offset 1 of the second lap (wrap 0) is
        // written: positions 2, 3 (lap 1) and 0 (lap 2) do not, 1 (lap 2) does.
        ram.write_u16(DRV, 1).unwrap();
        ram.write_u16(DRV + 2, RING_EVENT_FLAGS_DESC).unwrap();
        assert!(!step(&mut q, &mut ram, 2));
        assert!(!step(&mut q, &mut ram, 3));
        assert!(!step(&mut q, &mut ram, 0));
        assert!(step(&mut q, &mut ram, 1));
        // Without EVENT_IDX, DESC is not valid: treated as ENABLE.
        q.event_idx = false;
        assert!(step(&mut q, &mut ram, 2));
    }

    #[test]
    fn used_id_and_len_written_before_flags() {
        let (mut q, mut ram) = setup(4);
        post(&mut ram, 4, 0, true, 2, &[(BUF, 4, VIRTQ_DESC_F_WRITE)]);
        let c = q.pop(&mut ram, &mut Budget::new(100)).unwrap().unwrap();
        ram.set_recording(true);
        q.add_used(&mut ram, c.id, 4, c.count).unwrap();
        let w: Vec<u64> = ram.take_accesses().iter().map(|a| a.gpa).collect();
        assert_eq!(w, vec![RING + 8, RING + 14]);
    }
}
