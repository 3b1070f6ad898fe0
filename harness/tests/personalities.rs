//! Driver personalities (`--driver`): each performs `init` the way its driver's source does
//! (checked here on the register trace it produces), the reference passes the whole suite
//! under every one, and a device that only works in the spec's order fails under a driver
//! that does things differently.

use virtio_conform::case::Order;
use virtio_conform::outcome::Outcome;
use virtio_conform::runner::{run_case_as, CASE_BUDGET};
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{DeviceKind, ReferenceTarget, Target};
use virtio_reference_device::regs::*;
use virtio_reference_device::TransportVersion;

mod common;
use common::{Access, Logged};

/// The reference device with its register accesses logged; with `bug`, a device that treats
/// a write of DriverFeaturesSel = 0 as the start of a new negotiation and clears the accepted
/// high word (it assumes drivers write word 0 first).
fn traced(device: DeviceKind, version: TransportVersion, bug: bool) -> Logged {
    let mut t = Logged::new(ReferenceTarget::new(device, version, None).unwrap());
    if bug {
        t.before_write = Some(Box::new(|inner, offset, value| {
            if offset == DRIVER_FEATURES_SEL && value == 0 {
                inner.write32(DRIVER_FEATURES_SEL, 1)?;
                inner.write32(DRIVER_FEATURES, 0)?;
            }
            Ok(())
        }));
    }
    t
}

fn suite() -> Suite {
    Suite::load_default().expect("the shipped suite loads")
}

/// The register trace of `case` run with `driver` on `device`/`version`.
fn trace(driver: Order, case: &str, device: DeviceKind, version: TransportVersion) -> Vec<Access> {
    let s = suite();
    let case = s.cases.iter().find(|c| c.id == case).expect("case exists");
    let mut t = traced(device, version, false);
    let log = t.log.clone();
    t.fresh().unwrap();
    let run = run_case_as(&mut t, case, &s.catalog, CASE_BUDGET, driver);
    assert_eq!(run.outcome, Outcome::Pass, "{driver:?}: {run:?}");
    let l = log.lock().unwrap().clone();
    l
}

fn writes_to(t: &[Access], reg: u64) -> Vec<u32> {
    t.iter()
        .filter(|a| a.0 && a.1 == reg)
        .map(|a| a.2)
        .collect()
}

fn position(t: &[Access], pred: impl Fn(&Access) -> bool) -> usize {
    t.iter().position(pred).expect("access present")
}

/// Where the personality's probe starts: the first MagicValue read.
fn probe(t: &[Access]) -> usize {
    position(t, |a| !a.0 && a.1 == MAGIC)
}

const MODERN: TransportVersion = TransportVersion::Modern;
const LEGACY: TransportVersion = TransportVersion::Legacy;

#[test]
fn linux_sets_status_bits_one_at_a_time_and_writes_the_high_feature_word_first() {
    let t = trace(Order::Linux, "blk.flush", DeviceKind::Block, MODERN);
    assert_eq!(writes_to(&t, STATUS), vec![0, 0x1, 0x3, 0xb, 0xf]);
    // Each status write is preceded by a read of Status (read-modify-write).
    for (i, a) in t.iter().enumerate() {
        if a.0 && a.1 == STATUS && a.2 != 0 {
            assert!(
                t[..i].iter().rev().take(1).any(|b| !b.0 && b.1 == STATUS),
                "write {:#x} at {i} not preceded by a Status read",
                a.2
            );
        }
    }
    // (The harness first checks, in its own order, that the case's features are offered.)
    assert!(writes_to(&t, DEVICE_FEATURES_SEL).ends_with(&[1, 0]));
    assert_eq!(writes_to(&t, DRIVER_FEATURES_SEL), vec![1, 0]);
    // QueueReady is read (must be 0) before the queue is set up.
    let ready_read = position(&t, |a| !a.0 && a.1 == QUEUE_READY);
    let num_write = position(&t, |a| a.0 && a.1 == QUEUE_NUM);
    assert!(ready_read < num_write);
    // Probe reads Magic, Version, DeviceID, VendorID, in that order, before the reset.
    let ids: Vec<u64> = t[probe(&t)..].iter().take(4).map(|a| a.1).collect();
    assert_eq!(ids, vec![MAGIC, VERSION, DEVICE_ID, VENDOR_ID]);
    // Block capacity is read in a ConfigGeneration loop after the queues, before DRIVER_OK.
    let gen = position(&t, |a| !a.0 && a.1 == CONFIG_GENERATION);
    let ok = position(&t, |a| a.0 && a.1 == STATUS && a.2 == 0xf);
    assert!(num_write < gen && gen < ok);
}

