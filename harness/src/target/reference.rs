//! The reference device (optionally with a [`Mutant`]) as an in-process [`Target`].

use super::{Capabilities, DeviceKind, IrqEvent, Target, TargetError, TargetInfo};
use std::panic::{catch_unwind, AssertUnwindSafe};
use virtio_reference_device::{
    BalloonBackend, BlockBackend, ConsoleBackend, DeviceBackend, DeviceConfig, EntropyBackend,
    GuestRam, MemoryAccess, MmioDevice, Mutant, NetBackend, NetOptions, TransportVersion,
    VsockBackend,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM of an in-process target: 16 MiB at guest physical address 0.
pub const REFERENCE_RAM: u64 = 16 << 20;

/// How to build a device instance; kept so [`Target::fresh`] can rebuild it.
pub type DeviceFactory = Box<dyn Fn(GuestRam) -> MmioDevice + Send>;

/// The reference device in process. Panics inside the device (mutants only) are caught and
/// reported as [`TargetError::Crashed`]; an exhausted step budget as [`TargetError::Hung`].
pub struct ReferenceTarget {
    name: String,
    device: DeviceKind,
    version: TransportVersion,
    factory: DeviceFactory,
    dev: Option<MmioDevice>,
    mem: GuestMemoryMmap,
    ram_size: u64,
}

/// Capacity in 512-byte sectors of the block device of [`ReferenceTarget::new`].
pub const REFERENCE_DISK_SECTORS: u64 = 2048;

/// Builds the backend for `device`.
pub fn backend(device: DeviceKind) -> Result<Box<dyn DeviceBackend>, TargetError> {
    backend_with_disk(device, REFERENCE_DISK_SECTORS)
}

/// Builds the backend for `device`, a block device having `sectors` 512-byte sectors.
pub fn backend_with_disk(
    device: DeviceKind,
    sectors: u64,
) -> Result<Box<dyn DeviceBackend>, TargetError> {
    match device {
        DeviceKind::Entropy => Ok(Box::new(EntropyBackend::new(0x5eed))),
        DeviceKind::Block => Ok(Box::new(BlockBackend::new(sectors))),
        DeviceKind::Console => Ok(Box::new(ConsoleBackend::default())),
        DeviceKind::Net => Ok(Box::new(NetBackend::new(NetOptions::default()))),
        DeviceKind::Balloon => Ok(Box::new(BalloonBackend::default())),
        DeviceKind::Vsock => Ok(Box::new(VsockBackend::default())),
    }
}

impl ReferenceTarget {
    /// The reference device (`mutant` = `None`) or a mutant of it.
    pub fn new(
        device: DeviceKind,
        version: TransportVersion,
        mutant: Option<Mutant>,
    ) -> Result<Self, TargetError> {
        Self::configured(device, version, mutant, 1 << 20, REFERENCE_DISK_SECTORS)
    }

    /// As [`new`](Self::new), with the per-notification step budget (descriptor reads) and the
    /// block device's capacity in sectors chosen by the caller.
    pub fn configured(
        device: DeviceKind,
        version: TransportVersion,
        mutant: Option<Mutant>,
        step_budget: u64,
        disk_sectors: u64,
    ) -> Result<Self, TargetError> {
        backend_with_disk(device, disk_sectors)?;
        if device == DeviceKind::Vsock && version == TransportVersion::Legacy {
            // §5.10 defines no legacy interface for the socket device.
            return Err(TargetError::Unsupported(
                "virtio-vsock has no legacy interface: run it with --version 2".into(),
            ));
        }
        let name = match mutant {
            Some(m) => format!("mutant:{}", m.name()),
            None => "reference".to_string(),
        };
        let factory: DeviceFactory = Box::new(move |ram| {
            let mut cfg = DeviceConfig::new(version);
            cfg.mutant = mutant;
            cfg.step_budget = step_budget;
            let b = backend_with_disk(device, disk_sectors)
                .unwrap_or_else(|_| Box::new(EntropyBackend::new(0)));
            // One QueueNumMax entry per queue of the device type (console: 2 per port + 2).
            let queues = usize::from(b.num_queues());
            if cfg.queue_num_max.len() < queues {
                let max = cfg.queue_num_max.first().copied().unwrap_or(256);
                cfg.queue_num_max.resize(queues, max);
            }
            MmioDevice::new(cfg, b, ram)
        });
        Self::with_factory(name, device, version, factory)
    }

    /// A target around any device factory (for example a reference device with other
    /// knobs, or a VMM's own device wrapped to the same shape).
    pub fn with_factory(
        name: String,
        device: DeviceKind,
        version: TransportVersion,
        factory: DeviceFactory,
    ) -> Result<Self, TargetError> {
        let mut t = ReferenceTarget {
            name,
            device,
            version,
            factory,
            dev: None,
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4096)])
                .map_err(|e| TargetError::Unavailable(e.to_string()))?,
            ram_size: REFERENCE_RAM,
        };
        t.fresh()?;
        Ok(t)
    }

    /// Gives the target `bytes` of guest RAM (at guest physical address 0) from the next
    /// [`Target::fresh`] on, e.g. to match another target in a differential run. Errors (and
    /// keeps the old size) when `bytes` is 0 or cannot be mapped.
    pub fn set_ram_size(&mut self, bytes: u64) -> Result<(), TargetError> {
        let old = std::mem::replace(&mut self.ram_size, bytes);
        self.fresh().inspect_err(|_| self.ram_size = old)
    }

    /// The guest memory shared with the device.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The device, for white-box inspection.
    pub fn device(&mut self) -> Option<&mut MmioDevice> {
        self.dev.as_mut()
    }

    fn call<R>(&mut self, f: impl FnOnce(&mut MmioDevice) -> R) -> Result<R, TargetError> {
        guarded_call(&mut self.dev, f)
    }
}

