//! The packed ring (§2.8) in the sequence interpreter: when a case's `init` negotiates
//! VIRTIO_F_RING_PACKED, `queue`, `post`, `expect_used`, `cycle`, `expect_graceful` and
//! `observe` drive a [`DriverPackedQueue`] instead of the split ring's [`DriverQueue`], and
//! the memory oracle also checks that a used descriptor's flags are written after its id and
//! len (PVQ-DEV-05). [`with_packed_ring`] turns a layout-neutral case into its packed
//! variant (`run --ring packed`).

use super::{Area, Exec, Posted, QState, Stop, R};
use crate::case::{Buf, Case, Feature, Grade, Op};
use crate::outcome::Severity;
use crate::target::layout::{BUF_BASE, RING_BASE, RING_STRIDE};
use crate::target::{POLL_INTERVAL, USED_WAIT};
use std::time::{Duration, Instant};
use virtio_reference_device::packed::{PackedDesc, RING_EVENT_FLAGS_DESC};
use virtio_reference_device::regs::*;
use virtio_reference_device::{
    DriverPackedQueue, DriverQueue, MemoryAccess, PackedElem, PackedUsed,
};

/// Cases that only make sense on the split ring: their steps name split-ring structures
/// (available ring index, flags or `used_event`; memory in the ring area of a queue the case
/// sets up; a descriptor's `next` field or head index; an indirect descriptor inside an
/// indirect table, which a packed table simply ignores, §2.8.7), or they run on the legacy
/// interface, which has no packed ring. Memory in the ring area of a queue the case never
/// sets up (the net cases' receive buffers at 0x700000) is layout-neutral.
fn split_only(case: &Case) -> bool {
    let mut queues: Vec<u16> = Vec::new();
    for s in &case.steps {
        match &s.op {
            Op::Init { queues: q, .. } => match q {
                Some(qs) => queues.extend(qs.iter().map(|q| q.index)),
                None => queues.push(0),
            },
            Op::Queue { index, .. } => queues.push(*index),
            _ => {}
        }
    }
    let in_rings = |a: u64| {
        (RING_BASE..BUF_BASE).contains(&a)
            && queues
                .iter()
                .any(|&q| (a - RING_BASE) / RING_STRIDE == q as u64)
    };
    case.id.starts_with("split.")
        || case.id.starts_with("legacy.")
        || case.id.starts_with("packed.")
        || case.versions == [1]
        || case.steps.iter().any(|s| match &s.op {
            Op::SetAvailIdx { .. }
            | Op::SetAvailFlags { .. }
            | Op::SetUsedEvent { .. }
            | Op::SetDriverEvent { .. }
            | Op::QueueAt { .. } => true,
            Op::MemWrite { addr, .. } | Op::MemExpect { addr, .. } => in_rings(addr.0),
            Op::Post {
                chain,
                head,
                indirect,
                ..
            } => {
                head.is_some()
                    || chain.iter().any(|b| {
                        b.next.is_some()
                            || (*indirect
                                && b.flags
                                    .is_some_and(|f| f.0 as u16 & VIRTQ_DESC_F_INDIRECT != 0))
                    })
            }
            _ => false,
        })
}

/// The packed-ring variant of `case`: VIRTIO_F_RING_PACKED added to the features the target
/// must offer and to every `init` step (which then also accepts VERSION_1), the id suffixed
/// `@packed`. `None` for a case that is split-ring specific (see the module docs) or that
/// runs on version 1 only.
pub fn with_packed_ring(case: &Case) -> Option<Case> {
    if split_only(case) {
        return None;
    }
    let mut c = case.clone();
    c.id = format!("{}@packed", case.id);
    if !c.features.contains(&VIRTIO_F_RING_PACKED) {
        c.features.push(VIRTIO_F_RING_PACKED);
    }
    c.versions = vec![2];
    for s in &mut c.steps {
        if let Op::Init { features, .. } = &mut s.op {
            let list = features.get_or_insert_with(|| vec![Feature::Bit(VIRTIO_F_VERSION_1)]);
            list.push(Feature::Bit(VIRTIO_F_RING_PACKED));
        }
    }
    Some(c)
}

