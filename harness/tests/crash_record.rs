//! Fuzz crash records: a fuzz binary records the target and mutant beside its crash
//! artifact, and `virtio-conform replay <artifact>` replays against them with no flags.

use std::path::{Path, PathBuf};
use std::process::Command;
use virtio_conform::fuzz::crash::{
    artifact_dir, find_record, input_key, record_finding, record_path, CrashRecord,
    CRASH_RECORD_SCHEMA,
};
use virtio_conform::fuzz::replay_on;
use virtio_reference_device::Mutant;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
}

/// A committed regression input that the mutant `reset-sets-failed` fails in `mmio_regs`
/// and the reference passes.
fn regression() -> (Vec<u8>, Mutant) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpora/mmio_regs/regressions/reset-sets-failed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    (std::fs::read(&files[0]).unwrap(), Mutant::ResetSetsFailed)
}

#[test]
fn artifact_dir_follows_libfuzzer_flags() {
    let a = |v: &[&str]| artifact_dir(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(a(&["fuzz", "-runs=5"]), PathBuf::from("."));
    assert_eq!(
        a(&["fuzz", "-artifact_prefix=fuzz/artifacts/queue_chain/"]),
        PathBuf::from("fuzz/artifacts/queue_chain/")
    );
    assert_eq!(
        a(&["fuzz", "-artifact_prefix=out/run1-"]),
        PathBuf::from("out")
    );
    assert_eq!(a(&["fuzz", "-artifact_prefix=x-"]), PathBuf::from("."));
    assert_eq!(
        a(&["fuzz", "-exact_artifact_path=/tmp/a/crash"]),
        PathBuf::from("/tmp/a")
    );
    // FNV-1a 64: stable across builds.
    assert_eq!(input_key(b""), "cbf29ce484222325");
    assert_eq!(input_key(b"a"), "af63dc4c8601ec8c");
}

#[test]
fn the_record_names_target_mutant_and_finding() {
    let (data, m) = regression();
    let finding = replay_on("mmio_regs", &data, Some(m))
        .unwrap()
        .finding
        .expect("the regression input fails the mutant");
    let rec = CrashRecord::new("mmio_regs", &data, Some(m), &finding);
    assert_eq!(rec.schema, CRASH_RECORD_SCHEMA);
    assert_eq!(rec.target, "mmio_regs");
    assert_eq!(rec.mutant, "reset-sets-failed");
    assert_eq!(rec.oracle, finding.oracle);
    assert_eq!(rec.subject().unwrap(), Some(m));
    let dir = tempfile::tempdir().unwrap();
    // What the fuzz binary does: the record lands in the artifact folder and the panic
    // message says where.
    let msg = record_finding(dir.path(), "mmio_regs", &data, &finding);
    let path = record_path(dir.path(), &data);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(finding.oracle), "{msg}");
    let input = dir.path().join("crash-0123");
    std::fs::write(&input, &data).unwrap();
    let (found_at, back) = find_record(&input, &data).unwrap().unwrap();
    assert_eq!(found_at, path);
    assert_eq!(back.target, "mmio_regs");
    // Not pinned in this process: the record names the reference.
    assert_eq!(back.mutant, "reference");
    // A record for other bytes is refused, naming the file.
    let err = find_record(&input, b"other bytes");
    assert!(
        err.unwrap().is_none(),
        "keyed by content: no record for other bytes"
    );
    std::fs::write(dir.path().join("crash-0123.json"), "{\"schema\": 1}").unwrap();
    let err = find_record(&input, &data).unwrap_err();
    assert!(err.contains("crash-0123.json"), "{err}");
}

#[test]
fn replay_of_an_artifact_uses_its_record() {
    let (data, m) = regression();
    let finding = replay_on("mmio_regs", &data, Some(m))
        .unwrap()
        .finding
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("crash-abc");
    std::fs::write(&input, &data).unwrap();

    // Without a record: the target must be named, and the reference passes the input.
    let out = bin().arg("replay").arg(&input).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no crash record"), "{err}");
    let out = bin()
        .args(["replay", "mmio_regs"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // With the record the fuzz binary wrote: no flags needed, the mutant is replayed.
    let rec = CrashRecord::new("mmio_regs", &data, Some(m), &finding);
    virtio_conform::fuzz::crash::write_record(dir.path(), &data, &rec).unwrap();
    let out = bin()
        .args(["replay", "--format", "json"])
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fuzz_target"], "mmio_regs");
    assert_eq!(v["subject"], "mutant:reset-sets-failed");
    assert_eq!(v["results"][0]["failures"][0]["op"], finding.oracle);
    assert!(err.contains("as recorded in"), "{err}");
    // An explicit --mutant still wins.
    let out = bin()
        .args(["replay", "--mutant", "reference"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // A record naming a mutant this build does not know is an error naming the file.
    let mut bad = rec.clone();
    bad.mutant = "no-such-bug".into();
    std::fs::write(
        dir.path().join("crash-abc.json"),
        serde_json::to_string(&bad).unwrap(),
    )
    .unwrap();
    let out = bin().arg("replay").arg(&input).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("crash-abc.json") && err.contains("no-such-bug"),
        "{err}"
    );
}