#[test]
fn rcore_writes_absolute_status_values_and_never_reads_status_during_init() {
    let t = trace(Order::Rcore, "blk.flush", DeviceKind::Block, MODERN);
    assert_eq!(writes_to(&t, STATUS), vec![0, 0x3, 0xb, 0xf]);
    let init_end = position(&t, |a| a.0 && a.1 == STATUS && a.2 == 0xf);
    assert!(!t[..init_end].iter().any(|a| !a.0 && a.1 == STATUS));
    assert_eq!(writes_to(&t, DRIVER_FEATURES_SEL), vec![0, 1]);
    let ids: Vec<u64> = t[probe(&t)..].iter().take(3).map(|a| a.1).collect();
    assert_eq!(ids, vec![MAGIC, DEVICE_ID, VERSION]);
    // Capacity (with ConfigGeneration) before the queue is set up.
    let gen = position(&t, |a| !a.0 && a.1 == CONFIG_GENERATION);
    let num_write = position(&t, |a| a.0 && a.1 == QUEUE_NUM);
    assert!(gen < num_write);
    // Each helper selects the queue (queue.rs: queue_used, max_queue_size, queue_set).
    let sel = position(&t, |a| a.0 && a.1 == QUEUE_SEL);
    let queue: Vec<(bool, u64)> = t[sel..=num_write]
        .iter()
        .filter(|a| a.1 < CONFIG_GENERATION)
        .map(|a| (a.0, a.1))
        .collect();
    assert_eq!(
        queue,
        vec![
            (true, QUEUE_SEL),
            (false, QUEUE_READY),
            (true, QUEUE_SEL),
            (false, QUEUE_NUM_MAX),
            (true, QUEUE_SEL),
            (true, QUEUE_NUM)
        ]
    );
}

#[test]
fn netbsd_reads_queue_num_max_twice_and_never_reads_config_generation() {
    let t = trace(Order::Netbsd, "blk.flush", DeviceKind::Block, MODERN);
    let num_write = position(&t, |a| a.0 && a.1 == QUEUE_NUM);
    let maxes = t[..num_write]
        .iter()
        .filter(|a| !a.0 && a.1 == QUEUE_NUM_MAX)
        .count();
    assert_eq!(maxes, 2);
    assert!(!t.iter().any(|a| a.1 == CONFIG_GENERATION));
    assert!(!t.iter().any(|a| a.1 == QUEUE_READY && !a.0));
    assert_eq!(writes_to(&t, DRIVER_FEATURES_SEL), vec![0, 1]);
}

