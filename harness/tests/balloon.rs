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
mod common;
use common::Hooked;
use virtio_reference_device::{
    BalloonBackend, ChainReader, DeviceBackend, DeviceConfig, MmioDevice, TransportVersion,
};

/// The reference balloon that zeroes pages of each inflate request before using it; with
/// `off_by_one`, the page after each named one instead (forbidden).
fn discarding(off_by_one: bool) -> Hooked {
    Hooked::new(
        BalloonBackend::default(),
        Box::new(move |inner, queue, chain, ram| {
            if queue == 0 {
                let mut buf = vec![0u8; ChainReader::available(chain) as usize];
                let n = ChainReader::new(chain).read(ram, &mut buf).unwrap_or(0);
                for e in buf[..n].chunks_exact(4) {
                    let pfn = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]));
                    let page = pfn + u64::from(off_by_one);
                    let _ = ram.write(page * 4096, &[0u8; 4096]);
                }
            }
            inner.process(queue, chain, ram)
        }),
    )
}

fn run_variant(version: TransportVersion, off_by_one: bool) -> Report {
    let suite = Suite::load_default().unwrap();
    let factory = move || {
        let f: DeviceFactory = Box::new(move |ram| {
            let b = discarding(off_by_one);
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
