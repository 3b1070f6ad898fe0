//! The `diff_mmio` fuzz body against Dragonball's virtio-blk, with the reference device as the
//! differential oracle (`virtio_conform::fuzz::diff_mmio_against`), from this crate's own
//! `cargo test`: the committed `diff_mmio` seeds, then `VIRTIO_CONFORM_FUZZ_INPUTS` inputs
//! (default 300) made from them by a fixed-seed byte mutator, so a run is reproducible and
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
use virtio_conform::fuzz::{diff_mmio_against, seeds::seeds};
use virtio_conform_gate_dragonball::{Device, DragonballTarget};

/// xorshift64*: a fixed-seed byte source for the mutator (no dependency for twenty lines).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One input from `base`: a few byte flips, overwrites, inserts or deletes.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            _ if v.len() > 1 => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

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
    let mut inputs: Vec<(String, Vec<u8>)> = base.clone();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..extra {
        let (name, data) = &base[rng.below(base.len())];
        inputs.push((format!("mutated #{i} of {name}"), mutate(&mut rng, data)));
    }

    let mut per_oracle: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut broken = Vec::new();
    for (name, data) in &inputs {
        if let Err(f) = diff_mmio_against(data, &mut target) {
            *per_oracle.entry(f.oracle).or_default() += 1;
            println!("finding [{}] {name}: {f} (input {})", f.oracle, hex(data));
            if matches!(f.oracle, "harness" | "subject-failed") {
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
