//! The command line: exit codes, report formats and clear errors on bad input.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
}

fn specs_with(case_file: &str, body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let specs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    std::fs::copy(
        specs.join("requirements.json"),
        dir.path().join("requirements.json"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sequences")).unwrap();
    std::fs::write(dir.path().join("sequences").join(case_file), body).unwrap();
    dir
}

#[test]
fn run_reference_exits_0_and_writes_json_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = bin()
        .args(["run", "--target", "reference", "--format", "json", "-o"])
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["schema"], "virtio-conform/report/1");
    assert!(report["results"].as_array().unwrap().len() > 10);
    let out = bin()
        .args(["run", "--format", "junit", "--only", "init.*"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("<testsuite"));
}

#[test]
fn mutant_exits_1_with_replay_command() {
    let out = bin()
        .args(["run", "--target", "mutant:reset-sets-failed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("replay: virtio-conform run --target mutant:reset-sets-failed"),
        "{text}"
    );
    assert!(text.contains("RESET-DEV-01"), "{text}");
}

#[test]
fn bad_inputs_give_file_and_line() {
    let d = specs_with("bad.one.jsonl", "{\"case\":\"bad.one\",\"title\":\"t\",\"requirements\":[\"MMIO-DEV-01\"]}\n{\"op\":\"read\",\"reg\":\"NoSuchRegister\"}\n");
    let out = bin()
        .arg("--specs")
        .arg(d.path())
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.one.jsonl:2") && err.contains("NoSuchRegister"),
        "{err}"
    );

    let d = specs_with(
        "bad.two.jsonl",
        "{\"case\":\"bad.two\",\"title\":\"t\",\"requirements\":[\"NOPE-1\"]}\n",
    );
    let err = String::from_utf8_lossy(
        &bin()
            .arg("--specs")
            .arg(d.path())
            .arg("list")
            .output()
            .unwrap()
            .stderr,
    )
    .to_string();
    assert!(
        err.contains("bad.two.jsonl:1") && err.contains("NOPE-1"),
        "{err}"
    );

    let d = specs_with("bad.three.jsonl", "{\"case\":\"bad.three\",\"title\":\"t\",\"requirements\":[]}\n{\"op\":\"read\",\"reg\":\"Status\",\n");
    let err = String::from_utf8_lossy(
        &bin()
            .arg("--specs")
            .arg(d.path())
            .arg("list")
            .output()
            .unwrap()
            .stderr,
    )
    .to_string();
    assert!(err.contains("bad.three.jsonl:2"), "{err}");

    let out = bin()
        .args(["run", "--target", "mutant:nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mutant"));

    let dir = tempfile::tempdir().unwrap();
    let ex = dir.path().join("ex.json");
    std::fs::write(&ex, "{\"schema\":\"virtio-conform/expectations/1\",\n\"target\":\"x\",\"entries\":[{\"case\":\"a\",\"expect\":\"maybe\",\"reason\":\"r\"}]}").unwrap();
    let out = bin()
        .args(["run", "--expectations"])
        .arg(&ex)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expect must be"));
}

#[test]
fn expectations_turn_failures_into_xfail_and_stale_ones_into_xpass() {
    let dir = tempfile::tempdir().unwrap();
    let ex = dir.path().join("ex.json");
    std::fs::write(&ex, r#"{"schema":"virtio-conform/expectations/1","target":"mutant","entries":[{"case":"reset.*","expect":"fail","reason":"known: B10"},{"case":"*","expect":"skip","reason":"only reset cases here"}]}"#).unwrap();
    let out = bin()
        .args([
            "run",
            "--target",
            "mutant:reset-sets-failed",
            "--format",
            "json",
            "--expectations",
        ])
        .arg(&ex)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["summary"]["xfail"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["summary"]["fail"], 0);
    assert_eq!(out.status.code(), Some(0));
    let out = bin()
        .args(["run", "--target", "reference", "--expectations"])
        .arg(&ex)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stale expectation → xpass → exit 1"
    );
}

#[test]
fn compare_reports_broken_cases() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    bin()
        .args(["run", "--format", "json", "-o"])
        .arg(&a)
        .output()
        .unwrap();
    bin()
        .args([
            "run",
            "--target",
            "mutant:reset-sets-failed",
            "--format",
            "json",
            "-o",
        ])
        .arg(&b)
        .output()
        .unwrap();
    let out = bin().arg("compare").arg(&a).arg(&b).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("broken: ") && text.contains("reset"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn documented_report_example_parses_as_a_report() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/report.example.json");
    let r: virtio_conform::report::Report =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(r.schema, virtio_conform::report::REPORT_SCHEMA);
    assert!(r
        .results
        .iter()
        .any(|c| c.outcome == virtio_conform::outcome::Outcome::Fail && !c.failures.is_empty()));
}
