//! `diff` mirrors the target: the reference configured like the target's profile (features,
//! QueueNumMax, VendorID, configuration space) finds no spec violation in a target that
//! differs only where the spec allows; every mutant is still found; a wrong DeviceID or
//! feature page is the target's violation (exit 1), never a reference bug (exit 2).

use virtio_conform::diff::{discover, run_diff, DiffOptions, DivergenceClass};
use virtio_conform::suite::Suite;
use virtio_conform::target::reference::{backend, DeviceFactory};
use virtio_conform::target::{
    Capabilities, DeviceKind, IrqEvent, ReferenceTarget, Target, TargetError, TargetInfo,
};
use virtio_reference_device::regs::*;
use virtio_reference_device::{
    BlockBackend, DeviceConfig, MemoryAccess, MmioDevice, Mutant, TransportVersion,
};

fn opts(random: usize) -> DiffOptions {
    DiffOptions {
        only: Vec::new(),
        random,
        seed: 3,
        shrink: false,
    }
}

/// The reference with another feature set, other queue sizes and another VendorID.
fn variant(
    device: DeviceKind,
    version: TransportVersion,
    f: impl Fn(&mut DeviceConfig) + Send + 'static,
    sectors: u64,
) -> ReferenceTarget {
    let factory: DeviceFactory = Box::new(move |ram| {
        let mut cfg = DeviceConfig::new(version);
        cfg.vendor_id = 0x1af4;
        f(&mut cfg);
        let b: Box<dyn virtio_reference_device::DeviceBackend> = match device {
            DeviceKind::Block => Box::new(BlockBackend::new(sectors)),
            _ => backend(device).unwrap(),
        };
        MmioDevice::new(cfg, b, ram)
    });
    ReferenceTarget::with_factory("variant".into(), device, version, factory).unwrap()
}

/// A target that answers configuration-space reads with zeros until FEATURES_OK is set.
struct ConfigAfterFeaturesOk {
    inner: ReferenceTarget,
    status: u32,
}

impl Target for ConfigAfterFeaturesOk {
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
        if offset >= CONFIG && self.status & FEATURES_OK as u32 == 0 {
            data.fill(0);
            return Ok(());
        }
        self.inner.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        if offset == STATUS && data.len() == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.status = if v == 0 { 0 } else { self.status | v };
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
        self.status = 0;
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

#[test]
fn reference_with_other_allowed_choices_has_no_spec_violation() {
    let s = Suite::load_default().unwrap();
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        // No EVENT_IDX, no RING_RESET; a queue of 64 entries (entropy has one queue,
        // §5.4.2); another VendorID.
        let mut t = variant(
            DeviceKind::Entropy,
            version,
            |c| {
                c.transport_features &= !(bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_RING_RESET));
                c.queue_num_max = vec![64];
            },
            0,
        );
        let p = discover(&mut t).unwrap();
        assert_eq!(p.queue_num_max, [64]);
        assert_eq!(p.vendor_id, 0x1af4);
        assert_eq!(p.features & bit(VIRTIO_F_EVENT_IDX), 0);
        let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &opts(20)).unwrap();
        assert_eq!(r.spec_violations, 0, "{version:?}: {:#?}", r.divergences);
        assert_eq!(r.reference_bugs, 0);
        assert_eq!(r.exit_code(), 0);
    }
}

#[test]
fn block_config_served_after_features_ok_is_discovered() {
    let s = Suite::load_default().unwrap();
    // A block device of 4096 sectors without FLUSH, one queue of 128 entries, whose
    // configuration space reads zeros before FEATURES_OK.
    let inner = variant(
        DeviceKind::Block,
        TransportVersion::Modern,
        |c| {
            c.queue_num_max = vec![128];
            c.offered_features = Some(
                bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_BLK_F_FLUSH),
            );
        },
        4096,
    );
    let mut t = ConfigAfterFeaturesOk { inner, status: 0 };
    let p = discover(&mut t).unwrap();
    assert!(p.config_after_features_ok);
    assert_eq!(&p.config[..8], &4096u64.to_le_bytes());
    assert_eq!(
        p.features,
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_BLK_F_FLUSH)
    );
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Block, &opts(10)).unwrap();
    assert_eq!(r.reference_bugs, 0, "{:#?}", r.divergences);
    // Refusing configuration reads before FEATURES_OK is itself forbidden (CFG-DEV-01,
    // §2.5.2): the one case that reads that early reports it; nothing else differs.
    let v: Vec<_> = r
        .divergences
        .iter()
        .filter(|d| d.class == DivergenceClass::SpecViolation)
        .collect();
    assert!(
        v.iter()
            .all(|d| d.source == "config.readable-before-features-ok"
                && d.requirements.iter().any(|c| c.id == "CFG-DEV-01")),
        "{v:#?}"
    );
    assert_eq!(v.len(), 1, "{v:#?}");
}

