//! The committed traces of a real Linux guest (`traces/*.jsonl`, captured by
//! `scripts/capture-linux-trace.sh`; format in `traces/README.md`) parse, say what they are,
//! and agree with the `linux` driver personality (`runner/personality.rs`): the harness's
//! own `init` under `--driver linux` (Version 2) or `--driver legacy` (Version 1) touches the
//! handshake registers in the same order, with the same Status and feature-select values,
//! as the real driver did.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use virtio_conform::case::Order;
use virtio_conform::outcome::Outcome;
use virtio_conform::runner::{run_case_as, CASE_BUDGET};
use virtio_conform::suite::Suite;
use virtio_conform::target::{DeviceKind, ReferenceTarget, Target};
use virtio_reference_device::regs::*;
use virtio_reference_device::TransportVersion;

mod common;
use common::Logged;

/// First line of a trace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    trace: String,
    format: u32,
    device: String,
    transport_version: u32,
    kernel: String,
    busybox: String,
    qemu: String,
    machine: String,
    accel: String,
    captured: String,
    guest: String,
}

/// Every later line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Event {
    Read { offset: u64, width: u8, value: u32 },
    Write { offset: u64, width: u8, value: u32 },
    Irq { level: u8 },
    Phase { name: String },
}

struct Trace {
    file: PathBuf,
    header: Header,
    events: Vec<Event>,
}

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces")
}

fn load(file: &Path) -> Trace {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().expect("a header line");
    let header: Header = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("{}:1: bad header: {e}", file.display()));
    let events = lines
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: bad event: {e}", file.display(), i + 1))
        })
        .collect();
    Trace {
        file: file.to_owned(),
        header,
        events,
    }
}

fn all_traces() -> Vec<Trace> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(traces_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files.iter().map(|f| load(f)).collect()
}

/// The trace's register accesses as (is_write, offset, value), widths dropped.
fn accesses(events: &[Event]) -> Vec<(bool, u64, u32)> {
    events
        .iter()
        .filter_map(|e| match *e {
            Event::Read { offset, value, .. } => Some((false, offset, value)),
            Event::Write { offset, value, .. } => Some((true, offset, value)),
            _ => None,
        })
        .collect()
}

/// The events from phase `from` up to (not including) the next phase.
fn phase<'a>(t: &'a Trace, from: &str) -> &'a [Event] {
    let start = t
        .events
        .iter()
        .position(|e| matches!(e, Event::Phase { name } if name == from))
        .unwrap_or_else(|| panic!("{}: no phase {from}", t.file.display()))
        + 1;
    let len = t.events[start..]
        .iter()
        .position(|e| matches!(e, Event::Phase { .. }))
        .unwrap_or(t.events.len() - start);
    &t.events[start..start + len]
}

#[test]
fn every_committed_trace_parses_and_its_header_names_it() {
    let traces = all_traces();
    let mut names: Vec<&str> = traces.iter().map(|t| t.header.trace.as_str()).collect();
    names.sort();
    for want in [
        "linux-block-v1",
        "linux-block-v2",
        "linux-entropy-v1",
        "linux-entropy-v2",
    ] {
        assert!(names.contains(&want), "no trace {want} in {names:?}");
    }
    for t in &traces {
        let h = &t.header;
        let stem = t.file.file_stem().unwrap().to_str().unwrap();
        assert_eq!(h.trace, stem, "{}", t.file.display());
        assert_eq!(h.format, 1);
        assert_eq!(
            h.trace,
            format!("linux-{}-v{}", h.device, h.transport_version)
        );
        assert!(h.kernel.starts_with("linux-image-"), "{}", h.kernel);
        assert!(h.busybox.starts_with("busybox-static "), "{}", h.busybox);
        assert!(!h.qemu.is_empty() && h.machine == "microvm");
        assert!(h.accel == "tcg" || h.accel == "kvm");
        assert!(
            h.captured.starts_with("scripts/capture-linux-trace.sh "),
            "{}",
            h.captured
        );
        assert!(!h.guest.is_empty());
        // Only the traced transport's registers: offsets inside its 0x200-byte window, with
        // the widths a driver can use.
        for e in &t.events {
            if let Event::Read { offset, width, .. } | Event::Write { offset, width, .. } = e {
                assert!(*offset < 0x200, "{}: offset {offset:#x}", h.trace);
                assert!(matches!(width, 1 | 2 | 4), "{}: width {width}", h.trace);
                assert!(offset % *width as u64 == 0, "{}: unaligned", h.trace);
            }
            if let Event::Irq { level } = e {
                assert!(*level <= 1);
            }
        }
        let phases: Vec<&str> = t
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Phase { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            phases,
            vec!["probe", "driver", "io", "remove", "poweroff"],
            "{}",
            h.trace
        );
    }
}

