//! `virtio-conform trace replay`: the committed Linux traces replay green on the reference
//! configured like the traced device, the mutants they catch fail with the requirement
//! broken, what the spec lets a device choose differently stays green, and a malformed trace
//! is a clear error naming its file and line (exit 2).

use std::path::{Path, PathBuf};
use std::process::Command;
use virtio_conform::diff::{mirror_with, Profile};
use virtio_conform::outcome::Outcome;
use virtio_conform::report::CaseResult;
use virtio_conform::suite::Suite;
use virtio_conform::target::DeviceKind;
use virtio_conform::trace::{replay, traced_profile, Trace};
use virtio_reference_device::Mutant;

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces")
}

const TRACES: [&str; 4] = [
    "linux-entropy-v2",
    "linux-entropy-v1",
    "linux-block-v2",
    "linux-block-v1",
];

fn load(name: &str) -> Trace {
    Trace::load(&traces_dir().join(format!("{name}.jsonl"))).unwrap()
}

/// Replays `trace` on the reference configured like `profile` (with `mutant`).
fn run(trace: &Trace, profile: &Profile, mutant: Option<Mutant>) -> Vec<CaseResult> {
    let suite = Suite::embedded().unwrap();
    let device: DeviceKind = trace.header.device.parse().unwrap();
    let mut t = mirror_with(profile, device, mutant).unwrap();
    replay(trace, &mut t, &suite.catalog, "test").unwrap()
}

