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

/// The discovered profile of a reference device.
fn profile(device: DeviceKind, version: TransportVersion) -> virtio_conform::diff::Profile {
    let mut t = ReferenceTarget::new(device, version, None).unwrap();
    virtio_conform::diff::discover(&mut t).unwrap()
}

#[test]
fn random_streams_speak_the_whole_step_vocabulary() {
    use std::collections::BTreeSet;
    use virtio_conform::diff::{random_case, stream_classes};
    let mut ops = BTreeSet::new();
    let (mut wide_notify, mut ram_end, mut wraps, mut page_2, mut split, mut unknown_blk) =
        (false, false, false, false, false, false);
    let (mut segments, mut dwz_negotiated) = (false, false);
    let mut classes = BTreeSet::new();
    for (device, version) in [
        (DeviceKind::Entropy, TransportVersion::Modern),
        (DeviceKind::Block, TransportVersion::Modern),
        (DeviceKind::Block, TransportVersion::Legacy),
    ] {
        let p = profile(device, version);
        let applicable = stream_classes(&p);
        for i in 0..120 {
            let c = random_case(&p, 11, i);
            classes.insert(c.title.clone());
            for s in &c.steps {
                let v = serde_json::to_value(&s.op).unwrap();
                ops.insert(v["op"].as_str().unwrap().to_string());
                match &s.op {
                    Op::Kick { value: Some(v), .. } if v.0 > 0xffff => wide_notify = true,
                    Op::Post { chain, .. } => {
                        ram_end |= chain.iter().any(|b| b.from_ram_end.is_some());
                        wraps |= chain
                            .iter()
                            .any(|b| b.addr.is_some_and(|a| a.0.checked_add(b.len.0).is_none()));
                    }
                    Op::Write { at, value } if at.reg.as_deref() == Some("DriverFeaturesSel") => {
                        page_2 |= value.0 >= 2
                    }
                    Op::Blk {
                        split: sp,
                        kind,
                        data,
                        ..
                    } => {
                        split |= sp.is_some();
                        unknown_blk |= ![0, 1, 4, 8, 11, 13].contains(&kind.0);
                        segments |= [11, 13].contains(&kind.0)
                            && data.as_ref().is_some_and(|d| d.0.len() % 16 == 0);
                    }
                    Op::Init {
                        features: Some(f), ..
                    } => {
                        dwz_negotiated |= f
                            .iter()
                            .any(|f| matches!(f, virtio_conform::case::Feature::Bit(13 | 14)))
                            && device == DeviceKind::Block
                    }
                    _ => {}
                }
            }
        }
        // Block offers no EVENT_IDX-free profile difference here; every class that applies
        // gets streams.
        assert!(applicable.contains(&"resets") && applicable.contains(&"edges"));
        assert_eq!(
            applicable.contains(&"block"),
            device == DeviceKind::Block,
            "{applicable:?}"
        );
        assert_eq!(
            applicable.contains(&"legacy"),
            version == TransportVersion::Legacy
        );
    }
    for op in [
        "init",
        "reset",
        "read",
        "write",
        "post",
        "kick",
        "observe",
        "blk",
        "queue",
        "config_change",
        "set_used_event",
        "set_avail_flags",
        "ack",
    ] {
        assert!(ops.contains(op), "no `{op}` step in {ops:?}");
    }
    assert!(wide_notify, "a QueueNotify value above 16 bits");
    assert!(
        ram_end && wraps,
        "buffers at the end of RAM and wrapping past 2^64"
    );
    assert!(page_2, "DriverFeatures written on a page >= 2");
    assert!(
        split && unknown_blk,
        "block headers split and unknown types"
    );
    assert!(
        segments && dwz_negotiated,
        "DISCARD / WRITE_ZEROES negotiated and sent with segments"
    );
    assert!(classes.len() >= 10, "{classes:?}");
}

#[test]
fn diff_counts_random_streams_per_class() {
    let s = Suite::load_default().unwrap();
    let mut t = ReferenceTarget::new(DeviceKind::Block, TransportVersion::Modern, None).unwrap();
    let mut o = opts(36);
    o.only = vec!["no-case-matches-this".into()];
    let r = run_diff(&s.cases, &s.catalog, &mut t, DeviceKind::Block, &o).unwrap();
    assert!(r.divergences.is_empty(), "{:#?}", r.divergences.first());
    assert_eq!(
        r.random_streams.iter().map(|c| c.streams).sum::<usize>(),
        36
    );
    let names: Vec<&str> = r.random_streams.iter().map(|c| c.class.as_str()).collect();
    assert!(
        names.contains(&"block") && names.contains(&"edges"),
        "{names:?}"
    );
    // A block mutant that answers an unknown request type with OK is found by the block
    // streams (the observed status byte differs), and counted under that class.
    let mut m = ReferenceTarget::new(
        DeviceKind::Block,
        TransportVersion::Modern,
        Some(Mutant::BlockUnknownTypeOk),
    )
    .unwrap();
    let mut o = opts(120);
    o.only = vec!["no-case-matches-this".into()];
    o.shrink = false;
    let r = run_diff(&s.cases, &s.catalog, &mut m, DeviceKind::Block, &o).unwrap();
    let block = r
        .random_streams
        .iter()
        .find(|c| c.class == "block")
        .unwrap();
    let diverged = block.spec_violations + block.implementation_defined;
    assert!(diverged >= 1, "{:#?}", r.random_streams);
    let total: usize = r
        .random_streams
        .iter()
        .map(|c| c.spec_violations + c.implementation_defined + c.reference_bugs)
        .sum();
    assert_eq!(total, r.divergences.len());
}
