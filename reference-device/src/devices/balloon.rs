//! The traditional memory balloon device (virtio-balloon, DeviceID 5, VIRTIO §5.5).
//!
//! Queues (§5.5.2): 0 inflateq, 1 deflateq, 2 statsq (exists because VIRTIO_BALLOON_F_STATS_VQ
//! is offered). The free page hinting and reporting queues (3 and 4) are not modelled, so
//! VIRTIO_BALLOON_F_FREE_PAGE_HINT and VIRTIO_BALLOON_F_PAGE_REPORTING are not offered.
//!
//! Configuration space (§5.5.4), 16 bytes, little-endian on both transports (§5.5.4.1):
//! `num_pages` (le32) at 0, the host's target in 4096-byte pages; `actual` (le32) at 4, written
//! by the driver; `free_page_hint_cmd_id` (le32) at 8, reads 0; `poison_val` (le32) at 12,
//! written by the driver when VIRTIO_BALLOON_F_PAGE_POISON is negotiated.
//!
//! The host side, one port per kind of traffic:
//! - port 0 ([`PORT_INFLATE`]): [`DeviceBackend::host_take`] returns, per inflateq chain, the
//!   page frame numbers it carried (32-bit little-endian entries, whole entries only);
//! - port 1 ([`PORT_DEFLATE`]): the same for deflateq chains;
//! - port 2 ([`PORT_STATS`]): [`DeviceBackend::host_send`] (any data) is a host request for
//!   statistics: the held statsq buffer is used (§5.5.6.3). `host_take` returns, per statsq
//!   buffer the device consumed, the statistics it recognized as the host sees them: 10-byte
//!   entries (le16 tag, le64 value), one per tag, sorted by tag (see [`canonical_stats`]);
//! - port 3 ([`PORT_ACTUAL`]): `host_take` returns one unit, the `actual` value the device
//!   uses (le32), which follows the driver's writes to `actual` (on the legacy interface only
//!   once the most significant byte was written, §5.5.6.2.1).

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::{ChainReader, Completion, DeviceBackend};
use crate::memory::GuestRam;
use crate::queue::Descriptor;
use crate::Mutant;

/// Feature bit: the host has to be told before pages from the balloon are used (§5.5.3).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// Feature bit: the statsq is present (§5.5.3).
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the driver deflates the balloon on guest out-of-memory (§5.5.3).
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: free page hinting and its free_page_vq (§5.5.3); not offered here.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Feature bit: the driver writes `poison_val` to deflated pages (§5.5.3).
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// Feature bit: free page reporting and its reporting_vq (§5.5.3); not offered here.
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u32 = 5;

/// The page size page frame numbers count in, in bytes (§5.5.6, independent of the guest's).
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// Length of one `struct virtio_balloon_stat` in bytes (le16 tag, le64 value).
pub const STAT_LEN: usize = 10;
/// The largest statistics tag this device recognizes (VIRTIO_BALLOON_S_HTLB_PGFAIL, §5.5.6.4).
pub const MAX_KNOWN_TAG: u16 = 9;
/// Index of the inflateq.
pub const INFLATEQ: u16 = 0;
/// Index of the deflateq.
pub const DEFLATEQ: u16 = 1;
/// Index of the statsq.
pub const STATSQ: u16 = 2;
/// Host-side port of inflate requests.
pub const PORT_INFLATE: u32 = 0;
/// Host-side port of deflate requests.
pub const PORT_DEFLATE: u32 = 1;
/// Host-side port of memory statistics.
pub const PORT_STATS: u32 = 2;
/// Host-side port of the `actual` value the device uses.
pub const PORT_ACTUAL: u32 = 3;
/// Byte offset of `actual` in the configuration space.
pub const ACTUAL_OFFSET: usize = 4;
/// Byte offset of `poison_val` in the configuration space.
pub const POISON_VAL_OFFSET: usize = 12;
/// The most readable bytes one inflate, deflate or stats chain is read for (bounds the work
/// of a hostile chain): 1 MiB, 262144 page frame numbers.
pub const MAX_REQUEST: u64 = 1 << 20;

