//! The QEMU vsock target (vhost-user-vsock-device with rust-vmm's vhost-device-vsock as
//! backend, host side through its hybrid vsock sockets): the device as a driver finds it, the
//! host side of connections in both directions through the vsock cases, and every other
//! check passing or excused by the committed expectations. Runs only where both
//! `qemu-system-x86_64` and `vhost-device-vsock` work; elsewhere each test prints
//! `skipped: <reason>` and passes (`VIRTIO_CONFORM_REQUIRE_QEMU=1` /
//! `VIRTIO_CONFORM_REQUIRE_VHOST_DEVICE_VSOCK=1` turn that into a failure).

mod common;

use virtio_conform::expectations::Expectations;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::hybrid_vsock::{backend_binary, backend_version};
use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
use virtio_conform::target::{DeviceKind, Target};
use virtio_reference_device::regs::{CONFIG, DEVICE_ID, VERSION};
use virtio_reference_device::{HostConn, HostOp, TransportVersion};

fn options() -> Option<QemuOptions> {
    let opts = QemuOptions::new(DeviceKind::Vsock, TransportVersion::Modern);
    let require = |var: &str| std::env::var_os(var).is_some_and(|v| v == "1");
    if let Err(e) = qemu_version(&opts.qemu) {
        if require("VIRTIO_CONFORM_REQUIRE_QEMU") {
            panic!("QEMU required but unavailable: {e}");
        }
        println!("skipped: QEMU unavailable: {e}");
        return None;
    }
    if let Err(e) = backend_version(&backend_binary()) {
        if require("VIRTIO_CONFORM_REQUIRE_VHOST_DEVICE_VSOCK") {
            panic!("vhost-device-vsock required but unavailable: {e}");
        }
        println!("skipped: vhost-device-vsock unavailable: {e}");
        return None;
    }
    Some(opts)
}

#[test]
fn the_device_presents_socket_identity_and_the_backend_guest_cid() {
    let Some(opts) = options() else {
        return;
    };
    let mut t = QemuTarget::new(opts).expect("QEMU vsock starts");
    assert!(
        t.info().implementation.contains("vhost-device-vsock"),
        "{}",
        t.info().implementation
    );
    assert_eq!(t.read32(DEVICE_ID).unwrap(), 19);
    assert_eq!(t.read32(VERSION).unwrap(), 2);
    // guest_cid, le64 at configuration offset 0 (§5.10.4), from the backend's --guest-cid.
    let lo = t.read32(CONFIG).unwrap() as u64;
    let hi = t.read32(CONFIG + 4).unwrap() as u64;
    assert_eq!(lo | hi << 32, virtio_conform::target::qemu_vsock::GUEST_CID);
    // The host side answers for connection names before the driver set anything up.
    assert_eq!(t.host_conn(5000).unwrap(), HostConn::None);
    t.host_op(HostOp::Listen { port: 5000 }).unwrap();
    assert_eq!(t.host_conn(5000).unwrap(), HostConn::None);
    assert!(t.host_send(5000, b"x").is_err());
}

#[test]
fn vsock_cases_pass_on_qemu_or_are_excused_by_the_committed_expectations() {
    let Some(opts) = options() else {
        return;
    };
    let suite = Suite::load_default().unwrap();
    let expectations = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs/expectations/qemu-vsock-v2.json");
    let report = run_suite(
        &suite,
        move || QemuTarget::new(opts.clone()),
        &Options {
            only: vec!["vsock.*".into()],
            expectations: Some(Expectations::load(&expectations).unwrap()),
            ..Options::default()
        },
    );
    common::assert_vsock_backend_report(&report);
}
