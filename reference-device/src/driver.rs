//! The driver side of a split virtqueue: where the rings live and how a driver writes them.
//!
//! Shared by the reference device's tests, the conformance harness and the fuzzers, over any
//! guest memory that implements [`DriverMemory`] (in-process memory, or a remote target's RAM
//! reached over a protocol). Indices are free-running u16 values that wrap at 2^16, as in
//! §2.7.6 and §2.7.8; nothing here assumes the queue starts at index 0.

use crate::queue::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory as the driver reaches it.
pub trait DriverMemory {
    /// Error of a failed access (for example an address outside guest RAM, or a broken
    /// connection to a remote target).
    type Error: std::fmt::Debug;
    /// Writes `data` at guest physical address `gpa`.
    fn write_bytes(&mut self, gpa: u64, data: &[u8]) -> Result<(), Self::Error>;
    /// Reads `buf.len()` bytes at guest physical address `gpa`.
    fn read_bytes(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Reads a little-endian u16.
    fn read_u16(&mut self, gpa: u64) -> Result<u16, Self::Error> {
        let mut b = [0u8; 2];
        self.read_bytes(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// Reads a little-endian u32.
    fn read_u32(&mut self, gpa: u64) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.read_bytes(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Writes a little-endian u16.
    fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), Self::Error> {
        self.write_bytes(gpa, &v.to_le_bytes())
    }
}

impl DriverMemory for GuestMemoryMmap {
    type Error = vm_memory::GuestMemoryError;
    fn write_bytes(&mut self, gpa: u64, data: &[u8]) -> Result<(), Self::Error> {
        self.write_slice(data, GuestAddress(gpa))
    }
    fn read_bytes(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.read_slice(buf, GuestAddress(gpa))
    }
}

/// Placement of one split virtqueue in guest memory (guest physical addresses) and the
/// driver's view of its indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverQueue {
    /// Queue size in entries.
    pub size: u16,
    /// Descriptor table (16-byte aligned, 16·size bytes).
    pub desc: u64,
    /// Available ring (2-byte aligned, 6 + 2·size bytes).
    pub avail: u64,
    /// Used ring (4-byte aligned, 6 + 8·size bytes).
    pub used: u64,
    /// The driver's next `avail.idx` value.
    pub avail_idx: u16,
    /// The next used index the driver has not consumed yet.
    pub last_used: u16,
}

/// Rounds `v` up to a multiple of `align` (a power of 2).
fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

impl DriverQueue {
    /// The modern layout used by the harness: descriptor table at `base` (page-aligned is
    /// best), available ring right after it, used ring at the next 4096-byte boundary.
    pub fn modern(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = align_up(avail + 6 + 2 * size as u64, 4096);
        DriverQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The legacy layout of §2.7.2 / §4.2.4: one area at `pfn * page_size`, the used ring
    /// aligned to `align` bytes (a power of 2).
    pub fn legacy(pfn: u32, page_size: u32, size: u16, align: u32) -> Self {
        let desc = pfn as u64 * page_size as u64;
        let avail = desc + 16 * size as u64;
        let used = align_up(avail + 6 + 2 * size as u64, align.max(1) as u64);
        DriverQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Bytes from `desc` to the end of the used ring including `avail_event`.
    pub fn footprint(&self) -> u64 {
        self.used + 6 + 8 * self.size as u64 - self.desc
    }

    /// Address of `used_event` (the word after the available ring).
    pub fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * self.size as u64
    }

    /// Address of `avail_event` (the word after the used ring).
    pub fn avail_event_addr(&self) -> u64 {
        self.used + 4 + 8 * self.size as u64
    }

    /// Zeroes the three areas (the driver's initial state, §2.7.10.1).
    pub fn clear<M: DriverMemory>(&self, mem: &mut M) -> Result<(), M::Error> {
        let zeros = vec![0u8; self.footprint() as usize];
        mem.write_bytes(self.desc, &zeros)
    }

    /// Writes descriptor `index` of the table at `table` (the descriptor table, or an indirect
    /// table's address).
    pub fn write_descriptor_at<M: DriverMemory>(
        mem: &mut M,
        table: u64,
        index: u16,
        d: &Descriptor,
    ) -> Result<(), M::Error> {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        mem.write_bytes(table + 16 * index as u64, &raw)
    }

    /// Writes descriptor `index` of this queue's table.
    pub fn write_descriptor<M: DriverMemory>(
        &self,
        mem: &mut M,
        index: u16,
        d: &Descriptor,
    ) -> Result<(), M::Error> {
        Self::write_descriptor_at(mem, self.desc, index, d)
    }

    /// Puts `heads` into the available ring and then publishes them by advancing `avail.idx`
    /// (entries first, index last, as §2.7.13 orders it).
    pub fn publish<M: DriverMemory>(&mut self, mem: &mut M, heads: &[u16]) -> Result<(), M::Error> {
        for &h in heads {
            let slot = (self.avail_idx % self.size.max(1)) as u64;
            mem.write_u16(self.avail + 4 + 2 * slot, h)?;
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        mem.write_u16(self.avail + 2, self.avail_idx)
    }

    /// Sets `avail.idx` directly (used to start a queue near the 16-bit wrap, or to probe a
    /// jump); the driver's own index follows.
    pub fn set_avail_idx<M: DriverMemory>(
        &mut self,
        mem: &mut M,
        idx: u16,
    ) -> Result<(), M::Error> {
        self.avail_idx = idx;
        mem.write_u16(self.avail + 2, idx)
    }

    /// Writes `avail.flags` (`VIRTQ_AVAIL_F_NO_INTERRUPT` = 1).
    pub fn set_avail_flags<M: DriverMemory>(
        &self,
        mem: &mut M,
        flags: u16,
    ) -> Result<(), M::Error> {
        mem.write_u16(self.avail, flags)
    }

    /// Writes `used_event`.
    pub fn set_used_event<M: DriverMemory>(&self, mem: &mut M, v: u16) -> Result<(), M::Error> {
        mem.write_u16(self.used_event_addr(), v)
    }

    /// Reads `used.idx`.
    pub fn used_idx<M: DriverMemory>(&self, mem: &mut M) -> Result<u16, M::Error> {
        mem.read_u16(self.used + 2)
    }

    /// Reads `used.flags`.
    pub fn used_flags<M: DriverMemory>(&self, mem: &mut M) -> Result<u16, M::Error> {
        mem.read_u16(self.used)
    }

    /// Reads the used element at free-running index `idx`: `(id, len)`.
    pub fn used_elem<M: DriverMemory>(
        &self,
        mem: &mut M,
        idx: u16,
    ) -> Result<(u32, u32), M::Error> {
        let slot = (idx % self.size.max(1)) as u64;
        let mut b = [0u8; 8];
        mem.read_bytes(self.used + 4 + 8 * slot, &mut b)?;
        Ok((
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        ))
    }

    /// Consumes every used element published since the last call, oldest first.
    pub fn take_used<M: DriverMemory>(&mut self, mem: &mut M) -> Result<Vec<(u32, u32)>, M::Error> {
        let idx = self.used_idx(mem)?;
        let n = idx.wrapping_sub(self.last_used);
        let mut out = Vec::with_capacity(n.min(self.size) as usize);
        for _ in 0..n.min(self.size) {
            out.push(self.used_elem(mem, self.last_used)?);
            self.last_used = self.last_used.wrapping_add(1);
        }
        self.last_used = idx;
        Ok(out)
    }
}
