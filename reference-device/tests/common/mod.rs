//! Test rig: a reference device plus a driver-side view of its memory.
#![allow(dead_code)]

use virtio_reference_device::regs::*;
use virtio_reference_device::*;
use vm_memory::GuestMemoryMmap;

pub const RAM: u64 = 1 << 20;
pub const RING_BASE: u64 = 0x1_0000;
pub const BUF_BASE: u64 = 0x4_0000;

pub struct Rig {
    pub dev: MmioDevice,
    pub mem: GuestMemoryMmap,
    pub q: DriverQueue,
}

pub fn entropy(version: TransportVersion) -> Rig {
    rig(DeviceConfig::new(version), Box::new(EntropyBackend::new(1)))
}

pub fn block(version: TransportVersion) -> Rig {
    rig(DeviceConfig::new(version), Box::new(BlockBackend::new(64)))
}

pub fn rig(cfg: DeviceConfig, backend: Box<dyn DeviceBackend>) -> Rig {
    let ram = GuestRam::anonymous(RAM).unwrap();
    let mem = ram.memory().clone();
    let dev = MmioDevice::new(cfg, backend, ram);
    Rig {
        dev,
        mem,
        q: DriverQueue::modern(RING_BASE, 8),
    }
}

impl Rig {
    pub fn r(&mut self, off: u64) -> u32 {
        self.dev.read_u32(off)
    }
    pub fn w(&mut self, off: u64, v: u32) {
        self.dev.write_u32(off, v)
    }

    /// §3.1.1 handshake up to FEATURES_OK with `features` accepted; returns Status read back.
    pub fn negotiate(&mut self, features: u64) -> u32 {
        self.w(STATUS, 0);
        self.w(STATUS, ACKNOWLEDGE as u32);
        self.w(STATUS, (ACKNOWLEDGE | DRIVER) as u32);
        self.w(DRIVER_FEATURES_SEL, 0);
        self.w(DRIVER_FEATURES, features as u32);
        self.w(DRIVER_FEATURES_SEL, 1);
        self.w(DRIVER_FEATURES, (features >> 32) as u32);
        self.w(STATUS, (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u32);
        self.r(STATUS)
    }

    /// Sets up queue 0 with the rig's DriverQueue layout (version 2 registers).
    pub fn setup_queue(&mut self) {
        self.q.clear(&mut self.mem).unwrap();
        self.w(QUEUE_SEL, 0);
        self.w(QUEUE_NUM, self.q.size as u32);
        let (d, a, u) = (self.q.desc, self.q.avail, self.q.used);
        self.w(QUEUE_DESC_LOW, d as u32);
        self.w(QUEUE_DESC_HIGH, (d >> 32) as u32);
        self.w(QUEUE_DRIVER_LOW, a as u32);
        self.w(QUEUE_DRIVER_HIGH, (a >> 32) as u32);
        self.w(QUEUE_DEVICE_LOW, u as u32);
        self.w(QUEUE_DEVICE_HIGH, (u >> 32) as u32);
        self.w(QUEUE_READY, 1);
    }

    /// Full modern init with `features` (VERSION_1 added), one queue, DRIVER_OK.
    pub fn init(&mut self, features: u64) {
        let st = self.negotiate(features | bit(VIRTIO_F_VERSION_1));
        assert_eq!(st as u8 & FEATURES_OK, FEATURES_OK, "FEATURES_OK refused");
        self.setup_queue();
        self.w(
            STATUS,
            (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u32,
        );
    }

    /// Writes a chain of (len, writable) buffers at BUF_BASE.. using descriptors from `first`,
    /// publishes it and kicks queue 0. Returns the head.
    pub fn post(&mut self, first: u16, bufs: &[(u32, bool)]) -> u16 {
        let mut addr = BUF_BASE;
        for (k, &(len, w)) in bufs.iter().enumerate() {
            let idx = (first + k as u16) % self.q.size;
            let last = k + 1 == bufs.len();
            let d = Descriptor {
                addr,
                len,
                flags: if w { VIRTQ_DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                next: (idx + 1) % self.q.size,
            };
            self.q.write_descriptor(&mut self.mem, idx, &d).unwrap();
            addr += len as u64;
        }
        self.q.publish(&mut self.mem, &[first]).unwrap();
        self.w(QUEUE_NOTIFY, 0);
        first
    }

    pub fn used(&mut self) -> Vec<(u32, u32)> {
        self.q.take_used(&mut self.mem).unwrap()
    }
}
