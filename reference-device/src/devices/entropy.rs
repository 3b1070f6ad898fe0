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
        let (rng, scratch) = (&mut self.rng, &mut self.scratch);
        let written = fill_chain(chain, ram, self.writes_readable, |ram, gpa, n| {
            scratch.resize(n, 0);
            rng.fill_bytes(&mut scratch[..n]);
            ram.write(gpa, &scratch[..n]).is_ok()
        });
        Completion::Written(written)
    }
}

/// Bytes the entropy device writes at once: a huge descriptor is filled piece by piece, so it
/// never needs a buffer of its whole length.
pub const FILL_PIECE: usize = 4096;

/// The entropy device's fill rule (§5.4: the device answers a request by writing random bytes
/// into its device-writable buffers), with the byte source left to the caller.
///
/// Walks `chain` (the descriptors the device read, indirect tables resolved) and writes every
/// device-writable buffer in pieces of at most [`FILL_PIECE`] bytes:
/// `write_piece(ram, gpa, len)` writes `len` bytes at guest physical address `gpa` and returns
/// `false` when it could not (the range is outside guest memory), which ends the fill. With
/// `writes_readable` (the `writes-readable-buffers` mutant) driver-readable buffers are written
/// too, and not counted.
///
/// Returns the number of bytes written into device-writable buffers: the used element's `len`
/// (§2.7.8).
///
/// Generic on purpose: each caller's instance is compiled in the caller's crate, so a fuzz body
/// outside the coverage instrumentation can use the rule without paying for edge counters.
#[inline]
pub fn fill_chain(
    chain: &[Descriptor],
    ram: &mut GuestRam,
    writes_readable: bool,
    mut write_piece: impl FnMut(&mut GuestRam, u64, usize) -> bool,
) -> u32 {
    let mut written: u32 = 0;
    for d in chain {
        if !d.is_write_only() && !writes_readable {
            continue;
        }
        let mut addr = d.addr;
        let mut left = d.len as usize;
        while left > 0 {
            let n = left.min(FILL_PIECE);
            if !write_piece(ram, addr, n) {
                return written;
            }
            addr = addr.wrapping_add(n as u64);
            left -= n;
            if d.is_write_only() {
                written = written.saturating_add(n as u32);
            }
        }
    }
    written
}
