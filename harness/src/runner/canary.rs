//! The canary oracle: guest-memory corruption seen without the target's help.
//!
//! Targets that cannot report their device's memory accesses (QEMU, any out-of-process or
//! black-box target) would otherwise never be checked for the worst class of virtio bug: a
//! device that writes guest memory outside the buffers it was handed (§2.7.5.1, §2.7.5, §2.7.6).
//! Before a case runs, [`Canary::fill`] writes a pattern derived from a per-case seed into the
//! guest RAM the oracle watches; every later driver write is mirrored into the expected image
//! ([`Canary::driver_wrote`]); [`Canary::verify`] then reads the watched RAM back and reports
//! every byte range that changed although neither the driver wrote it nor the device was
//! allowed to ([`Canary::device_may_write`]: device-writable buffers and the used rings).
//!
//! What is watched ([`Coverage`]):
//! - [`Coverage::Full`]: all of guest RAM, for targets whose RAM the harness reaches cheaply
//!   in bulk ([`Target::bulk_cheap`]: in-process targets, QEMU with its RAM shared through a
//!   file) and that do not log their accesses;
//! - [`Coverage::Sampled`]: the places a device bug writes to — the first and last 64 KiB of
//!   RAM (where wrapped and truncated addresses land), the first 256 KiB of each queue's ring
//!   area and of the buffer area, every page the driver writes (descriptor tables, rings,
//!   buffers, wherever a case puts them) — and a seeded sample of 64 pages elsewhere. Used
//!   when bulk access is slow, and for targets with a memory log (the log is the primary
//!   oracle there; the canary cross-checks it).
//!
//! The expected content of a watched page is the pattern, unless the driver wrote into it or
//! it changed in a reported or permitted way: such pages are kept as copies. Bytes that do not
//! read back as written right after the fill (ROM, holes) are taken as they read.

use super::{Area, Exec, Failure, Stop, BUF_BASE, RING_BASE, RING_STRIDE};
use crate::case::Case;
use crate::catalog::Level;
use crate::outcome::Severity;
use crate::target::{Target, TargetError};
use std::collections::HashMap;
use virtio_reference_device::DriverMemory;

/// Granularity of comparisons and of the sampled sweep, in bytes.
const PAGE: u64 = 4096;
/// Bytes watched at each edge of guest RAM in sampled coverage.
const EDGE: u64 = 64 * 1024;
/// Bytes watched at the start of each ring and buffer area in sampled coverage.
const AREA_HEAD: u64 = 256 * 1024;
/// Pages of the seeded sample in sampled coverage.
const SAMPLE_PAGES: u64 = 64;
/// Bytes per bulk transfer.
const CHUNK: u64 = 256 * 1024;
/// Bytes of a corrupted range shown in a report.
const LARGEST_REPORTED_BYTES: usize = 32;

/// How much of guest RAM the oracle watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every byte of guest RAM.
    Full,
    /// Edges of RAM, the harness's ring and buffer areas, driver-written pages, and a seeded
    /// sample of pages.
    Sampled,
}

/// A range of guest RAM that changed without the driver writing it or the device being
/// allowed to (guest physical addresses; `before` is what the canary held, `after` what the
/// RAM holds now, both cut to the first 32 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// First changed byte.
    pub start: u64,
    /// One past the last changed byte.
    pub end: u64,
    /// The expected bytes (canary or driver data), at most 32.
    pub before: Vec<u8>,
    /// The bytes found, at most 32.
    pub after: Vec<u8>,
}

