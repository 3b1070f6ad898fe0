#![no_main]
// Body and oracles: virtio_conform::fuzz::vsock_packets (harness/src/fuzz/vsock_packets.rs). A
// finding panics here so libFuzzer records the input as a crash artifact; `found` first writes
// the crash record (target, mutant, finding) beside it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = virtio_conform::fuzz::vsock_packets::vsock_packets(data) {
        virtio_conform::fuzz::crash::found("vsock_packets", data, finding);
    }
});
