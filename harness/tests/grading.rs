//! The grading rules (specs/README.md, "Grading"), each shown with a small in-process target:
//! the behaviour the spec permits passes, the behaviour it forbids fails.

use virtio_conform::catalog::Level;
use virtio_conform::outcome::{Outcome, Severity};
use virtio_conform::report::Report;
use virtio_conform::runner::{run_case, LIVENESS};
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::reference::{backend, DeviceFactory};
use virtio_conform::target::virtio_queue::VirtioQueueTarget;
use virtio_conform::target::{
    once, Capabilities, DeviceKind, IrqEvent, ReferenceTarget, Target, TargetError, TargetInfo,
};
use virtio_reference_device::regs::*;
use virtio_reference_device::{
    BlockBackend, ChainWriter, Completion, Descriptor, DeviceBackend, DeviceConfig, GuestRam,
    MalformedChainPolicy, MemoryAccess, MmioDevice, Mutant, TransportVersion,
};

const M: TransportVersion = TransportVersion::Modern;

fn suite() -> Suite {
    Suite::load_default().unwrap()
}

fn run<T: Target + Send + 'static>(t: T, only: &[&str]) -> Report {
    run_suite(
        &suite(),
        once(t),
        &Options {
            only: only.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        },
    )
}

/// Failed checks of `r` at MUST level, as (case, requirement ids).
fn must_failures(r: &Report) -> Vec<(String, Vec<String>)> {
    r.results
        .iter()
        .flat_map(|c| {
            c.failures
                .iter()
                .filter(|f| f.level == "MUST")
                .map(|f| {
                    (
                        c.case.clone(),
                        f.requirements.iter().map(|x| x.id.clone()).collect(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The reference device with a different device factory (knobs, backend).
fn reference_with(
    device: DeviceKind,
    name: &str,
    f: impl Fn(&mut DeviceConfig) + Send + 'static,
    b: impl Fn() -> Box<dyn DeviceBackend> + Send + 'static,
) -> ReferenceTarget {
    let factory: DeviceFactory = Box::new(move |ram| {
        let mut cfg = DeviceConfig::new(M);
        f(&mut cfg);
        MmioDevice::new(cfg, b(), ram)
    });
    ReferenceTarget::with_factory(name.into(), device, M, factory).unwrap()
}

/// A target around the reference that rewrites the `len` of every used element of queue 0
/// after the device wrote it (version 2 register map).
struct LenRewrite {
    inner: ReferenceTarget,
    f: fn(u32) -> u32,
    used: u64,
    seen: u16,
    sel: u32,
}

impl LenRewrite {
    fn new(device: DeviceKind, f: fn(u32) -> u32) -> Self {
        LenRewrite {
            inner: ReferenceTarget::new(device, M, None).unwrap(),
            f,
            used: 0,
            seen: 0,
            sel: 0,
        }
    }

    fn rewrite(&mut self, size: u16) -> Result<(), TargetError> {
        if self.used == 0 || size == 0 {
            return Ok(());
        }
        let mut b = [0u8; 2];
        self.inner.mem_read(self.used + 2, &mut b)?;
        let idx = u16::from_le_bytes(b);
        while self.seen != idx {
            let at = self.used + 4 + 8 * (self.seen % size) as u64 + 4;
            let mut l = [0u8; 4];
            self.inner.mem_read(at, &mut l)?;
            let new = (self.f)(u32::from_le_bytes(l));
            self.inner.mem_write(at, &new.to_le_bytes())?;
            self.seen = self.seen.wrapping_add(1);
        }
        Ok(())
    }
}

impl Target for LenRewrite {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn synchronous(&self) -> bool {
        true
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.inner.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.write(offset, data)?;
        let v = data
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match offset {
            QUEUE_SEL => self.sel = v,
            QUEUE_DEVICE_LOW if self.sel == 0 => {
                self.used = (self.used & !0xffff_ffff) | v as u64;
                self.seen = 0;
            }
            QUEUE_DEVICE_HIGH if self.sel == 0 => {
                self.used = (self.used & 0xffff_ffff) | (v as u64) << 32
            }
            STATUS if v == 0 => self.seen = 0,
            QUEUE_NOTIFY if v == 0 => {
                let size = self
                    .inner
                    .device()
                    .and_then(|d| d.queue(0).map(|q| q.size))
                    .unwrap_or(0);
                self.rewrite(size)?;
            }
            _ => {}
        }
        Ok(())
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.inner.mem_read(gpa, buf)
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        self.used = 0;
        self.seen = 0;
        self.sel = 0;
        self.inner.fresh()
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        self.inner.take_interrupts()
    }
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        self.inner.take_accesses()
    }
    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.config_change(offset, data)
    }
}

/// §2.7.8.2: a used `len` may underestimate what the device wrote (VQ-DEV-16): at most
/// informational, never a failure.
#[test]
fn used_len_underestimate_passes() {
    for device in [DeviceKind::Entropy, DeviceKind::Block] {
        let t = LenRewrite::new(device, |l| if l > 1 { l - 1 } else { l });
        let r = run(t, &[]);
        assert_eq!(r.exit_code(true), 0, "{device:?}: {:?}", must_failures(&r));
        if device == DeviceKind::Block {
            let noted = r.results.iter().any(|c| {
                c.outcome == Outcome::Informational
                    && c.failures
                        .iter()
                        .any(|f| f.requirements.iter().any(|x| x.id == "VQ-DEV-16"))
            });
            assert!(noted, "the underestimate is reported as informational");
        }
    }
}

/// §2.7.8.2: the device must have written at least `len` bytes (VQ-DEV-15): a `len` larger
/// than what was written fails.
#[test]
fn used_len_larger_than_written_fails() {
    for device in [DeviceKind::Entropy, DeviceKind::Block] {
        let t = LenRewrite::new(device, |l| l + 1);
        let r = run(t, &["split.*", "blk.*"]);
        assert_eq!(r.exit_code(false), 1);
        assert!(
            must_failures(&r)
                .iter()
                .any(|(_, ids)| ids.iter().any(|i| i == "VQ-DEV-15")),
            "{device:?}: {:?}",
            must_failures(&r)
        );
    }
}

/// An entropy device that writes `written` bytes of every buffer (0 = all) and reports
/// `reported(capacity)` as the used len.
struct PartialEntropy {
    written: u64,
    reported: fn(u32) -> u32,
}

impl DeviceBackend for PartialEntropy {
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
        "entropy (partial)"
    }
    fn process(&mut self, _queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let cap = ChainWriter::capacity(chain);
        let n = if self.written == 0 {
            cap
        } else {
            self.written.min(cap)
        };
        let mut w = ChainWriter::new(chain);
        if w.write(ram, &vec![0x42; n as usize]).is_err() {
            return Completion::Malformed;
        }
        Completion::Written((self.reported)(cap as u32))
    }
}

/// With a memory log, a len that stays within the buffer but counts bytes the device never
/// wrote fails (VQ-DEV-15); writing everything and reporting less passes (VQ-DEV-16).
#[test]
fn used_len_counting_unwritten_bytes_fails() {
    let cases = [
        "split.entropy-descriptor-layouts",
        "split.batch-of-requests",
    ];
    let honest = reference_with(
        DeviceKind::Entropy,
        "entropy (writes all, reports 1)",
        |_| {},
        || {
            Box::new(PartialEntropy {
                written: 0,
                reported: |_| 1,
            })
        },
    );
    let r = run(honest, &cases);
    assert_eq!(r.exit_code(true), 0, "{:?}", must_failures(&r));
    let liar = reference_with(
        DeviceKind::Entropy,
        "entropy (writes 1, reports all)",
        |_| {},
        || {
            Box::new(PartialEntropy {
                written: 1,
                reported: |cap| cap,
            })
        },
    );
    let r = run(liar, &cases);
    let f = must_failures(&r);
    assert!(
        f.iter()
            .any(|(_, ids)| ids.iter().any(|i| i == "VQ-DEV-15")),
        "{f:?}"
    );
    assert_eq!(r.exit_code(false), 1);
}

/// Graceful handling of a chain the driver made invalid: handing the chain back with len 0
/// (the SkipChain knob) passes every case of both device types.
#[test]
fn malformed_chain_returned_with_len_0_passes() {
    for device in [DeviceKind::Entropy, DeviceKind::Block] {
        let t = reference_with(
            device,
            "reference (skip chain)",
            |c| c.knobs.malformed_chain = MalformedChainPolicy::SkipChain,
            move || backend(device).unwrap(),
        );
        let r = run(t, &[]);
        assert_eq!(r.exit_code(true), 0, "{device:?}: {:?}", must_failures(&r));
    }
}

/// Not using the chain and not announcing DEVICE_NEEDS_RESET (the StopQueue knob) is
/// graceful too: DEVICE_NEEDS_RESET is never demanded at MUST level. What remains is the
/// SHOULD of STATUS-DEV-02 where the device took a queue it can never use.
#[test]
fn malformed_chain_not_used_without_needs_reset_passes() {
    for device in [DeviceKind::Entropy, DeviceKind::Block] {
        let t = reference_with(
            device,
            "reference (stop queue)",
            |c| c.knobs.malformed_chain = MalformedChainPolicy::StopQueue,
            move || backend(device).unwrap(),
        );
        let r = run(t, &[]);
        assert_eq!(r.exit_code(false), 0, "{device:?}: {:?}", must_failures(&r));
        for c in r.results.iter().filter(|c| c.outcome == Outcome::NonStrict) {
            for f in &c.failures {
                assert_eq!(f.requirements[0].id, "STATUS-DEV-02", "{c:?}");
            }
        }
    }
}

/// A block device that answers requests it cannot parse with VIRTIO_BLK_S_IOERR in the status
/// byte and an honest len (§5.2.6: the in-band error of the block device type).
struct ErrorStatusBlock(BlockBackend);

impl DeviceBackend for ErrorStatusBlock {
    fn device_id(&self) -> u32 {
        self.0.device_id()
    }
    fn features(&self) -> u64 {
        self.0.features()
    }
    fn num_queues(&self) -> u16 {
        self.0.num_queues()
    }
    fn config(&self) -> &[u8] {
        self.0.config()
    }
    fn name(&self) -> &'static str {
        "block (error status)"
    }
    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        match self.0.process(queue, chain, ram) {
            Completion::Malformed => {
                let cap = ChainWriter::capacity(chain);
                if cap == 0 {
                    return Completion::Malformed;
                }
                let mut bytes = vec![0u8; cap as usize];
                bytes[cap as usize - 1] = 1;
                let mut w = ChainWriter::new(chain);
                match w.write(ram, &bytes) {
                    Ok(_) => Completion::Written(w.written()),
                    Err(_) => Completion::Malformed,
                }
            }
            c => c,
        }
    }
}

#[test]
fn block_error_status_with_honest_len_passes() {
    let make = || {
        reference_with(
            DeviceKind::Block,
            "block (error status)",
            |_| {},
            || Box::new(ErrorStatusBlock(BlockBackend::new(2048))),
        )
    };
    let r = run(make(), &["blk.*", "malformed.*"]);
    assert_eq!(r.exit_code(true), 0, "{:?}", must_failures(&r));
    // The probe really took the error-status path: the short header came back with len 1.
    let s = suite();
    let c = s.cases.iter().find(|c| c.id == "blk.short-header").unwrap();
    let mut t = make();
    t.fresh().unwrap();
    let run = run_case(&mut t, c, &s.catalog);
    assert_eq!(run.outcome, Outcome::Pass, "{run:?}");
    assert!(
        run.observations
            .iter()
            .any(|o| o.what.contains("after malformed chain") && o.value.contains("(0, 1)")),
        "{:?}",
        run.observations
    );
}

/// A device that completes every chain as valid, claiming every writable byte without
/// writing any: where the buffer lies outside guest RAM this is a failure (VQ-DEV-15), and
/// inside RAM the memory log shows the len counts unwritten bytes (VQ-DEV-15 too).
struct Liar {
    inner: ReferenceTarget,
    regs: [u64; 3],
    size: u16,
    seen: u16,
    used_idx: u16,
    sel: u32,
}

impl Liar {
    fn new() -> Self {
        Liar {
            inner: ReferenceTarget::new(DeviceKind::Entropy, M, None).unwrap(),
            regs: [0; 3],
            size: 0,
            seen: 0,
            used_idx: 0,
            sel: 0,
        }
    }

    fn complete(&mut self) -> Result<(), TargetError> {
        let [desc, avail, used] = self.regs;
        let size = self.size.max(1);
        let mut b = [0u8; 2];
        self.inner.mem_read(avail + 2, &mut b)?;
        let idx = u16::from_le_bytes(b);
        while self.seen != idx {
            self.inner
                .mem_read(avail + 4 + 2 * (self.seen % size) as u64, &mut b)?;
            let head = u16::from_le_bytes(b);
            let (mut i, mut len, mut n) = (head, 0u32, 0);
            while n < size && i < size {
                let mut d = [0u8; 16];
                self.inner.mem_read(desc + 16 * i as u64, &mut d)?;
                let l = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
                let flags = u16::from_le_bytes([d[12], d[13]]);
                if flags & VIRTQ_DESC_F_WRITE != 0 {
                    len = len.wrapping_add(l);
                }
                if flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                i = u16::from_le_bytes([d[14], d[15]]);
                n += 1;
            }
            let slot = used + 4 + 8 * (self.used_idx % size) as u64;
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&(head as u32).to_le_bytes());
            e[4..].copy_from_slice(&len.to_le_bytes());
            self.inner.mem_write(slot, &e)?;
            self.used_idx = self.used_idx.wrapping_add(1);
            self.inner
                .mem_write(used + 2, &self.used_idx.to_le_bytes())?;
            self.seen = self.seen.wrapping_add(1);
        }
        Ok(())
    }
}

impl Target for Liar {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: "liar".into(),
            ..self.inner.info()
        }
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn synchronous(&self) -> bool {
        true
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.inner.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let v = data
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) as u64;
        let set = |r: &mut u64, high: bool| {
            *r = if high {
                (*r & 0xffff_ffff) | v << 32
            } else {
                (*r & !0xffff_ffff) | v
            }
        };
        match offset {
            QUEUE_SEL => self.sel = v as u32,
            QUEUE_NUM if self.sel == 0 => self.size = v as u16,
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH if self.sel == 0 => {
                set(&mut self.regs[0], offset == QUEUE_DESC_HIGH)
            }
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH if self.sel == 0 => {
                set(&mut self.regs[1], offset == QUEUE_DRIVER_HIGH)
            }
            QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH if self.sel == 0 => {
                set(&mut self.regs[2], offset == QUEUE_DEVICE_HIGH)
            }
            STATUS if v == 0 => {
                self.seen = 0;
                self.used_idx = 0;
            }
            QUEUE_NOTIFY => return self.complete(),
            _ => {}
        }
        self.inner.write(offset, data)
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.inner.mem_read(gpa, buf)
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        *self = Liar::new();
        Ok(())
    }
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        self.inner.take_accesses()
    }
}

