//! `packed_chain`: lists on a packed virtqueue (§2.8) of the reference device, through its MMIO
//! transport, with the packed driver model ([`DriverPackedQueue`]).
//!
//! Input: a header (queue size, negotiated INDIRECT_DESC / IN_ORDER / EVENT_IDX) and then
//! operations, each an `arbitrary`-derived value: make a list available (one to four elements,
//! valid by default, with rare knobs for buffers at or past the end of RAM, `addr + len`
//! overflow, zero length, readable-after-writable, raw flags with NEXT on the last element, an
//! indirect table of odd length), kick, collect used descriptors, set the Driver Event
//! Suppression structure, or reset and start again. Lists are only made available while the
//! ring has room, as a driver must.
//!
//! Oracles (each a [`Finding`]): no panic; bounded work (the step budget never runs out: a
//! list is at most the queue size, PVQ-DEV-06); every device write lies in the descriptor ring,
//! the device event suppression structure or a writable buffer of an outstanding list, never in
//! the driver event suppression structure (PACKED-DEV-04) or a readable buffer (PVQ-DEV-03); in
//! each ring slot id/len are written before the flags (PVQ-DEV-05); used descriptors carry the
//! flags of the current lap and an outstanding buffer id, and a len no larger than the buffer's
//! writable bytes (PACKED-DEV-01, PACKED-DEV-03); while the Driver Event Suppression flags are
//! DISABLE, no used buffer notification (PACKED-DEV-05, a SHOULD NOT: the subjects of this
//! target are the reference and its mutants, which follow the recommendation).

use super::Finding;
use arbitrary::{Arbitrary, Unstructured};
use std::collections::HashSet;
use std::fmt;
use virtio_reference_device::packed::{
    used_bits, RING_EVENT_FLAGS_DISABLE, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED,
};
use virtio_reference_device::regs::*;
use virtio_reference_device::{
    AccessKind, DeviceConfig, DriverMemory, DriverPackedQueue, EntropyBackend, GuestRam,
    MmioDevice, Mutant, PackedElem, TransportVersion,
};
use vm_memory::GuestMemoryMmap;

const TARGET: &str = "packed_chain";
const RAM: u64 = 1 << 20;
const RING: u64 = 0x1_0000;
const BUF: u64 = 0x4_0000;
const TABLE: u64 = 0x8_0000;

/// One element of a list, as decoded.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct ElemIn {
    /// Which address: 0..=249 a fresh buffer, otherwise a rare knob.
    pub place: u8,
    /// Length selector (bytes 1..=64 by default).
    pub len: u8,
    /// Device-writable.
    pub write: bool,
}

/// One operation of the stream.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum PackedOp {
    /// Make a list of `n % 4 + 1` elements available, as an indirect table when `indirect`.
    Post {
        /// Elements.
        elems: [ElemIn; 4],
        /// Element count selector.
        n: u8,
        /// Through an indirect table (only with INDIRECT_DESC negotiated, else rare).
        indirect: bool,
        /// Rare knob: 250.. raw flags with NEXT on the last element; 240..250 indirect table
        /// length off by 8.
        knob: u8,
        /// Kick after it.
        kick: bool,
    },
    /// Notify the queue.
    Kick,
    /// Collect used descriptors.
    Collect,
    /// Driver Event Suppression: flags `flags % 4`, for DESC `ahead` buffers ahead.
    Event {
        /// Flags selector.
        flags: u8,
        /// DESC offset ahead of the next used position.
        ahead: u8,
    },
    /// Device reset and a fresh initialization.
    Reset,
}

/// The decoded input.
#[derive(Debug, Clone)]
pub struct PackedChainCase {
    /// Queue size (1..=16).
    pub size: u16,
    /// Negotiated extra features (INDIRECT_DESC, IN_ORDER, EVENT_IDX bits).
    pub features: u64,
    /// The operations.
    pub ops: Vec<PackedOp>,
}

impl fmt::Display for PackedChainCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "size {} features {:#x}", self.size, self.features)?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "#{i} {op:?}")?;
        }
        Ok(())
    }
}

