//! The `diff_mmio` fuzz body against Dragonball's virtio-blk (behind `MmioV2Device`, on a KVM
//! VM), with the reference device as the differential oracle: the template of
//! `fuzz/README.md` filled in for this gate. Needs a usable `/dev/kvm`.
//!
//! `cd gates/dragonball/fuzz && cargo fuzz run -s none diff_mmio ../../../corpora/diff_mmio`
#![no_main]

use std::cell::RefCell;
use virtio_conform_gate_dragonball::{Device, DragonballTarget};

thread_local! {
    // One adapter for the run; diff_mmio_against calls fresh() (a new VM and device) per input.
    static DEV: RefCell<DragonballTarget> = RefCell::new(
        DragonballTarget::new(Device::Block).unwrap_or_else(|e| panic!("Dragonball needs /dev/kvm: {e}")),
    );
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    DEV.with(|d| {
        if let Err(f) = virtio_conform::fuzz::diff_mmio_against(data, &mut *d.borrow_mut()) {
            panic!("{f}");
        }
    });
});