impl Corruption {
    /// Length of the range in bytes (changed bytes less than 8 apart are one range).
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty (never for a reported corruption).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Canary state of one case on one target.
pub struct Canary {
    seed: u64,
    ram: u64,
    coverage: Coverage,
    /// The pattern of one page (the first 8 bytes are replaced by the page's tag).
    block: Vec<u8>,
    /// Watched page ranges `[first, end)` in page numbers, sorted and disjoint.
    watched: Vec<(u64, u64)>,
    /// Expected content of watched pages that differ from the pattern.
    overlay: HashMap<u64, Box<[u8]>>,
    /// Ranges the device may write (sorted by start, possibly overlapping).
    writable: Vec<(u64, u64)>,
    /// Whether the device may have run since the last verification.
    dirty: bool,
    /// Scratch buffer for bulk transfers.
    scratch: Vec<u8>,
}

/// 64-bit mixer (splitmix64 finaliser).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The per-case seed: a hash of the case id, so a rerun reproduces the same pattern.
pub fn case_seed(case_id: &str) -> u64 {
    // FNV-1a, then mixed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in case_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// Sorts and merges ranges.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|r| r.1 > r.0);
    v.sort();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl Canary {
    /// A canary for a case with `seed` on a target with `ram` bytes of RAM. `hot` lists the
    /// areas (guest physical addresses) the harness will place rings and buffers in, watched
    /// in sampled coverage.
    pub fn new(seed: u64, ram: u64, coverage: Coverage, hot: &[(u64, u64)]) -> Canary {
        let pages = ram / PAGE;
        let ranges = match coverage {
            Coverage::Full => vec![(0, pages)],
            Coverage::Sampled => {
                let edge = EDGE / PAGE;
                let mut v = vec![(0, edge.min(pages)), (pages.saturating_sub(edge), pages)];
                for &(s, e) in hot {
                    let e = e.min(s.saturating_add(AREA_HEAD));
                    v.push(((s / PAGE).min(pages), e.div_ceil(PAGE).min(pages)));
                }
                for i in 0..SAMPLE_PAGES.min(pages) {
                    let p = mix(seed ^ (0x5a5a_0000 + i)) % pages.max(1);
                    v.push((p, p + 1));
                }
                v
            }
        };
        let mut block = vec![0u8; PAGE as usize];
        for (i, c) in block.chunks_mut(8).enumerate() {
            c.copy_from_slice(&mix(seed.wrapping_add(i as u64)).to_le_bytes());
        }
        Canary {
            seed,
            ram,
            coverage,
            block,
            watched: merge(ranges),
            overlay: HashMap::new(),
            writable: Vec::new(),
            dirty: false,
            scratch: Vec::new(),
        }
    }

    /// The seed of the pattern.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What is watched.
    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    /// Bytes of guest RAM watched.
    pub fn watched_bytes(&self) -> u64 {
        self.watched.iter().map(|r| (r.1 - r.0) * PAGE).sum()
    }

    /// The 8-byte tag at the start of page `page`.
    fn tag(&self, page: u64) -> [u8; 8] {
        mix(self.seed ^ page).to_le_bytes()
    }

    /// Writes the pattern of page `page` into `out` (one page long).
    fn pattern_page(&self, page: u64, out: &mut [u8]) {
        out.copy_from_slice(&self.block);
        out[..8].copy_from_slice(&self.tag(page));
    }

    /// The expected content of page `page`.
    fn expected_page(&self, page: u64) -> Box<[u8]> {
        match self.overlay.get(&page) {
            Some(p) => p.clone(),
            None => {
                let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
                self.pattern_page(page, &mut p);
                p
            }
        }
    }

    fn is_watched(&self, page: u64) -> bool {
        let k = self.watched.partition_point(|w| w.0 <= page);
        k > 0 && page < self.watched[k - 1].1
    }

    /// Chunks of the watched ranges: (guest physical address, length in bytes).
    fn chunks(&self) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for &(s, e) in &self.watched {
            let (mut a, end) = (s * PAGE, e * PAGE);
            while a < end {
                let n = CHUNK.min(end - a);
                out.push((a, n as usize));
                a += n;
            }
        }
        out
    }

    /// Writes the pattern into every watched page of the target's RAM. Where the target has
    /// no cheap bulk path, reads it back and takes what did not hold a write (ROM, holes) as
    /// the expected content.
    pub fn fill(&mut self, t: &mut dyn Target) -> Result<(), TargetError> {
        let mut buf = std::mem::take(&mut self.scratch);
        for (a, n) in self.chunks() {
            buf.resize(n, 0);
            for (i, p) in buf.chunks_mut(PAGE as usize).enumerate() {
                self.pattern_page(a / PAGE + i as u64, p);
            }
            t.bulk_write(a, &buf)?;
        }
        if !t.bulk_cheap() {
            for (a, n) in self.chunks() {
                buf.resize(n, 0);
                t.bulk_read(a, &mut buf)?;
                for (i, p) in buf.chunks(PAGE as usize).enumerate() {
                    let page = a / PAGE + i as u64;
                    if !self.matches(page, p) {
                        self.overlay.insert(page, p.into());
                    }
                }
            }
        }
        self.scratch = buf;
        self.dirty = false;
        Ok(())
    }

    /// Whether `actual` (one page) holds the expected content of page `page`.
    fn matches(&self, page: u64, actual: &[u8]) -> bool {
        match self.overlay.get(&page) {
            Some(p) => **p == *actual,
            None => actual[..8] == self.tag(page) && actual[8..] == self.block[8..],
        }
    }

    /// Mirrors a driver (harness) write of `data` at `gpa` into the expected image. In
    /// sampled coverage a page outside the watched ones is read from `t` and watched from now
    /// on (descriptor tables, available rings and readable buffers wherever a case puts them).
    pub fn driver_wrote(
        &mut self,
        t: &mut dyn Target,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), TargetError> {
        let Some(end) = gpa.checked_add(data.len() as u64) else {
            return Ok(());
        };
        if data.is_empty() || end > self.ram {
            return Ok(());
        }
        for page in gpa / PAGE..end.div_ceil(PAGE) {
            let p0 = page * PAGE;
            if !self.overlay.contains_key(&page) {
                let content = if self.is_watched(page) {
                    self.expected_page(page)
                } else {
                    let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
                    t.mem_read(p0, &mut p)?;
                    let at = self.watched.partition_point(|w| w.0 <= page);
                    self.watched.insert(at, (page, page + 1));
                    self.watched = merge(std::mem::take(&mut self.watched));
                    p
                };
                self.overlay.insert(page, content);
            }
            let s = gpa.max(p0);
            let e = end.min(p0 + PAGE);
            let p = self.overlay.get_mut(&page).expect("inserted above");
            p[(s - p0) as usize..(e - p0) as usize]
                .copy_from_slice(&data[(s - gpa) as usize..(e - gpa) as usize]);
        }
        Ok(())
    }

    /// The device may write `len` bytes at `gpa` (a device-writable buffer or a used ring).
    /// The part inside guest RAM is exempt; a part past 2^64 (a wrapping `addr + len`) is not:
    /// the bytes at the bottom of RAM were never handed over.
    pub fn device_may_write(&mut self, gpa: u64, len: u64) {
        let end = gpa.saturating_add(len).min(self.ram);
        if gpa < end {
            let at = self.writable.partition_point(|w| w.0 < gpa);
            self.writable.insert(at, (gpa, end));
        }
    }

    /// Notes that the device may have run (a register write, a notification).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether the device may have run since the last verification.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Reads the watched RAM and returns every changed range outside the device-writable
    /// ranges. What was found becomes the expected content, so each change is reported once.
    pub fn verify(&mut self, t: &mut dyn Target) -> Result<Vec<Corruption>, TargetError> {
        self.dirty = false;
        let mut found = Vec::new();
        let mut buf = std::mem::take(&mut self.scratch);
        for (a, n) in self.chunks() {
            buf.resize(n, 0);
            if let Err(e) = t.bulk_read(a, &mut buf) {
                self.scratch = buf;
                return Err(e);
            }
            for (i, actual) in buf.chunks(PAGE as usize).enumerate() {
                let page = a / PAGE + i as u64;
                if self.matches(page, actual) {
                    continue;
                }
                let expected = self.expected_page(page);
                diff_runs(page * PAGE, &expected, actual, &self.writable, &mut found);
                self.overlay.insert(page, actual.into());
            }
        }
        self.scratch = buf;
        // Join ranges that continue across page boundaries.
        let mut merged: Vec<Corruption> = Vec::with_capacity(found.len());
        for c in found {
            match merged.last_mut() {
                Some(m) if c.start <= m.end + 8 && c.start >= m.start => {
                    m.end = m.end.max(c.end);
                    for (v, w) in [(&mut m.before, &c.before), (&mut m.after, &c.after)] {
                        let room = LARGEST_REPORTED_BYTES.saturating_sub(v.len());
                        v.extend_from_slice(&w[..w.len().min(room)]);
                    }
                }
                _ => merged.push(c),
            }
        }
        Ok(merged)
    }
}

/// Appends the changed runs of `expected` vs `actual` (RAM at `base`) that lie outside
/// `writable` (sorted by start). Runs closer than 8 bytes are joined.
fn diff_runs(
    base: u64,
    expected: &[u8],
    actual: &[u8],
    writable: &[(u64, u64)],
    out: &mut Vec<Corruption>,
) {
    let exempt = |a: u64| {
        let k = writable.partition_point(|w| w.0 <= a);
        writable[..k].iter().any(|w| a < w.1)
    };
    let changed = |i: usize| expected[i] != actual[i] && !exempt(base + i as u64);
    let n = expected.len().min(actual.len());
    let mut i = 0;
    while i < n {
        if !changed(i) {
            i += 1;
            continue;
        }
        let s = i;
        let mut last = i;
        let mut j = i + 1;
        while j < n && j <= last + 8 {
            if changed(j) {
                last = j;
            }
            j += 1;
        }
        let e = last + 1;
        let shown = s..e.min(s + LARGEST_REPORTED_BYTES);
        out.push(Corruption {
            start: base + s as u64,
            end: base + e as u64,
            before: expected[shown.clone()].to_vec(),
            after: actual[shown].to_vec(),
        });
        i = e;
    }
}

/// Driver-side memory access that keeps the canary's expected image in step with every write
/// the harness makes (ring set-up, descriptors, buffers).
pub struct GuardedMemory<'a> {
    /// The target.
    pub t: &'a mut dyn Target,
    /// The canary to update, when the case has one.
    pub canary: Option<&'a mut Canary>,
}