fn failed_ids(results: &[CaseResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .flat_map(|r| r.failures.iter())
        .flat_map(|f| f.requirements.iter().map(|c| c.id.clone()))
        .collect()
}

#[test]
fn committed_traces_replay_green_on_the_mirrored_reference() {
    for name in TRACES {
        let tr = load(name);
        let results = run(&tr, &traced_profile(&tr), None);
        let phases: Vec<&str> = results
            .iter()
            .map(|r| r.case.rsplit('.').next().unwrap())
            .collect();
        assert_eq!(
            phases,
            ["probe", "driver", "io", "remove", "poweroff"],
            "{name}"
        );
        for r in &results {
            assert_eq!(r.outcome, Outcome::Pass, "{name}: {r:#?}");
        }
        // The phases that drive the device cite what they checked.
        let driver = &results[1];
        let ids: Vec<&str> = driver.requirements.iter().map(|c| c.id.as_str()).collect();
        assert!(ids.contains(&"VQ-DEV-17"), "{name}: {ids:?}");
        assert!(ids.contains(&"MMIO-REG-04"), "{name}: {ids:?}");
    }
}

#[test]
fn the_traced_profile_is_the_device_the_driver_saw() {
    let tr = load("linux-block-v2");
    let p = traced_profile(&tr);
    assert_eq!((p.version, p.device_id), (2, 2));
    assert_eq!(p.queue_num_max, vec![1024]);
    // Capacity: 2048 sectors (a 1 MiB disk).
    assert_eq!(&p.config[..8], &2048u64.to_le_bytes());
    // The features the driver accepted stand for the offered ones (VERSION_1 among them).
    assert_ne!(p.features & (1 << 32), 0);
    assert_eq!(p.features & (1 << 5), 0, "VIRTIO_BLK_F_RO was not accepted");
}

#[test]
fn replays_catch_these_mutants() {
    // (mutant, trace, requirement failed, whether Linux takes its error path there)
    let caught = [
        (
            "magic-value-big-endian",
            "linux-entropy-v2",
            "MMIO-DEV-01",
            true,
        ),
        ("wrong-device-id", "linux-block-v1", "BLK-ID-01", true),
        (
            "reset-sets-failed",
            "linux-entropy-v1",
            "RESET-DEV-01",
            true,
        ),
        ("notify-ignored", "linux-block-v2", "INIT-DEV-01", true),
        (
            "event-idx-off-by-one",
            "linux-entropy-v2",
            "VQ-DEV-12",
            true,
        ),
        // A spurious configuration-change bit: Linux runs its config handler and goes on.
        (
            "config-interrupt-on-driver-ok",
            "linux-block-v1",
            "MMIO-DEV-04",
            false,
        ),
    ];
    for (m, name, id, stops) in caught {
        let tr = load(name);
        let mutant = Mutant::from_name(m).unwrap();
        let results = run(&tr, &traced_profile(&tr), Some(mutant));
        let ids = failed_ids(&results);
        assert!(ids.iter().any(|i| i == id), "{m} on {name}: {results:#?}");
        if !stops {
            assert!(results.iter().all(|r| r.outcome != Outcome::Skipped), "{m}");
            continue;
        }
        // The phase that failed stops the replay: the later ones are skipped, with why.
        let at = results
            .iter()
            .position(|r| r.outcome == Outcome::Fail)
            .unwrap();
        for r in &results[at + 1..] {
            assert_eq!(r.outcome, Outcome::Skipped, "{m} on {name}");
            assert!(r.reason.as_deref().unwrap().contains("driver stopped"));
        }
    }
}

#[test]
fn device_choices_the_spec_allows_stay_green() {
    for name in TRACES {
        let tr = load(name);
        let mut p = traced_profile(&tr);
        // A smaller queue, another vendor, neither EVENT_IDX nor INDIRECT_DESC offered: the
        // driver takes a smaller ring, posts direct chains and the device notifies always.
        p.queue_num_max = vec![64];
        p.vendor_id ^= 0x1111;
        p.features &= !((1 << 28) | (1 << 29));
        p.feature_pages[0] &= !((1 << 28) | (1 << 29));
        let results = run(&tr, &p, None);
        for r in &results {
            assert!(
                matches!(r.outcome, Outcome::Pass | Outcome::Informational),
                "{name}: {r:#?}"
            );
        }
        let infos: Vec<&str> = results
            .iter()
            .flat_map(|r| r.failures.iter())
            .map(|f| f.expected.as_str())
            .collect();
        assert!(
            infos.iter().any(|e| e.starts_with("QueueNumMax")),
            "{infos:?}"
        );
        assert!(infos.iter().any(|e| e.starts_with("VendorID")), "{infos:?}");
        assert!(
            results.iter().all(|r| r.outcome != Outcome::Skipped),
            "{name}: every phase ran"
        );
    }
}

#[test]
fn a_device_refusing_features_ok_stops_the_driver_with_a_should() {
    // FEATURES_OK refused for features the device offered is a SHOULD (§2.2.2), and Linux
    // gives up there: non_strict, later phases skipped.
    let tr = load("linux-entropy-v2");
    let results = run(
        &tr,
        &traced_profile(&tr),
        Some(Mutant::from_name("features-ok-never-refused").unwrap()),
    );
    // That mutant never refuses, so this replay is green; the refusing device is below.
    assert!(results.iter().all(|r| r.outcome == Outcome::Pass));
    let suite = Suite::embedded().unwrap();
    let mut t =
        RefusesFeaturesOk(mirror_with(&traced_profile(&tr), DeviceKind::Entropy, None).unwrap());
    let results = replay(&tr, &mut t, &suite.catalog, "test").unwrap();
    assert_eq!(results[1].outcome, Outcome::NonStrict, "{:#?}", results[1]);
    assert!(results[2..].iter().all(|r| r.outcome == Outcome::Skipped));
}

/// A target that clears FEATURES_OK from every Status write (refusing every feature set).
struct RefusesFeaturesOk(virtio_conform::target::ReferenceTarget);

impl virtio_conform::target::Target for RefusesFeaturesOk {
    fn info(&self) -> virtio_conform::target::TargetInfo {
        self.0.info()
    }
    fn capabilities(&self) -> virtio_conform::target::Capabilities {
        self.0.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.0.ram_size()
    }
    fn read(&mut self, o: u64, d: &mut [u8]) -> Result<(), virtio_conform::target::TargetError> {
        self.0.read(o, d)
    }
    fn write(&mut self, o: u64, d: &[u8]) -> Result<(), virtio_conform::target::TargetError> {
        if o == 0x70 && d.len() == 4 {
            let v = u32::from_le_bytes(d.try_into().unwrap()) & !8;
            return self.0.write(o, &v.to_le_bytes());
        }
        self.0.write(o, d)
    }
    fn mem_write(&mut self, g: u64, d: &[u8]) -> Result<(), virtio_conform::target::TargetError> {
        self.0.mem_write(g, d)
    }
    fn mem_read(
        &mut self,
        g: u64,
        b: &mut [u8],
    ) -> Result<(), virtio_conform::target::TargetError> {
        self.0.mem_read(g, b)
    }
    fn fresh(&mut self) -> Result<(), virtio_conform::target::TargetError> {
        self.0.fresh()
    }
    fn take_accesses(&mut self) -> Option<Vec<virtio_reference_device::MemoryAccess>> {
        self.0.take_accesses()
    }
    fn synchronous(&self) -> bool {
        true
    }
}

#[test]
fn malformed_traces_name_file_and_line() {
    let header = r#"{"trace":"t","format":1,"device":"entropy","transport_version":2}"#;
    let cases = [
        ("", 0, "empty file"),
        (r#"{"trace":"t"}"#, 1, "bad header"),
        (
            r#"{"trace":"t","format":2,"device":"entropy","transport_version":2}"#,
            1,
            "format 2",
        ),
        (
            &format!("{header}\n{{\"op\":\"read\",\"offset\":0,\"width\":4,\"value\":1}}\n{{\"op\":\"poke\"}}"),
            3,
            "bad event",
        ),
        (
            &format!("{header}\n\n{{\"op\":\"read\",\"offset\":0,\"width\":3,\"value\":1}}"),
            3,
            "width 3",
        ),
        (
            &format!("{header}\n{{\"op\":\"write\",\"offset\":512,\"width\":4,\"value\":1}}"),
            2,
            "register window",
        ),
        (
            &format!("{header}\n{{\"op\":\"write\",\"offset\":256,\"width\":1,\"value\":256}}"),
            2,
            "does not fit",
        ),
        (&format!("{header}\n{{\"op\":\"irq\",\"level\":2}}"), 2, "irq level"),
        (
            &format!("{header}\n{{\"op\":\"phase\",\"name\":\"io\"}}\n{{\"op\":\"phase\",\"name\":\"probe\"}}"),
            3,
            "after `io`",
        ),
        (&format!("{header}\n{{\"op\":\"read\",\"offset\":0}}"), 2, "missing field"),
    ];
    for (text, line, what) in cases {
        let e = Trace::parse(text, "x.jsonl").unwrap_err();
        assert_eq!(e.line, line, "{text}: {e}");
        assert!(
            e.to_string().starts_with(&format!("x.jsonl:{line}: ")),
            "{e}"
        );
        assert!(e.what.contains(what), "{text}: {e}");
    }
}

#[test]
fn the_cli_exits_2_on_a_malformed_trace_and_0_on_a_committed_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"trace\":\"t\",\"format\":1,\"device\":\"entropy\",\"transport_version\":2}\n{\"op\":\"read\",\"offset\":0,\"width\":4,\"value\":\"x\"}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args(["trace", "replay"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: bad event", bad.display())),
        "{err}"
    );

    let good = traces_dir().join("linux-entropy-v1.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args(["trace", "replay", "--format", "json"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The `run` report shape: it fits the committed report schema.
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/report.schema.json");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&schema_path).unwrap()).unwrap();
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = v.iter_errors(&report).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(report["summary"]["pass"], 5);
    assert_eq!(report["target"]["version"], 1);

    // A caught mutant makes the exit code 1.
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args(["trace", "replay", "--target", "mutant:notify-ignored"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The committed traces replay green on QEMU, the device they were captured from (skipped,
/// saying why, where QEMU is unavailable; `VIRTIO_CONFORM_REQUIRE_QEMU=1` makes that a
/// failure).
#[test]
fn committed_traces_replay_green_on_qemu() {
    use virtio_conform::target::parse_version;
    use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
    let suite = Suite::embedded().unwrap();
    for name in TRACES {
        let tr = load(name);
        let device: DeviceKind = tr.header.device.parse().unwrap();
        let version = parse_version(tr.header.transport_version).unwrap();
        let opts = QemuOptions::new(device, version);
        if let Err(e) = qemu_version(&opts.qemu) {
            if std::env::var_os("VIRTIO_CONFORM_REQUIRE_QEMU").is_some_and(|v| v == "1") {
                panic!("QEMU required but unavailable: {e}");
            }
            println!("skipped: QEMU unavailable: {e}");
            return;
        }
        let mut t = QemuTarget::new(opts).expect("QEMU target starts");
        let results = replay(&tr, &mut t, &suite.catalog, "test").unwrap();
        assert_eq!(results.len(), 5, "{name}");
        for r in &results {
            assert_eq!(r.outcome, Outcome::Pass, "{name}: {r:#?}");
        }
    }
}

mod edited {
    //! Traces edited at random (events dropped, repeated, values changed) replay to a
    //! verdict without a panic or a hang: bad input becomes results, never a crash.
    use super::*;
    use proptest::prelude::*;
    use virtio_conform::trace::format::{Event, Line};

    fn edit(mut tr: Trace, edits: &[(u8, usize, u32)]) -> Trace {
        for &(kind, at, v) in edits {
            if tr.events.is_empty() {
                break;
            }
            let i = at % tr.events.len();
            match kind % 3 {
                0 => {
                    tr.events.remove(i);
                }
                1 => {
                    let e = tr.events[i].clone();
                    tr.events.insert(i, e);
                }
                _ => {
                    let Line { line, event } = tr.events[i].clone();
                    let event = match event {
                        Event::Read { offset, width, .. } => Event::Read {
                            offset,
                            width,
                            value: v as u64 & ((1u64 << (8 * width)) - 1),
                        },
                        Event::Write { offset, width, .. } => Event::Write {
                            offset,
                            width,
                            value: v as u64 & ((1u64 << (8 * width)) - 1),
                        },
                        other => other,
                    };
                    tr.events[i] = Line { line, event };
                }
            }
        }
        tr
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn edited_traces_replay_to_a_verdict(
            which in 0usize..4,
            edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u32>()), 1..6),
        ) {
            let tr = load(TRACES[which]);
            let profile = traced_profile(&tr);
            let tr = edit(tr, &edits);
            let results = run(&tr, &profile, None);
            prop_assert!(!results.is_empty());
        }
    }
}
