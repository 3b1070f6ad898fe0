//! A reference device with a small, reused guest memory, as a [`Target`]: the fast subject of
//! `mmio_regs` (a fresh [`ReferenceTarget`](crate::target::ReferenceTarget) maps 16 MiB per
//! case), with white-box access to the device for the oracles.
//!
//! Between cases only the bytes that were written (by the driver through
//! [`Target::mem_write`], by the device as its access log shows) are cleared.

use crate::target::reference::guarded_call;
use crate::target::{Capabilities, DeviceKind, IrqEvent, Target, TargetError, TargetInfo};
use virtio_reference_device::{
    AccessKind, BlockBackend, DeviceBackend, DeviceConfig, EntropyBackend, GuestRam, MemoryAccess,
    MmioDevice, Mutant, TransportVersion,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM of a [`SmallTarget`]: 64 KiB at guest physical address 0.
pub const SMALL_RAM: u64 = 0x1_0000;

/// Capacity in 512-byte sectors of a small target's block device.
pub const SMALL_DISK_SECTORS: u64 = 16;

/// Descriptors a small target may read per notification before it reports a hang.
pub const SMALL_STEP_BUDGET: u64 = 1 << 12;

/// The reference device (or a mutant) over [`SMALL_RAM`] bytes of guest memory.
///
/// Panics inside the device are caught and reported as [`TargetError::Crashed`] (the device is
/// gone afterwards); an exhausted step budget is [`TargetError::Hung`].
pub struct SmallTarget {
    device: DeviceKind,
    version: TransportVersion,
    mutant: Option<Mutant>,
    dev: Option<MmioDevice>,
    mem: GuestMemoryMmap,
    /// The driver's view of `mem` (not recorded), used to clear it.
    driver: GuestRam,
    /// Ranges written since the memory was last cleared.
    dirty: Vec<(u64, u64)>,
}

impl SmallTarget {
    /// A device in its power-on state over a fresh [`SMALL_RAM`]-byte guest memory.
    pub fn new(
        device: DeviceKind,
        version: TransportVersion,
        mutant: Option<Mutant>,
    ) -> Result<Self, TargetError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SMALL_RAM as usize)])
            .map_err(|e| TargetError::Unavailable(e.to_string()))?;
        let mut t = SmallTarget {
            device,
            version,
            mutant,
            dev: None,
            driver: GuestRam::new(mem.clone()),
            mem,
            dirty: Vec::new(),
        };
        t.build();
        Ok(t)
    }

    /// Turns this target into a power-on `device` of `version` (with `mutant`), reusing the
    /// guest memory: what was written is zeroed again.
    pub fn reuse(&mut self, device: DeviceKind, version: TransportVersion, mutant: Option<Mutant>) {
        self.device = device;
        self.version = version;
        self.mutant = mutant;
        self.clear();
        self.build();
    }

    fn note_writes(&mut self, log: &[MemoryAccess]) {
        self.dirty.extend(
            log.iter()
                .filter(|a| a.kind == AccessKind::Write)
                .map(|a| (a.gpa, a.end())),
        );
    }

    fn clear(&mut self) {
        static ZEROS: [u8; 4096] = [0; 4096];
        if let Some(mut d) = self.dev.take() {
            let log = d.ram_mut().take_accesses();
            self.note_writes(&log);
        }
        if self.dirty.len() > 256 {
            self.dirty.clear();
            self.dirty.push((0, SMALL_RAM));
        }
        for (start, end) in std::mem::take(&mut self.dirty) {
            let mut at = start.min(SMALL_RAM);
            let end = end.min(SMALL_RAM);
            while at < end {
                let n = (end - at).min(ZEROS.len() as u64);
                let _ = self.driver.write(at, &ZEROS[..n as usize]);
                at += n;
            }
        }
    }

    fn build(&mut self) {
        let mut ram = GuestRam::new(self.mem.clone());
        ram.set_recording(true);
        let mut cfg = DeviceConfig::new(self.version);
        cfg.mutant = self.mutant;
        cfg.step_budget = SMALL_STEP_BUDGET;
        // A 16-sector disk (the ReferenceTarget's has 2048): allocated and zeroed per case.
        let b: Box<dyn DeviceBackend> = match self.device {
            DeviceKind::Block => Box::new(BlockBackend::new(SMALL_DISK_SECTORS)),
            _ => Box::new(EntropyBackend::new(0x5eed)),
        };
        self.dev = Some(MmioDevice::new(cfg, b, ram));
    }

    /// The device, for white-box oracles (`None` after it panicked).
    pub fn device(&mut self) -> Option<&mut MmioDevice> {
        self.dev.as_mut()
    }

    fn call<R>(&mut self, f: impl FnOnce(&mut MmioDevice) -> R) -> Result<R, TargetError> {
        let r = guarded_call(&mut self.dev, f);
        if self.dev.is_none() {
            // The device panicked and its access log is gone with it: clear all of the
            // memory next time.
            self.dirty.push((0, SMALL_RAM));
        }
        r
    }
}

impl Target for SmallTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: match self.mutant {
                Some(m) => format!("mutant:{}", m.name()),
                None => "reference".into(),
            },
            device: self.device.name().into(),
            version: self.version.register_value(),
            implementation: format!("virtio-reference-device {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            config_change: true,
            memory_log: true,
            interrupts: true,
        }
    }

    fn ram_size(&self) -> u64 {
        SMALL_RAM
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.call(|d| d.read(offset, data))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|d| d.write(offset, data))
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.driver
            .write(gpa, data)
            .map_err(|e| TargetError::Protocol(format!("guest memory write at {gpa:#x}: {e}")))?;
        self.dirty.push((gpa, gpa + data.len() as u64));
        Ok(())
    }

    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.driver
            .read(gpa, buf)
            .map_err(|e| TargetError::Protocol(format!("guest memory read at {gpa:#x}: {e}")))
    }

    fn fresh(&mut self) -> Result<(), TargetError> {
        self.clear();
        self.build();
        Ok(())
    }

    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        self.dev
            .as_mut()
            .map(|d| {
                d.take_interrupts()
                    .into_iter()
                    .map(IrqEvent::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        let log = self.dev.as_mut()?.ram_mut().take_accesses();
        self.note_writes(&log);
        Some(log)
    }

    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        self.call(|d| d.update_config(off, data))
    }
}
