//! Guest-memory access for the device side, with bounds checks and optional access recording.
//!
//! Every byte the reference device (`virtio-reference-device`) reads from or writes to guest
//! memory goes through [`GuestRam`]. A range is checked against the guest memory regions
//! without integer overflow before it is touched, and, when recording is switched on, every
//! access is appended to a log that the harness inspects (the "device touched memory it must
//! not" oracle, VQ-DEV-03/05).
//!
//! Three backings: a [`GuestMemoryMmap`] (what the targets and the tests use: it can be handed
//! to other rust-vmm crates); a flat byte vector at guest physical address 0 shared by clones
//! behind a lock ([`GuestRam::flat`]), where an access is a bounds check and a slice copy
//! instead of a vm-memory region lookup and volatile slice; and the same vector owned by one
//! handle ([`GuestRam::owned`]), without the lock, for a fuzz body that does all its driver and
//! device accesses through one handle (the two atomic operations of a lock cost more than the
//! copy for a descriptor-sized access).
//!
//! # Why a crate of its own
//!
//! Fuzz builds instrument the device side only (`fuzz/coverage-scope.sh`); guest memory is not
//! device logic, any more than `vm-memory` is, and it is the hottest code of every fuzz body
//! (each descriptor, ring index and buffer goes through it). In its own crate it stays out of
//! the instrumentation: no edge counters and no compare tracing on every bounds check. The
//! entry points [`GuestRam::read`] and [`GuestRam::write`] are `#[inline(never)]` so they are
//! not inlined, and so instrumented, into the device code that calls them.

use std::collections::TryReserveError;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// Where the bytes of a [`GuestRam`] live.
#[derive(Debug, Clone)]
enum Backing {
    /// vm-memory's mapping (shared by clones).
    Mmap(GuestMemoryMmap),
    /// One region at guest physical address 0 (shared by clones).
    Flat(Arc<Mutex<Vec<u8>>>),
    /// One region at guest physical address 0 owned by this handle (a clone is a copy).
    Owned(Vec<u8>),
}

/// The guest memory as the device sees it.
///
/// Cloning shares the bytes (a [`GuestMemoryMmap`] shares its mapping; a flat memory its
/// vector), so the harness keeps a clone and sees the device's writes; the access log is not
/// shared. The exception is an owned memory ([`GuestRam::owned`]): its clone is an independent
/// copy. Regions are cached as `[start, end)` pairs so a range check is a few comparisons.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: Backing,
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
            mem: Backing::Mmap(mem),
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

    /// A flat guest memory of `size` bytes at guest physical address 0, zero-filled, not
    /// backed by vm-memory (see the module documentation).
    ///
    /// Errors when `size` bytes cannot be allocated.
    pub fn flat(size: u64) -> Result<Self, TryReserveError> {
        Ok(GuestRam {
            mem: Backing::Flat(Arc::new(Mutex::new(zeroed(size)?))),
            regions: vec![(0, size)],
            recording: false,
            log: Vec::new(),
        })
    }

    /// A flat guest memory of `size` bytes at guest physical address 0, zero-filled, owned by
    /// this handle: accesses take no lock, and a clone copies the bytes instead of sharing
    /// them. For a caller that makes every access, the driver's included, through this one
    /// handle (switching recording off for the driver's: [`GuestRam::set_recording`]).
    ///
    /// Errors when `size` bytes cannot be allocated.
    pub fn owned(size: u64) -> Result<Self, TryReserveError> {
        Ok(GuestRam {
            mem: Backing::Owned(zeroed(size)?),
            regions: vec![(0, size)],
            recording: false,
            log: Vec::new(),
        })
    }

    /// The shared vm-memory mapping, for the harness (driver side) to lay out rings; `None`
    /// for a flat or owned memory ([`GuestRam::flat`], [`GuestRam::owned`]).
    pub fn memory(&self) -> Option<&GuestMemoryMmap> {
        match &self.mem {
            Backing::Mmap(m) => Some(m),
            Backing::Flat(_) | Backing::Owned(_) => None,
        }
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

    /// Empties the access log, keeping its allocation (for a log that is cleared per fuzz
    /// input: [`GuestRam::take_accesses`] would start each input from an empty vector).
    pub fn clear_accesses(&mut self) {
        self.log.clear();
    }

    /// Reads `buf.len()` bytes at `gpa`. Nothing is read (and nothing recorded) when the range
    /// is not inside guest memory.
    #[inline(never)]
    pub fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let len = buf.len() as u64;
        let oob = OutOfBounds { gpa, len };
        if buf.is_empty() {
            if !self.contains(gpa, len) {
                return Err(oob);
            }
        } else {
            match &self.mem {
                Backing::Flat(bytes) => {
                    let bytes = lock(bytes);
                    buf.copy_from_slice(flat_range(&bytes, gpa, len).ok_or(oob)?);
                }
                Backing::Owned(bytes) => {
                    buf.copy_from_slice(flat_range(bytes, gpa, len).ok_or(oob)?);
                }
                Backing::Mmap(mem) => {
                    // The range lies inside one region, so one slice of that region covers it.
                    let slice = region_slice(&self.regions, mem, gpa, len).ok_or(oob)?;
                    if slice.copy_to(buf) != buf.len() {
                        return Err(oob);
                    }
                }
            }
        }
        self.record(AccessKind::Read, gpa, len);
        Ok(())
    }

    /// Writes `data` at `gpa`. Nothing is written (and nothing recorded) when the range is not
    /// inside guest memory.
    #[inline(never)]
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let len = data.len() as u64;
        let oob = OutOfBounds { gpa, len };
        if data.is_empty() {
            if !self.contains(gpa, len) {
                return Err(oob);
            }
        } else {
            match &mut self.mem {
                Backing::Flat(bytes) => {
                    let mut bytes = lock(bytes);
                    flat_range_mut(&mut bytes, gpa, len)
                        .ok_or(oob)?
                        .copy_from_slice(data);
                }
                Backing::Owned(bytes) => {
                    flat_range_mut(bytes, gpa, len)
                        .ok_or(oob)?
                        .copy_from_slice(data);
                }
                Backing::Mmap(mem) => {
                    // One region holds the whole range: see `read`.
                    let slice = region_slice(&self.regions, mem, gpa, len).ok_or(oob)?;
                    if slice.len() != data.len() {
                        return Err(oob);
                    }
                    slice.copy_from(data);
                }
            }
        }
        self.record(AccessKind::Write, gpa, len);
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

