//! The differential runner: the reference against itself finds nothing, a mutant's
//! divergences are classified as spec violations with the right requirement, and shrinking
//! yields short replayable streams.

use virtio_conform::case::Op;
use virtio_conform::diff::{run_diff, DiffOptions, DivergenceClass};
use virtio_conform::suite::Suite;
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::{Mutant, TransportVersion};

fn opts(random: usize) -> DiffOptions {
    DiffOptions {
        only: Vec::new(),
        random,
        seed: 7,
        shrink: true,
    }
}

#[test]
fn reference_against_itself_has_no_divergence() {
    let s = Suite::load_default().unwrap();
    for (device, version) in [
        (DeviceKind::Entropy, TransportVersion::Modern),
        (DeviceKind::Block, TransportVersion::Legacy),
    ] {
        let mut t = ReferenceTarget::new(device, version, None).unwrap();
        let r = run_diff(&s.cases, &s.catalog, &mut t, device, &opts(40)).unwrap();
        assert!(r.streams > 40);
        assert!(r.divergences.is_empty(), "{:#?}", r.divergences.first());
    }
}

#[test]
fn mutant_divergences_are_spec_violations_with_minimal_streams() {
    let s = Suite::load_default().unwrap();
    let mut t = ReferenceTarget::new(
        DeviceKind::Entropy,
        TransportVersion::Modern,
        Some(Mutant::FeaturesOkNeverRefused),
    )
    .unwrap();
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &opts(0)).unwrap();
    assert_eq!(r.reference_bugs, 0);
    assert!(r.spec_violations >= 1);
    let d = r
        .divergences
        .iter()
        .find(|d| d.source == "features.unoffered-bit-50-refused")
        .expect("the unoffered-feature case diverges");
    assert_eq!(d.class, DivergenceClass::SpecViolation);
    assert!(
        d.requirements
            .iter()
            .any(|c| c.id == "FEAT-DEV-02b" && c.section == "2.2.2"),
        "{d:#?}"
    );
    // The minimal stream is a few lines of the case format, each a valid step.
    assert!(
        !d.minimal.is_empty() && d.minimal.len() <= 3,
        "{:#?}",
        d.minimal
    );
    for line in &d.minimal {
        serde_json::from_str::<Op>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[test]
fn random_streams_find_a_mutant_and_shrink_it() {
    let s = Suite::load_default().unwrap();
    let mut t = ReferenceTarget::new(
        DeviceKind::Entropy,
        TransportVersion::Modern,
        Some(Mutant::QueueSelUnbounded),
    )
    .unwrap();
    let mut o = opts(60);
    o.only = vec!["no-case-matches-this".into()];
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &o).unwrap();
    let d = r
        .divergences
        .first()
        .expect("a random stream reaches QueueSel beyond the last queue");
    assert!(d.source.starts_with("random.7."));
    assert!(d.minimal.len() <= 4, "{:#?}", d.minimal);
    for line in &d.minimal {
        serde_json::from_str::<Op>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[test]
fn virtio_queue_behind_the_reference_transport() {
    // rust-vmm's virtio-queue walks a looped chain up to the queue size and hands it over
    // instead of rejecting it. No statement prescribes what a device does with this driver
    // error, so the differential run calls it implementation-defined, with the section.
    let s = Suite::load_default().unwrap();
    let mut t = virtio_conform::target::virtio_queue::VirtioQueueTarget::new().unwrap();
    let mut o = opts(0);
    o.only = vec!["malformed.loop".into(), "init.*".into()];
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Entropy, &o).unwrap();
    assert_eq!(r.reference_bugs, 0);
    let d = r
        .divergences
        .iter()
        .find(|d| d.source == "malformed.loop")
        .expect("loop diverges");
    assert_eq!(d.class, DivergenceClass::ImplementationDefined, "{d:#?}");
    assert!(d.explanation.contains("§2.1.2"), "{d:#?}");
    assert_eq!(r.spec_violations, 0, "{:#?}", r.divergences);
    assert!(
        r.divergences.iter().all(|d| !d.source.starts_with("init.")),
        "{:#?}",
        r.divergences
    );
}