impl DriverMemory for GuardedMemory<'_> {
    type Error = TargetError;
    fn write_bytes(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        if let Some(c) = self.canary.as_deref_mut() {
            c.driver_wrote(&mut *self.t, gpa, data)?;
        }
        self.t.mem_write(gpa, data)
    }
    fn read_bytes(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.t.mem_read(gpa, buf)
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle inside the case interpreter.

/// Ring areas of the first queues watched in sampled coverage.
const WATCHED_QUEUES: u64 = 4;

impl Exec<'_> {
    /// Fills guest RAM with the case's canary pattern (before the first step).
    pub(super) fn start_canary(&mut self, case: &Case) -> Result<(), Stop> {
        let coverage = if self.t.bulk_cheap() && !self.memory_log {
            Coverage::Full
        } else {
            Coverage::Sampled
        };
        let mut hot: Vec<(u64, u64)> = (0..WATCHED_QUEUES)
            .map(|i| RING_BASE + i * RING_STRIDE)
            .map(|a| (a, a + RING_STRIDE))
            .collect();
        hot.push((BUF_BASE, BUF_BASE + RING_STRIDE));
        if std::env::var_os("VIRTIO_CONFORM_CANARY").is_some_and(|v| v == "off") {
            return Ok(());
        }
        let mut c = Canary::new(case_seed(&case.id), self.ram, coverage, &hot);
        c.fill(&mut *self.t)?;
        self.canary = Some(c);
        Ok(())
    }

    /// Verifies the canary when the device may have run since the last check (`always`: at
    /// the end of the case), and turns every corrupted range into a critical failure.
    pub(super) fn canary_oracle(&mut self, always: bool) -> Result<(), Stop> {
        let Some(c) = self.canary.as_mut() else {
            return Ok(());
        };
        if !always && !c.dirty() {
            return Ok(());
        }
        let seed = c.seed();
        let watched = match c.coverage() {
            Coverage::Full => "all of guest RAM watched",
            Coverage::Sampled => "sampled guest RAM watched",
        };
        let found = c.verify(&mut *self.t)?;
        for k in found {
            self.report_corruption(&k, seed, watched);
        }
        Ok(())
    }

    fn report_corruption(&mut self, k: &Corruption, seed: u64, watched: &str) {
        let overlaps = |kind: Area| {
            self.areas
                .iter()
                .any(|&(s, e, a)| a == kind && k.start < e && s < k.end)
        };
        let (id, what) = if overlaps(Area::DescTable) {
            ("VQ-DEV-05", "no device write to a descriptor table")
        } else if overlaps(Area::AvailRing) {
            ("VQ-DEV-22", "no device write to the available ring")
        } else if overlaps(Area::DriverEvent) {
            (
                "PACKED-DEV-04",
                "no device write to the Driver Event Suppression structure",
            )
        } else if overlaps(Area::ReadOnly) {
            (
                self.readable_written_id(),
                "no device write to a device-readable buffer",
            )
        } else {
            (
                "SPLIT-DEV-MALFORMED-CHAIN",
                "no device write to guest RAM outside the writable buffers and used rings it was given",
            )
        };
        let logged = self
            .logged_writes
            .iter()
            .any(|&(s, e)| s <= k.start && k.end <= e);
        if self.memory_log && logged {
            // The memory-log oracle has reported this write already, with its exact extent.
            return;
        }
        let unlogged = if self.memory_log {
            "; the target's memory log does not show this write"
        } else {
            ""
        };
        let hex = |b: &[u8]| -> String {
            let mut s: String = b.iter().map(|x| format!("{x:02x}")).collect();
            if (b.len() as u64) < k.len() {
                s.push_str("...");
            }
            s
        };
        let (requirements, _) = self.reqs(None, &[id]);
        self.failures.push(Failure {
            step: self.step,
            line: self.line,
            op: "canary".into(),
            requirements,
            level: Level::Must,
            severity: Severity::Critical,
            expected: format!("{what} (canary pattern, seed {seed:#018x}, {watched})"),
            observed: format!(
                "guest memory corruption: {} bytes at {:#x}..{:#x} changed from {} to {}{unlogged}",
                k.len(),
                k.start,
                k.end,
                hex(&k.before),
                hex(&k.after)
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_differs_per_page_and_seed() {
        let a = Canary::new(1, 1 << 20, Coverage::Full, &[]);
        let b = Canary::new(2, 1 << 20, Coverage::Full, &[]);
        let (pa0, pa1, pb0) = (a.expected_page(0), a.expected_page(1), b.expected_page(0));
        assert_ne!(pa0[..8], pa1[..8]);
        assert_eq!(pa0[8..], pa1[8..]);
        assert_ne!(pa0[..], pb0[..]);
        assert!(a.matches(1, &pa1));
        assert!(!a.matches(0, &pa1));
    }

    #[test]
    fn diff_runs_skips_writable_and_joins_close_changes() {
        let exp = vec![0u8; 64];
        let mut act = exp.clone();
        act[2] = 1;
        act[5] = 1;
        act[20] = 1;
        act[40] = 1;
        let mut out = Vec::new();
        diff_runs(0x1000, &exp, &act, &[(0x1000 + 40, 0x1000 + 41)], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].start, out[0].end), (0x1002, 0x1006));
        assert_eq!((out[1].start, out[1].end), (0x1014, 0x1015));
    }

    #[test]
    fn merge_joins_overlaps() {
        assert_eq!(
            merge(vec![(5, 9), (0, 6), (10, 12)]),
            vec![(0, 9), (10, 12)]
        );
    }

    #[test]
    fn sampled_coverage_watches_edges_and_hot_areas() {
        let c = Canary::new(7, 16 << 20, Coverage::Sampled, &[(0x10_0000, 0x20_0000)]);
        assert!(c.is_watched(0));
        assert!(c.is_watched((16 << 20) / PAGE - 1));
        assert!(c.is_watched(0x10_0000 / PAGE));
        assert!(c.watched_bytes() < 2 << 20);
    }
}