#[test]
fn the_real_driver_does_what_the_linux_personality_says() {
    for t in all_traces() {
        let h = &t.header;
        let legacy = h.transport_version == 1;
        let all = accesses(&t.events);
        let id = |name: &str| match name {
            "entropy" => 4,
            "block" => 2,
            other => panic!("unknown device {other}"),
        };
        // Probe reads Magic, Version, DeviceID, VendorID first, and sees this device.
        let first: Vec<(bool, u64)> = all.iter().take(4).map(|a| (a.0, a.1)).collect();
        assert_eq!(
            first,
            vec![
                (false, MAGIC),
                (false, VERSION),
                (false, DEVICE_ID),
                (false, VENDOR_ID)
            ],
            "{}",
            h.trace
        );
        assert_eq!(all[0].2, 0x7472_6976);
        assert_eq!(all[1].2, h.transport_version);
        assert_eq!(all[2].2, id(&h.device));
        // Status: a reset, then one bit at a time, each a read-modify-write; FEATURES_OK only
        // once VERSION_1 is negotiated, which a legacy device does not offer.
        let status: Vec<u32> = all
            .iter()
            .filter(|a| a.0 && a.1 == STATUS)
            .map(|a| a.2)
            .collect();
        let init = if legacy {
            vec![0, 0x1, 0x3, 0x7]
        } else {
            vec![0, 0x1, 0x3, 0xb, 0xf]
        };
        // ... and at removal: a reset, then ACKNOWLEDGE again (virtio_dev_remove).
        let want: Vec<u32> = init.iter().copied().chain([0, 0x1]).collect();
        assert_eq!(status, want, "{}", h.trace);
        for (i, a) in all.iter().enumerate() {
            if a.0 && a.1 == STATUS && a.2 != 0 {
                let before = all[i - 1];
                assert!(
                    !before.0 && before.1 == STATUS && before.2 | a.2 == a.2,
                    "{}: Status write {:#x} at {i} is not a read-modify-write",
                    h.trace,
                    a.2
                );
            }
        }
        // Feature words: high word first, both when reading and when writing.
        let sel = |reg| -> Vec<u32> {
            all.iter()
                .filter(|a| a.0 && a.1 == reg)
                .map(|a| a.2)
                .collect()
        };
        assert_eq!(sel(DEVICE_FEATURES_SEL), vec![1, 0], "{}", h.trace);
        assert_eq!(sel(DRIVER_FEATURES_SEL), vec![1, 0], "{}", h.trace);
        // Legacy: GuestPageSize right after the identity reads, before the reset.
        let page: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, a)| a.0 && a.1 == GUEST_PAGE_SIZE)
            .map(|(i, _)| i)
            .collect();
        if legacy {
            assert_eq!(page, vec![4], "{}", h.trace);
            assert_eq!(all[4].2, 4096);
        } else {
            assert!(page.is_empty(), "{}", h.trace);
        }
        // Interrupts: each raise is answered by reading InterruptStatus and acknowledging
        // the same value; notifications name queue 0.
        let ev = &t.events;
        for (i, e) in ev.iter().enumerate() {
            if *e == (Event::Irq { level: 1 }) {
                let isr = ev[i + 1..]
                    .iter()
                    .find_map(|e| match *e {
                        Event::Read { offset, value, .. } if offset == INTERRUPT_STATUS => {
                            Some(value)
                        }
                        _ => None,
                    })
                    .expect("InterruptStatus read after a raise");
                let ack = ev[i + 1..].iter().find_map(|e| match *e {
                    Event::Write { offset, value, .. } if offset == INTERRUPT_ACK => Some(value),
                    _ => None,
                });
                assert_eq!(ack, Some(isr), "{}: event {i}", h.trace);
            }
        }
        assert!(all
            .iter()
            .filter(|a| a.0 && a.1 == QUEUE_NOTIFY)
            .all(|a| a.2 == 0));
        // Removal: reset, then the queue is switched off (QueueReady=0 read back once on
        // Version 2, QueuePFN=0 on Version 1).
        let remove = accesses(phase(&t, "remove"));
        let off: Vec<(bool, u64, u32)> = if legacy {
            vec![
                (true, STATUS, 0),
                (true, QUEUE_SEL, 0),
                (true, QUEUE_PFN, 0),
            ]
        } else {
            vec![
                (true, STATUS, 0),
                (true, QUEUE_SEL, 0),
                (true, QUEUE_READY, 0),
                (false, QUEUE_READY, 0),
            ]
        };
        assert!(remove.starts_with(&off), "{}: {remove:x?}", h.trace);
    }
}

