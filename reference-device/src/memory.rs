//! Guest-memory access for the device side, with bounds checks and optional access recording.
//!
//! Every byte the reference device reads from or writes to guest memory goes through
//! [`GuestRam`]. A range is checked against the guest memory regions without integer overflow
//! before it is touched, and, when recording is switched on, every access is appended to a log
//! that the harness inspects (the "device touched memory it must not" oracle).

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
    VolatileSlice,
};

/// Direction of a device access to guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// The device read guest memory.
    Read,
    /// The device wrote guest memory.
    Write,
}

/// One device access to guest memory: `len` bytes at guest physical address `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryAccess {
    /// Read or write.
    pub kind: AccessKind,
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// Number of bytes.
    pub len: u64,
}

impl MemoryAccess {
    /// Exclusive end address, saturating at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.len)
    }
}

/// An access that falls (partly) outside guest memory, or whose end overflows 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at guest physical address {gpa:#x} are not inside guest memory")]
pub struct OutOfBounds {
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// Length of the access in bytes.
    pub len: u64,
}

/// The guest memory as the device sees it.
///
/// Cloning a [`GuestMemoryMmap`] shares the mapping, so the harness keeps a clone and sees the
/// device's writes. Regions are cached as `[start, end)` pairs so a range check is a few
/// comparisons.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    regions: Vec<(u64, u64)>,
    recording: bool,
    log: Vec<MemoryAccess>,
}

impl GuestRam {
    /// Wraps `mem`. Recording starts switched off.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        let mut regions: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| {
                let start = r.start_addr().0;
                (start, start.saturating_add(r.len()))
            })
            .collect();
        regions.sort_unstable();
        GuestRam {
            mem,
            regions,
            recording: false,
            log: Vec::new(),
        }
    }

    /// Allocates anonymous guest memory of `size` bytes at guest physical address 0.
    ///
    /// Errors when the mapping cannot be created (for example `size` is 0).
    pub fn anonymous(size: u64) -> Result<Self, vm_memory::mmap::FromRangesError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])?;
        Ok(Self::new(mem))
    }

    /// The shared guest memory, for the harness (driver side) to lay out rings.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Total size in bytes of all regions.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|(s, e)| e - s).sum()
    }

    /// Guest physical address one past the highest byte of guest memory.
    pub fn end(&self) -> u64 {
        self.regions.last().map(|r| r.1).unwrap_or(0)
    }

    /// Whether `[gpa, gpa+len)` lies inside one region. A zero-length range is inside when
    /// `gpa` is inside a region or at its end. Never overflows.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        self.regions.iter().any(|&(s, e)| gpa >= s && end <= e)
    }

    /// Switches access recording on or off. Switching it on clears nothing.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// Whether accesses are being recorded.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// The recorded accesses, oldest first.
    pub fn accesses(&self) -> &[MemoryAccess] {
        &self.log
    }

    /// Takes the recorded accesses out of the log.
    pub fn take_accesses(&mut self) -> Vec<MemoryAccess> {
        std::mem::take(&mut self.log)
    }

    fn record(&mut self, kind: AccessKind, gpa: u64, len: u64) {
        if self.recording {
            self.log.push(MemoryAccess { kind, gpa, len });
        }
    }

    /// Reads `buf.len()` bytes at `gpa`. Nothing is read (and nothing recorded) when the range
    /// is not inside guest memory.
    pub fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let len = buf.len() as u64;
        if buf.is_empty() {
            if !self.contains(gpa, len) {
                return Err(OutOfBounds { gpa, len });
            }
            self.record(AccessKind::Read, gpa, len);
            return Ok(());
        }
        // The range lies inside one region, so one slice of that region covers it.
        let slice =
            region_slice(&self.regions, &self.mem, gpa, len).ok_or(OutOfBounds { gpa, len })?;
        if slice.copy_to(buf) != buf.len() {
            return Err(OutOfBounds { gpa, len });
        }
        if self.recording {
            self.log.push(MemoryAccess {
                kind: AccessKind::Read,
                gpa,
                len,
            });
        }
        Ok(())
    }

    /// Writes `data` at `gpa`. Nothing is written (and nothing recorded) when the range is not
    /// inside guest memory.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let len = data.len() as u64;
        if data.is_empty() {
            if !self.contains(gpa, len) {
                return Err(OutOfBounds { gpa, len });
            }
            self.record(AccessKind::Write, gpa, len);
            return Ok(());
        }
        // One region holds the whole range: see `read`.
        let slice =
            region_slice(&self.regions, &self.mem, gpa, len).ok_or(OutOfBounds { gpa, len })?;
        if slice.len() != data.len() {
            return Err(OutOfBounds { gpa, len });
        }
        if self.recording {
            self.log.push(MemoryAccess {
                kind: AccessKind::Write,
                gpa,
                len,
            });
        }
        slice.copy_from(data);
        Ok(())
    }

    /// Reads a little-endian u16 at `gpa`.
    pub fn read_u16(&mut self, gpa: u64) -> Result<u16, OutOfBounds> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a little-endian u16 at `gpa`.
    pub fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), OutOfBounds> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian u32 at `gpa`.
    pub fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), OutOfBounds> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// The volatile slice of `len` (> 0) bytes at `gpa` when the range lies inside one region of
/// `mem` (`regions` are its `[start, end)` pairs).
///
/// Goes to the region directly instead of through `GuestMemoryBackend::get_slice`, whose
/// region lookup and slice iterator cost more than the copy for the small accesses of a
/// virtqueue.
fn region_slice<'a>(
    regions: &[(u64, u64)],
    mem: &'a GuestMemoryMmap,
    gpa: u64,
    len: u64,
) -> Option<VolatileSlice<'a, ()>> {
    let end = gpa.checked_add(len)?;
    let &(start, _) = regions.iter().find(|&&(s, e)| gpa >= s && end <= e)?;
    let region = mem.iter().find(|r| r.start_addr().0 == start)?;
    region
        .get_slice(MemoryRegionAddress(gpa - start), len as usize)
        .ok()
}
