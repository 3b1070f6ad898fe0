//! One QEMU reused across cases (`QemuOptions::reuse`, `run --reuse-qemu`) keeps cases
//! independent: the same cases run in suite order and in reverse order on one reused QEMU
//! give exactly the results of a fresh QEMU per case.

mod common;
use common::qemu_or_skip;
use virtio_conform::outcome::Outcome;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
use virtio_conform::target::DeviceKind;
use virtio_reference_device::TransportVersion;

/// Case outcome and the requirement ids of its failed checks, by case id.
type Results = std::collections::BTreeMap<String, (Outcome, std::collections::BTreeSet<String>)>;

fn run(
    suite: &Suite,
    device: DeviceKind,
    version: TransportVersion,
    reuse: bool,
    only: &[&str],
) -> Results {
    let opts = QemuOptions {
        reuse,
        ..QemuOptions::new(device, version)
    };
    let make = move || QemuTarget::new(opts.clone());
    let report = run_suite(
        suite,
        make,
        &Options {
            only: only.iter().map(|s| s.to_string()).collect(),
            jobs: 1,
            ..Options::default()
        },
    );
    assert!(report.results.len() >= only.len());
    report
        .results
        .into_iter()
        .map(|r| {
            let checks = r
                .failures
                .iter()
                .flat_map(|f| f.requirements.iter().map(|c| c.id.clone()))
                .collect();
            (r.case, (r.outcome, checks))
        })
        .collect()
}

#[test]
fn a_reused_qemu_gives_the_results_of_fresh_ones_in_either_order() {
    if !qemu_or_skip() {
        return;
    }
    let suite = Suite::load_default().unwrap();
    let mut reversed = suite.clone();
    reversed.cases.reverse();
    // Cases that leave state behind (features negotiated, FAILED, queues ready, a selected
    // queue, written sectors) next to cases that check power-on state.
    for (device, version, only) in [
        (
            DeviceKind::Entropy,
            TransportVersion::Modern,
            &[
                "init.spec-order",
                "status.*",
                "reset.clears-*",
                "features.page-*",
                "queue.ready-*",
                "queue.sel-*",
            ][..],
        ),
        (
            DeviceKind::Block,
            TransportVersion::Modern,
            &[
                "blk.write-read-roundtrip",
                "blk.get-id",
                "status.initial-zero",
            ][..],
        ),
    ] {
        let fresh = run(&suite, device, version, false, only);
        let reused = run(&suite, device, version, true, only);
        let reused_reversed = run(&reversed, device, version, true, only);
        assert_eq!(reused, fresh, "{device:?}: reused QEMU in suite order");
        assert_eq!(
            reused_reversed, fresh,
            "{device:?}: reused QEMU in reverse order"
        );
    }
}
