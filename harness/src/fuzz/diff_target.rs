//! The `diff_mmio` body against any [`Target`]: a VMM crate's own `fuzz/` runs the same
//! operation streams on its device and on the reference, which serves as the differential
//! oracle.
//!
//! ```ignore
//! // fuzz/fuzz_targets/conform_diff.rs in the VMM's repository (cargo fuzz, stable: -s none)
//! #![no_main]
//! use std::cell::RefCell;
//! thread_local! {
//!     // One device for the whole run; `diff_mmio_against` calls `fresh()` before every input.
//!     static DEV: RefCell<my_vmm::ConformTarget> = RefCell::new(my_vmm::ConformTarget::new());
//! }
//! libfuzzer_sys::fuzz_target!(|data: &[u8]| {
//!     DEV.with(|d| {
//!         if let Err(f) = virtio_conform::fuzz::diff_mmio_against(data, &mut *d.borrow_mut()) {
//!             panic!("{f}");
//!         }
//!     });
//! });
//! ```
//!
//! # Input
//!
//! A `diff_mmio` input: the first byte (the mutant selector) is ignored, the rest is an
//! [`MmioCase`] whose device type and transport version are replaced by the subject's (read
//! from DeviceID and Version after [`Target::fresh`]). Subjects other than entropy (DeviceID
//! 4) and block (2) are not compared (every input passes).
//!
//! # What is compared, and what is left to the device
//!
//! The reference is one allowed implementation, so only what the spec fixes is compared:
//!
//! - 32-bit reads of MagicValue, Version, DeviceID, Status, QueueReady (QueuePFN for legacy),
//!   QueueReset and InterruptStatus must agree, except that the subject may have more
//!   InterruptStatus bits set (an extra notification is a SHOULD NOT, §2.7.7.2);
//! - every interrupt the reference raises must be raised by the subject too (when the subject
//!   reports interrupts, [`Capabilities::interrupts`]); extra ones are allowed;
//! - the used ring after a notification: flags, idx and the ids of every element must agree;
//!   the lengths must agree for block (status byte and data), not for entropy (a device may
//!   write fewer random bytes than the buffer holds, §5.4);
//! - a subject access that fails (crashed, hung, protocol) is a finding.
//!
//! Device-defined values (VendorID, DeviceFeatures, QueueNumMax, shared memory regions,
//! ConfigGeneration, the configuration space), reads of write-only or undefined offsets,
//! narrower or wider accesses than 32 bits, and the device's guest-memory access pattern are
//! not compared. Because the driver builds on what it read (it accepts the offered features),
//! the comparison ends at the first device-defined read that differs, or at the first extra
//! InterruptStatus bit: from there on the two runs are no longer the same conversation.
//! Configuration changes are skipped when the subject cannot make them
//! ([`Capabilities::config_change`]).
//!
//! Notifications go through [`Target::notify`]; a subject that is not
//! [`synchronous`](Target::synchronous) is [`settle`](Target::settle)d after each until its
//! used index holds still (at most [`MAX_SETTLES`](super::mmio::MAX_SETTLES) calls) before
//! its used ring is compared. A device that completes later than that would show as a
//! divergence: its `settle` must finish the work the notification started.

use super::diff_mmio::{decode_diff_mmio, DIFF_STEP_BUDGET};
use super::mmio::{Exec, MmioOp, NoHook, Obs};
use super::Finding;
use crate::target::{DeviceKind, IrqEvent, ReferenceTarget, Target};
use virtio_reference_device::regs::{
    CONFIG, CONFIG_GENERATION, DEVICE_ID, INTERRUPT_STATUS, MAGIC, QUEUE_PFN, QUEUE_READY,
    QUEUE_RESET, STATUS, VERSION,
};
use virtio_reference_device::TransportVersion;

const TARGET: &str = "diff_mmio_against";

/// Largest block capacity (512-byte sectors) the reference copies from a subject; a larger
/// disk is compared as one of this size (the capacity read is device-defined anyway).
pub const MAX_COPIED_SECTORS: u64 = 1 << 12;

fn harness(msg: impl Into<String>) -> Finding {
    Finding::new(TARGET, "harness", &[], msg)
}

