//! The host side of QEMU's `virtio-balloon-device` (VIRTIO §5.5): QEMU command-line arguments
//! and the QMP commands that play the balloon's host.

/// Properties of the balloon device: statistics queue offered (QEMU offers
/// VIRTIO_BALLOON_F_STATS_VQ always), DEFLATE_ON_OOM offered so the feature is exercised.
pub fn qemu_args() -> Vec<String> {
    vec![
        "-device".into(),
        "virtio-balloon-device,id=balloon0,deflate-on-oom=on".into(),
    ]
}
