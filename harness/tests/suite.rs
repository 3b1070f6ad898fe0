//! The suite against the reference (no unexpected result) and against every mutant (each
//! caught by at least one case): the proof that every check can fail.

use virtio_conform::outcome::Outcome;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::{Mutant, TransportVersion};

const COMBOS: [(DeviceKind, TransportVersion); 11] = [
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

fn suite() -> Suite {
    Suite::load_default().expect("the shipped suite loads")
}

#[test]
fn shipped_suite_is_large_enough() {
    let s = suite();
    assert!(s.cases.len() >= 60, "{} cases", s.cases.len());
    assert!(s.catalog.device_side().count() >= 100);
}

#[test]
fn reference_passes_every_case() {
    let s = suite();
    for (device, version) in COMBOS {
        let report = run_suite(
            &s,
            || ReferenceTarget::new(device, version, None),
            &Options::default(),
        );
        let bad: Vec<_> = report
            .results
            .iter()
            .filter(|r| {
                !matches!(
                    r.outcome,
                    Outcome::Pass | Outcome::Unsupported | Outcome::Informational
                )
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{device:?} {version:?}: {}",
            s.summary(&report)
        );
        assert!(
            report.summary["pass"] > 10,
            "{device:?} {version:?} ran too few cases"
        );
        assert_eq!(report.exit_code(true), 0);
    }
}

#[test]
fn every_mutant_is_caught_by_some_case() {
    let s = suite();
    let mut missed = Vec::new();
    for &m in Mutant::ALL {
        let caught = COMBOS.iter().any(|&(device, version)| {
            let report = run_suite(
                &s,
                || ReferenceTarget::new(device, version, Some(m)),
                &Options::default(),
            );
            report.results.iter().any(|r| r.outcome.is_failure())
        });
        if !caught {
            missed.push(m.name());
        }
    }
    assert!(missed.is_empty(), "mutants no case catches: {missed:?}");
}
