//! Socket-device checks (VIRTIO §5.10) against behaviour the spec permits: another
//! `guest_cid`, another `buf_alloc` and host port range, host data cut into small RW packets,
//! unasked CREDIT_UPDATE packets, a host close by RST instead of SHUTDOWN, and packets for
//! unknown connections dropped instead of answered. None of them may fail a case; each vsock
//! mutant failing is shown by `suite.rs`. A version-1 run of the device is refused cleanly.

use virtio_conform::outcome::Outcome;
use virtio_conform::report::Report;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::reference::DeviceFactory;
use virtio_conform::target::{DeviceKind, ReferenceTarget, TargetError};
use virtio_reference_device::{
    DeviceBackend, DeviceConfig, MmioDevice, Mutant, TransportVersion, VsockBackend, VsockOptions,
};

fn run_variant(opts: VsockOptions, mutant: Option<Mutant>) -> Report {
    let suite = Suite::load_default().unwrap();
    let factory = move || {
        let f: DeviceFactory = Box::new(move |ram| {
            let b = VsockBackend::with_options(opts);
            let mut cfg = DeviceConfig::new(TransportVersion::Modern);
            cfg.mutant = mutant;
            cfg.queue_num_max = vec![256; usize::from(b.num_queues())];
            MmioDevice::new(cfg, Box::new(b), ram)
        });
        ReferenceTarget::with_factory(
            "variant".into(),
            DeviceKind::Vsock,
            TransportVersion::Modern,
            f,
        )
    };
    run_suite(
        &suite,
        factory,
        &Options {
            only: vec!["vsock.*".into()],
            ..Options::default()
        },
    )
}

fn failing(r: &Report) -> Vec<String> {
    r.results
        .iter()
        .filter(|c| c.outcome.is_failure() || c.outcome == Outcome::Error)
        .map(|c| format!("{}: {:?} {:?}", c.case, c.outcome, c.failures))
        .collect()
}

fn outcome(r: &Report, case: &str) -> Outcome {
    r.results
        .iter()
        .find(|c| c.case == case)
        .unwrap_or_else(|| panic!("{case} ran"))
        .outcome
}

#[test]
fn reference_passes_every_vsock_case() {
    let r = run_variant(VsockOptions::default(), None);
    assert!(r.results.len() >= 15, "{} vsock cases ran", r.results.len());
    assert_eq!(failing(&r), Vec::<String>::new());
    assert!(r
        .results
        .iter()
        .all(|c| c.outcome == Outcome::Pass || c.outcome == Outcome::Unsupported));
}

#[test]
fn other_guest_cid_buf_alloc_and_host_ports_pass() {
    let r = run_variant(
        VsockOptions {
            guest_cid: 0x1234_5678,
            buf_alloc: 4096,
            first_host_port: 1024,
            ..VsockOptions::default()
        },
        None,
    );
    assert_eq!(failing(&r), Vec::<String>::new());
    assert_eq!(outcome(&r, "vsock.host-connect"), Outcome::Pass);
    assert_eq!(outcome(&r, "vsock.guest-cid"), Outcome::Pass);
}

#[test]
fn small_rw_packets_and_unasked_credit_updates_pass() {
    let r = run_variant(
        VsockOptions {
            max_rw_payload: 3,
            eager_credit_updates: true,
            ..VsockOptions::default()
        },
        None,
    );
    assert_eq!(failing(&r), Vec::<String>::new());
    assert_eq!(outcome(&r, "vsock.credit-respected"), Outcome::Pass);
    assert_eq!(outcome(&r, "vsock.rw-both-ways"), Outcome::Pass);
    assert_eq!(outcome(&r, "vsock.rx-framings"), Outcome::Pass);
}

#[test]
fn host_close_by_rst_passes() {
    let r = run_variant(
        VsockOptions {
            close_with_rst: true,
            ..VsockOptions::default()
        },
        None,
    );
    assert_eq!(failing(&r), Vec::<String>::new());
    assert_eq!(outcome(&r, "vsock.shutdown-and-rst"), Outcome::Pass);
}

#[test]
fn no_transport_reset_on_a_cid_change_is_informational() {
    let r = run_variant(
        VsockOptions {
            transport_reset_on_cid_change: false,
            ..VsockOptions::default()
        },
        None,
    );
    assert_eq!(failing(&r), Vec::<String>::new());
    assert_eq!(
        outcome(&r, "vsock.transport-reset-event"),
        Outcome::Informational
    );
}

#[test]
fn dropping_packets_of_unknown_connections_is_informational() {
    let r = run_variant(
        VsockOptions {
            rst_unknown: false,
            ..VsockOptions::default()
        },
        None,
    );
    assert_eq!(failing(&r), Vec::<String>::new());
    assert_eq!(
        outcome(&r, "vsock.rst-unknown-connection"),
        Outcome::Informational
    );
}

#[test]
fn credit_ignored_fails_even_with_small_packets() {
    let r = run_variant(
        VsockOptions {
            max_rw_payload: 3,
            ..VsockOptions::default()
        },
        Some(Mutant::VsockIgnoresCredit),
    );
    let c = r
        .results
        .iter()
        .find(|c| c.case == "vsock.credit-respected")
        .unwrap();
    assert_eq!(c.outcome, Outcome::Fail, "{:?}", c.failures);
    assert!(c
        .failures
        .iter()
        .any(|f| f.requirements.iter().any(|r| r.id == "VSOCK-DEV-10")));
}

#[test]
fn version_1_is_refused_cleanly() {
    match ReferenceTarget::new(DeviceKind::Vsock, TransportVersion::Legacy, None) {
        Err(TargetError::Unsupported(why)) => assert!(why.contains("no legacy interface")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a legacy socket device was built"),
    }
}