// ---- the harness's own init under the personality, on a logging reference device ----------

/// The handshake of an access list, from the first MagicValue read up to and including the
/// DRIVER_OK write: the registers a personality decides on, with the values that do not
/// depend on the device or on what the case asks for (Status, the select registers, the
/// legacy page size and alignment). Configuration space is kept only for `capacity` (the one
/// field the personality reads) and ConfigGeneration; the other block fields the real driver
/// reads are its own business.
fn handshake(all: &[(bool, u64, u32)]) -> Vec<String> {
    let start = all
        .iter()
        .position(|a| !a.0 && a.1 == MAGIC)
        .expect("a MagicValue read");
    let mut out = Vec::new();
    for &(write, off, value) in &all[start..] {
        let keep_value = matches!(
            off,
            STATUS
                | DEVICE_FEATURES_SEL
                | DRIVER_FEATURES_SEL
                | QUEUE_SEL
                | GUEST_PAGE_SIZE
                | QUEUE_ALIGN
                | MAGIC
                | VERSION
        ) || (off == QUEUE_READY && write);
        let in_scope = off < CONFIG || (CONFIG..CONFIG + 8).contains(&off);
        if !in_scope {
            continue;
        }
        let dir = if write { "W" } else { "R" };
        out.push(if keep_value {
            format!("{dir} {off:#x}={value:#x}")
        } else {
            format!("{dir} {off:#x}")
        });
        if write && off == STATUS && value & u32::from(DRIVER_OK) != 0 {
            return out;
        }
    }
    panic!("no DRIVER_OK write in {out:?}");
}

fn personality_run(
    order: Order,
    case: &str,
    device: DeviceKind,
    version: TransportVersion,
) -> Vec<(bool, u64, u32)> {
    let s = Suite::load_default().expect("the shipped suite loads");
    let case = s.cases.iter().find(|c| c.id == case).expect("case exists");
    let mut t = Logged::new(ReferenceTarget::new(device, version, None).unwrap());
    let log = t.log.clone();
    t.fresh().unwrap();
    let run = run_case_as(&mut t, case, &s.catalog, CASE_BUDGET, order);
    assert_eq!(run.outcome, Outcome::Pass, "{order:?}: {run:?}");
    let l = log.lock().unwrap().clone();
    l
}

#[test]
fn the_linux_personalitys_init_matches_the_real_drivers_handshake() {
    let mut differ = Vec::new();
    for t in all_traces() {
        let h = &t.header;
        let (order, version) = if h.transport_version == 1 {
            (Order::Legacy, TransportVersion::Legacy)
        } else {
            (Order::Linux, TransportVersion::Modern)
        };
        let (case, device) = match (h.device.as_str(), h.transport_version) {
            ("entropy", _) => (
                "split.entropy-readable-buffer-untouched",
                DeviceKind::Entropy,
            ),
            ("block", 1) => ("legacy.blk-roundtrip", DeviceKind::Block),
            ("block", _) => ("blk.flush", DeviceKind::Block),
            (other, _) => panic!("no case for device {other}"),
        };
        let real = handshake(&accesses(&t.events));
        let ours = handshake(&personality_run(order, case, device, version));
        if ours != real {
            differ.push(format!(
                "{}: --driver {} init differs from the real driver\n  ours: {ours:?}\n  real: {real:?}",
                h.trace,
                order.name()
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
