//! The device stand-in of the queue fuzz bodies: fills a chain's device-writable buffers.
//!
//! A queue fuzz body tests the queue (how chains are read and returned, VIRTIO §2.7), not what
//! a device type puts in its buffers; it needs only some device that writes into every
//! device-writable buffer of a chain and reports how many bytes it wrote (the used element's
//! `len`, §2.7.8). [`BufferFiller`] follows the reference entropy device's rule (§5.4,
//! [`fill_chain`]: 4096-byte pieces, stop at the first piece outside guest memory, count only
//! device-writable bytes) with bytes from a fixed table built at compile time instead of a
//! ChaCha stream. It is compiled with the harness, outside the coverage instrumentation, so one
//! piece is a bounds check and a `memcpy`: the fuzzer spends its time in the queues, and the
//! bytes still look random where a writable buffer overlaps a descriptor or indirect table.

use virtio_reference_device::devices::entropy::{fill_chain, FILL_PIECE as PIECE};
use virtio_reference_device::{Descriptor, GuestRam};

/// `2 * PIECE` pseudo-random bytes (SplitMix64 from a fixed seed), so any piece of up to
/// [`PIECE`] bytes starting in the first half is one contiguous slice.
static TABLE: [u8; 2 * PIECE] = table();

const fn table() -> [u8; 2 * PIECE] {
    let mut t = [0u8; 2 * PIECE];
    let mut state: u64 = 0x5eed;
    let mut i = 0;
    while i < t.len() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        let mut k = 0;
        while k < 8 {
            t[i + k] = bytes[k];
            k += 1;
        }
        i += 8;
    }
    t
}

/// Writes into the device-writable buffers of chains (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct BufferFiller {
    /// Where the next piece starts in [`TABLE`] (below [`PIECE`]).
    pos: usize,
    /// The `writes-readable-buffers` mutant: driver-readable buffers are written too
    /// (breaks VQ-DEV-03), and their bytes are not counted.
    writes_readable: bool,
}

impl BufferFiller {
    /// A filler; with `writes_readable` it also writes the chain's driver-readable buffers.
    pub(crate) fn new(writes_readable: bool) -> Self {
        BufferFiller {
            pos: 0,
            writes_readable,
        }
    }

    /// Fills the buffers of `chain` (as the device read it) in guest memory and returns the
    /// number of bytes written into device-writable buffers: the `len` of the used element.
    /// Stops at the first piece that is not inside guest memory.
    pub(crate) fn fill(&mut self, chain: &[Descriptor], ram: &mut GuestRam) -> u32 {
        let pos = &mut self.pos;
        fill_chain(chain, ram, self.writes_readable, |ram, gpa, n| {
            let ok = ram.write(gpa, &TABLE[*pos..*pos + n]).is_ok();
            *pos = (*pos + n) % PIECE;
            ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_reference_device::regs::VIRTQ_DESC_F_WRITE;

    fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: if writable { VIRTQ_DESC_F_WRITE } else { 0 },
            next: 0,
        }
    }

    /// Writable buffers are filled and counted, readable ones left alone; consecutive
    /// buffers get different bytes.
    #[test]
    fn fills_and_counts_only_writable_buffers() {
        let mut ram = GuestRam::anonymous(0x1000).unwrap();
        let chain = [
            desc(0x100, 16, false),
            desc(0x200, 64, true),
            desc(0x300, 64, true),
        ];
        let n = BufferFiller::new(false).fill(&chain, &mut ram);
        assert_eq!(n, 128);
        let (mut r, mut a, mut b) = ([0xffu8; 16], [0u8; 64], [0u8; 64]);
        ram.read(0x100, &mut r).unwrap();
        ram.read(0x200, &mut a).unwrap();
        ram.read(0x300, &mut b).unwrap();
        assert_eq!(r, [0u8; 16], "a driver-readable buffer was written");
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0) && b.iter().any(|&x| x != 0));
    }

    /// A buffer running past the end of guest memory: the pieces before it are written and
    /// counted, then the fill stops (as the entropy device).
    #[test]
    fn stops_at_the_first_piece_outside_memory() {
        let mut ram = GuestRam::anonymous(0x2000).unwrap();
        let chain = [desc(0x800, 0xffff_ff00, true), desc(0x100, 8, true)];
        let n = BufferFiller::new(false).fill(&chain, &mut ram);
        assert_eq!(n, PIECE as u32);
        let mut after = [0xffu8; 8];
        ram.read(0x100, &mut after).unwrap();
        assert_eq!(after, [0u8; 8], "the fill went on after a failed piece");
    }

    /// The mutant writes driver-readable buffers too, without counting them.
    #[test]
    fn the_mutant_writes_readable_buffers() {
        let mut ram = GuestRam::anonymous(0x1000).unwrap();
        let chain = [desc(0x100, 16, false), desc(0x200, 8, true)];
        let n = BufferFiller::new(true).fill(&chain, &mut ram);
        assert_eq!(n, 8);
        let mut r = [0u8; 16];
        ram.read(0x100, &mut r).unwrap();
        assert!(r.iter().any(|&x| x != 0));
    }
}