#[test]
fn chain_completed_as_valid_outside_ram_fails() {
    let t = Liar::new();
    let r = run(t, &["malformed.addr-outside-ram"]);
    let f = must_failures(&r);
    assert!(
        f.iter()
            .any(|(_, ids)| ids.iter().any(|i| i == "VQ-DEV-15")),
        "{f:?}"
    );
}

/// Completing a looped chain cut at the queue size, or a chain whose `next` is out of range
/// cut there, is not forbidden by any statement (rust-vmm's virtio-queue does both): at most
/// informational.
#[test]
fn looped_or_cut_chains_completed_are_informational() {
    let t = VirtioQueueTarget::new().unwrap();
    let r = run(
        t,
        &[
            "malformed.loop",
            "malformed.loop-two-descriptors",
            "malformed.next-out-of-range",
            "malformed.next-far-out-of-range",
        ],
    );
    for c in &r.results {
        assert!(
            matches!(c.outcome, Outcome::Pass | Outcome::Informational),
            "{c:?}"
        );
    }
    assert!(r
        .results
        .iter()
        .any(|c| c.outcome == Outcome::Informational));
}

/// A crash or hang cites LIVE-DEV-01 (the device keeps answering and accepts a reset) with
/// severity high, not a statement about the chain.
#[test]
fn crash_and_hang_cite_liveness() {
    let s = suite();
    for (m, case) in [
        (Mutant::InvalidQueueActivated, "queue.ring-outside-ram"),
        (Mutant::NoChainLengthCap, "malformed.loop"),
    ] {
        let mut t = ReferenceTarget::new(DeviceKind::Entropy, M, Some(m)).unwrap();
        let c = s.cases.iter().find(|c| c.id == case).unwrap();
        let run = run_case(&mut t, c, &s.catalog);
        assert!(
            matches!(run.outcome, Outcome::Fail | Outcome::Timeout),
            "{m:?}: {run:?}"
        );
        let f = run
            .failures
            .iter()
            .find(|f| f.requirements == [LIVENESS])
            .unwrap_or_else(|| panic!("{m:?}: {:?}", run.failures));
        assert_eq!(f.severity, Severity::High);
        assert_eq!(f.level, Level::Must);
        assert!(s.catalog.requirements.contains_key(LIVENESS));
    }
}

