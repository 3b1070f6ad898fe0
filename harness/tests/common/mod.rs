//! Test helpers shared by several test binaries (`mod common;`).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use virtio_conform::target::{
    Capabilities, IrqEvent, ReferenceTarget, Target, TargetError, TargetInfo,
};
use virtio_reference_device::MemoryAccess;

/// One register access: (is_write, offset, value of its first 4 bytes, little-endian).
pub type Access = (bool, u64, u32);

/// A hook run before a register write reaches the device: it may act on the device first
/// (to model a device bug) or fail the write.
pub type WriteHook =
    Box<dyn FnMut(&mut ReferenceTarget, u64, u32) -> Result<(), TargetError> + Send>;

/// The reference device with every register access logged, and an optional write hook.
pub struct Logged {
    pub inner: ReferenceTarget,
    pub log: Arc<Mutex<Vec<Access>>>,
    pub before_write: Option<WriteHook>,
}

impl Logged {
    pub fn new(inner: ReferenceTarget) -> Self {
        Logged {
            inner,
            log: Arc::new(Mutex::new(Vec::new())),
            before_write: None,
        }
    }
}

/// The first (up to) 4 bytes of `data` as a little-endian value.
pub fn value_of(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

impl Target for Logged {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.inner.read(offset, data)?;
        self.log
            .lock()
            .unwrap()
            .push((false, offset, value_of(data)));
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let value = value_of(data);
        self.log.lock().unwrap().push((true, offset, value));
        if let Some(hook) = self.before_write.as_mut() {
            hook(&mut self.inner, offset, value)?;
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
        self.log.lock().unwrap().clear();
        self.inner.fresh()
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        self.inner.take_interrupts()
    }
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        self.inner.take_accesses()
    }
    fn synchronous(&self) -> bool {
        self.inner.synchronous()
    }
}
