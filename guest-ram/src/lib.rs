//! Guest-memory access for the device side, with bounds checks and optional access recording.
//!
//! Every byte the reference device (`virtio-reference-device`) reads from or writes to guest
//! memory goes through [`GuestRam`]. A range is checked against the guest memory regions
//! without integer overflow before it is touched, and, when recording is switched on, every
//! access is appended to a log that the harness inspects (the "device touched memory it must
//! not" oracle, VQ-DEV-03/05).
//!
//! The bytes live in a vm-memory [`GuestMemoryMmap`], so the same mapping can be handed to
//! other rust-vmm crates (`virtio-queue` in the `queue_chain` fuzz body works on the very bytes
//! the reference device does). An access finds its region in a cached list of `[start, end)`
//! pairs and copies through the region's host address: no vm-memory slice iterator, no
//! volatile slice, which cost more than the copy for the 2- to 16-byte accesses of a
//! virtqueue.
//!
//! # Why a crate of its own
//!
//! Fuzz builds instrument the device side only (`fuzz/coverage-scope.sh`); guest memory is not
//! device logic, any more than `vm-memory` is, and it is the hottest code of every fuzz body
//! (each descriptor, ring index and buffer goes through it). In its own crate it stays out of
//! the instrumentation: no edge counters and no compare tracing on every bounds check. The
//! entry points [`GuestRam::read`] and [`GuestRam::write`] are `#[inline(never)]` so they are
//! not inlined, and so instrumented, into the device code that calls them.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
/// Cloning shares the bytes (the [`GuestMemoryMmap`] shares its mapping), so the harness keeps
/// a clone, or the mapping itself ([`GuestRam::memory`]), and sees the device's writes; the
/// access log is not shared. Regions are cached as `[start, end)` pairs so a range check is a
/// few comparisons.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    regions: Vec<Region>,
    recording: bool,
    log: Vec<MemoryAccess>,
}

impl GuestRam {
    /// Wraps `mem`. Recording starts switched off.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        let mut regions: Vec<Region> = mem
            .iter()
            .map(|r| {
                let start = r.start_addr().0;
                Region {
                    start,
                    end: start.saturating_add(r.len()),
                    host: HostAddress(r.as_ptr()),
                }
            })
            .collect();
        regions.sort_unstable_by_key(|r| r.start);
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

    /// The vm-memory mapping, to hand to other rust-vmm crates or for the harness (driver
    /// side) to lay out rings: it holds the same bytes.
    #[inline]
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Total size in bytes of all regions.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.end - r.start).sum()
    }

    /// Guest physical address one past the highest byte of guest memory.
    pub fn end(&self) -> u64 {
        self.regions.last().map(|r| r.end).unwrap_or(0)
    }

    /// Whether `[gpa, gpa+len)` lies inside one region. A zero-length range is inside when
    /// `gpa` is inside a region or at its end. Never overflows.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        host_range(&self.regions, gpa, len).is_some()
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
            let src = host_range(&self.regions, gpa, len).ok_or(oob)?;
            // SAFETY: `host_range` returned the host address of `len` bytes inside one mapped
            // region of `self.mem`, which this handle keeps alive (see `HostAddress`); `buf` is
            // a distinct Rust allocation of `len` bytes, so the two do not overlap. Other
            // holders of the mapping may write it from another thread: vm-memory's own accesses
            // copy the same way (a plain copy for more than 8 bytes), guest memory being shared
            // by nature.
            unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
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
            let dst = host_range(&self.regions, gpa, len).ok_or(oob)?;
            // SAFETY: as in `read`, with the roles swapped: `data` is a distinct allocation of
            // `len` bytes and `dst` the host address of `len` mapped bytes of one region.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
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

/// One region of the mapping: guest physical `[start, end)` and the host address of `start`.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    host: HostAddress,
}

/// The host address where a region of a [`GuestRam`]'s mapping begins.
///
/// Valid for the region's length as long as the [`GuestMemoryMmap`] it came from lives:
/// vm-memory unmaps a region when the last handle on it drops, and the `GuestRam` holding this
/// address holds a handle on the mapping (a clone shares it), whose regions cannot change.
#[derive(Debug, Clone, Copy)]
struct HostAddress(*mut u8);

// SAFETY: the address is only dereferenced by `GuestRam::read` and `GuestRam::write`, which
// check the range against the region first, while the mapping is alive (see above). vm-memory's
// `GuestMemoryMmap`, which owns the same memory, is itself `Send` and `Sync`.
unsafe impl Send for HostAddress {}
// SAFETY: as for `Send`: a shared reference only copies the address.
unsafe impl Sync for HostAddress {}

