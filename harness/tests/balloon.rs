//! Balloon checks (VIRTIO §5.5) against behaviour the spec permits and forbids: a device that
//! discards the pages of an inflate request (zeroes them before using the request, as QEMU
//! does; §5.5.6.2 allows it) passes every balloon case, while one that zeroes a page the driver
//! never put in the balloon fails the memory oracle. Each balloon mutant failing is shown by
//! `suite.rs`.

use virtio_conform::outcome::{Outcome, Severity};
use virtio_conform::report::Report;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::reference::DeviceFactory;
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::{
    BalloonBackend, ChainReader, Completion, Descriptor, DeviceBackend, DeviceConfig, GuestRam,
    MmioDevice, Mutant, TransportVersion,
};

/// The reference balloon that zeroes pages of each inflate request before using it; with
/// `off_by_one`, the page after each named one instead (forbidden).
struct Discarding {
    inner: BalloonBackend,
    off_by_one: bool,
}

impl DeviceBackend for Discarding {
    fn device_id(&self) -> u32 {
        self.inner.device_id()
    }
    fn features(&self) -> u64 {
        self.inner.features()
    }
    fn num_queues(&self) -> u16 {
        self.inner.num_queues()
    }
    fn config(&self) -> &[u8] {
        self.inner.config()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn set_mutant(&mut self, m: Mutant) {
        self.inner.set_mutant(m)
    }
    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        if queue == 0 {
            let mut buf = vec![0u8; ChainReader::available(chain) as usize];
            let n = ChainReader::new(chain).read(ram, &mut buf).unwrap_or(0);
            for e in buf[..n].chunks_exact(4) {
                let pfn = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]));
                let page = pfn + u64::from(self.off_by_one);
                let _ = ram.write(page * 4096, &[0u8; 4096]);
            }
        }
        self.inner.process(queue, chain, ram)
    }
    fn release_held(&mut self, queue: u16) -> bool {
        self.inner.release_held(queue)
    }
    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
        self.inner.host_send(port, data)
    }
    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        self.inner.host_take(port)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn take_driver_write(&mut self) -> Option<(usize, Vec<u8>)> {
        self.inner.take_driver_write()
    }
    fn host_config_changed(&mut self, offset: usize, data: &[u8]) {
        self.inner.host_config_changed(offset, data)
    }
    fn negotiated(&mut self, features: u64) {
        self.inner.negotiated(features)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

fn run_variant(version: TransportVersion, off_by_one: bool) -> Report {
    let suite = Suite::load_default().unwrap();
    let factory = move || {
        let f: DeviceFactory = Box::new(move |ram| {
            let b = Discarding {
                inner: BalloonBackend::default(),
                off_by_one,
            };
            let mut cfg = DeviceConfig::new(version);
            cfg.queue_num_max = vec![256; usize::from(b.num_queues())];
            MmioDevice::new(cfg, Box::new(b), ram)
        });
        ReferenceTarget::with_factory("variant".into(), DeviceKind::Balloon, version, f)
    };
    run_suite(
        &suite,
        factory,
        &Options {
            only: vec!["balloon.*".into()],
            ..Options::default()
        },
    )
}

#[test]
fn discarding_inflated_pages_passes() {
    for v in [TransportVersion::Modern, TransportVersion::Legacy] {
        let r = run_variant(v, false);
        let bad: Vec<_> = r
            .results
            .iter()
            .filter(|c| c.outcome.is_failure() || c.outcome == Outcome::Error)
            .map(|c| format!("{}: {:?} {:?}", c.case, c.outcome, c.failures))
            .collect();
        assert!(bad.is_empty(), "{v:?}: {bad:#?}");
        assert!(
            r.results
                .iter()
                .filter(|c| c.outcome == Outcome::Pass)
                .count()
                >= 5,
            "{v:?}: too few balloon cases ran"
        );
    }
}

#[test]
fn zeroing_a_page_outside_the_balloon_is_critical() {
    let r = run_variant(TransportVersion::Modern, true);
    let hit = r
        .results
        .iter()
        .filter(|c| c.case == "balloon.inflate-framings")
        .flat_map(|c| c.failures.iter())
        .any(|f| f.severity == Severity::Critical);
    assert!(hit, "no critical memory failure: {:#?}", r.results);
}