/// Legacy (version 1): no DEVICE_NEEDS_RESET bit exists; the reference stops using the queue
/// and every malformed case passes.
#[test]
fn legacy_reference_stops_the_queue_and_passes() {
    for device in [DeviceKind::Entropy, DeviceKind::Block] {
        let t = ReferenceTarget::new(device, TransportVersion::Legacy, None).unwrap();
        let r = run(t, &["malformed.*"]);
        assert_eq!(r.exit_code(true), 0, "{device:?}: {:?}", must_failures(&r));
        assert!(!r.results.is_empty());
    }
}

/// A block device that answers a request type it does not know with VIRTIO_BLK_S_IOERR
/// instead of the reference's UNSUPP (§5.2.6 lets a driver error end with IOERR).
struct IoerrForUnknownType(BlockBackend);

impl DeviceBackend for IoerrForUnknownType {
    fn device_id(&self) -> u32 {
        self.0.device_id()
    }
    fn features(&self) -> u64 {
        self.0.features()
    }
    fn num_queues(&self) -> u16 {
        self.0.num_queues()
    }
    fn config(&self) -> &[u8] {
        self.0.config()
    }
    fn name(&self) -> &'static str {
        "block (IOERR for unknown types)"
    }
    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let mut header = [0u8; 16];
        let parsed = virtio_reference_device::ChainReader::new(chain).read(ram, &mut header);
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let cap = ChainWriter::capacity(chain);
        if parsed == Ok(16) && ![0, 1, 4, 8].contains(&kind) && cap > 0 {
            let mut bytes = vec![0u8; cap as usize];
            bytes[cap as usize - 1] = 1;
            let mut w = ChainWriter::new(chain);
            return match w.write(ram, &bytes) {
                Ok(_) => Completion::Written(w.written()),
                Err(_) => Completion::Malformed,
            };
        }
        self.0.process(queue, chain, ram)
    }
}

