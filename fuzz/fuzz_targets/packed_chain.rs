#![no_main]
// Body and oracles: virtio_conform::fuzz::packed_chain (harness/src/fuzz/). A finding panics
// here so libFuzzer records the input as a crash artifact; `found` first writes the crash
// record (target, mutant, finding) beside it, which `virtio-conform replay <artifact>` reads.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = virtio_conform::fuzz::packed_chain::packed_chain(data) {
        virtio_conform::fuzz::crash::found("packed_chain", data, finding);
    }
});
