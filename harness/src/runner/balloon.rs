//! Balloon-specific driver knowledge of the runner (VIRTIO §5.5).
//!
//! A page whose frame number the driver puts in an inflate request is handed to the device:
//! the device may change its contents from then on (§5.5.6.2, a MAY; QEMU discards such pages,
//! so they read back as zeros). The memory oracles therefore treat those pages like
//! device-writable buffers.

use super::{Area, Exec};
use crate::case::Buf;

/// Index of the balloon's inflateq (§5.5.2).
const INFLATEQ: u16 = 0;
/// Balloon page size: page frame numbers count 4096-byte pages whatever the guest's page size
/// (§5.5.6).
const BALLOON_PAGE: u64 = 4096;

impl Exec<'_> {
    /// After the driver posted `chain` on `queue`: when the target is a balloon and the queue
    /// its inflateq, every page named by the chain's readable bytes (32-bit little-endian page
    /// frame numbers) becomes device-writable for the memory oracles.
    pub(super) fn balloon_inflate_pages(&mut self, queue: u16, chain: &[Buf]) {
        if queue != INFLATEQ || self.t.info().device != "balloon" {
            return;
        }
        let mut bytes = Vec::new();
        for b in chain.iter().filter(|b| !b.write) {
            let len = b.len.0 as usize;
            match &b.data {
                Some(d) => {
                    let mut c = d.0.clone();
                    c.resize(len.min(1 << 20), b.fill.unwrap_or(0));
                    bytes.extend_from_slice(&c);
                }
                None => bytes.extend(std::iter::repeat_n(
                    b.fill.unwrap_or(0x5a),
                    len.min(1 << 20),
                )),
            }
        }
        for e in bytes.chunks_exact(4) {
            let pfn = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            if u64::from(pfn) * BALLOON_PAGE + BALLOON_PAGE > self.ram {
                continue;
            }
            self.allow(u64::from(pfn) * BALLOON_PAGE, BALLOON_PAGE, Area::Writable);
        }
    }
}