#[test]
fn unknown_block_type_ioerr_passes_and_ok_fails() {
    let cases = ["blk.unsupported-type", "blk.unknown-type-not-ok"];
    let make = || {
        reference_with(
            DeviceKind::Block,
            "block (IOERR for unknown types)",
            |_| {},
            || Box::new(IoerrForUnknownType(BlockBackend::new(2048))),
        )
    };
    let r = run(make(), &cases);
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.exit_code(true), 0, "{:?}", must_failures(&r));
    // The IOERR path was really taken.
    let s = suite();
    let c = s.cases.iter().find(|c| c.id == cases[0]).unwrap();
    let mut t = make();
    t.fresh().unwrap();
    let run1 = run_case(&mut t, c, &s.catalog);
    assert_eq!(run1.outcome, Outcome::Pass, "{run1:?}");
    assert!(
        run1.observations
            .iter()
            .any(|o| o.what == "data q0" && o.value == "01"),
        "{:?}",
        run1.observations
    );
    // OK for a request that was not carried out fails, citing the block requirement.
    let m = ReferenceTarget::new(DeviceKind::Block, M, Some(Mutant::BlockUnknownTypeOk)).unwrap();
    let r = run(m, &cases);
    for c in &r.results {
        assert_eq!(c.outcome, Outcome::Fail, "{c:?}");
        assert!(
            c.failures
                .iter()
                .all(|f| f.requirements.iter().any(|x| x.id == "BLK-DEV-UNSUPP")),
            "{c:?}"
        );
    }
}

