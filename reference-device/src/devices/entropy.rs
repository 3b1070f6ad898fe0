//! The entropy device (virtio-rng, DeviceID 4, VIRTIO §5.4).

use crate::backend::{Completion, DeviceBackend};
use crate::memory::GuestRam;
use crate::queue::Descriptor;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The entropy device (DeviceID 4, §5.4): fills every writable buffer with bytes from a
/// seeded ChaCha8 generator, so runs are reproducible. One queue (`requestq`).
pub struct EntropyBackend {
    rng: ChaCha8Rng,
    writes_readable: bool,
    scratch: Vec<u8>,
}

impl EntropyBackend {
    /// An entropy device whose output stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        EntropyBackend {
            rng: ChaCha8Rng::seed_from_u64(seed),
            writes_readable: false,
            scratch: Vec::new(),
        }
    }
}

impl DeviceBackend for EntropyBackend {
    fn device_id(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn config(&self) -> &[u8] {
        &[]
    }
    fn name(&self) -> &'static str {
        "entropy"
    }
    fn set_writes_readable(&mut self, on: bool) {
        self.writes_readable = on;
    }

    fn process(&mut self, _queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let mut written: u32 = 0;
        for d in chain {
            if !d.is_write_only() && !self.writes_readable {
                continue;
            }
            // Fill in pieces so a huge descriptor does not allocate its whole length.
            let mut addr = d.addr;
            let mut left = d.len as usize;
            while left > 0 {
                let n = left.min(4096);
                self.scratch.resize(n, 0);
                self.rng.fill_bytes(&mut self.scratch[..n]);
                if ram.write(addr, &self.scratch[..n]).is_err() {
                    return Completion::Written(written);
                }
                addr += n as u64;
                left -= n;
                if d.is_write_only() {
                    written = written.saturating_add(n as u32);
                }
            }
        }
        Completion::Written(written)
    }
}
