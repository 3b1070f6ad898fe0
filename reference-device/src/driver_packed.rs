//! The driver side of a packed virtqueue (§2.8): where its three parts live and how a driver
//! makes lists available and collects used descriptors.
//!
//! Works over any [`DriverMemory`]. The driver keeps the Driver Ring Wrap Counter for the
//! descriptors it writes and its own copy of the Device Ring Wrap Counter for the used
//! descriptors it reads (both start at 1, §2.8.1), and the number of ring descriptors each
//! outstanding buffer id occupies, to skip to the next used descriptor (§2.8.6).

use crate::driver::DriverMemory;
use crate::packed::{
    avail_bits, PackedDesc, RING_EVENT_FLAGS_DESC, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED,
};
use crate::regs::VIRTQ_DESC_F_NEXT;
use std::collections::VecDeque;

/// One element of a list the driver makes available: buffer address (guest physical), length
/// in bytes and flags (WRITE, INDIRECT; NEXT is added by the driver model unless `raw_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedElem {
    /// Buffer (or indirect table) address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// WRITE / INDIRECT (and NEXT when `raw_flags`).
    pub flags: u16,
    /// The flags are taken as given (NEXT included), only AVAIL/USED are added: used to
    /// write malformed lists.
    pub raw_flags: bool,
}

/// A used descriptor as the driver collected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedUsed {
    /// Buffer ID the device wrote.
    pub id: u16,
    /// Length the device wrote.
    pub len: u32,
    /// The used descriptor's flags.
    pub flags: u16,
    /// Buffer ids this used descriptor completes, oldest first: just `id`, or with
    /// VIRTIO_F_IN_ORDER the ids of the whole batch ending in `id` (§2.8.8). Empty when `id`
    /// is not outstanding.
    pub completes: Vec<u16>,
    /// Ring position the used descriptor was read from.
    pub pos: u16,
}

/// Placement of one packed virtqueue (guest physical addresses) and the driver's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverPackedQueue {
    /// Queue size in descriptors.
    pub size: u16,
    /// Descriptor ring (16-byte aligned, 16·size bytes): QueueDesc.
    pub desc: u64,
    /// Driver Event Suppression (4 bytes, 4-aligned): QueueDriver.
    pub driver_event: u64,
    /// Device Event Suppression (4 bytes, 4-aligned): QueueDevice.
    pub device_event: u64,
    /// Next ring position the driver writes.
    pub next_avail: u16,
    /// Driver Ring Wrap Counter.
    pub avail_wrap: bool,
    /// Next ring position a used descriptor is expected at.
    pub next_used: u16,
    /// The driver's copy of the Device Ring Wrap Counter.
    pub used_wrap: bool,
    /// VIRTIO_F_IN_ORDER was negotiated.
    pub in_order: bool,
    /// Outstanding buffers in the order they were made available: (id, ring descriptors).
    pub outstanding: VecDeque<(u16, u16)>,
}

impl DriverPackedQueue {
    /// The harness layout: descriptor ring at `base`, the driver event suppression structure
    /// at the next 4096-byte boundary after it, the device event suppression 4 bytes later.
    pub fn modern(base: u64, size: u16) -> Self {
        let ring_end = base + 16 * size as u64;
        let driver_event = (ring_end + 4095) & !4095;
        DriverPackedQueue {
            size,
            desc: base,
            driver_event,
            device_event: driver_event + 4,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            in_order: false,
            outstanding: VecDeque::new(),
        }
    }

    /// Bytes from `desc` to the end of the device event suppression structure.
    pub fn footprint(&self) -> u64 {
        self.device_event + 4 - self.desc
    }

    /// Zeroes the ring and both event suppression structures (the initial state: §2.8.13
    /// says the descriptor ring is zero-initialized; flags 0 = notifications enabled).
    pub fn clear<M: DriverMemory>(&self, mem: &mut M) -> Result<(), M::Error> {
        mem.write_bytes(self.desc, &vec![0u8; self.footprint() as usize])
    }

    /// Ring descriptors still free for new lists.
    pub fn free(&self) -> u16 {
        let used: u32 = self.outstanding.iter().map(|&(_, n)| n as u32).sum();
        (self.size as u32).saturating_sub(used) as u16
    }

    /// The smallest buffer id (below the queue size) that is not outstanding.
    pub fn free_id(&self) -> u16 {
        (0..self.size.max(1))
            .find(|id| !self.outstanding.iter().any(|&(o, _)| o == *id))
            .unwrap_or(0)
    }

    fn step(&self, pos: u16, wrap: bool) -> (u16, bool) {
        if pos as u32 + 1 >= self.size as u32 {
            (0, !wrap)
        } else {
            (pos + 1, wrap)
        }
    }