impl Exec<'_> {
    fn pq(&mut self, queue: u16) -> R<DriverPackedQueue> {
        self.q(queue)?
            .pq
            .clone()
            .ok_or_else(|| Stop::Case(format!("queue {queue} is not a packed queue")))
    }

    fn set_pq(&mut self, queue: u16, pq: DriverPackedQueue) -> R {
        self.q(queue)?.pq = Some(pq);
        Ok(())
    }

    /// The statement a device write into a device-readable buffer breaks: PVQ-DEV-03
    /// (§2.8.15) once a packed queue is set up, else VQ-DEV-03 (§2.7.4).
    pub(super) fn readable_written_id(&self) -> &'static str {
        if self.queues.values().any(|q| q.pq.is_some()) {
            "PVQ-DEV-03"
        } else {
            "VQ-DEV-03"
        }
    }

    /// Whether `queue` was set up as a packed queue.
    pub(super) fn is_packed(&self, queue: u16) -> bool {
        self.queues.get(&queue).is_some_and(|q| q.pq.is_some())
    }

    /// `queue` step with RING_PACKED negotiated: descriptor ring at `base`, the two event
    /// suppression structures after it (§2.8.10.1); QueueDesc, QueueDriver and QueueDevice
    /// name them (§4.2.3).
    pub(super) fn packed_setup_queue(&mut self, index: u16, size: u16, base: u64) -> R {
        let mut pq = DriverPackedQueue::modern(base, size);
        pq.in_order = self.in_order;
        pq.clear(&mut self.mem())?;
        self.w32(QUEUE_NUM, size as u32)?;
        self.enable_queue(pq.desc, pq.driver_event, pq.device_event)?;
        self.allow(pq.desc, 16 * size as u64, Area::Ring);
        self.allow(pq.driver_event, 4, Area::DriverEvent);
        self.allow(pq.device_event, 4, Area::Ring);
        self.queues.insert(
            index,
            QState::new(DriverQueue::modern(base, size), Some(pq)),
        );
        Ok(())
    }

    /// Makes the resolved chain `descs` (buffer, address, length) available as one list
    /// (§2.8.21): in ring order, or as an indirect table (§2.8.7). `head` overrides the
    /// buffer id.
    pub(super) fn packed_post(
        &mut self,
        queue: u16,
        descs: &[(&Buf, u64, u32)],
        mut posted: Posted,
        indirect: Option<(u64, Option<u16>, Option<u32>)>,
        head: Option<u16>,
    ) -> R {
        let mut pq = self.pq(queue)?;
        let flags_of = |b: &Buf| match b.flags {
            Some(f) => (f.0 as u16, true),
            None => (if b.write { VIRTQ_DESC_F_WRITE } else { 0 }, false),
        };
        let elems: Vec<PackedElem> = match indirect {
            Some((table, flags, len)) => {
                for (k, (b, addr, len)) in descs.iter().enumerate() {
                    let d = PackedDesc {
                        addr: *addr,
                        len: *len,
                        id: 0,
                        flags: flags_of(b).0,
                    };
                    self.mem_write(table + 16 * k as u64, &d.encode())?;
                }
                vec![PackedElem {
                    addr: table,
                    len: len.unwrap_or(16 * descs.len() as u32),
                    flags: flags.unwrap_or(VIRTQ_DESC_F_INDIRECT),
                    raw_flags: flags.is_some(),
                }]
            }
            None => descs
                .iter()
                .map(|(b, addr, len)| {
                    let (flags, raw_flags) = flags_of(b);
                    PackedElem {
                        addr: *addr,
                        len: *len,
                        flags,
                        raw_flags,
                    }
                })
                .collect(),
        };
        if elems.len() > pq.free() as usize {
            if !self.failures.is_empty() {
                // Earlier buffers the device should have used are still outstanding: that
                // failure is already recorded, and the driver cannot go on.
                return Err(Stop::Abort);
            }
            return Err(Stop::Case(format!(
                "queue {queue}: a list of {} descriptors does not fit in the {} free ring entries (collect used buffers first)",
                elems.len(),
                pq.free()
            )));
        }
        let id = head.unwrap_or_else(|| pq.free_id());
        pq.make_available(&mut self.mem(), &elems, id)?;
        posted.head = id;
        self.set_pq(queue, pq)?;
        self.q(queue)?.outstanding.push(posted);
        Ok(())
    }

    /// Buffers the device has completed and the driver not collected (without collecting).
    pub(super) fn packed_used_count(&mut self, queue: u16) -> R<u16> {
        let mut pq = self.pq(queue)?;
        let used = pq.take_used(&mut self.mem(), usize::MAX)?;
        Ok(used
            .iter()
            .map(|u| u.completes.len().max(1))
            .sum::<usize>()
            .min(u16::MAX as usize) as u16)
    }

    /// Collects the used descriptors as `(id, len)` elements, one per completed buffer: a
    /// buffer an in-order batch skipped counts as used completely (§2.8.8), so its len is
    /// the buffer's writable bytes.
    pub(super) fn packed_take_used(&mut self, queue: u16) -> R<Vec<(u32, u32)>> {
        let mut pq = self.pq(queue)?;
        let used: Vec<PackedUsed> = pq.take_used(&mut self.mem(), usize::MAX)?;
        self.set_pq(queue, pq)?;
        let mut out = Vec::new();
        for u in used {
            let n = u.completes.len();
            for (k, &id) in u.completes.iter().enumerate() {
                if k + 1 == n {
                    break;
                }
                let total = self
                    .q(queue)?
                    .outstanding
                    .iter()
                    .find(|p| p.head == id)
                    .map_or(0, |p| p.writable_total().min(u32::MAX as u64) as u32);
                out.push((id as u32, total));
            }
            out.push((u.id as u32, u.len));
        }
        Ok(out)
    }

    /// Waits (asynchronous targets) until `want` buffers are used or `wait` passed.
    pub(super) fn packed_wait_used(&mut self, queue: u16, want: u16, wait: Duration) -> R<u16> {
        let start = Instant::now();
        loop {
            self.t.settle()?;
            let n = self.packed_used_count(queue)?;
            if n >= want || start.elapsed() >= wait || self.t.synchronous() {
                return Ok(n);
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// `set_driver_event` step.
    pub(super) fn set_driver_event(
        &mut self,
        queue: u16,
        flags: u16,
        off: Option<u16>,
        wrap: Option<bool>,
        ahead: Option<u16>,
    ) -> R {
        let pq = self.pq(queue)?;
        let (mut pos, mut w) = (pq.next_used, pq.used_wrap);
        for _ in 0..ahead.unwrap_or(0) {
            pos += 1;
            if pos >= pq.size {
                pos = 0;
                w = !w;
            }
        }
        let off = off.unwrap_or(pos);
        let wrap = wrap.unwrap_or(w);
        if flags == RING_EVENT_FLAGS_DESC {
            self.observe(
                format!("driver event q{queue}"),
                format!("DESC off {off} wrap {}", wrap as u8),
            );
        }
        pq.set_driver_event(&mut self.mem(), flags, off, wrap)?;
        Ok(())
    }

    /// `cycle` on a packed queue: rounds of `batch` one-descriptor writable buffers of `len`
    /// bytes, each round made available, kicked and collected. A batch equal to the queue
    /// size fills the ring exactly, so every round ends at the full-ring wrap (§2.8.1).
    pub(super) fn packed_cycle(
        &mut self,
        queue: u16,
        count: u32,
        batch: u16,
        len: u32,
        g: &Grade,
    ) -> R {
        let size = self.pq(queue)?.size;
        let batch = batch.clamp(1, size);
        let mut addrs = Vec::new();
        for _ in 0..batch {
            let a = self.alloc(len as u64);
            self.allow(a, len as u64, Area::Writable);
            addrs.push(a);
        }
        let mut done = 0u32;
        while done < count {
            self.check_deadline()?;
            let k = batch.min((count - done).min(u16::MAX as u32) as u16);
            let mut pq = self.pq(queue)?;
            let start = (pq.next_avail, pq.avail_wrap as u8);
            for &a in addrs.iter().take(k as usize) {
                let elem = PackedElem {
                    addr: a,
                    len,
                    flags: VIRTQ_DESC_F_WRITE,
                    raw_flags: false,
                };
                let id = pq.free_id();
                pq.make_available(&mut self.mem(), &[elem], id)?;
            }
            self.set_pq(queue, pq)?;
            self.notify(queue as u32)?;
            let n = self.packed_wait_used(queue, k, USED_WAIT)?;
            if !self.check(
                Some(g),
                &[],
                n == k,
                Severity::Low,
                || {
                    format!(
                        "{k} buffers used after {done} completions (ring position {}, wrap counter {})",
                        start.0, start.1
                    )
                },
                || format!("{n}"),
            ) {
                return Err(Stop::Abort);
            }
            let mut pq = self.pq(queue)?;
            let used = pq.take_used(&mut self.mem(), usize::MAX)?;
            self.set_pq(queue, pq)?;
            for u in &used {
                let ok = !u.completes.is_empty() && u.len <= len;
                if !self.check(
                    Some(g),
                    &[],
                    ok,
                    Severity::Low,
                    || format!("used descriptor names an outstanding buffer id, len <= {len}"),
                    || format!("id {} len {} at ring position {}", u.id, u.len, u.pos),
                ) {
                    return Err(Stop::Abort);
                }
            }
            done += k as u32;
            self.cycle_round_done(queue, done, count, k as u32)?;
        }
        Ok(())
    }

    /// PVQ-DEV-05 (§2.8.15): a device must not change a descriptor after changing its
    /// USED bit, so a used descriptor's id and len are written before its flags. From the
    /// device's memory log: in each descriptor slot of a packed ring, a write to id/len must
    /// be followed by a write to the flags (a write covering both counts as flags last).
    pub(super) fn packed_publish_order(&mut self, log: &[MemoryAccess]) {
        let rings: Vec<(u64, u16)> = self
            .queues
            .values()
            .filter_map(|q| q.pq.as_ref().map(|p| (p.desc, p.size)))
            .collect();
        for (desc, size) in rings {
            let end = desc + 16 * size as u64;
            // slot -> id/len written and not yet followed by a flags write.
            let mut pending: Vec<u16> = Vec::new();
            for a in log {
                if a.kind != virtio_reference_device::AccessKind::Write
                    || a.gpa < desc
                    || a.gpa >= end
                {
                    continue;
                }
                let slot = ((a.gpa - desc) / 16) as u16;
                let off = (a.gpa - desc) % 16;
                let stop = off.saturating_add(a.len);
                let flags = off < 16 && stop > 14;
                let idlen = off < 14 && stop > 8;
                if flags {
                    pending.retain(|&s| s != slot);
                } else if idlen && !pending.contains(&slot) {
                    pending.push(slot);
                }
            }
            if let Some(&slot) = pending.first() {
                self.check(
                    None,
                    &["PVQ-DEV-05"],
                    false,
                    Severity::High,
                    || "a used descriptor's id and len written before its flags".into(),
                    || {
                        format!(
                            "descriptor {slot} of the ring at {desc:#x}: id/len written after its flags"
                        )
                    },
                );
            }
        }
    }
}
