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
//!   area and of the buffer area — and a seeded sample of 64 pages elsewhere. Used when bulk access is slow, and for targets with
//!   a memory log (the log is the primary oracle there; the canary cross-checks it).
//!
//! Bytes that do not read back as written right after the fill (ROM, holes) are taken as they
//! read and watched from then on.

use crate::target::{Target, TargetError};
use virtio_reference_device::DriverMemory;

/// Granularity of comparisons and of the sampled sweep, in bytes.
const PAGE: u64 = 4096;
/// Bytes watched at each edge of guest RAM in sampled coverage.
const EDGE: u64 = 64 * 1024;
/// Bytes watched at the start of each ring and buffer area in sampled coverage.
const AREA_HEAD: u64 = 256 * 1024;
/// Pages of the seeded sample in sampled coverage.
const SAMPLE_PAGES: u64 = 64;
/// Bytes of a corrupted range shown in a report.
const LARGEST_REPORTED_BYTES: usize = 32;

/// How much of guest RAM the oracle watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every byte of guest RAM.
    Full,
    /// Edges of RAM, the harness's ring and buffer areas, and a seeded sample of pages.
    Sampled,
}

/// One watched range of guest RAM and the bytes it must hold.
struct Region {
    start: u64,
    expected: Vec<u8>,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.expected.len() as u64
    }
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
    /// Number of changed bytes in the range (the range may contain unchanged bytes between
    /// changed ones less than 8 bytes apart).
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
    regions: Vec<Region>,
    /// Ranges the device may write (sorted by start, possibly overlapping).
    writable: Vec<(u64, u64)>,
    /// Whether the device may have run since the last verification.
    dirty: bool,
    /// Scratch buffer for reads.
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

