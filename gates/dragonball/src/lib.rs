//! Dragonball's virtio devices (`dbs-virtio-devices` 0.3.1) as a virtio-conform [`Target`].
//!
//! Each instance is what Dragonball builds for a guest: a KVM VM with an in-kernel irqchip,
//! 16 MiB of guest RAM at guest physical address 0 (`vm-memory`), the device behind
//! Dragonball's own virtio-mmio transport [`MmioV2Device`] (legacy interrupt line 5, no
//! doorbell or MSI extensions), and the device's I/O threads and epoll manager running as they
//! do in Dragonball. The harness stands in for the guest's vCPU:
//!
//! - register accesses go to `MmioV2Device`'s `DeviceIo::read`/`write`, as a vCPU's MMIO exit
//!   would;
//! - notifications ([`Target::notify`]) take the path KVM gives a guest write to QueueNotify:
//!   Dragonball registers one ioeventfd per queue at offset 0x50 with the queue index as its
//!   datamatch, so a matching value signals that queue's eventfd, and any other value (or any
//!   value before the device activated) reaches the MMIO handler as an ordinary write;
//! - [`Target::settle`] turns Dragonball's epoll manager once, as the VMM's event loop does,
//!   and reports a panic on any of the device's own threads as a crash.
//!
//! To see the queues' eventfds the device is wrapped in [`Tap`], which forwards every call
//! unchanged and keeps a handle on the eventfds `activate` receives.

use dbs_device::resources::{DeviceResources, Resource, ResourceConstraint};
use dbs_device::{DeviceIo, IoAddress};
use dbs_interrupt::KvmIrqManager;
use dbs_utils::epoll_manager::EpollManager;
use dbs_virtio_devices::block::{aio::Aio, Block, LocalFile, Ufile};
use dbs_virtio_devices::mmio::{
    MmioV2Device, DRAGONBALL_MMIO_DOORBELL_SIZE, MMIO_DEFAULT_CFG_SIZE,
};
use dbs_virtio_devices::{
    ActivateResult, VirtioDevice, VirtioDeviceConfig, VirtioSharedMemoryList,
};
use kvm_ioctls::{Kvm, VmFd};
use std::any::Any;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use virtio_conform::target::guard::ThreadPanics;
use virtio_conform::target::layout::MIN_RAM_SIZE;
use virtio_conform::target::{Capabilities, Target, TargetError, TargetInfo};
use virtio_queue::QueueSync;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

pub mod fuzz_policy;

/// Guest memory as Dragonball's devices see it.
pub type Mem = Arc<GuestMemoryMmap>;
/// A Dragonball virtio device over [`Mem`].
pub type DbsDevice = Box<dyn VirtioDevice<Mem, QueueSync, GuestRegionMmap>>;
type Transport = MmioV2Device<Mem, QueueSync, GuestRegionMmap>;

/// Guest physical address of the transport window (outside guest RAM).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Legacy interrupt line of the transport.
pub const IRQ: u32 = 5;
/// Capacity of the block device's disk image, in 512-byte sectors (1 MiB, like the reference
/// target's disk).
pub const DISK_SECTORS: u64 = 2048;
/// Queue size the block device offers (QueueNumMax), Dragonball's default for virtio-blk.
pub const BLOCK_QUEUE_SIZE: u16 = 128;
/// Name prefix of the block device's I/O threads (`blk_iothread_q<i>` in Dragonball).
pub const BLOCK_THREADS: &str = "blk_iothread";

/// Forwards every call to the wrapped device unchanged; keeps the queue eventfds that
/// `activate` hands over, so [`Target::notify`] can signal them as KVM would.
pub struct Tap {
    inner: DbsDevice,
    eventfds: Arc<Mutex<Vec<Arc<EventFd>>>>,
}