/// Runs `f` on the device in `slot`, turning a panic into [`TargetError::Crashed`] (the device
/// is dropped: `slot` becomes `None`, and later calls report the crash again) and an exhausted
/// step budget into [`TargetError::Hung`].
pub fn guarded_call<R>(
    slot: &mut Option<MmioDevice>,
    f: impl FnOnce(&mut MmioDevice) -> R,
) -> Result<R, TargetError> {
    let dev = slot
        .as_mut()
        .ok_or_else(|| TargetError::Crashed("device panicked earlier in this case".into()))?;
    match catch_unwind(AssertUnwindSafe(|| f(dev))) {
        Ok(_) if dev.budget_exhausted() => Err(TargetError::Hung(
            "a notification exhausted the device's step budget".into(),
        )),
        Ok(r) => Ok(r),
        Err(p) => {
            *slot = None;
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(TargetError::Crashed(format!("device panicked: {msg}")))
        }
    }
}

impl Target for ReferenceTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: self.name.clone(),
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
        self.ram_size
    }

    fn synchronous(&self) -> bool {
        true
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.call(|d| d.read(offset, data))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|d| d.write(offset, data))
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(format!("guest memory write at {gpa:#x}: {e}")))
    }

    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(format!("guest memory read at {gpa:#x}: {e}")))
    }

    /// Offers VIRTIO_F_RING_PACKED and VIRTIO_F_IN_ORDER (off in the reference's default
    /// configuration) when a case asks for them.
    fn request_features(&mut self, bits: u64) -> Result<(), TargetError> {
        use virtio_reference_device::regs::{bit, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED};
        self.call(|d| {
            let k = d.knobs_mut();
            k.offer_ring_packed |= bits & bit(VIRTIO_F_RING_PACKED) != 0;
            k.offer_in_order |= bits & bit(VIRTIO_F_IN_ORDER) != 0;
        })
    }

    fn fresh(&mut self) -> Result<(), TargetError> {
        let mut ram = GuestRam::anonymous(self.ram_size)
            .map_err(|e| TargetError::Unavailable(e.to_string()))?;
        ram.set_recording(true);
        self.mem = ram.memory().clone();
        self.dev = Some((self.factory)(ram));
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
        Some(self.dev.as_mut()?.ram_mut().take_accesses())
    }

    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        self.call(|d| d.update_config(off, data))
    }
    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        self.call(|d| d.host_send(port, data))?
            .map_err(TargetError::Unsupported)
    }
    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        self.call(|d| d.host_take(port))?
            .map_err(TargetError::Unsupported)
    }
    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<(), TargetError> {
        self.call(|d| d.host_op(op))?
            .map_err(TargetError::Unsupported)
    }
    fn host_conn(&mut self, port: u32) -> Result<virtio_reference_device::HostConn, TargetError> {
        self.call(|d| d.host_conn(port))?
            .map_err(TargetError::Unsupported)
    }
}