/// Writes the canary pattern for guest physical addresses `gpa..gpa + out.len()` into `out`:
/// a 4 KiB block derived from `seed`, with the first 8 bytes of every page replaced by a tag
/// derived from the page's address (so a copy of one page into another is also seen).
fn pattern(seed: u64, block: &[u8], gpa: u64, out: &mut [u8]) {
    let mut at = 0usize;
    while at < out.len() {
        let a = gpa + at as u64;
        let in_page = (a % PAGE) as usize;
        let n = (PAGE as usize - in_page).min(out.len() - at);
        out[at..at + n].copy_from_slice(&block[in_page..in_page + n]);
        if in_page < 8 {
            let tag = mix(seed ^ (a / PAGE)).to_le_bytes();
            let k = (8 - in_page).min(n);
            out[at..at + k].copy_from_slice(&tag[in_page..in_page + k]);
        }
        at += n;
    }
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
    /// areas the harness will place rings and buffers in (watched in sampled coverage).
    pub fn new(seed: u64, ram: u64, coverage: Coverage, hot: &[(u64, u64)]) -> Canary {
        let ranges = match coverage {
            Coverage::Full => vec![(0, ram)],
            Coverage::Sampled => {
                let mut v = vec![(0, EDGE.min(ram)), (ram.saturating_sub(EDGE), ram)];
                for &(s, e) in hot {
                    v.push((s.min(ram), e.min(ram).min(s.saturating_add(AREA_HEAD))));
                }
                let pages = ram / PAGE;
                for i in 0..SAMPLE_PAGES.min(pages) {
                    let p = mix(seed ^ (0x5a5a_0000 + i)) % pages.max(1);
                    v.push((p * PAGE, (p + 1) * PAGE));
                }
                v
            }
        };
        let regions = merge(ranges)
            .into_iter()
            .map(|(s, e)| Region {
                start: s,
                expected: vec![0; (e - s) as usize],
            })
            .collect();
        Canary {
            seed,
            ram,
            coverage,
            regions,
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
        self.regions.iter().map(|r| r.expected.len() as u64).sum()
    }

    /// Writes the pattern into every watched region of the target's RAM, then reads it back
    /// and accepts whatever does not hold a write (ROM, holes) as the expected content.
    pub fn fill(&mut self, t: &mut dyn Target) -> Result<(), TargetError> {
        let mut block = vec![0u8; PAGE as usize];
        for (i, c) in block.chunks_mut(8).enumerate() {
            c.copy_from_slice(&mix(self.seed.wrapping_add(i as u64)).to_le_bytes());
        }
        for r in &mut self.regions {
            pattern(self.seed, &block, r.start, &mut r.expected);
        }
        for r in &mut self.regions {
            t.bulk_write(r.start, &r.expected)?;
        }
        for r in &mut self.regions {
            self.scratch.resize(r.expected.len(), 0);
            t.bulk_read(r.start, &mut self.scratch)?;
            if self.scratch != r.expected {
                r.expected.copy_from_slice(&self.scratch);
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Mirrors a driver (harness) write of `data` at `gpa` into the expected image. In
    /// sampled coverage, driver-written bytes outside the watched regions (descriptor tables,
    /// available rings, readable buffers placed anywhere) are watched from now on.
    pub fn driver_wrote(&mut self, gpa: u64, data: &[u8]) {
        let Some(end) = gpa.checked_add(data.len() as u64) else {
            return;
        };
        let mut covered = Vec::new();
        for r in &mut self.regions {
            let s = gpa.max(r.start);
            let e = end.min(r.end());
            if s < e {
                let dst = (s - r.start) as usize..(e - r.start) as usize;
                let src = (s - gpa) as usize..(e - gpa) as usize;
                r.expected[dst].copy_from_slice(&data[src]);
                covered.push((s, e));
            }
        }
        if self.coverage == Coverage::Full || end > self.ram {
            return;
        }
        let mut at = gpa;
        for (s, e) in merge(covered).into_iter().chain([(end, end)]) {
            if at < s {
                self.regions.push(Region {
                    start: at,
                    expected: data[(at - gpa) as usize..(s - gpa) as usize].to_vec(),
                });
            }
            at = at.max(e);
        }
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
    /// ranges. Reported bytes become the new expected content, so each change is reported once.
    pub fn verify(&mut self, t: &mut dyn Target) -> Result<Vec<Corruption>, TargetError> {
        self.dirty = false;
        let mut found = Vec::new();
        for ri in 0..self.regions.len() {
            let start = self.regions[ri].start;
            let len = self.regions[ri].expected.len();
            self.scratch.resize(len, 0);
            t.bulk_read(start, &mut self.scratch)?;
            let region = &mut self.regions[ri];
            if self.scratch == region.expected {
                continue;
            }
            let mut page = 0usize;
            while page < len {
                let pend = (page + PAGE as usize).min(len);
                if self.scratch[page..pend] != region.expected[page..pend] {
                    diff_runs(
                        start,
                        page,
                        &region.expected[..pend],
                        &self.scratch[..pend],
                        &self.writable,
                        &mut found,
                    );
                    region.expected[page..pend].copy_from_slice(&self.scratch[page..pend]);
                }
                page = pend;
            }
        }
        // Merge ranges that continue across page boundaries.
        let mut merged: Vec<Corruption> = Vec::with_capacity(found.len());
        for c in found {
            match merged.last_mut() {
                Some(m) if c.start <= m.end + 8 => {
                    m.end = c.end;
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

/// Appends the changed runs of `expected[from..]` vs `actual[from..]` (RAM at `base`) that lie
/// outside `writable` (sorted by start). Runs closer than 8 bytes are joined.
fn diff_runs(
    base: u64,
    from: usize,
    expected: &[u8],
    actual: &[u8],
    writable: &[(u64, u64)],
    out: &mut Vec<Corruption>,
) {
    let exempt = |a: u64| {
        let k = writable.partition_point(|w| w.0 <= a);
        writable[..k].iter().any(|w| a < w.1)
    };
    let mut i = from;
    let n = expected.len();
    while i < n {
        if expected[i] == actual[i] || exempt(base + i as u64) {
            i += 1;
            continue;
        }
        let s = i;
        let mut last = i;
        let mut j = i + 1;
        while j < n && j <= last + 8 {
            if expected[j] != actual[j] && !exempt(base + j as u64) {
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
            c.driver_wrote(gpa, data);
        }
        self.t.mem_write(gpa, data)
    }
    fn read_bytes(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.t.mem_read(gpa, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_differs_per_page_and_seed() {
        let block = vec![7u8; PAGE as usize];
        let mut a = vec![0u8; 2 * PAGE as usize];
        pattern(1, &block, 0, &mut a);
        assert_ne!(a[..8], a[PAGE as usize..PAGE as usize + 8]);
        let mut b = vec![0u8; 2 * PAGE as usize];
        pattern(2, &block, 0, &mut b);
        assert_ne!(a[..8], b[..8]);
        // An unaligned slice holds the same bytes as the aligned one.
        let mut c = vec![0u8; 100];
        pattern(1, &block, PAGE - 4, &mut c);
        assert_eq!(c[..], a[PAGE as usize - 4..PAGE as usize + 96]);
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
        diff_runs(
            0x1000,
            0,
            &exp,
            &act,
            &[(0x1000 + 40, 0x1000 + 41)],
            &mut out,
        );
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
}

// ---------------------------------------------------------------------------------------------
// The oracle inside the case interpreter.

use super::{Area, Exec, Failure, Stop, BUF_BASE, RING_BASE, RING_STRIDE};
use crate::case::Case;
use crate::catalog::Level;
use crate::outcome::Severity;

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
        let found = c.verify(&mut *self.t)?;
        for k in found {
            self.report_corruption(&k, seed);
        }
        Ok(())
    }

    fn report_corruption(&mut self, k: &Corruption, seed: u64) {
        let overlaps = |kind: Area| {
            self.areas
                .iter()
                .any(|&(s, e, a)| a == kind && k.start < e && s < k.end)
        };
        let (id, what) = if overlaps(Area::DescTable) {
            ("VQ-DEV-05", "no device write to a descriptor table")
        } else if overlaps(Area::AvailRing) {
            ("VQ-DEV-22", "no device write to the available ring")
        } else if overlaps(Area::ReadOnly) {
            ("VQ-DEV-03", "no device write to a device-readable buffer")
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
            expected: format!("{what} (canary pattern, seed {seed:#018x})"),
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
