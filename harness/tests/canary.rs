//! The canary oracle: guest-memory corruption found on targets that do not report their
//! memory accesses (black-box targets, QEMU), without failing what the spec allows.

use virtio_conform::outcome::{Outcome, Severity};
use virtio_conform::report::{CaseResult, Report};
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::once;
use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
use virtio_conform::target::{
    Capabilities, DeviceKind, IrqEvent, ReferenceTarget, Target, TargetError, TargetInfo,
};
use virtio_reference_device::{MemoryAccess, Mutant, TransportVersion};

/// An in-process target that hides its memory log, as a black-box target would: only the
/// canary can see what its device writes.
struct BlackBox {
    inner: ReferenceTarget,
    /// Keep the log but drop the device's writes from it (a lying log).
    drop_writes_from_log: bool,
}

impl Target for BlackBox {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_log: self.drop_writes_from_log,
            ..self.inner.capabilities()
        }
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
        self.inner.fresh()
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        self.inner.take_interrupts()
    }
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        let log = self.inner.take_accesses();
        if !self.drop_writes_from_log {
            return None;
        }
        log.map(|l| {
            l.into_iter()
                .filter(|a| a.kind != virtio_reference_device::AccessKind::Write)
                .collect()
        })
    }
    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.config_change(offset, data)
    }
    fn synchronous(&self) -> bool {
        self.inner.synchronous()
    }
}

fn black_box(device: DeviceKind, version: TransportVersion, m: Option<Mutant>) -> BlackBox {
    BlackBox {
        inner: ReferenceTarget::new(device, version, m).unwrap(),
        drop_writes_from_log: false,
    }
}

fn suite() -> Suite {
    Suite::load_default().expect("the shipped suite loads")
}

fn only(globs: &[&str]) -> Options {
    Options {
        only: globs.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

fn canary_failures(r: &CaseResult) -> Vec<String> {
    r.failures
        .iter()
        .filter(|f| f.op == "canary")
        .map(|f| {
            let ids: Vec<_> = f.requirements.iter().map(|c| c.id.clone()).collect();
            format!("{:?} {ids:?} {}", f.severity, f.observed)
        })
        .collect()
}

fn all_canary_failures(report: &Report) -> Vec<String> {
    report
        .results
        .iter()
        .flat_map(|r| {
            canary_failures(r)
                .into_iter()
                .map(|f| format!("{}: {f}", r.case))
        })
        .collect()
}

/// What the spec allows never trips the canary: the reference (entropy data in writable
/// buffers, block data and status bytes, used rings, avail_event) behind a black box, in every
/// device/version, passes every case with all of guest RAM watched.
#[test]
fn reference_behind_a_black_box_passes() {
    let s = suite();
    for (device, version) in [
        (DeviceKind::Entropy, TransportVersion::Modern),
        (DeviceKind::Block, TransportVersion::Modern),
        (DeviceKind::Entropy, TransportVersion::Legacy),
        (DeviceKind::Block, TransportVersion::Legacy),
    ] {
        let t = black_box(device, version, None);
        let report = run_suite(&s, once(t), &Options::default());
        assert_eq!(all_canary_failures(&report), Vec::<String>::new());
        assert_eq!(report.exit_code(true), 0, "{}", s.summary(&report));
    }
}

/// A device that writes into device-readable buffers is caught without a memory log, graded
/// critical and cited as VQ-DEV-03.
#[test]
fn writes_into_readable_buffers_are_caught_without_a_log() {
    let s = suite();
    let t = black_box(
        DeviceKind::Entropy,
        TransportVersion::Modern,
        Some(Mutant::WritesReadableBuffers),
    );
    let report = run_suite(
        &s,
        once(t),
        &only(&["split.entropy-readable-buffer-untouched"]),
    );
    let r = &report.results[0];
    let found = canary_failures(r);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("Critical") && f.contains("VQ-DEV-03")),
        "{found:?}"
    );
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(r.severity, Severity::Critical);
}

/// A memory log that leaves out the device's writes is caught by the cross-check.
#[test]
fn a_log_that_hides_writes_is_caught() {
    let s = suite();
    let t = BlackBox {
        inner: ReferenceTarget::new(
            DeviceKind::Entropy,
            TransportVersion::Modern,
            Some(Mutant::WritesReadableBuffers),
        )
        .unwrap(),
        drop_writes_from_log: true,
    };
    let report = run_suite(
        &s,
        once(t),
        &only(&["split.entropy-readable-buffer-untouched"]),
    );
    let found = canary_failures(&report.results[0]);
    assert!(
        found
            .iter()
            .any(|f| f.contains("memory log does not show this write")),
        "{found:?}"
    );
}

/// Real QEMU completes a descriptor whose addr + len wraps past 2^64 and writes the wrapped
/// bytes at guest address 0: a critical failure naming the range and the bytes, in both
/// transport versions, with RAM shared (every byte watched) and over qtest alone (sampled).
#[test]
fn qemu_wrapping_descriptor_corrupts_address_zero() {
    let s = suite();
    for (version, shared_ram) in [
        (TransportVersion::Modern, true),
        (TransportVersion::Legacy, true),
        (TransportVersion::Modern, false),
    ] {
        let mut opts = QemuOptions::new(DeviceKind::Entropy, version);
        opts.shared_ram = shared_ram;
        if let Err(e) = qemu_version(&opts.qemu) {
            println!("skipped: QEMU unavailable: {e}");
            return;
        }
        let t = QemuTarget::new(opts).expect("QEMU starts");
        assert_eq!(t.bulk_cheap(), shared_ram);
        let report = run_suite(&s, once(t), &only(&["malformed.addr-len-overflow"]));
        let r = &report.results[0];
        let found = canary_failures(r);
        // Through the run's worker and guards, QEMU's shared RAM is still swept whole.
        let watched = if shared_ram { "all of" } else { "sampled" };
        assert!(
            r.failures
                .iter()
                .any(|f| f.op == "canary" && f.expected.contains(watched)),
            "{version:?}: {:?}",
            r.failures
        );
        assert!(
            found.iter().any(|f| f.starts_with("Critical")
                && f.contains("SPLIT-DEV-MALFORMED-CHAIN")
                // QEMU writes random bytes there: one may equal the canary's byte at that
                // spot, so the count and the end of the range are not pinned.
                && f.contains("guest memory corruption: ")
                && f.contains(" bytes at 0x0..0x")),
            "{version:?}: {found:?}"
        );
        assert_eq!(r.severity, Severity::Critical, "{version:?}");
    }
}