/// The statistics of `entries` (10-byte `struct virtio_balloon_stat` records, a trailing
/// partial record ignored) as the host sees them: entries whose tag is at most
/// [`MAX_KNOWN_TAG`], the last value of each tag, sorted by tag, re-encoded as 10-byte records.
pub fn canonical_stats(entries: &[u8]) -> Vec<u8> {
    let mut map = BTreeMap::new();
    for e in entries.chunks_exact(STAT_LEN) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..10]);
        if tag <= MAX_KNOWN_TAG {
            map.insert(tag, u64::from_le_bytes(v));
        }
    }
    encode_stats(&map)
}

fn encode_stats(map: &BTreeMap<u16, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(map.len() * STAT_LEN);
    for (t, v) in map {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The traditional memory balloon (DeviceID 5, §5.5) of a guest whose host asks for
/// `num_pages` 4096-byte pages.
///
/// Offered features: VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_STATS_VQ,
/// VIRTIO_BALLOON_F_DEFLATE_ON_OOM and VIRTIO_BALLOON_F_PAGE_POISON. Inflate and deflate
/// requests are used at once with `len` 0 (the device writes nothing); the set of page frame
/// numbers in the balloon is kept. A statsq buffer is consumed when it arrives and held until
/// the host asks for statistics; on the legacy interface the values of the first buffer after
/// initialization are ignored (§5.5.6.3.3). A device reset forgets the statsq handshake and
/// `poison_val`; the balloon's pages, `num_pages` and `actual` are host state and stay.
pub struct BalloonBackend {
    config: Vec<u8>,
    pages: BTreeSet<u32>,
    inflated: Vec<Vec<u8>>,
    deflated: Vec<Vec<u8>>,
    stats_out: Vec<Vec<u8>>,
    stats_request: bool,
    stats_buffers: u32,
    /// The `actual` value the device uses (host view).
    actual: u32,
    driver_write: Option<(usize, Vec<u8>)>,
    negotiated: u64,
    mutant: Option<Mutant>,
}

impl BalloonBackend {
    /// A balloon whose host target starts at `num_pages` pages.
    pub fn new(num_pages: u32) -> Self {
        let mut config = vec![0u8; 16];
        config[0..4].copy_from_slice(&num_pages.to_le_bytes());
        BalloonBackend {
            config,
            pages: BTreeSet::new(),
            inflated: Vec::new(),
            deflated: Vec::new(),
            stats_out: Vec::new(),
            stats_request: false,
            stats_buffers: 0,
            actual: 0,
            driver_write: None,
            negotiated: 0,
            mutant: None,
        }
    }

    /// Page frame numbers currently in the balloon, ascending.
    pub fn pages(&self) -> Vec<u32> {
        self.pages.iter().copied().collect()
    }

    fn is(&self, m: Mutant) -> bool {
        self.mutant == Some(m)
    }

    fn modern(&self) -> bool {
        self.negotiated & (1 << crate::regs::VIRTIO_F_VERSION_1) != 0
    }

    /// Reads the readable bytes of `chain` (at most [`MAX_REQUEST`]).
    fn readable(&self, chain: &[Descriptor], ram: &mut GuestRam) -> Vec<u8> {
        let chain = if self.is(Mutant::BalloonPfnFirstDescriptorOnly) {
            &chain[..chain.len().min(1)]
        } else {
            chain
        };
        let n = ChainReader::available(chain).min(MAX_REQUEST) as usize;
        let mut buf = vec![0u8; n];
        let got = ChainReader::new(chain).read(ram, &mut buf).unwrap_or(0);
        buf.truncate(got);
        buf
    }

    fn page_request(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) {
        if self.is(Mutant::BalloonNeedsMustTellHost)
            && self.negotiated & (1 << VIRTIO_BALLOON_F_MUST_TELL_HOST) == 0
        {
            return;
        }
        let mut bytes = self.readable(chain, ram);
        bytes.truncate(bytes.len() / 4 * 4);
        for e in bytes.chunks_exact(4) {
            let pfn = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            if queue == INFLATEQ {
                self.pages.insert(pfn);
            } else {
                self.pages.remove(&pfn);
            }
        }
        if queue == INFLATEQ {
            self.inflated.push(bytes);
        } else {
            self.deflated.push(bytes);
        }
    }

    fn stats(&mut self, chain: &[Descriptor], ram: &mut GuestRam) {
        let bytes = self.readable(chain, ram);
        self.stats_buffers = self.stats_buffers.saturating_add(1);
        if !self.modern()
            && self.stats_buffers == 1
            && !self.is(Mutant::BalloonLegacyFirstStatsUsed)
        {
            // §5.5.6.3.3: legacy drivers historically left the first buffer uninitialized.
            return;
        }
        let mut map = BTreeMap::new();
        let mut last_tag = 0u16;
        for e in bytes.chunks_exact(STAT_LEN) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..10]);
            if tag > MAX_KNOWN_TAG {
                if self.is(Mutant::BalloonStatsStopAtUnknownTag) {
                    break;
                }
                continue;
            }
            if self.is(Mutant::BalloonStatsAssumeAscendingTags) && tag < last_tag {
                break;
            }
            last_tag = tag;
            map.insert(tag, u64::from_le_bytes(v));
        }
        self.stats_out.push(encode_stats(&map));
    }
}