/// The host address of the `len` bytes at `gpa` when the range lies inside one region (for
/// `len` 0: `gpa` inside a region or at its end), or `None`.
///
/// A comparison per region and an addition, instead of `GuestMemoryBackend::get_slice`, whose
/// region lookup and slice iterator cost more than the copy for the small accesses of a
/// virtqueue.
fn host_range(regions: &[Region], gpa: u64, len: u64) -> Option<*mut u8> {
    let end = gpa.checked_add(len)?;
    let r = regions.iter().find(|r| gpa >= r.start && end <= r.end)?;
    let offset = usize::try_from(gpa - r.start).ok()?;
    Some(r.host.0.wrapping_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// Bounds: inside, at the end, past the end, overflowing; only what succeeded is logged.
    #[test]
    fn accesses_are_bounds_checked_and_logged() {
        let size = 0x1000u64;
        let mut m = GuestRam::anonymous(size).unwrap();
        m.set_recording(true);
        assert_eq!(m.write(0, &[1, 2, 3]), Ok(()));
        assert_eq!(m.write(size - 2, &[9, 8]), Ok(()));
        assert_eq!(
            m.write(size - 1, &[7, 7]),
            Err(OutOfBounds {
                gpa: size - 1,
                len: 2
            })
        );
        assert!(m.write(u64::MAX - 1, &[1, 2, 3]).is_err());
        assert_eq!(m.write(size, &[]), Ok(()));
        assert!(m.write(size + 1, &[]).is_err());
        let mut b = [0xaa; 4];
        assert_eq!(m.read(0, &mut b), Ok(()));
        assert_eq!(b, [1, 2, 3, 0]);
        assert_eq!(m.read_u16(size - 2), Ok(0x0809));
        let mut b = [0xaa; 3];
        assert!(m.read(size - 2, &mut b).is_err());
        assert_eq!(b, [0xaa; 3], "a failed read leaves the buffer alone");
        assert!(m.read(u64::MAX, &mut [0]).is_err());
        let logged: Vec<_> = m
            .accesses()
            .iter()
            .map(|a| (a.kind, a.gpa, a.len))
            .collect();
        assert_eq!(
            logged,
            [
                (AccessKind::Write, 0, 3),
                (AccessKind::Write, size - 2, 2),
                (AccessKind::Write, size, 0),
                (AccessKind::Read, 0, 4),
                (AccessKind::Read, size - 2, 2),
            ]
        );
    }

    /// Clones and the vm-memory mapping share the bytes, not the log.
    #[test]
    fn clones_and_the_mapping_share_bytes() {
        let mut dev = GuestRam::anonymous(64).unwrap();
        let mut drv = dev.clone();
        dev.set_recording(true);
        drv.write_u16(10, 0xbeef).unwrap();
        assert_eq!(dev.read_u16(10), Ok(0xbeef));
        assert_eq!(dev.accesses().len(), 1);
        assert!(drv.accesses().is_empty());
        assert_eq!(dev.read_u16(63), Err(OutOfBounds { gpa: 63, len: 2 }));
        let v: u16 = dev.memory().read_obj(GuestAddress(10)).unwrap();
        assert_eq!(v, 0xbeef);
        dev.memory().write_obj(0x1234u16, GuestAddress(20)).unwrap();
        assert_eq!(drv.read_u16(20), Ok(0x1234));
    }

    /// Two regions with a hole: each access lands at its own address, none spans the hole.
    #[test]
    fn regions_are_addressed_by_their_start() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .unwrap();
        let mut m = GuestRam::new(mem.clone());
        assert_eq!((m.size(), m.end()), (0x2000, 0x4000));
        m.write_u32(0x3ffc, 0xdead_beef).unwrap();
        m.write_u16(0xffe, 0x55aa).unwrap();
        let v: u32 = mem.read_obj(GuestAddress(0x3ffc)).unwrap();
        assert_eq!(v, 0xdead_beef);
        let v: u16 = mem.read_obj(GuestAddress(0xffe)).unwrap();
        assert_eq!(v, 0x55aa);
        assert!(
            m.write(0xfff, &[1, 2]).is_err(),
            "spans the end of region 0"
        );
        assert!(m.write(0x1000, &[1]).is_err(), "in the hole");
        assert!(m.read(0x2fff, &mut [0, 0]).is_err(), "runs into region 1");
        assert!(m.write(0x3fff, &[1, 2]).is_err(), "past the end");
    }
}