    /// Writes `elems` as one list with buffer id `id` in the last descriptor, every
    /// descriptor's flags marked available, the first descriptor's flags written last
    /// (§2.8.6, §2.8.21). Returns the ring position of the first descriptor.
    pub fn make_available<M: DriverMemory>(
        &mut self,
        mem: &mut M,
        elems: &[PackedElem],
        id: u16,
    ) -> Result<u16, M::Error> {
        let first = self.next_avail;
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        let mut head_flags = 0;
        for (k, e) in elems.iter().enumerate() {
            let last = k + 1 == elems.len();
            let mut flags =
                (e.flags & !(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) | avail_bits(wrap);
            if !e.raw_flags && !last {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let d = PackedDesc {
                addr: e.addr,
                len: e.len,
                id,
                flags: if k == 0 { 0 } else { flags },
            };
            let at = self.desc + 16 * pos as u64;
            if k == 0 {
                head_flags = flags;
                mem.write_bytes(at, &d.encode()[..14])?;
            } else {
                mem.write_bytes(at, &d.encode())?;
            }
            (pos, wrap) = self.step(pos, wrap);
        }
        mem.write_u16(self.desc + 16 * first as u64 + 14, head_flags)?;
        self.next_avail = pos;
        self.avail_wrap = wrap;
        self.outstanding.push_back((id, elems.len().max(1) as u16));
        Ok(first)
    }

    /// Reads the descriptor at ring position `pos`.
    pub fn read_desc<M: DriverMemory>(
        &self,
        mem: &mut M,
        pos: u16,
    ) -> Result<PackedDesc, M::Error> {
        let mut raw = [0u8; 16];
        mem.read_bytes(self.desc + 16 * pos as u64, &mut raw)?;
        Ok(PackedDesc::parse(&raw))
    }

    /// Collects the used descriptors written since the last call, at most `limit`, oldest
    /// first, skipping forward by the descriptors of each completed buffer (or batch, with
    /// VIRTIO_F_IN_ORDER). A used id that is not outstanding is returned with empty
    /// `completes`, and the driver skips one descriptor.
    pub fn take_used<M: DriverMemory>(
        &mut self,
        mem: &mut M,
        limit: usize,
    ) -> Result<Vec<PackedUsed>, M::Error> {
        let mut out = Vec::new();
        while out.len() < limit.min(self.size as usize) {
            let d = self.read_desc(mem, self.next_used)?;
            if !d.is_used(self.used_wrap) {
                break;
            }
            let mut completes = Vec::new();
            let mut skip: u32 = 0;
            if let Some(i) = self.outstanding.iter().position(|&(o, _)| o == d.id) {
                let range = if self.in_order { 0..=i } else { i..=i };
                for (o, n) in self.outstanding.drain(range) {
                    completes.push(o);
                    skip += n as u32;
                }
            } else {
                skip = 1;
            }
            out.push(PackedUsed {
                id: d.id,
                len: d.len,
                flags: d.flags,
                completes,
                pos: self.next_used,
            });
            for _ in 0..skip.min(self.size as u32) {
                (self.next_used, self.used_wrap) = self.step(self.next_used, self.used_wrap);
            }
        }
        Ok(out)
    }

    /// Writes the Driver Event Suppression structure: `flags` (ENABLE 0, DISABLE 1, DESC 2)
    /// and, for DESC, the ring offset and wrap counter of the descriptor to notify at.
    pub fn set_driver_event<M: DriverMemory>(
        &self,
        mem: &mut M,
        flags: u16,
        off: u16,
        wrap: bool,
    ) -> Result<(), M::Error> {
        let off_wrap = (off & 0x7fff) | if wrap { 0x8000 } else { 0 };
        if flags == RING_EVENT_FLAGS_DESC {
            mem.write_u16(self.driver_event, off_wrap)?;
        }
        mem.write_u16(self.driver_event + 2, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use crate::packed::PackedQueue;
    use crate::queue::Budget;
    use crate::regs::VIRTQ_DESC_F_WRITE;

    #[test]
    fn driver_and_device_agree_across_wraps_and_chains() {
        let ram = GuestRam::anonymous(1 << 20).unwrap();
        let mut mem = ram.memory().clone();
        let mut ram = ram;
        for size in [1u16, 2, 3, 4, 7] {
            let mut dq = DriverPackedQueue::modern(0x1000, size);
            dq.clear(&mut mem).unwrap();
            let mut q = PackedQueue::new(size);
            q.desc_ring = dq.desc;
            q.driver_event = dq.driver_event;
            q.device_event = dq.device_event;
            for round in 0..20u16 {
                let n = (round % size.min(3)) + 1;
                let elems: Vec<PackedElem> = (0..n)
                    .map(|k| PackedElem {
                        addr: 0x8000 + 64 * k as u64,
                        len: 8,
                        flags: VIRTQ_DESC_F_WRITE,
                        raw_flags: false,
                    })
                    .collect();
                let id = dq.free_id();
                dq.make_available(&mut mem, &elems, id).unwrap();
                let c = q.pop(&mut ram, &mut Budget::new(64)).unwrap().unwrap();
                assert_eq!((c.id, c.count), (id, n), "size {size} round {round}");
                q.add_used(&mut ram, c.id, 8, c.count).unwrap();
                let used = dq.take_used(&mut mem, 16).unwrap();
                assert_eq!(used.len(), 1, "size {size} round {round}");
                assert_eq!(used[0].completes, vec![id]);
                assert_eq!(dq.free(), size);
            }
        }
    }
}