/// Runs the `diff_mmio` operation stream of `data` on `subject` and on the reference device
/// (same device type, transport version, guest RAM size and, for block, capacity up to
/// [`MAX_COPIED_SECTORS`]), and returns the first difference the spec does not allow (see the
/// module documentation for what is compared).
///
/// Calls `subject.fresh()` once per input, then reads Version, DeviceID and (block) the
/// capacity before the operations start. A subject that cannot be reset or identified is a
/// `harness` finding; a subject crash or hang during the input is a `subject-failed` finding.
pub fn diff_mmio_against<T: Target>(data: &[u8], subject: &mut T) -> Result<(), Finding> {
    subject
        .fresh()
        .map_err(|e| harness(format!("fresh(): {e}")))?;
    let version = match subject.read32(VERSION) {
        Ok(1) => TransportVersion::Legacy,
        Ok(2) => TransportVersion::Modern,
        Ok(v) => return Err(harness(format!("the subject reads Version {v}"))),
        Err(e) => return Err(harness(format!("reading Version: {e}"))),
    };
    let device = match subject.read32(DEVICE_ID) {
        Ok(4) => DeviceKind::Entropy,
        Ok(2) => DeviceKind::Block,
        Ok(_) => return Ok(()),
        Err(e) => return Err(harness(format!("reading DeviceID: {e}"))),
    };
    let sectors = if device == DeviceKind::Block {
        let lo = subject.read32(CONFIG).unwrap_or(0) as u64;
        let hi = subject.read32(CONFIG + 4).unwrap_or(0) as u64;
        ((hi << 32) | lo).clamp(1, MAX_COPIED_SECTORS)
    } else {
        1
    };
    // Those reads have no side effects (§4.2.2), so the input starts on this instance: a
    // second fresh() would double the cost for a subject that builds a VM per instance.

    let mut dc = decode_diff_mmio(data);
    let flags = dc.case.header.flags & !3;
    dc.case.header.flags = flags
        | (version == TransportVersion::Legacy) as u8
        | ((device == DeviceKind::Block) as u8) << 1;
    let case = &dc.case;
    let caps = subject.capabilities();
    let mut reference =
        ReferenceTarget::configured(device, version, None, DIFF_STEP_BUDGET, sectors)
            .map_err(|e| harness(e.to_string()))?;
    reference.set_ram_size(subject.ram_size()).map_err(|e| {
        harness(format!(
            "reference RAM of {} bytes: {e}",
            subject.ram_size()
        ))
    })?;
    let mut ea = Exec::new(&mut reference, NoHook, case, true).via_notify_and_settle();
    let mut eb = Exec::new(subject, NoHook, case, true).via_notify_and_settle();
    let legacy = version == TransportVersion::Legacy;
    let block = device == DeviceKind::Block;
    for (i, op) in case.ops.iter().enumerate() {
        if matches!(op, MmioOp::Config { .. }) && !caps.config_change {
            continue;
        }
        ea.op(op)?;
        eb.op(op)?;
        let (oa, ob) = (ea.take_obs(), eb.take_obs());
        let fail = |oracle, msg: String| {
            Err(Finding::new(
                TARGET,
                oracle,
                &[],
                format!("{}: {msg}", op.describe(legacy, block)),
            )
            .at(i))
        };
        if let Some(Obs::Failed { off, kind }) = ob
            .iter()
            .find(|o| matches!(o, Obs::Failed { kind, .. } if *kind != "unsupported"))
        {
            return fail(
                "subject-failed",
                format!("access at {off:#x} failed ({kind})"),
            );
        }
        if oa.iter().any(|o| matches!(o, Obs::Failed { .. })) {
            // The reference refused something (its own limits): nothing to compare from here.
            return Ok(());
        }
        if block && is_discard_or_write_zeroes(op) {
            // Whether DISCARD / WRITE_ZEROES are offered, their segment and sector limits and
            // whether discarded sectors read back as zeros are the device's (§5.2.4, §5.2.6.1):
            // past such a request the two disks may rightly differ. A subject that failed on
            // it was caught above.
            return Ok(());
        }
        match compare(&oa, &ob, legacy, block, caps.interrupts) {
            Verdict::Same => {}
            Verdict::DeviceDefined => return Ok(()),
            Verdict::Differs(msg) => return fail("divergence", msg),
        }
    }
    Ok(())
}

/// Whether `op` makes a block DISCARD or WRITE_ZEROES request.
fn is_discard_or_write_zeroes(op: &MmioOp) -> bool {
    use virtio_reference_device::devices::block::{
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES,
    };
    matches!(op, MmioOp::Chain { bufs, req, .. }
        if matches!(super::mmio::block_request_type(*req, *bufs), VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES))
}

