//! virtio-net (§5.1): the suite passes every device the spec permits, not only the reference's
//! choices. Each variant below changes one thing the spec leaves open and must still pass every
//! case (or make it `unsupported` when it offers less); the mutants (`suite.rs`) show the same
//! checks fail forbidden behaviour.

use virtio_conform::outcome::Outcome;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::devices::net::{
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_reference_device::regs::bit;
use virtio_reference_device::{DeviceConfig, MmioDevice, NetBackend, NetOptions, TransportVersion};

/// Runs the whole suite for net on a reference device built from `opts`; returns the ids of
/// the cases that passed and panics on any unexpected result.
fn passes(name: &str, version: TransportVersion, opts: NetOptions) -> Vec<String> {
    let suite = Suite::load_default().expect("suite");
    let report = run_suite(
        &suite,
        || {
            let opts = opts.clone();
            ReferenceTarget::with_factory(
                name.to_string(),
                DeviceKind::Net,
                version,
                Box::new(move |ram| {
                    let b = NetBackend::new(opts.clone());
                    let mut cfg = DeviceConfig::new(version);
                    cfg.queue_num_max = vec![256; 2 * usize::from(opts.max_pairs.max(1)) + 1];
                    MmioDevice::new(cfg, Box::new(b), ram)
                }),
            )
        },
        &Options::default(),
    );
    let bad: Vec<_> = report
        .results
        .iter()
        .filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Pass | Outcome::Unsupported | Outcome::Informational
            )
        })
        .collect();
    assert!(bad.is_empty(), "{name}: {}", suite.summary(&report));
    report
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .map(|r| r.case.clone())
        .collect()
}

#[test]
fn reference_defaults_pass_and_run_the_net_cases() {
    let ran = passes(
        "net-default",
        TransportVersion::Modern,
        NetOptions::default(),
    );
    for c in [
        "net.tx-framings",
        "net.rx-mergeable",
        "net.mq-pairs",
        "net.ctrl-mac",
    ] {
        assert!(ran.iter().any(|r| r == c), "{c} did not pass: {ran:?}");
    }
}

/// A minimal device: MAC only, no control queue, no mergeable buffers, no MTU, no MQ.
#[test]
fn minimal_device_passes() {
    for v in [TransportVersion::Modern, TransportVersion::Legacy] {
        let opts = NetOptions {
            features: bit(VIRTIO_NET_F_MAC),
            max_pairs: 1,
            ..NetOptions::default()
        };
        let ran = passes("net-minimal", v, opts);
        assert!(ran.iter().all(|c| c != "net.rx-mergeable"));
    }
}

/// Other permitted values: a large mtu, one queue pair with MQ, a non-zero receive hdr_len,
/// and a device that starts with promiscuous mode off.
#[test]
fn permitted_alternatives_pass() {
    let base = NetOptions::default();
    let variants = [
        (
            "mtu-9000",
            NetOptions {
                mtu: 9000,
                ..base.clone()
            },
        ),
        (
            "mtu-65535",
            NetOptions {
                mtu: 65535,
                ..base.clone()
            },
        ),
        (
            "one-pair",
            NetOptions {
                max_pairs: 1,
                features: base.features | bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ),
                ..base.clone()
            },
        ),
        (
            "rx-hdr-len-hint",
            NetOptions {
                rx_hdr_len: 14,
                ..base.clone()
            },
        ),
        (
            "not-promiscuous",
            NetOptions {
                promiscuous_after_reset: false,
                ..base.clone()
            },
        ),
        (
            "status-mtu-mrg-only",
            NetOptions {
                features: bit(VIRTIO_NET_F_STATUS)
                    | bit(VIRTIO_NET_F_MTU)
                    | bit(VIRTIO_NET_F_MRG_RXBUF),
                ..base.clone()
            },
        ),
    ];
    for (name, opts) in variants {
        let ran = passes(name, TransportVersion::Modern, opts);
        if name == "one-pair" {
            assert!(ran.iter().all(|c| c != "net.mq-pairs"), "{ran:?}");
        }
    }
}
