//! The `diff_mmio` fuzz body against Dragonball's virtio-blk (behind `MmioV2Device`, on a KVM
//! VM), with the reference device as the differential oracle: the template of
//! `fuzz/README.md` filled in for this gate. Needs a usable `/dev/kvm`.
//!
//! `cd gates/dragonball/fuzz && cargo fuzz run -s none diff_mmio ../../../corpora/diff_mmio`
//!
//! A crash, a hang (libFuzzer's `-timeout`), a failed register access or a broken adapter ends
//! the run with an artifact. A divergence from the reference does not (most are the known
//! deviations of `../FINDINGS.md`, which would stop every run within a second): each kind is
//! printed once with its input in hex. `VIRTIO_CONFORM_FUZZ_STOP_ON=divergence` stops at the
//! first divergence too (to keep a reproducer). See `src/fuzz_policy.rs`.
#![no_main]

use std::cell::RefCell;
use virtio_conform_gate_dragonball::fuzz_policy::{stops, DivergenceLog, STOP_ON_ENV};
use virtio_conform_gate_dragonball::{Device, DragonballTarget};

thread_local! {
    // One adapter for the run; diff_mmio_against calls fresh() (a new VM and device) per input.
    static DEV: RefCell<DragonballTarget> = RefCell::new(
        DragonballTarget::new(Device::Block).unwrap_or_else(|e| panic!("Dragonball needs /dev/kvm: {e}")),
    );
    static SEEN: RefCell<DivergenceLog> = RefCell::new(DivergenceLog::default());
    static STOP_ON: Option<String> = std::env::var(STOP_ON_ENV).ok();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    DEV.with(|d| {
        if let Err(f) = virtio_conform::fuzz::diff_mmio_against(data, &mut *d.borrow_mut()) {
            if STOP_ON.with(|s| stops(&f, s.as_deref())) {
                panic!("{f}");
            }
            if SEEN.with(|s| s.borrow_mut().note(&f)) {
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!(
                    "divergence (noted, run goes on) [{}]: {f} (input {hex})",
                    f.oracle
                );
            }
        }
    });
});
