//! The `diff_mmio` fuzz body against Dragonball's virtio-blk, with the reference device as the
//! differential oracle (`virtio_conform::fuzz::diff_mmio_against`), from this crate's own
//! `cargo test`: the committed `diff_mmio` seeds, then `VIRTIO_CONFORM_FUZZ_INPUTS` inputs
//! (default 300) made from them by a fixed-seed byte mutator (`seeds::mutated_seeds`), so a run is reproducible and
//! bounded by a count, not by time. The coverage-guided run is `fuzz/` next to this file
//! (`cargo fuzz run -s none diff_mmio`).
//!
//! What fails the test: a `harness` finding (the adapter could not reset or identify the
//! device), a `subject-failed` finding (a Dragonball thread panicked or an access failed), or
//! a panic. Divergences from the reference are Dragonball deviations (most are the known ones
//! of `FINDINGS.md`: a reset before DRIVER_OK sets FAILED, Status writes outside the fixed
//! sequence fail, ...): they are counted per oracle and printed with the input in hex, one
//! line each, for triage.
//!
//! Needs a usable `/dev/kvm`; without it the test prints that it skipped and why, unless
//! `VIRTIO_CONFORM_REQUIRE_KVM=1`.

use std::collections::BTreeMap;
use virtio_conform::fuzz::diff_mmio_against;
use virtio_conform::fuzz::seeds::{mutated_seeds, seeds};
use virtio_conform_gate_dragonball::fuzz_policy::breaks_the_run;
use virtio_conform_gate_dragonball::{Device, DragonballTarget};

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn diff_mmio_against_dragonball_block() {
    let mut target = match DragonballTarget::new(Device::Block) {
        Ok(t) => t,
        Err(why) => {
            if std::env::var_os("VIRTIO_CONFORM_REQUIRE_KVM").is_some() {
                panic!("VIRTIO_CONFORM_REQUIRE_KVM is set but KVM is unusable: {why}");
            }
            println!("skipped: the Dragonball fuzz run needs a usable /dev/kvm: {why}");
            return;
        }
    };
    let extra: usize = std::env::var("VIRTIO_CONFORM_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base = seeds("diff_mmio");
    assert!(!base.is_empty(), "the diff_mmio seeds exist");
    let mut inputs = base.clone();
    inputs.extend(mutated_seeds("diff_mmio", extra, 1));

    let mut per_oracle: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut broken = Vec::new();
    for (name, data) in &inputs {
        if let Err(f) = diff_mmio_against(data, &mut target) {
            *per_oracle.entry(f.oracle).or_default() += 1;
            println!("finding [{}] {name}: {f} (input {})", f.oracle, hex(data));
            if breaks_the_run(&f) {
                broken.push(format!("{name}: {f}"));
            }
        }
    }
    let found: usize = per_oracle.values().sum();
    println!(
        "diff_mmio against Dragonball block: {} inputs ({} seeds), {} with a divergence from the reference {:?}",
        inputs.len(),
        base.len(),
        found,
        per_oracle
    );
    assert!(
        broken.is_empty(),
        "the adapter or the device broke:\n{}",
        broken.join("\n")
    );
}
