//! The QEMU console target (virtio-serial-device with a virtconsole on a chardev socket):
//! its host side and the console cases. Runs only where `qemu-system-x86_64` works; elsewhere
//! each test prints `skipped: QEMU unavailable: <reason>` and passes
//! (`VIRTIO_CONFORM_REQUIRE_QEMU=1` turns that into a failure).

use std::time::{Duration, Instant};
use virtio_conform::outcome::Outcome;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
use virtio_conform::target::{DeviceKind, Target, TargetError};
use virtio_reference_device::regs::{CONFIG, DEVICE_ID};
use virtio_reference_device::TransportVersion;

fn options(version: TransportVersion) -> Option<QemuOptions> {
    let opts = QemuOptions::new(DeviceKind::Console, version);
    match qemu_version(&opts.qemu) {
        Ok(_) => Some(opts),
        Err(e) => {
            if std::env::var_os("VIRTIO_CONFORM_REQUIRE_QEMU").is_some_and(|v| v == "1") {
                panic!("QEMU required but unavailable: {e}");
            }
            println!("skipped: QEMU unavailable: {e}");
            None
        }
    }
}

#[test]
fn emergency_write_reaches_the_chardev_socket() {
    let Some(opts) = options(TransportVersion::Modern) else {
        return;
    };
    let mut t = QemuTarget::new(opts).expect("QEMU console starts");
    assert_eq!(t.read32(DEVICE_ID).unwrap(), 3);
    // emerg_wr (le32 at configuration offset 8), on a device nobody configured.
    t.write32(CONFIG + 8, 0x5a).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        got = t.host_take(0).unwrap().concat();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, vec![0x5a]);
    assert!(matches!(t.host_take(1), Err(TargetError::Unsupported(_))));
    // Input before any receive buffer exists is accepted (QEMU holds it back).
    t.host_send(0, b"early").unwrap();
}

#[test]
fn console_cases_pass_on_qemu_both_versions() {
    let suite = Suite::load_default().unwrap();
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let Some(opts) = options(version) else {
            return;
        };
        let report = run_suite(
            &suite,
            move || QemuTarget::new(opts.clone()),
            &Options {
                only: vec!["console.*".into()],
                ..Options::default()
            },
        );
        assert!(report.results.len() >= 8, "{version:?}");
        let bad: Vec<_> = report
            .results
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Pass | Outcome::Unsupported))
            .map(|r| (r.case.clone(), r.outcome, r.failures.clone()))
            .collect();
        assert!(bad.is_empty(), "{version:?}: {bad:?}");
    }
}
