//! Packed virtqueues (§2.8) through the harness: the whole suite with `--ring packed` on the
//! reference, and the permitted alternatives the packed checks must not fail.

use virtio_conform::outcome::Outcome;
use virtio_conform::runner::packed::with_packed_ring;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::{
    DeviceConfig, EntropyBackend, MalformedChainPolicy, MmioDevice, Mutant, TransportVersion,
};

fn packed_suite() -> Suite {
    let mut s = Suite::load_default().expect("the shipped suite loads");
    s.cases = s
        .cases
        .iter()
        .filter_map(|c| {
            if c.id.starts_with("packed.") {
                Some(c.clone())
            } else {
                with_packed_ring(c)
            }
        })
        .collect();
    s
}

fn only(s: &Suite, prefix: &str) -> Suite {
    Suite {
        catalog: s.catalog.clone(),
        cases: s
            .cases
            .iter()
            .filter(|c| c.id.starts_with(prefix))
            .cloned()
            .collect(),
    }
}

fn bad(report: &virtio_conform::report::Report) -> Vec<String> {
    report
        .results
        .iter()
        .filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Pass | Outcome::Unsupported | Outcome::Informational
            )
        })
        .map(|r| format!("{} {:?}", r.case, r.outcome))
        .collect()
}

#[test]
fn reference_passes_the_suite_on_a_packed_ring() {
    let s = packed_suite();
    assert!(s.cases.len() > 60, "{} packed cases", s.cases.len());
    for device in [
        DeviceKind::Entropy,
        DeviceKind::Block,
        DeviceKind::Console,
        DeviceKind::Net,
    ] {
        let report = run_suite(
            &s,
            || ReferenceTarget::new(device, TransportVersion::Modern, None),
            &Options::default(),
        );
        assert!(bad(&report).is_empty(), "{device:?}: {:?}", bad(&report));
        assert!(report.summary["pass"] > 35, "{device:?}: too few ran");
    }
    // The net receive cases (buffers at explicit addresses outside every ring they set up)
    // run packed too, mergeable receive buffers included.
    for id in [
        "net.rx-mergeable@packed",
        "net.rx-single-buffer@packed",
        "net.mtu@packed",
    ] {
        assert!(s.cases.iter().any(|c| c.id == id), "{id} left out");
    }
}

/// A reference configured otherwise where the spec allows it.
fn variant(name: &str, edit: fn(&mut DeviceConfig)) -> ReferenceTarget {
    let factory = Box::new(move |ram| {
        let mut cfg = DeviceConfig::new(TransportVersion::Modern);
        edit(&mut cfg);
        MmioDevice::new(cfg, Box::new(EntropyBackend::new(3)), ram)
    });
    ReferenceTarget::with_factory(
        name.into(),
        DeviceKind::Entropy,
        TransportVersion::Modern,
        factory,
    )
    .expect("reference variant")
}

#[test]
fn one_used_descriptor_per_buffer_in_order_is_allowed() {
    // §2.8.8: batching is a permission; a device that writes every used descriptor passes.
    let s = only(&packed_suite(), "packed.in-order");
    assert!(!s.cases.is_empty());
    let report = run_suite(
        &s,
        || Ok(variant("no-batching", |c| c.knobs.batch_in_order = false)),
        &Options::default(),
    );
    assert!(bad(&report).is_empty(), "{:?}", bad(&report));
    assert_eq!(report.summary["pass"], s.cases.len());
}

#[test]
fn every_graceful_handling_of_malformed_lists_is_allowed() {
    let s = only(&packed_suite(), "packed.malformed-");
    assert!(s.cases.len() >= 5);
    for (name, policy) in [
        ("skip", MalformedChainPolicy::SkipChain),
        ("stop", MalformedChainPolicy::StopQueue),
        ("needs-reset", MalformedChainPolicy::NeedsReset),
    ] {
        let edit: fn(&mut DeviceConfig) = match policy {
            MalformedChainPolicy::SkipChain => {
                |c| c.knobs.malformed_chain = MalformedChainPolicy::SkipChain
            }
            MalformedChainPolicy::StopQueue => {
                |c| c.knobs.malformed_chain = MalformedChainPolicy::StopQueue
            }
            MalformedChainPolicy::NeedsReset => {
                |c| c.knobs.malformed_chain = MalformedChainPolicy::NeedsReset
            }
        };
        let report = run_suite(&s, || Ok(variant(name, edit)), &Options::default());
        assert!(bad(&report).is_empty(), "{name}: {:?}", bad(&report));
    }
}

#[test]
fn ignoring_event_suppression_is_a_should_not_a_must() {
    // PACKED-DEV-05 is graded like its split-ring counterpart: non_strict, never fail.
    let s = only(&packed_suite(), "packed.event-");
    let report = run_suite(
        &s,
        || {
            ReferenceTarget::new(
                DeviceKind::Entropy,
                TransportVersion::Modern,
                Some(Mutant::PackedIgnoresEventSuppression),
            )
        },
        &Options::default(),
    );
    let outcomes: Vec<_> = report.results.iter().map(|r| r.outcome).collect();
    assert!(outcomes.contains(&Outcome::NonStrict), "{outcomes:?}");
    assert!(!outcomes.contains(&Outcome::Fail), "{outcomes:?}");
}

#[test]
fn a_device_writing_its_own_event_suppression_structure_passes() {
    // §2.8.10: the device may write the Device Event Suppression structure (QueueDevice);
    // only the driver's (QueueDriver) is off limits (PACKED-DEV-04).
    let s = only(&packed_suite(), "packed.");
    let report = run_suite(
        &s,
        || {
            Ok(variant("device-event", |c| {
                c.knobs.publish_device_event = true
            }))
        },
        &Options::default(),
    );
    assert!(bad(&report).is_empty(), "{:?}", bad(&report));
    assert!(report
        .results
        .iter()
        .any(|r| r.case == "packed.driver-event-not-written" && r.outcome == Outcome::Pass));
}

#[test]
fn each_packed_mutant_is_caught_by_a_packed_case() {
    let s = only(&packed_suite(), "packed.");
    for (m, device) in [
        (Mutant::PackedWrapNotFlipped, DeviceKind::Entropy),
        (Mutant::PackedNoListCap, DeviceKind::Entropy),
        (Mutant::PackedUsedWrapBitConstant, DeviceKind::Entropy),
        (Mutant::PackedUsedFlagsBeforeId, DeviceKind::Entropy),
        (Mutant::PackedIgnoresEventSuppression, DeviceKind::Entropy),
        (Mutant::PackedInOrderFirstId, DeviceKind::Entropy),
        (Mutant::PackedWriteFlagOfNext, DeviceKind::Block),
        (Mutant::PackedDeviceEventInDriverArea, DeviceKind::Entropy),
        (Mutant::PackedUsedSkipsTableEntries, DeviceKind::Entropy),
    ] {
        let report = run_suite(
            &s,
            || ReferenceTarget::new(device, TransportVersion::Modern, Some(m)),
            &Options::default(),
        );
        assert!(
            report.results.iter().any(|r| r.outcome.is_failure()),
            "{} not caught",
            m.name()
        );
    }
}
