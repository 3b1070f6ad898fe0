//! How a VMM crate gates its CI on the suite: implement `Target` for its own device model and
//! call `run_suite`. Here the "VMM device" is a reference device owned directly, with guest
//! memory the VMM allocates itself — the same shape an adapter for a real VMM takes.

use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{Capabilities, Target, TargetError, TargetInfo};
use virtio_reference_device::{BlockBackend, DeviceConfig, GuestRam, MmioDevice, TransportVersion};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The VMM's device plus the guest memory it shares with the (simulated) guest.
struct MyVmmBlock {
    dev: MmioDevice,
    mem: GuestMemoryMmap,
}

impl MyVmmBlock {
    fn boot() -> Self {
        let ram = GuestRam::anonymous(32 << 20).expect("guest RAM");
        let mem = ram.memory().clone();
        let dev = MmioDevice::new(
            DeviceConfig::new(TransportVersion::Modern),
            Box::new(BlockBackend::new(128)),
            ram,
        );
        MyVmmBlock { dev, mem }
    }
}

impl Target for MyVmmBlock {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: "my-vmm".into(),
            device: "block".into(),
            version: 2,
            implementation: "my-vmm 0.0.1".into(),
        }
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn ram_size(&self) -> u64 {
        32 << 20
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.dev.read(offset, data);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        // A VMM that routes QueueNotify through an ioeventfd would call its queue handler here.
        self.dev.write(offset, data);
        Ok(())
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(e.to_string()))
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(e.to_string()))
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        *self = MyVmmBlock::boot();
        Ok(())
    }
}

#[test]
fn my_vmm_block_device_conforms() {
    let suite = Suite::load_default().expect("suite");
    let mut target = MyVmmBlock::boot();
    let report = run_suite(&suite, &mut target, &Options::default());
    assert_eq!(report.exit_code(true), 0, "{}", suite.summary(&report));
    assert!(report.summary["pass"] > 10);
    // Cases needing host cooperation or a memory log are reported, not failed.
    assert_eq!(report.summary["fail"], 0);
}