#[test]
fn read_only_block_device_answers_writes_with_ioerr_and_a_mutant_that_writes_fails() {
    let case = "blk.read-only-write-fails";
    let make = || {
        reference_with(
            DeviceKind::Block,
            "block (read-only)",
            |_| {},
            || Box::new(BlockBackend::read_only(2048)),
        )
    };
    let r = run(make(), &[case]);
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].outcome, Outcome::Pass, "{:?}", r.results[0]);
    // The write changed nothing: the read after it still returns the zeroed sector.
    let s = suite();
    let c = s.cases.iter().find(|c| c.id == case).unwrap();
    let mut t = make();
    t.fresh().unwrap();
    let run1 = run_case(&mut t, c, &s.catalog);
    let data: Vec<&str> = run1
        .observations
        .iter()
        .filter(|o| o.what == "data q0")
        .map(|o| o.value.as_str())
        .collect();
    assert_eq!(data.len(), 3, "{data:?}");
    assert_eq!(data[1], "01", "the write ended with IOERR");
    assert_eq!(data[2], "00".repeat(17), "the disk is untouched");
    // A device that offers VIRTIO_BLK_F_RO and carries the write out fails BLK-DEV-RO.
    let m =
        ReferenceTarget::new(DeviceKind::Block, M, Some(Mutant::ReadOnlyWritesAccepted)).unwrap();
    let r = run(m, &[case]);
    assert_eq!(r.results[0].outcome, Outcome::Fail);
    assert!(must_failures(&r)
        .iter()
        .any(|(_, ids)| ids.iter().any(|i| i == "BLK-DEV-RO")));
    // A device without the feature is not graded on it.
    let plain = ReferenceTarget::new(DeviceKind::Block, M, None).unwrap();
    let r = run(plain, &[case]);
    assert_eq!(r.results[0].outcome, Outcome::Unsupported);
}

#[test]
fn a_read_only_block_device_is_not_failed_for_refusing_writes() {
    // §5.2.6.2: a device offering VIRTIO_BLK_F_RO must fail every write, so the cases that
    // expect a write to succeed do not apply to it; nothing in the block suite may fail.
    let make = || {
        reference_with(
            DeviceKind::Block,
            "block (read-only)",
            |_| {},
            || Box::new(BlockBackend::read_only(2048)),
        )
    };
    let r = run(make(), &[]);
    let bad: Vec<_> = r
        .results
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail | Outcome::Error))
        .map(|c| c.case.as_str())
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let unsupported: Vec<_> = r
        .results
        .iter()
        .filter(|c| c.case == "blk.write-read-roundtrip")
        .map(|c| c.outcome)
        .collect();
    assert_eq!(unsupported, vec![Outcome::Unsupported]);
    // The writable reference still runs (and passes) the same case.
    let r = run(
        ReferenceTarget::new(DeviceKind::Block, TransportVersion::Modern, None).unwrap(),
        &["blk.write-read-roundtrip"],
    );
    assert_eq!(r.results[0].outcome, Outcome::Pass);
}