impl VirtioDevice<Mem, QueueSync, GuestRegionMmap> for Tap {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn ctrl_queue_max_sizes(&self) -> u16 {
        self.inner.ctrl_queue_max_sizes()
    }
    fn get_avail_features(&self, page: u32) -> u32 {
        self.inner.get_avail_features(page)
    }
    fn set_acked_features(&mut self, page: u32, value: u32) {
        self.inner.set_acked_features(page, value)
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn activate(
        &mut self,
        config: VirtioDeviceConfig<Mem, QueueSync, GuestRegionMmap>,
    ) -> ActivateResult {
        let fds: Vec<_> = config.queues.iter().map(|q| q.eventfd.clone()).collect();
        let r = self.inner.activate(config);
        if let Ok(mut v) = self.eventfds.lock() {
            *v = if r.is_ok() { fds } else { Vec::new() };
        }
        r
    }
    fn reset(&mut self) -> ActivateResult {
        if let Ok(mut v) = self.eventfds.lock() {
            v.clear();
        }
        self.inner.reset()
    }
    fn remove(&mut self) {
        self.inner.remove()
    }
    fn get_resource_requirements(
        &self,
        requests: &mut Vec<ResourceConstraint>,
        use_generic_irq: bool,
    ) {
        self.inner
            .get_resource_requirements(requests, use_generic_irq)
    }
    fn set_resource(
        &mut self,
        vm_fd: Arc<VmFd>,
        resource: DeviceResources,
    ) -> dbs_virtio_devices::Result<Option<VirtioSharedMemoryList<GuestRegionMmap>>> {
        self.inner.set_resource(vm_fd, resource)
    }
    fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self.inner.as_any_mut()
    }
}

/// Which Dragonball device to gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `dbs_virtio_devices::block::Block` over a 1 MiB disk image, one queue.
    Block,
}

impl Device {
    /// The harness's device name (`block`).
    pub fn name(self) -> &'static str {
        match self {
            Device::Block => "block",
        }
    }
}

struct Instance {
    dev: Transport,
    mem: Mem,
    epoll: EpollManager,
    eventfds: Arc<Mutex<Vec<Arc<EventFd>>>>,
    // Kept alive for the instance's lifetime (the disk image is unlinked already).
    _vm: Arc<VmFd>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Stops and joins the device's I/O threads.
        self.dev.remove();
    }
}

/// A Dragonball device behind `MmioV2Device`, fresh for every case.
pub struct DragonballTarget {
    device: Device,
    kvm: Kvm,
    inst: Option<Instance>,
    panics: ThreadPanics,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> TargetError {
    TargetError::Unavailable(format!("{what}: {e}"))
}

impl DragonballTarget {
    /// Opens `/dev/kvm` and builds the first instance. Fails with `Unavailable` when KVM
    /// cannot be used (no `/dev/kvm`, no permission, no in-kernel irqchip).
    pub fn new(device: Device) -> Result<Self, TargetError> {
        let kvm = Kvm::new().map_err(|e| unavailable("/dev/kvm", e))?;
        let mut t = DragonballTarget {
            device,
            kvm,
            inst: None,
            panics: ThreadPanics::new([BLOCK_THREADS]),
        };
        t.fresh()?;
        Ok(t)
    }

