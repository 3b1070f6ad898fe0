//! Console checks (VIRTIO §5.3) against behaviour the spec permits: a device that fills
//! receive buffers one byte at a time, one that nominates no console port and opens nothing,
//! and one that ignores `emerg_wr` (a SHOULD: `non_strict`, not `fail`). Each console mutant
//! failing is shown by `suite.rs`.

use virtio_conform::outcome::Outcome;
use virtio_conform::report::Report;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::reference::DeviceFactory;
use virtio_conform::target::{DeviceKind, ReferenceTarget};
mod common;
use common::Hooked;
use virtio_reference_device::{
    ChainReader, Completion, ConsoleBackend, Descriptor, DeviceBackend, DeviceConfig, MmioDevice,
    Mutant, TransportVersion,
};

/// The reference console with one variation: `trickle` fills receive buffers at most one
/// byte per chain; `quiet` accepts PORT_READY but answers nothing; `hold` never delivers
/// input (forbidden: CON-DEV-10).
fn variant(trickle: bool, quiet: bool, hold: bool) -> Hooked {
    let mut b = Hooked::new(
        ConsoleBackend::default(),
        Box::new(move |inner, queue, chain, ram| {
            if trickle && queue == 0 {
                let first: Vec<Descriptor> = chain
                    .iter()
                    .filter(|d| d.is_write_only())
                    .take(1)
                    .map(|d| Descriptor {
                        len: d.len.min(1),
                        ..*d
                    })
                    .collect();
                return inner.process(queue, &first, ram);
            }
            if quiet && queue == 3 {
                let mut m = [0u8; 8];
                if ChainReader::new(chain).read(ram, &mut m) == Ok(8) && m[4] == 3 {
                    return Completion::Written(0);
                }
            }
            inner.process(queue, chain, ram)
        }),
    );
    if hold {
        b.ready = Some(Box::new(|inner, queue| {
            queue != 0 && inner.ready_for(queue)
        }));
    }
    b
}

fn run_variant(
    version: TransportVersion,
    (trickle, quiet, hold): (bool, bool, bool),
    mutant: Option<Mutant>,
) -> Report {
    let suite = Suite::load_default().unwrap();
    let factory = move || {
        let f: DeviceFactory = Box::new(move |ram| {
            let b = variant(trickle, quiet, hold);
            let mut cfg = DeviceConfig::new(version);
            cfg.mutant = mutant;
            cfg.queue_num_max = vec![256; usize::from(b.num_queues())];
            MmioDevice::new(cfg, Box::new(b), ram)
        });
        ReferenceTarget::with_factory("variant".into(), DeviceKind::Console, version, f)
    };
    run_suite(
        &suite,
        factory,
        &Options {
            only: vec!["console.*".into()],
            ..Options::default()
        },
    )
}

fn not_failing(r: &Report) -> Vec<String> {
    r.results
        .iter()
        .filter(|c| c.outcome.is_failure() || c.outcome == Outcome::Error)
        .map(|c| format!("{}: {:?} {:?}", c.case, c.outcome, c.failures))
        .collect()
}

#[test]
fn receive_buffers_filled_one_byte_at_a_time_pass() {
    for v in [TransportVersion::Modern, TransportVersion::Legacy] {
        let r = run_variant(v, (true, false, false), None);
        assert!(
            r.results.len() >= 8,
            "{} console cases ran",
            r.results.len()
        );
        assert_eq!(not_failing(&r), Vec::<String>::new(), "{v:?}");
        // The partly filled buffers are reported, not failed.
        assert!(r
            .results
            .iter()
            .any(|c| c.case == "console.receive-framings" && c.outcome == Outcome::Informational));
    }
}

#[test]
fn no_console_nomination_and_no_port_open_pass() {
    let r = run_variant(TransportVersion::Modern, (false, true, false), None);
    assert_eq!(not_failing(&r), Vec::<String>::new());
    let hs = r
        .results
        .iter()
        .find(|c| c.case == "console.multiport-handshake")
        .unwrap();
    assert_eq!(hs.outcome, Outcome::Informational, "{:?}", hs.failures);
}

#[test]
fn ignored_emergency_write_is_non_strict_not_fail() {
    let r = run_variant(
        TransportVersion::Modern,
        (false, false, false),
        Some(Mutant::ConsoleEmergWriteIgnored),
    );
    let ew = r
        .results
        .iter()
        .find(|c| c.case == "console.emergency-write")
        .unwrap();
    assert_eq!(ew.outcome, Outcome::NonStrict, "{:?}", ew.failures);
}

#[test]
fn input_held_back_while_buffers_wait_fails() {
    let r = run_variant(TransportVersion::Modern, (false, false, true), None);
    let c = r
        .results
        .iter()
        .find(|c| c.case == "console.receive-framings")
        .unwrap();
    assert_eq!(c.outcome, Outcome::Fail, "{:?}", c.failures);
    assert!(c
        .failures
        .iter()
        .any(|f| f.observed.contains("missing with")));
}