/// `size` zero bytes, or the allocation error.
fn zeroed(size: u64) -> Result<Vec<u8>, TryReserveError> {
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(usize::try_from(size).unwrap_or(usize::MAX))?;
    bytes.resize(size as usize, 0);
    Ok(bytes)
}

/// Locks a flat memory. A panic while the lock was held leaves plain bytes, which stay usable.
fn lock(bytes: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    bytes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `len` bytes at `gpa` of a flat memory, when they lie inside it.
fn flat_range(bytes: &[u8], gpa: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(gpa).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// Mutable form of [`flat_range`].
fn flat_range_mut(bytes: &mut [u8], gpa: u64, len: u64) -> Option<&mut [u8]> {
    let start = usize::try_from(gpa).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get_mut(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same accesses on both backings: same results, same bytes, same log.
    #[test]
    fn flat_and_mapped_memories_agree() {
        let size = 0x1000u64;
        let mut a = GuestRam::anonymous(size).unwrap();
        let mut b = GuestRam::flat(size).unwrap();
        let mut c = GuestRam::owned(size).unwrap();
        a.set_recording(true);
        b.set_recording(true);
        c.set_recording(true);
        let writes: [(u64, &[u8]); 6] = [
            (0, &[1, 2, 3]),
            (size - 2, &[9, 8]),
            (size - 1, &[7, 7]),
            (u64::MAX - 1, &[1, 2, 3]),
            (size, &[]),
            (size + 1, &[]),
        ];
        for (gpa, data) in writes {
            let (ra, rb, rc) = (a.write(gpa, data), b.write(gpa, data), c.write(gpa, data));
            assert!(
                ra == rb && rb == rc,
                "write at {gpa:#x}: {ra:?} {rb:?} {rc:?}"
            );
        }
        for (gpa, len) in [
            (0u64, 4usize),
            (size - 2, 2),
            (size - 2, 3),
            (u64::MAX, 1),
            (size, 0),
        ] {
            let (mut x, mut y, mut z) = (vec![0xaa; len], vec![0xaa; len], vec![0xaa; len]);
            let (ra, rb, rc) = (
                a.read(gpa, &mut x),
                b.read(gpa, &mut y),
                c.read(gpa, &mut z),
            );
            assert!(
                ra == rb && rb == rc,
                "read at {gpa:#x}: {ra:?} {rb:?} {rc:?}"
            );
            assert_eq!(x, y, "bytes at {gpa:#x}");
            assert_eq!(y, z, "bytes at {gpa:#x}");
        }
        assert_eq!(a.accesses(), b.accesses());
        assert_eq!(b.accesses(), c.accesses());
        assert_eq!((a.size(), a.end()), (b.size(), b.end()));
        assert_eq!((c.size(), c.end()), (b.size(), b.end()));
        assert!(b.memory().is_none() && c.memory().is_none() && a.memory().is_some());
    }

    /// A clone of an owned memory is a copy: later writes on either side stay on that side.
    #[test]
    fn owned_clones_are_copies() {
        let mut a = GuestRam::owned(64).unwrap();
        a.write_u16(10, 0xbeef).unwrap();
        let mut b = a.clone();
        assert_eq!(b.read_u16(10), Ok(0xbeef));
        b.write_u16(10, 0x1234).unwrap();
        assert_eq!(a.read_u16(10), Ok(0xbeef));
        assert_eq!(a.read_u16(63), Err(OutOfBounds { gpa: 63, len: 2 }));
    }

    /// Clones of a flat memory share the bytes, not the log.
    #[test]
    fn flat_clones_share_bytes() {
        let mut dev = GuestRam::flat(64).unwrap();
        let mut drv = dev.clone();
        dev.set_recording(true);
        drv.write_u16(10, 0xbeef).unwrap();
        assert_eq!(dev.read_u16(10), Ok(0xbeef));
        assert_eq!(dev.accesses().len(), 1);
        assert!(drv.accesses().is_empty());
        assert_eq!(dev.read_u16(63), Err(OutOfBounds { gpa: 63, len: 2 }));
    }
}
