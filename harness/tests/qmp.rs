//! Host-side configuration changes on QEMU through QMP (`block_resize`), so the `config.*`
//! cases and their ConfigGeneration / configuration-change interrupt checks run on QEMU.

use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
use virtio_conform::target::{once, DeviceKind, Target, TargetError};
use virtio_reference_device::regs::*;
use virtio_reference_device::TransportVersion;

fn start(device: DeviceKind) -> Option<QemuTarget> {
    let opts = QemuOptions::new(device, TransportVersion::Modern);
    if let Err(e) = qemu_version(&opts.qemu) {
        println!("skipped: QEMU unavailable: {e}");
        return None;
    }
    Some(QemuTarget::new(opts).expect("QEMU starts"))
}

#[test]
fn block_resize_changes_capacity_generation_and_interrupt() {
    let Some(mut t) = start(DeviceKind::Block) else {
        return;
    };
    assert!(t.capabilities().config_change);
    // Driver up to DRIVER_OK (no queue needed for a configuration change).
    for st in [0u32, 1, 3] {
        t.write32(STATUS, st).unwrap();
    }
    t.write32(DRIVER_FEATURES_SEL, 1).unwrap();
    t.write32(DRIVER_FEATURES, 1).unwrap(); // VERSION_1
    t.write32(STATUS, 11).unwrap();
    t.write32(STATUS, 15).unwrap();
    let g0 = t.read32(CONFIG_GENERATION).unwrap();
    assert_eq!(t.read32(CONFIG).unwrap(), 2048, "the harness's 1 MiB image");
    t.config_change(0, &4096u64.to_le_bytes()).unwrap();
    assert_eq!(t.read32(CONFIG).unwrap(), 4096);
    assert_eq!(t.read32(CONFIG + 4).unwrap(), 0);
    assert_ne!(t.read32(CONFIG_GENERATION).unwrap(), g0);
    assert_ne!(t.read32(INTERRUPT_STATUS).unwrap() & INT_CONFIG_CHANGE, 0);
    // Only the capacity can be changed; the rest is reported as unsupported.
    assert!(matches!(
        t.config_change(8, &[0; 4]),
        Err(TargetError::Unsupported(_))
    ));
}

#[test]
fn entropy_has_no_host_config_change() {
    let Some(mut t) = start(DeviceKind::Entropy) else {
        return;
    };
    assert!(!t.capabilities().config_change);
    assert!(matches!(
        t.config_change(0, &[0; 8]),
        Err(TargetError::Unsupported(_))
    ));
}

/// The configuration-change cases run (not `unsupported`) and pass on QEMU's block device.
#[test]
fn config_cases_run_on_qemu_block() {
    let Some(t) = start(DeviceKind::Block) else {
        return;
    };
    let s = Suite::load_default().unwrap();
    let opts = Options {
        only: vec![
            "config.generation-changes".into(),
            "config.block-capacity-change".into(),
        ],
        ..Options::default()
    };
    let report = run_suite(&s, once(t), &opts);
    assert_eq!(report.results.len(), 2);
    assert_eq!(report.summary["pass"], 2, "{}", s.summary(&report));
}