enum Verdict {
    Same,
    /// A difference the spec leaves to the device; the runs part ways here.
    DeviceDefined,
    Differs(String),
}

/// Offsets whose 32-bit reads the spec fixes for every device of the type.
fn fixed_read(off: u64, legacy: bool) -> bool {
    matches!(off, MAGIC | VERSION | DEVICE_ID | STATUS | INTERRUPT_STATUS)
        || (legacy && off == QUEUE_PFN)
        || (!legacy && matches!(off, QUEUE_READY | QUEUE_RESET))
}

fn reads(o: &[Obs]) -> impl Iterator<Item = (u64, &[u8])> {
    o.iter().filter_map(|x| match x {
        Obs::Read { off, bytes } => Some((*off, bytes.as_slice())),
        _ => None,
    })
}

fn irqs(o: &[Obs]) -> Vec<IrqEvent> {
    o.iter()
        .filter_map(|x| match x {
            Obs::Effects { effects, .. } => Some(effects.irqs.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn used(o: &[Obs]) -> Option<&[u8]> {
    o.iter().find_map(|x| match x {
        Obs::Used { bytes } => Some(bytes.as_slice()),
        _ => None,
    })
}

fn compare(a: &[Obs], b: &[Obs], legacy: bool, block: bool, irq: bool) -> Verdict {
    // Register reads, in order (both drivers run the same operation, so the same reads).
    let (ra, rb): (Vec<_>, Vec<_>) = (reads(a).collect(), reads(b).collect());
    if ra.len() != rb.len() {
        return Verdict::Differs(format!(
            "the reference made {} register reads, the subject {}",
            ra.len(),
            rb.len()
        ));
    }
    for (&(off, x), &(_, y)) in ra.iter().zip(&rb) {
        if x == y {
            continue;
        }
        if x.len() != 4 || !fixed_read(off, legacy) || off == CONFIG_GENERATION {
            return Verdict::DeviceDefined;
        }
        if off == INTERRUPT_STATUS {
            let (vx, vy) = (
                u32::from_le_bytes([x[0], x[1], x[2], x[3]]),
                u32::from_le_bytes([y[0], y[1], y[2], y[3]]),
            );
            if vx & !vy == 0 {
                return Verdict::DeviceDefined;
            }
        }
        return Verdict::Differs(format!(
            "read at {off:#x}: the reference gave {x:02x?}, the subject {y:02x?}"
        ));
    }
    if irq {
        let (ia, ib) = (irqs(a), irqs(b));
        let missing: Vec<_> = ia.iter().filter(|e| !ib.contains(e)).collect();
        if !missing.is_empty() {
            return Verdict::Differs(format!(
                "the reference raised {ia:?}, the subject {ib:?} (missing {missing:?})"
            ));
        }
    }
    match (used(a), used(b)) {
        (Some(x), Some(y)) if x != y => {
            let ids_same = x.len() == y.len()
                && x[..4.min(x.len())] == y[..4.min(y.len())]
                && x.get(4..)
                    .unwrap_or(&[])
                    .chunks(8)
                    .zip(y.get(4..).unwrap_or(&[]).chunks(8))
                    .all(|(p, q)| p[..4.min(p.len())] == q[..4.min(q.len())]);
            if ids_same && !block {
                Verdict::Same
            } else {
                Verdict::Differs(format!(
                    "used ring after the notification: the reference {:02x?}, the subject {:02x?}",
                    &x[..x.len().min(24)],
                    &y[..y.len().min(24)]
                ))
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            Verdict::Differs("only one side's used ring was read".to_string())
        }
        _ => Verdict::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::seeds::seeds;
    use crate::target::{Capabilities, TargetError, TargetInfo};
    use virtio_reference_device::Mutant;

    /// The reference with a different VendorID, no memory log, no interrupts and no host-side
    /// configuration changes: everything a third-party device may legitimately differ in.
    struct OtherVendor(ReferenceTarget);

    impl Target for OtherVendor {
        fn info(&self) -> TargetInfo {
            self.0.info()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn ram_size(&self) -> u64 {
            self.0.ram_size()
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
            self.0.read(offset, data)?;
            if offset == virtio_reference_device::regs::VENDOR_ID {
                data.fill(0x42);
            }
            Ok(())
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
            self.0.write(offset, data)
        }
        fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
            self.0.mem_write(gpa, data)
        }
        fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
            self.0.mem_read(gpa, buf)
        }
        fn fresh(&mut self) -> Result<(), TargetError> {
            self.0.fresh()
        }
        fn synchronous(&self) -> bool {
            true
        }
    }

    fn subject(
        device: DeviceKind,
        version: TransportVersion,
        m: Option<Mutant>,
    ) -> ReferenceTarget {
        ReferenceTarget::configured(device, version, m, DIFF_STEP_BUDGET, 16).unwrap()
    }

    #[test]
    fn the_reference_and_an_allowed_alternative_pass_every_seed() {
        for (name, data) in seeds("diff_mmio") {
            for device in [DeviceKind::Entropy, DeviceKind::Block] {
                for version in [TransportVersion::Modern, TransportVersion::Legacy] {
                    let mut same = subject(device, version, None);
                    let r = diff_mmio_against(&data, &mut same);
                    assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
                    let mut other = OtherVendor(subject(device, version, None));
                    let r = diff_mmio_against(&data, &mut other);
                    assert!(r.is_ok(), "{name} (other vendor): {}", r.unwrap_err());
                }
            }
        }
    }

    #[test]
    fn a_mutant_subject_is_found() {
        // Each of these mutants breaks something the comparison fixes; some seed shows it.
        for m in [
            Mutant::ResetKeepsQueueReady,
            Mutant::ResetSetsFailed,
            Mutant::SingleBitStatusWrites,
        ] {
            let found = seeds("diff_mmio").iter().any(|(_, data)| {
                [DeviceKind::Entropy, DeviceKind::Block].iter().any(|&d| {
                    let mut s = subject(d, TransportVersion::Modern, Some(m));
                    diff_mmio_against(data, &mut s).is_err()
                })
            });
            assert!(found, "no seed finds mutant:{}", m.name());
        }
    }

    #[test]
    fn random_inputs_pass_on_the_reference_and_the_allowed_alternative() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = seeds("diff_mmio");
        for i in 0..600 {
            // Half pure noise, half a seed with a few bytes flipped.
            let mut data: Vec<u8> = if i % 2 == 0 {
                (0..(next() % 300)).map(|_| next() as u8).collect()
            } else {
                seeds[i % seeds.len()].1.clone()
            };
            for _ in 0..4 {
                if !data.is_empty() {
                    let k = next() as usize % data.len();
                    data[k] = next() as u8;
                }
            }
            let version = if i % 3 == 0 {
                TransportVersion::Legacy
            } else {
                TransportVersion::Modern
            };
            let device = if i % 4 < 2 {
                DeviceKind::Entropy
            } else {
                DeviceKind::Block
            };
            let mut other = OtherVendor(subject(device, version, None));
            let r = diff_mmio_against(&data, &mut other);
            assert!(r.is_ok(), "input {i} {data:02x?}: {}", r.unwrap_err());
        }
    }

    /// The reference, but a notification only takes effect in `settle` (as with a VMM whose
    /// queue work runs in an event loop); with `lazy` it never does.
    struct Deferred {
        inner: ReferenceTarget,
        pending: Option<u32>,
        lazy: bool,
    }

    impl Target for Deferred {
        fn info(&self) -> TargetInfo {
            self.inner.info()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn ram_size(&self) -> u64 {
            self.inner.ram_size()
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
            self.inner.read(offset, data)
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
            self.inner.write(offset, data)
        }
        fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
            self.inner.mem_write(gpa, data)
        }
        fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
            self.inner.mem_read(gpa, buf)
        }
        fn fresh(&mut self) -> Result<(), TargetError> {
            self.pending = None;
            self.inner.fresh()
        }
        fn notify(&mut self, value: u32) -> Result<(), TargetError> {
            self.pending = Some(value);
            Ok(())
        }
        fn settle(&mut self) -> Result<(), TargetError> {
            match self.pending.take() {
                Some(v) if !self.lazy => self.inner.write32(0x50, v),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_device_that_works_in_settle_is_compared_after_settling() {
        let mut found_lazy = false;
        for (name, data) in seeds("diff_mmio") {
            for device in [DeviceKind::Entropy, DeviceKind::Block] {
                let mut d = Deferred {
                    inner: subject(device, TransportVersion::Modern, None),
                    pending: None,
                    lazy: false,
                };
                let r = diff_mmio_against(&data, &mut d);
                assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
                let mut lazy = Deferred {
                    inner: subject(device, TransportVersion::Modern, None),
                    pending: None,
                    lazy: true,
                };
                found_lazy |= diff_mmio_against(&data, &mut lazy).is_err();
            }
        }
        assert!(found_lazy, "a device that never completes was not noticed");
    }
}
