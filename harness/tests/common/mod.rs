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

use virtio_reference_device::{Completion, Descriptor, DeviceBackend, GuestRam};

/// What a [`Hooked`] backend does with a chain instead of (or before) the inner backend.
pub type ProcessHook =
    Box<dyn FnMut(&mut dyn DeviceBackend, u16, &[Descriptor], &mut GuestRam) -> Completion + Send>;

/// Whether a [`Hooked`] backend takes buffers from a queue now.
pub type ReadyHook = Box<dyn Fn(&dyn DeviceBackend, u16) -> bool + Send>;

/// A reference backend with one behaviour replaced, to show a check passes what the spec
/// permits (or fails what it forbids): every method goes to `inner` except `process` (through
/// `process`) and, when set, `ready_for`.
pub struct Hooked {
    pub inner: Box<dyn DeviceBackend>,
    pub process: ProcessHook,
    pub ready: Option<ReadyHook>,
}

impl Hooked {
    pub fn new(inner: impl DeviceBackend + 'static, process: ProcessHook) -> Self {
        Hooked {
            inner: Box::new(inner),
            process,
            ready: None,
        }
    }
}

impl DeviceBackend for Hooked {
    fn device_id(&self) -> u32 {
        self.inner.device_id()
    }
    fn features(&self) -> u64 {
        self.inner.features()
    }
    fn num_queues(&self) -> u16 {
        self.inner.num_queues()
    }
    fn config(&self) -> &[u8] {
        self.inner.config()
    }
    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        (self.process)(&mut *self.inner, queue, chain, ram)
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn set_writes_readable(&mut self, on: bool) {
        self.inner.set_writes_readable(on)
    }
    fn set_mutant(&mut self, m: virtio_reference_device::Mutant) {
        self.inner.set_mutant(m)
    }
    fn ready_for(&self, queue: u16) -> bool {
        match &self.ready {
            Some(f) => f(&*self.inner, queue),
            None => self.inner.ready_for(queue),
        }
    }
    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
        self.inner.host_send(port, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn take_wakeups(&mut self) -> Vec<u16> {
        self.inner.take_wakeups()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn negotiated(&mut self, features: u64) {
        self.inner.negotiated(features)
    }
    fn take_config_update(&mut self) -> Option<(usize, Vec<u8>)> {
        self.inner.take_config_update()
    }
    fn host_config_changed(&mut self, offset: usize, data: &[u8]) {
        self.inner.host_config_changed(offset, data)
    }
    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        self.inner.host_take(port)
    }
    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<Vec<u16>, String> {
        self.inner.host_op(op)
    }
    fn host_conn(&self, port: u32) -> Result<virtio_reference_device::HostConn, String> {
        self.inner.host_conn(port)
    }
    fn release_held(&mut self, queue: u16) -> bool {
        self.inner.release_held(queue)
    }
    fn take_driver_write(&mut self) -> Option<(usize, Vec<u8>)> {
        self.inner.take_driver_write()
    }
}

/// Whether `qemu-system-x86_64` works here; when it does not, prints why the caller is
/// skipped (or panics when `VIRTIO_CONFORM_REQUIRE_QEMU` is set).
pub fn qemu_or_skip() -> bool {
    match virtio_conform::target::qemu::qemu_version(std::path::Path::new("qemu-system-x86_64")) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("VIRTIO_CONFORM_REQUIRE_QEMU").is_none(),
                "QEMU required but missing: {e}"
            );
            eprintln!(
                "skipped: qemu-system-x86_64 unavailable ({e}; install it with scripts/install-qemu.sh)"
            );
            false
        }
    }
}

/// What a vsock run through vhost-device-vsock must show, whichever front-end drives it (QEMU's
/// `vhost-user-vsock-device` or the harness's vhost-user target): both directions of the host
/// side work (the driver connects to a host listener, the host connects to the driver, bytes
/// flow both ways, shutdown closes the host stream); every other check passes or is excused by
/// the committed expectations; and the backend's known deviations are really observed (an
/// entry that no longer matched would be stale).
pub fn assert_vsock_backend_report(report: &virtio_conform::report::Report) {
    use std::collections::BTreeSet;
    use virtio_conform::outcome::Outcome;
    let with = |o: Outcome| -> BTreeSet<String> {
        report
            .results
            .iter()
            .filter(|r| r.outcome == o)
            .map(|r| r.case.clone())
            .collect()
    };
    let passed = with(Outcome::Pass);
    for c in [
        "vsock.connect-to-listener",
        "vsock.host-connect",
        "vsock.rw-both-ways",
        "vsock.shutdown-and-rst",
    ] {
        assert!(passed.contains(c), "{c} did not pass: {:?}", report.results);
    }
    let unexpected: Vec<_> = report
        .results
        .iter()
        .filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Pass | Outcome::Unsupported | Outcome::Informational | Outcome::Xfail
            )
        })
        .map(|r| (r.case.clone(), r.outcome, r.failures.clone()))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    for c in ["vsock.connect-refused", "vsock.unknown-type-rst"] {
        assert!(with(Outcome::Xfail).contains(c), "{c} is not an xfail");
    }
}