    fn build(&self) -> Result<Instance, TargetError> {
        let vm = Arc::new(
            self.kvm
                .create_vm()
                .map_err(|e| unavailable("KVM_CREATE_VM", e))?,
        );
        vm.create_irq_chip()
            .map_err(|e| unavailable("KVM_CREATE_IRQCHIP", e))?;
        let irq = Arc::new(KvmIrqManager::new(vm.clone()));
        irq.initialize()
            .map_err(|e| unavailable("KVM irq routing", e))?;
        let mem: Mem = Arc::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIN_RAM_SIZE as usize)])
                .map_err(|e| unavailable("guest memory", e))?,
        );
        let epoll = EpollManager::default();
        let inner: DbsDevice = match self.device {
            Device::Block => {
                let file = tempfile::tempfile().map_err(|e| unavailable("disk image", e))?;
                file.set_len(DISK_SECTORS * 512)
                    .map_err(|e| unavailable("disk image", e))?;
                let aio = Aio::new(file.as_raw_fd(), BLOCK_QUEUE_SIZE as u32)
                    .map_err(|e| unavailable("aio context", e))?;
                let disk: Box<dyn Ufile> = Box::new(
                    LocalFile::new(file, false, aio).map_err(|e| unavailable("disk image", e))?,
                );
                Box::new(
                    Block::<Mem>::new(
                        vec![disk],
                        false,
                        Arc::new(vec![BLOCK_QUEUE_SIZE]),
                        epoll.clone(),
                        vec![],
                    )
                    .map_err(|e| unavailable("virtio-blk", e))?,
                )
            }
        };
        let eventfds = Arc::new(Mutex::new(Vec::new()));
        let tap = Tap {
            inner,
            eventfds: eventfds.clone(),
        };
        let mut res = DeviceResources::new();
        res.append(Resource::MmioAddressRange {
            base: MMIO_BASE,
            size: MMIO_DEFAULT_CFG_SIZE + DRAGONBALL_MMIO_DOORBELL_SIZE,
        });
        res.append(Resource::LegacyIrq(IRQ));
        let dev = MmioV2Device::new(vm.clone(), mem.clone(), irq, Box::new(tap), res, None)
            .map_err(|e| unavailable("MmioV2Device", e))?;
        Ok(Instance {
            dev,
            mem,
            epoll,
            eventfds,
            _vm: vm,
        })
    }

    fn inst(&mut self) -> Result<&mut Instance, TargetError> {
        self.panics.check()?;
        self.inst
            .as_mut()
            .ok_or_else(|| TargetError::Unavailable("no device instance".into()))
    }
}

impl Target for DragonballTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: "dragonball".into(),
            device: self.device.name().into(),
            version: 2,
            implementation: "dbs-virtio-devices 0.3.1 (MmioV2Device)".into(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        // Interrupts go to the in-kernel irqchip (InterruptStatus is still read); there is no
        // memory log and no host-side configuration change.
        Capabilities::default()
    }

    fn ram_size(&self) -> u64 {
        MIN_RAM_SIZE
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        let i = self.inst()?;
        i.dev.read(IoAddress(MMIO_BASE), IoAddress(offset), data);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let i = self.inst()?;
        i.dev.write(IoAddress(MMIO_BASE), IoAddress(offset), data);
        Ok(())
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        let i = self.inst()?;
        i.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(format!("guest memory write at {gpa:#x}: {e}")))
    }

    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let i = self.inst()?;
        i.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(format!("guest memory read at {gpa:#x}: {e}")))
    }

    fn fresh(&mut self) -> Result<(), TargetError> {
        // The old instance's threads are stopped before the new VM is built.
        self.inst = None;
        self.panics.take();
        self.inst = Some(self.build()?);
        Ok(())
    }

    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        let i = self.inst()?;
        let fd = i
            .eventfds
            .lock()
            .ok()
            .and_then(|v| v.get(value as usize).cloned());
        match fd {
            Some(fd) => fd
                .write(1)
                .map_err(|e| TargetError::Protocol(format!("queue {value} eventfd: {e}"))),
            None => {
                i.dev.write(
                    IoAddress(MMIO_BASE),
                    IoAddress(virtio_conform::target::layout::QUEUE_NOTIFY_OFFSET),
                    &value.to_le_bytes(),
                );
                Ok(())
            }
        }
    }

    fn settle(&mut self) -> Result<(), TargetError> {
        let i = self.inst()?;
        i.epoll
            .handle_events(0)
            .map_err(|e| TargetError::Protocol(format!("epoll manager: {e:?}")))?;
        Ok(())
    }
}
