#![no_main]
// Body and oracles: virtio_conform::fuzz::device_chains (harness/src/fuzz/device_chains.rs). A finding panics here so
// libFuzzer records the input as a crash artifact; `found` first writes the crash record
// (target, mutant, finding) beside it, which `virtio-conform replay <artifact>` reads.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = virtio_conform::fuzz::device_chains::device_chains(data) {
        virtio_conform::fuzz::crash::found("device_chains", data, finding);
    }
});