#[test]
fn every_mutant_is_still_found() {
    let s = Suite::load_default().unwrap();
    let combos = [
        (DeviceKind::Entropy, TransportVersion::Modern),
        (DeviceKind::Block, TransportVersion::Modern),
        (DeviceKind::Entropy, TransportVersion::Legacy),
        (DeviceKind::Block, TransportVersion::Legacy),
        (DeviceKind::Console, TransportVersion::Modern),
        (DeviceKind::Console, TransportVersion::Legacy),
        (DeviceKind::Net, TransportVersion::Modern),
        (DeviceKind::Net, TransportVersion::Legacy),
        (DeviceKind::Balloon, TransportVersion::Modern),
        (DeviceKind::Balloon, TransportVersion::Legacy),
        (DeviceKind::Vsock, TransportVersion::Modern),
    ];
    let mut missed = Vec::new();
    for &m in Mutant::ALL {
        let found = combos.iter().any(|&(device, version)| {
            let mut t = ReferenceTarget::new(device, version, Some(m)).unwrap();
            let r = run_diff(&s.cases, &s.catalog, &mut t, device, &opts(0)).unwrap();
            assert_eq!(r.reference_bugs, 0, "{m:?}: {:#?}", r.divergences);
            r.spec_violations > 0
        });
        if !found {
            missed.push(m.name());
        }
    }
    assert!(missed.is_empty(), "mutants diff does not find: {missed:?}");
}

#[test]
fn wrong_device_id_or_feature_page_is_the_targets_violation() {
    let s = Suite::load_default().unwrap();
    // An entropy device that reports DeviceID 2 (block).
    let mut t = variant(
        DeviceKind::Entropy,
        TransportVersion::Modern,
        |c| c.device_id = Some(2),
        0,
    );
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &opts(0)).unwrap();
    assert_eq!(r.reference_bugs, 0, "{:#?}", r.divergences);
    assert_eq!(r.exit_code(), 1);
    assert!(r
        .divergences
        .iter()
        .any(|d| d.source == "profile" && d.requirements.iter().any(|c| c.id == "MMIO-DEV-14")));
    assert!(
        r.divergences
            .iter()
            .any(|d| d.source == "mmio.device-id-entropy"
                && d.class == DivergenceClass::SpecViolation)
    );
    // A device that offers an undefined feature bit (bit 50) and lacks nothing else: the
    // reference mirrors the offer, both fail the same check, the fault is the target's.
    let mut t = variant(
        DeviceKind::Entropy,
        TransportVersion::Modern,
        |c| c.transport_features |= 1 << 50,
        0,
    );
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &opts(0)).unwrap();
    assert_eq!(r.reference_bugs, 0, "{:#?}", r.divergences);
    assert_eq!(r.exit_code(), 1, "{:#?}", r.divergences);
}

/// "Stopped" (no DEVICE_NEEDS_RESET) or "chain returned with len 0" versus the reference's
/// DEVICE_NEEDS_RESET on a malformed chain: both allowed, so implementation-defined. The one
/// spec violation left is the SHOULD of STATUS-DEV-02 where the stopped device took a queue it
/// can never use.
#[test]
fn stopped_versus_needs_reset_is_implementation_defined() {
    let s = Suite::load_default().unwrap();
    for policy in [
        virtio_reference_device::MalformedChainPolicy::StopQueue,
        virtio_reference_device::MalformedChainPolicy::SkipChain,
    ] {
        let mut t = variant(
            DeviceKind::Entropy,
            TransportVersion::Modern,
            move |c| c.knobs.malformed_chain = policy,
            0,
        );
        let mut o = opts(0);
        o.only = vec!["malformed.*".into(), "queue.ring-outside-ram".into()];
        let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &o).unwrap();
        assert_eq!(r.reference_bugs, 0);
        assert!(
            r.implementation_defined > 0,
            "{policy:?}: {:#?}",
            r.divergences
        );
        for d in &r.divergences {
            if d.class == DivergenceClass::SpecViolation {
                assert_eq!(d.source, "queue.ring-outside-ram", "{policy:?}: {d:#?}");
                assert!(
                    d.requirements.iter().all(|c| c.id == "STATUS-DEV-02"),
                    "{d:#?}"
                );
            }
        }
    }
}