impl Default for BalloonBackend {
    /// A balloon whose host target is 0 pages (nothing asked for yet).
    fn default() -> Self {
        BalloonBackend::new(0)
    }
}

impl DeviceBackend for BalloonBackend {
    fn device_id(&self) -> u32 {
        5
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_BALLOON_F_MUST_TELL_HOST)
            | (1 << VIRTIO_BALLOON_F_STATS_VQ)
            | (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
            | (1 << VIRTIO_BALLOON_F_PAGE_POISON)
    }
    fn num_queues(&self) -> u16 {
        3
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn name(&self) -> &'static str {
        "balloon"
    }
    fn set_mutant(&mut self, m: Mutant) {
        self.mutant = Some(m);
    }

    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        match queue {
            INFLATEQ | DEFLATEQ => {
                self.page_request(queue, chain, ram);
                Completion::Written(0)
            }
            STATSQ => {
                self.stats(chain, ram);
                Completion::Held
            }
            _ => Completion::Written(0),
        }
    }

    fn release_held(&mut self, queue: u16) -> bool {
        queue == STATSQ
            && !self.is(Mutant::BalloonStatsRequestIgnored)
            && std::mem::take(&mut self.stats_request)
    }

    fn host_send(&mut self, port: u32, _data: &[u8]) -> Result<Vec<u16>, String> {
        match port {
            PORT_STATS => {
                self.stats_request = true;
                Ok(vec![STATSQ])
            }
            _ => Err(format!(
                "the balloon device takes host requests on port {PORT_STATS} (statistics) only, not port {port}"
            )),
        }
    }

    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        match port {
            PORT_INFLATE => Ok(std::mem::take(&mut self.inflated)),
            PORT_DEFLATE => Ok(std::mem::take(&mut self.deflated)),
            PORT_STATS => Ok(std::mem::take(&mut self.stats_out)),
            PORT_ACTUAL => Ok(vec![self.actual.to_le_bytes().to_vec()]),
            _ => Err(format!(
                "the balloon device has host ports 0 (inflate), 1 (deflate), 2 (statistics) and 3 (actual), not {port}"
            )),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let mut changed = false;
        for (k, &b) in data.iter().enumerate() {
            let o = start.saturating_add(k);
            // num_pages and free_page_hint_cmd_id are read-only for the driver.
            if (ACTUAL_OFFSET..ACTUAL_OFFSET + 4).contains(&o)
                || (POISON_VAL_OFFSET..POISON_VAL_OFFSET + 4).contains(&o)
            {
                self.config[o] = b;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let end = start.saturating_add(data.len()).min(self.config.len());
        let start = start.min(end);
        self.driver_write = Some((start, self.config[start..end].to_vec()));
        // §5.5.6.2.1: the device uses `actual` once its most significant byte was written.
        let msb = ACTUAL_OFFSET + 3;
        let msb_written = (start..end).contains(&msb);
        let torn = self.is(Mutant::BalloonActualTornWrite)
            && (start..end).any(|o| (ACTUAL_OFFSET..=msb).contains(&o));
        if (msb_written || torn) && !self.is(Mutant::BalloonActualIgnored) {
            let a = &self.config[ACTUAL_OFFSET..ACTUAL_OFFSET + 4];
            self.actual = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        }
    }

    fn take_driver_write(&mut self) -> Option<(usize, Vec<u8>)> {
        self.driver_write.take()
    }

    fn host_config_changed(&mut self, offset: usize, data: &[u8]) {
        let end = offset.saturating_add(data.len()).min(self.config.len());
        let start = offset.min(end);
        self.config[start..end].copy_from_slice(&data[..end - start]);
    }

    fn negotiated(&mut self, features: u64) {
        self.negotiated = features;
    }

    fn reset(&mut self) {
        self.stats_request = false;
        self.stats_buffers = 0;
        self.negotiated = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdesc(addr: u64, len: u32) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    fn stat(tag: u16, val: u64) -> Vec<u8> {
        let mut v = tag.to_le_bytes().to_vec();
        v.extend_from_slice(&val.to_le_bytes());
        v
    }

    #[test]
    fn pfn_array_split_mid_entry_is_one_array() {
        let mut ram = GuestRam::anonymous(1 << 20).unwrap();
        let arr: Vec<u8> = [0x900u32, 0x901]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        ram.write(0x1000, &arr[..3]).unwrap();
        ram.write(0x2000, &arr[3..]).unwrap();
        let mut b = BalloonBackend::default();
        let chain = [rdesc(0x1000, 3), rdesc(0x2000, 5)];
        assert_eq!(
            b.process(INFLATEQ, &chain, &mut ram),
            Completion::Written(0)
        );
        assert_eq!(b.pages(), vec![0x900, 0x901]);
        assert_eq!(b.host_take(PORT_INFLATE).unwrap(), vec![arr.clone()]);
        ram.write(0x1000, &arr[4..]).unwrap();
        b.process(DEFLATEQ, &[rdesc(0x1000, 4)], &mut ram);
        assert_eq!(b.pages(), vec![0x900]);
    }

    #[test]
    fn stats_are_held_until_a_host_request() {
        let mut ram = GuestRam::anonymous(1 << 20).unwrap();
        let mut buf = stat(5, 7);
        buf.extend(stat(0x7f3a, 1));
        buf.extend(stat(0, 3));
        ram.write(0x1000, &buf).unwrap();
        let mut b = BalloonBackend::default();
        b.negotiated(1 << crate::regs::VIRTIO_F_VERSION_1);
        let chain = [rdesc(0x1000, buf.len() as u32)];
        assert_eq!(b.process(STATSQ, &chain, &mut ram), Completion::Held);
        assert!(!b.release_held(STATSQ));
        let mut want = stat(0, 3);
        want.extend(stat(5, 7));
        assert_eq!(b.host_take(PORT_STATS).unwrap(), vec![want.clone()]);
        assert_eq!(canonical_stats(&buf), want);
        b.host_send(PORT_STATS, &[]).unwrap();
        assert!(b.release_held(STATSQ));
        assert!(!b.release_held(STATSQ));
    }

    #[test]
    fn legacy_ignores_the_first_stats_buffer() {
        let mut ram = GuestRam::anonymous(1 << 20).unwrap();
        ram.write(0x1000, &stat(4, 9)).unwrap();
        let mut b = BalloonBackend::default();
        let chain = [rdesc(0x1000, 10)];
        b.process(STATSQ, &chain, &mut ram);
        assert!(b.host_take(PORT_STATS).unwrap().is_empty());
        b.process(STATSQ, &chain, &mut ram);
        assert_eq!(b.host_take(PORT_STATS).unwrap(), vec![stat(4, 9)]);
    }

    #[test]
    fn actual_is_used_once_its_last_byte_is_written() {
        let mut b = BalloonBackend::default();
        b.write_config(4, &[0x34]);
        assert_eq!(b.take_driver_write(), Some((4, vec![0x34])));
        b.write_config(5, &[0x12]);
        assert_eq!(b.host_take(PORT_ACTUAL).unwrap(), vec![vec![0, 0, 0, 0]]);
        b.write_config(6, &[0, 0]);
        assert_eq!(
            b.host_take(PORT_ACTUAL).unwrap(),
            vec![vec![0x34, 0x12, 0, 0]]
        );
        assert_eq!(b.take_driver_write(), Some((6, vec![0, 0])));
        // num_pages is the host's: a driver write is ignored.
        b.write_config(0, &[1, 2, 3, 4]);
        assert_eq!(b.take_driver_write(), None);
        assert_eq!(&b.config()[0..4], &[0, 0, 0, 0]);
        assert!(b.host_take(9).is_err());
        assert!(b.host_send(0, &[]).is_err());
    }
}