/// Decodes `data` (every byte string decodes; missing bytes read as zeros).
pub fn decode_packed_chain(data: &[u8]) -> PackedChainCase {
    let mut u = Unstructured::new(data);
    let size = (u.arbitrary::<u8>().unwrap_or(0) % 16) as u16 + 1;
    let f = u.arbitrary::<u8>().unwrap_or(0);
    let mut features = 0;
    if f & 1 != 0 {
        features |= bit(VIRTIO_F_INDIRECT_DESC);
    }
    if f & 2 != 0 {
        features |= bit(VIRTIO_F_IN_ORDER);
    }
    if f & 4 != 0 {
        features |= bit(VIRTIO_F_EVENT_IDX);
    }
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 256 {
        match u.arbitrary::<PackedOp>() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    PackedChainCase {
        size,
        features,
        ops,
    }
}

/// Runs `data` against the reference, or the mutant pinned by [`super::MUTANT_ENV`].
pub fn packed_chain(data: &[u8]) -> Result<(), Finding> {
    packed_chain_on(data, super::pinned_mutant())
}

struct Outstanding {
    id: u16,
    readable: Vec<(u64, u64)>,
    writable: Vec<(u64, u64)>,
}

struct Rig {
    dev: MmioDevice,
    mem: GuestMemoryMmap,
    pq: DriverPackedQueue,
    out: Vec<Outstanding>,
    next_buf: u64,
    mutant: Option<Mutant>,
    /// A list ended with NEXT (a driver error): the device may follow NEXT on into ring
    /// descriptors the driver did not make available in this lap (stale ones of an earlier
    /// lap, or used ones) and write where they point, so writes into any area a ring slot
    /// has named since the last reset pass (see [`Rig::ring_areas`]).
    lax: bool,
    /// Every `(addr, len)` a ring slot has held since the last reset: the
    /// driver's descriptors and the used descriptors written over them (same `addr`, the used
    /// `len`).
    ring_areas: HashSet<(u64, u64)>,
    /// The Driver Event Suppression flags the driver last wrote (ENABLE after a reset).
    driver_flags: u16,
}

impl Rig {
    /// An entropy device (the reference, or `mutant`) on `RAM` bytes of guest memory that
    /// records its accesses, with a driver queue of `size` descriptors (not yet initialised).
    fn new(size: u16, mutant: Option<Mutant>) -> Result<Rig, Finding> {
        let ram = GuestRam::anonymous(RAM)
            .map_err(|e| Finding::new(TARGET, "setup", &[], e.to_string()))?;
        let mem = ram.memory().clone();
        let mut cfg = DeviceConfig::new(TransportVersion::Modern);
        cfg.knobs.offer_ring_packed = true;
        cfg.knobs.offer_in_order = true;
        cfg.mutant = mutant;
        cfg.step_budget = 4096;
        let mut dev = MmioDevice::new(cfg, Box::new(EntropyBackend::new(1)), ram);
        dev.ram_mut().set_recording(true);
        Ok(Rig {
            dev,
            mem,
            pq: DriverPackedQueue::modern(RING, size),
            out: Vec::new(),
            next_buf: BUF,
            mutant,
            lax: false,
            ring_areas: HashSet::new(),
            driver_flags: 0,
        })
    }

    fn w(&mut self, off: u64, v: u32) {
        self.dev.write_u32(off, v);
    }

    fn init(&mut self, size: u16, features: u64) {
        self.w(STATUS, 0);
        self.w(STATUS, (ACKNOWLEDGE | DRIVER) as u32);
        let f = features | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_PACKED);
        self.w(DRIVER_FEATURES_SEL, 0);
        self.w(DRIVER_FEATURES, f as u32);
        self.w(DRIVER_FEATURES_SEL, 1);
        self.w(DRIVER_FEATURES, (f >> 32) as u32);
        self.w(STATUS, (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u32);
        self.pq = DriverPackedQueue::modern(RING, size);
        self.pq.in_order = features & bit(VIRTIO_F_IN_ORDER) != 0;
        let _ = self.pq.clear(&mut self.mem);
        self.w(QUEUE_SEL, 0);
        self.w(QUEUE_NUM, size as u32);
        self.w(QUEUE_DESC_LOW, self.pq.desc as u32);
        self.w(QUEUE_DRIVER_LOW, self.pq.driver_event as u32);
        self.w(QUEUE_DEVICE_LOW, self.pq.device_event as u32);
        self.w(QUEUE_READY, 1);
        self.w(
            STATUS,
            (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u32,
        );
        self.out.clear();
        self.lax = false;
        self.ring_areas.clear();
        self.driver_flags = 0;
        self.dev.take_interrupts();
        self.next_buf = BUF;
    }

    /// Adds the `(addr, len)` of every ring slot, as the ring holds them now, to
    /// [`Rig::ring_areas`].
    ///
    /// Called after each operation, before its writes are judged: a slot the device read in
    /// this operation holds what the driver wrote in this or an earlier operation (already
    /// recorded then) or, when the device used it, the same `addr` with the used `len`
    /// (recorded now). A slot changes at most once per operation (a used descriptor per lap).
    fn record_ring_areas(&mut self) {
        for slot in 0..self.pq.size {
            let Ok(d) = self.pq.read_desc(&mut self.mem, slot) else {
                continue;
            };
            self.ring_areas.insert((d.addr, d.len as u64));
            // A stale slot may be an indirect descriptor whose table still names the buffers
            // of a list already used: a device that walks on after a list ending in NEXT
            // reaches those buffers through it (at most 64 entries, as the rig lays out).
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                for k in 0..u64::from(d.len / 16).min(64) {
                    let mut raw = [0u8; 16];
                    let Some(at) = d.addr.checked_add(16 * k) else {
                        break;
                    };
                    if self.mem.read_bytes(at, &mut raw).is_ok() {
                        let e = virtio_reference_device::PackedDesc::parse(&raw);
                        self.ring_areas.insert((e.addr, e.len as u64));
                    }
                }
            }
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len + 16 > TABLE {
            self.next_buf = BUF;
        }
        let a = self.next_buf;
        self.next_buf += (len + 15) & !15;
        a
    }

    fn finding(&self, oracle: &'static str, reqs: &[&'static str], msg: String) -> Finding {
        Finding::new(TARGET, oracle, reqs, msg).on(self.mutant)
    }

    /// Memory oracles over the device's accesses since the last call.
    fn check_accesses(&mut self) -> Result<(), Finding> {
        let log = self.dev.ram_mut().take_accesses();
        self.record_ring_areas();
        let ring_end = self.pq.desc + 16 * self.pq.size as u64;
        let mut pending: Vec<u64> = Vec::new();
        for a in &log {
            if a.kind != AccessKind::Write {
                continue;
            }
            let end = a.gpa.saturating_add(a.len);
            if a.gpa >= self.pq.desc && end <= ring_end {
                let slot = (a.gpa - self.pq.desc) / 16;
                let off = (a.gpa - self.pq.desc) % 16;
                let stop = off + a.len;
                if stop > 14 {
                    pending.retain(|&s| s != slot);
                } else if stop > 8 && off < 14 && !pending.contains(&slot) {
                    pending.push(slot);
                }
                continue;
            }
            if a.gpa >= self.pq.driver_event && end <= self.pq.driver_event + 4 {
                return Err(self.finding(
                    "driver-event-written",
                    &["PACKED-DEV-04"],
                    format!("device wrote {} bytes at {:#x}", a.len, a.gpa),
                ));
            }
            if a.gpa >= self.pq.device_event && end <= self.pq.device_event + 4 {
                continue;
            }
            let within = |&(s, l): &(u64, u64)| a.gpa >= s && end <= s.saturating_add(l);
            let inside = |v: &[(u64, u64)]| v.iter().any(within);
            // After a list ending in NEXT the device may have walked into slots the driver
            // did not make available (§2.8.6, §2.8.17 are the driver's to keep): any area a
            // ring slot named passes, wherever the driver had put it (also the rare buffers
            // at the end of RAM); an area no slot ever named still does not.
            if self.out.iter().any(|o| inside(&o.writable))
                || (self.lax && self.ring_areas.iter().any(within))
            {
                continue;
            }
            let oracle = if self.out.iter().any(|o| inside(&o.readable)) {
                ("readable-buffer-written", "PVQ-DEV-03")
            } else {
                ("stray-write", "PVQ-DEV-03")
            };
            return Err(self.finding(
                oracle.0,
                &[oracle.1],
                format!("device wrote {} bytes at {:#x}", a.len, a.gpa),
            ));
        }
        // Used descriptors carry the flags of their lap: from the driver's next used position
        // to the ring end the current Device Ring Wrap Counter, before it the next one. After
        // a list ending in NEXT (`lax`) the device's ring position is not the driver's to
        // know (the list may have run on into slots of another lap), so only what §2.8.1 says
        // of every used descriptor is checked: AVAIL equals USED.
        let mut flag_slots: Vec<u64> = log
            .iter()
            .filter(|a| a.kind == AccessKind::Write && a.gpa >= self.pq.desc && a.gpa < ring_end)
            .filter(|a| (a.gpa - self.pq.desc) % 16 + a.len > 14)
            .map(|a| (a.gpa - self.pq.desc) / 16)
            .collect();
        flag_slots.dedup();
        for slot in flag_slots {
            let d = self
                .pq
                .read_desc(&mut self.mem, slot as u16)
                .map_err(|e| self.finding("driver-memory", &[], format!("{e:?}")))?;
            let wrap = if slot >= self.pq.next_used as u64 {
                self.pq.used_wrap
            } else {
                !self.pq.used_wrap
            };
            let bits = d.flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
            let ok = if self.lax {
                bits == used_bits(true) || bits == used_bits(false)
            } else {
                bits == used_bits(wrap)
            };
            if !ok {
                return Err(self.finding(
                    "used-flags-wrong-lap",
                    &["PACKED-DEV-01"],
                    format!(
                        "ring slot {slot}: used flags {:#06x}, expected AVAIL/USED {:#06x} (wrap counter {})",
                        d.flags,
                        used_bits(wrap),
                        wrap as u8
                    ),
                ));
            }
        }
        if let Some(slot) = pending.first() {
            return Err(self.finding(
                "used-flags-before-id",
                &["PVQ-DEV-05"],
                format!("ring slot {slot}: id/len written after the flags"),
            ));
        }
        Ok(())
    }

    fn collect(&mut self) -> Result<(), Finding> {
        let before = self.pq.outstanding.clone();
        let used = self
            .pq
            .take_used(&mut self.mem, usize::MAX)
            .map_err(|e| self.finding("driver-memory", &[], format!("{e:?}")))?;
        for u in used {
            if self.lax {
                // The driver broke the list: its extent and id are not the driver's to know.
                self.out.retain(|o| !u.completes.contains(&o.id));
                continue;
            }
            if u.completes.is_empty() {
                return Err(self.finding(
                    "used-id-not-outstanding",
                    &["PACKED-DEV-02"],
                    format!(
                        "used descriptor at {} has id {} (outstanding {:?})",
                        u.pos, u.id, before
                    ),
                ));
            }
            let o = self.out.iter().find(|o| o.id == u.id);
            let cap: u64 = o.map_or(0, |o| o.writable.iter().map(|w| w.1).sum());
            if u.len as u64 > cap {
                return Err(self.finding(
                    "used-len-too-large",
                    &["PACKED-DEV-03"],
                    format!("id {} len {} > {cap} writable bytes", u.id, u.len),
                ));
            }
            self.out.retain(|o| !u.completes.contains(&o.id));
        }
        Ok(())
    }
}

/// Runs `data` against `mutant` (`None`: the reference).
pub fn packed_chain_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    let case = decode_packed_chain(data);
    let mut rig = Rig::new(case.size, mutant)?;
    let indirect_ok = case.features & bit(VIRTIO_F_INDIRECT_DESC) != 0;
    let body = |rig: &mut Rig| -> Result<(), Finding> {
        rig.init(case.size, case.features);
        for (i, op) in case.ops.iter().enumerate() {
            let res = (|| {
                match *op {
                    PackedOp::Post {
                        elems,
                        n,
                        indirect,
                        knob,
                        kick,
                    } => {
                        if rig.dev.status() & DEVICE_NEEDS_RESET != 0 {
                            return Ok(());
                        }
                        // Rare: a list of every free descriptor, each with NEXT, so it runs
                        // back onto its own head (a list longer than the ring).
                        let whole = knob == 255 && rig.pq.free() == rig.pq.size && !indirect;
                        let n = if whole {
                            rig.pq.size as usize
                        } else {
                            (n % 4) as usize + 1
                        };
                        let indirect = indirect && (indirect_ok || knob == 239);
                        let ring_n = if indirect { 1 } else { n };
                        if ring_n > rig.pq.free() as usize {
                            return Ok(());
                        }
                        let mut list = Vec::new();
                        let mut o = Outstanding {
                            id: 0,
                            readable: Vec::new(),
                            writable: Vec::new(),
                        };
                        for e in elems.iter().cycle().take(n) {
                            let mut len = (e.len % 64) as u64 + 1;
                            let addr = match e.place {
                                250 => RAM - len,
                                251 => RAM - len / 2,
                                252 => u64::MAX - 3,
                                253 => {
                                    len = 0;
                                    rig.alloc(1)
                                }
                                _ => rig.alloc(len),
                            };
                            let write = e.write;
                            if write {
                                o.writable.push((addr, len));
                            } else {
                                o.readable.push((addr, len));
                            }
                            list.push(PackedElem {
                                addr,
                                len: len as u32,
                                flags: if write { VIRTQ_DESC_F_WRITE } else { 0 },
                                raw_flags: false,
                            });
                        }
                        if knob < 230 {
                            // Valid by default: device-readable elements first (§2.8.17).
                            list.sort_by_key(|e| e.flags & VIRTQ_DESC_F_WRITE);
                        }
                        if knob >= 250 {
                            rig.lax = true;
                            for e in &mut list {
                                e.flags |= VIRTQ_DESC_F_NEXT;
                                e.raw_flags = true;
                            }
                        }
                        if indirect {
                            let table = TABLE + 0x100 * (i as u64 % 64);
                            for (k, e) in list.iter().enumerate() {
                                let d = virtio_reference_device::PackedDesc {
                                    addr: e.addr,
                                    len: e.len,
                                    id: 0,
                                    flags: e.flags,
                                };
                                let _ = rig.mem.write_bytes(table + 16 * k as u64, &d.encode());
                            }
                            let tlen = 16 * list.len() as u32
                                - if (240..250).contains(&knob) { 8 } else { 0 };
                            list = vec![PackedElem {
                                addr: table,
                                len: tlen,
                                flags: VIRTQ_DESC_F_INDIRECT,
                                raw_flags: false,
                            }];
                        }
                        o.id = rig.pq.free_id();
                        let _ = rig.pq.make_available(&mut rig.mem, &list, o.id);
                        rig.out.push(o);
                        if kick {
                            rig.w(QUEUE_NOTIFY, 0);
                        }
                    }
                    PackedOp::Kick => rig.w(QUEUE_NOTIFY, 0),
                    PackedOp::Collect => rig.collect()?,
                    PackedOp::Event { flags, ahead } => {
                        let flags = (flags % 4) as u16;
                        let (mut pos, mut w) = (rig.pq.next_used, rig.pq.used_wrap);
                        for _ in 0..ahead % 8 {
                            pos += 1;
                            if pos >= rig.pq.size {
                                pos = 0;
                                w = !w;
                            }
                        }
                        let _ = rig.pq.set_driver_event(&mut rig.mem, flags, pos, w);
                        rig.driver_flags = flags;
                    }
                    PackedOp::Reset => rig.init(case.size, case.features),
                }
                // PACKED-DEV-05 (a SHOULD NOT): with the Driver Event Suppression flags DISABLE
                // for the whole operation, no used buffer notification.
                let notified =
                    rig.dev.take_interrupts().iter().any(|i| {
                        matches!(i, virtio_reference_device::Interrupt::UsedBuffer { .. })
                    });
                if notified && rig.driver_flags == RING_EVENT_FLAGS_DISABLE {
                    return Err(rig.finding(
                        "notification-while-disabled",
                        &["PACKED-DEV-05"],
                        "the device sent a used buffer notification while the Driver Event Suppression flags were DISABLE (the spec says it should not)".into(),
                    ));
                }
                if rig.dev.budget_exhausted() {
                    return Err(rig.finding(
                        "budget-exhausted",
                        &["PVQ-DEV-06"],
                        "a notification ran out of the step budget (a list walked without bound?)"
                            .into(),
                    ));
                }
                rig.check_accesses()
            })();
            res.map_err(|f| f.at(i))?;
        }
        rig.collect()
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut rig))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Finding::new(TARGET, "panic", &[], msg).on(mutant))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte stream of `n` bytes.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn reference_is_clean_on_many_streams() {
        for seed in 0..300 {
            let data = bytes(seed, 600);
            if let Err(f) = packed_chain_on(&data, None) {
                panic!("seed {seed}: {f}\n{}", decode_packed_chain(&data));
            }
        }
    }

    /// Encodes one `Post` of four `(place, len, write)` elements, `n % 4 + 1` of them used.
    fn post(out: &mut Vec<u8>, elems: [(u8, u8, bool); 4], n: u8, knob: u8, kick: bool) {
        use crate::fuzz::encode::{variant, Encode};
        variant(out, 0, 5);
        for (place, len, write) in elems {
            [place, len, write as u8].encode(out);
        }
        [n, 0, knob, kick as u8].encode(out);
    }

    fn collect(out: &mut Vec<u8>) {
        crate::fuzz::encode::variant(out, 2, 5);
    }

    /// §2.8.6, §2.8.17 (PVQ-DEV-03): a list whose last descriptor carries NEXT is a driver
    /// error; the device may follow NEXT into ring slots the driver made available in an
    /// earlier lap and write into the buffers they name, wherever the driver had put them.
    /// The fuzz finding of 2026-12-01 was this walk reaching a stale slot whose buffer the
    /// driver had placed at the end of RAM (place 250), outside the area the oracle allowed.
    #[test]
    fn stale_slot_walked_into_after_a_list_ending_in_next_may_be_written() {
        let mut data = vec![3, 0]; // queue size 4, no extra features
                                   // Lap 1: one list of four writable elements, the last at the end of RAM (48 bytes
                                   // at 0xfffd0); used and collected, so slots 1..3 keep its stale descriptors.
        let w = (0, 47, true);
        post(&mut data, [w, w, w, (250, 47, true)], 3, 0, true);
        collect(&mut data);
        // Lap 2: a one-element list ending in NEXT (knob 250): the device walks on into
        // slots 1..3 and fills the stale end-of-RAM buffer.
        post(&mut data, [w, w, w, w], 0, 250, true);
        collect(&mut data);
        let case = decode_packed_chain(&data);
        assert_eq!(case.ops.len(), 4, "{case}");
        assert_eq!(packed_chain_on(&data, None), Ok(()), "{case}");
    }

    /// The permissive rule above still fails a write into an area no ring slot ever named,
    /// and without a broken list a write into a stale slot's buffer is a stray write.
    #[test]
    fn writes_outside_every_named_area_are_still_stray() {
        let stale_tail = RAM - 48;
        let mut rig = Rig::new(4, None).unwrap();
        rig.init(4, 0);
        let elem = |addr| PackedElem {
            addr,
            len: 48,
            flags: VIRTQ_DESC_F_WRITE,
            raw_flags: false,
        };
        rig.pq
            .make_available(&mut rig.mem, &[elem(BUF), elem(stale_tail)], 0)
            .unwrap();
        // The list is not outstanding in the rig: its buffers count as stale ones.
        assert_eq!(rig.check_accesses(), Ok(()));
        let stray = |rig: &mut Rig, gpa: u64| {
            rig.dev.ram_mut().write(gpa, &[0xaa; 16]).unwrap();
            rig.check_accesses().map_err(|f| f.oracle)
        };
        assert_eq!(stray(&mut rig, stale_tail), Err("stray-write"));
        rig.lax = true;
        assert_eq!(stray(&mut rig, stale_tail), Ok(()));
        assert_eq!(stray(&mut rig, stale_tail - 8), Err("stray-write"));
        assert_eq!(stray(&mut rig, 0x3_0000), Err("stray-write"));
    }

    /// After a list ending in NEXT the device's lap is unknown: a used descriptor of either
    /// lap passes, one whose AVAIL and USED differ still does not.
    #[test]
    fn lax_lists_accept_either_lap_of_used_flags() {
        let mut rig = Rig::new(4, None).unwrap();
        rig.init(4, 0);
        let slot = 2u64;
        let at = rig.pq.desc + 16 * slot;
        let write_flags = |rig: &mut Rig, flags: u16| {
            rig.dev
                .ram_mut()
                .write(at + 14, &flags.to_le_bytes())
                .unwrap();
            rig.check_accesses().map_err(|f| f.oracle)
        };
        // The driver expects the current lap (wrap counter 1) at slot 2.
        assert_eq!(write_flags(&mut rig, used_bits(true)), Ok(()));
        assert_eq!(
            write_flags(&mut rig, used_bits(false)),
            Err("used-flags-wrong-lap")
        );
        rig.lax = true;
        assert_eq!(write_flags(&mut rig, used_bits(false)), Ok(()));
        assert_eq!(write_flags(&mut rig, used_bits(true)), Ok(()));
        assert_eq!(
            write_flags(&mut rig, VIRTQ_DESC_F_AVAIL),
            Err("used-flags-wrong-lap")
        );
    }

    #[test]
    fn packed_mutants_are_found() {
        for m in [
            Mutant::PackedUsedFlagsBeforeId,
            Mutant::PackedUsedWrapBitConstant,
            Mutant::PackedNoListCap,
            Mutant::PackedIgnoresEventSuppression,
        ] {
            let found = (0..300).any(|seed| packed_chain_on(&bytes(seed, 600), Some(m)).is_err());
            assert!(found, "{} not found", m.name());
        }
    }
}
