//! `--target virtio-queue`: rust-vmm's `virtio-queue` 0.18 doing the queue work behind the
//! reference transport (an entropy device, version 2).
//!
//! Every register goes to a reference device, except what the split queue needs: the queue
//! registers of queue 0 also program a `virtio_queue::Queue`, a QueueNotify of queue 0 makes
//! *that* queue pop the chains (filling every device-writable buffer) and publish the used
//! elements, and its used-buffer notification is merged into InterruptStatus. So the suite,
//! `diff` and `matrix` see how virtio-queue handles every ring the cases build.

use super::reference::ReferenceTarget;
use super::{Capabilities, DeviceKind, IrqEvent, Target, TargetError, TargetInfo};
use virtio_queue::{Queue, QueueT};
use virtio_reference_device::regs::*;
use virtio_reference_device::TransportVersion;
use vm_memory::Bytes;

/// The virtio-queue target (see the module docs).
pub struct VirtioQueueTarget {
    inner: ReferenceTarget,
    queue: Queue,
    queue_sel: u32,
    features_sel: u32,
    driver_features: u64,
    used_irq: bool,
    irqs: Vec<IrqEvent>,
    fill: u8,
}

/// QueueNumMax the reference reports for queue 0, used as virtio-queue's maximum too.
const MAX: u16 = 256;

impl VirtioQueueTarget {
    /// An entropy device over the version-2 transport with virtio-queue as the split queue.
    pub fn new() -> Result<Self, TargetError> {
        Ok(VirtioQueueTarget {
            inner: ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None)?,
            queue: Self::fresh_queue()?,
            queue_sel: 0,
            features_sel: 0,
            driver_features: 0,
            used_irq: false,
            irqs: Vec::new(),
            fill: 0,
        })
    }

    fn fresh_queue() -> Result<Queue, TargetError> {
        Queue::new(MAX).map_err(|e| TargetError::Unavailable(format!("virtio-queue: {e}")))
    }

    fn reset_queue(&mut self) -> Result<(), TargetError> {
        self.queue = Self::fresh_queue()?;
        self.used_irq = false;
        Ok(())
    }

    /// Pops every available chain with virtio-queue, fills its writable buffers and
    /// publishes the used elements.
    fn process(&mut self) -> Result<(), TargetError> {
        let status = self.inner.read32(STATUS)? as u8;
        if status & DRIVER_OK == 0 || status & DEVICE_NEEDS_RESET != 0 || !self.queue.ready() {
            return Ok(());
        }
        let mem = self.inner.memory().clone();
        let mut used_any = false;
        // At most one pass over the ring per notification (virtio-queue bounds chains itself).
        for _ in 0..MAX {
            let Some(chain) = self.queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let mut written: u32 = 0;
            for d in chain {
                if !d.is_write_only() {
                    continue;
                }
                let len = d.len().min(1 << 20) as usize;
                self.fill = self.fill.wrapping_add(1);
                if mem.write_slice(&vec![self.fill; len], d.addr()).is_ok() {
                    written = written.saturating_add(len as u32);
                }
            }
            if self.queue.add_used(&mem, head, written).is_err() {
                break;
            }
            used_any = true;
        }
        if used_any && self.queue.needs_notification(&mem).unwrap_or(true) {
            self.used_irq = true;
            self.irqs.push(IrqEvent::UsedBuffer(Some(0)));
        }
        Ok(())
    }
}

impl Target for VirtioQueueTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: "virtio-queue".into(),
            device: "entropy".into(),
            version: 2,
            implementation: "virtio-queue 0.18 behind the reference transport".into(),
        }
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            config_change: false,
            memory_log: false,
            interrupts: true,
        }
    }
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn synchronous(&self) -> bool {
        true
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.inner.read(offset, data)?;
        if offset == INTERRUPT_STATUS && data.len() == 4 && self.used_irq {
            data[0] |= INT_USED_BUFFER as u8;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let v = (data.len() == 4 && offset.is_multiple_of(4))
            .then(|| u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        let Some(v) = v else {
            return self.inner.write(offset, data);
        };
        let q0 = self.queue_sel == 0;
        match offset {
            QUEUE_NOTIFY if v & 0xffff == 0 => return self.process(),
            QUEUE_SEL => self.queue_sel = v,
            DRIVER_FEATURES_SEL => self.features_sel = v,
            DRIVER_FEATURES if self.features_sel < 2 => {
                let shift = 32 * self.features_sel;
                self.driver_features =
                    (self.driver_features & !(0xffff_ffffu64 << shift)) | ((v as u64) << shift);
            }
            INTERRUPT_ACK if v & INT_USED_BUFFER != 0 => self.used_irq = false,
            STATUS if v == 0 => {
                self.reset_queue()?;
                self.driver_features = 0;
            }
            STATUS if v as u8 & DRIVER_OK != 0 => self
                .queue
                .set_event_idx(self.driver_features & bit(VIRTIO_F_EVENT_IDX) != 0),
            QUEUE_NUM if q0 && !self.queue.ready() => self.queue.set_size(v as u16),
            QUEUE_DESC_LOW if q0 => self.queue.set_desc_table_address(Some(v), None),
            QUEUE_DESC_HIGH if q0 => self.queue.set_desc_table_address(None, Some(v)),
            QUEUE_DRIVER_LOW if q0 => self.queue.set_avail_ring_address(Some(v), None),
            QUEUE_DRIVER_HIGH if q0 => self.queue.set_avail_ring_address(None, Some(v)),
            QUEUE_DEVICE_LOW if q0 => self.queue.set_used_ring_address(Some(v), None),
            QUEUE_DEVICE_HIGH if q0 => self.queue.set_used_ring_address(None, Some(v)),
            QUEUE_READY if q0 => self.queue.set_ready(v == 1),
            QUEUE_RESET if q0 && v == 1 => self.reset_queue()?,
            _ => {}
        }
        self.inner.write(offset, data)
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.inner.mem_read(gpa, buf)
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        self.inner.fresh()?;
        self.reset_queue()?;
        self.queue_sel = 0;
        self.features_sel = 0;
        self.driver_features = 0;
        self.irqs.clear();
        Ok(())
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        let mut v = self.inner.take_interrupts();
        v.append(&mut self.irqs);
        v
    }
}
