//! How a VMM crate gates its CI on the suite: implement `Target` for its own device model and
//! call `run_suite`. Here the "VMM device" is a reference device owned directly, with guest
//! memory the VMM allocates itself — the same shape an adapter for a real VMM takes (see
//! `gates/dragonball/` for a real one). Like a KVM-based VMM, it never sees the QueueNotify
//! write: notifications arrive on an "ioeventfd" (the `notify` hook) and are processed by its
//! event loop (the `settle` hook).

use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{Capabilities, Target, TargetError, TargetInfo};
use virtio_reference_device::regs::QUEUE_NOTIFY;
use virtio_reference_device::{BlockBackend, DeviceConfig, GuestRam, MmioDevice, TransportVersion};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The VMM's device plus the guest memory it shares with the (simulated) guest.
struct MyVmmBlock {
    dev: MmioDevice,
    mem: GuestMemoryMmap,
    /// Notifications signalled but not yet handled by the event loop.
    ioeventfd: Vec<u32>,
    /// How often the event loop ran.
    turns: usize,
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
        MyVmmBlock {
            dev,
            mem,
            ioeventfd: Vec::new(),
            turns: 0,
        }
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
        // With ioeventfds the VMM's MMIO handler never sees a QueueNotify write.
        if offset != QUEUE_NOTIFY {
            self.dev.write(offset, data);
        }
        Ok(())
    }
    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        self.ioeventfd.push(value);
        Ok(())
    }
    fn settle(&mut self) -> Result<(), TargetError> {
        // One turn of the VMM's event loop: handle the signalled queues.
        self.turns += 1;
        for q in std::mem::take(&mut self.ioeventfd) {
            self.dev.write(QUEUE_NOTIFY, &q.to_le_bytes());
        }
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
        let turns = self.turns;
        *self = MyVmmBlock::boot();
        self.turns = turns;
        Ok(())
    }
}

#[test]
fn my_vmm_block_device_conforms() {
    let suite = Suite::load_default().expect("suite");
    let report = run_suite(&suite, || Ok(MyVmmBlock::boot()), &Options::default());
    assert_eq!(report.exit_code(true), 0, "{}", suite.summary(&report));
    assert!(report.summary["pass"] > 10);
    // Cases needing host cooperation or a memory log are reported, not failed.
    assert_eq!(report.summary["fail"], 0);
    // The data-path cases ran, so the notify and settle hooks carried the notifications.
    let rt = report
        .results
        .iter()
        .find(|r| r.case == "blk.write-read-roundtrip")
        .expect("the block round trip ran");
    assert_eq!(rt.outcome, virtio_conform::outcome::Outcome::Pass);
}

#[test]
fn without_the_notify_hook_an_ioeventfd_vmm_looks_broken() {
    // The same VMM, but its adapter forgets to route notifications: every data-path case
    // fails, which is what the hook is for.
    struct Unrouted(MyVmmBlock);
    impl Target for Unrouted {
        fn info(&self) -> TargetInfo {
            self.0.info()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn ram_size(&self) -> u64 {
            self.0.ram_size()
        }
        fn read(&mut self, o: u64, d: &mut [u8]) -> Result<(), TargetError> {
            self.0.read(o, d)
        }
        fn write(&mut self, o: u64, d: &[u8]) -> Result<(), TargetError> {
            self.0.write(o, d)
        }
        fn mem_write(&mut self, g: u64, d: &[u8]) -> Result<(), TargetError> {
            self.0.mem_write(g, d)
        }
        fn mem_read(&mut self, g: u64, b: &mut [u8]) -> Result<(), TargetError> {
            self.0.mem_read(g, b)
        }
        fn fresh(&mut self) -> Result<(), TargetError> {
            self.0.fresh()
        }
    }
    let suite = Suite::load_default().expect("suite");
    let opts = Options {
        only: vec!["blk.write-read-roundtrip".into()],
        ..Options::default()
    };
    let report = run_suite(&suite, || Ok(Unrouted(MyVmmBlock::boot())), &opts);
    assert_eq!(report.summary["fail"], 1, "{}", suite.summary(&report));
}