#[test]
fn legacy_drivers_write_guest_page_size_where_their_source_does() {
    // Linux: during probe, before the reset.
    let t = trace(
        Order::Legacy,
        "legacy.blk-roundtrip",
        DeviceKind::Block,
        LEGACY,
    );
    let page = position(&t, |a| a.0 && a.1 == GUEST_PAGE_SIZE);
    let reset = position(&t, |a| a.0 && a.1 == STATUS && a.2 == 0);
    assert!(page < reset);
    // No FEATURES_OK on a legacy device without VERSION_1, capacity read byte by byte.
    assert_eq!(writes_to(&t, STATUS), vec![0, 0x1, 0x3, 0x7]);
    assert!(!t.iter().any(|a| a.1 == CONFIG_GENERATION));
    // NetBSD: right after Version, before DeviceID.
    let t = trace(
        Order::Netbsd,
        "legacy.blk-roundtrip",
        DeviceKind::Block,
        LEGACY,
    );
    let page = position(&t, |a| a.0 && a.1 == GUEST_PAGE_SIZE);
    let id = position(&t, |a| !a.0 && a.1 == DEVICE_ID);
    assert!(page < id);
    // rcore: FEATURES_OK even on legacy, page size after it.
    let t = trace(
        Order::Rcore,
        "legacy.blk-roundtrip",
        DeviceKind::Block,
        LEGACY,
    );
    assert_eq!(writes_to(&t, STATUS), vec![0, 0x3, 0xb, 0xf]);
    let page = position(&t, |a| a.0 && a.1 == GUEST_PAGE_SIZE);
    let fok = position(&t, |a| a.0 && a.1 == STATUS && a.2 == 0xb);
    assert!(fok < page);
}

#[test]
fn the_reference_passes_the_suite_under_every_personality() {
    let s = suite();
    for driver in Order::DRIVERS {
        for (device, version) in [
            (DeviceKind::Entropy, MODERN),
            (DeviceKind::Block, MODERN),
            (DeviceKind::Entropy, LEGACY),
            (DeviceKind::Block, LEGACY),
        ] {
            let report = run_suite(
                &s,
                || ReferenceTarget::new(device, version, None),
                &Options {
                    driver,
                    ..Options::default()
                },
            );
            assert_eq!(report.target.driver.as_deref(), Some(driver.name()));
            let bad: Vec<_> = report
                .results
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Fail | Outcome::Error))
                .map(|r| &r.case)
                .collect();
            assert!(bad.is_empty(), "{driver:?} {device:?} {version:?}: {bad:?}");
        }
    }
}

#[test]
fn a_device_that_needs_the_spec_feature_order_passes_spec_and_fails_linux() {
    let s = suite();
    let case = s
        .cases
        .iter()
        .find(|c| c.id == "blk.flush")
        .expect("case exists");
    for (driver, want) in [
        (Order::Spec, Outcome::Pass),
        (Order::Netbsd, Outcome::Pass),
        (Order::Rcore, Outcome::Pass),
        (Order::Linux, Outcome::Fail),
        (Order::Freebsd, Outcome::Fail),
    ] {
        let mut t = traced(DeviceKind::Block, MODERN, true);
        t.fresh().unwrap();
        let run = run_case_as(&mut t, case, &s.catalog, CASE_BUDGET, driver);
        assert_eq!(run.outcome, want, "{driver:?}: {run:?}");
    }
}

#[test]
fn each_personality_asks_for_the_queue_size_its_driver_does() {
    // `blk.unknown-type-not-ok` pins no queue, so the driver picks QueueNum: Linux, NetBSD, FreeBSD
    // (and Linux's legacy path) take the reference's whole queue (QueueNumMax 256); rcore's
    // blk driver its compile-time 16; the spec personality the suite's 8.
    for (driver, version, want) in [
        (Order::Spec, MODERN, 8),
        (Order::Linux, MODERN, 256),
        (Order::Netbsd, MODERN, 256),
        (Order::Freebsd, MODERN, 256),
        (Order::Rcore, MODERN, 16),
        (Order::Legacy, LEGACY, 256),
        (Order::Rcore, LEGACY, 16),
    ] {
        let t = trace(
            driver,
            "blk.unknown-type-not-ok",
            DeviceKind::Block,
            version,
        );
        let sizes = writes_to(&t, QUEUE_NUM);
        assert!(
            !sizes.is_empty(),
            "{driver:?} {version:?}: no QueueNum write"
        );
        assert!(
            sizes.iter().all(|&n| n == want),
            "{driver:?} {version:?}: {sizes:?}"
        );
    }
}
