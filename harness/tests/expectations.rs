//! Expectations per check: only the failed checks an entry names become `xfail`, any other
//! failed check of the same case stays unexpected, and entries that excuse nothing are stale.

use std::path::{Path, PathBuf};
use virtio_conform::outcome::Outcome;
use virtio_conform::report::{Expectations, Report};
use virtio_conform::suite::{default_specs_dir, run_suite, Options, Suite};
use virtio_conform::target::once;
use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::TransportVersion;

/// A specs directory holding the shipped catalog and the given cases (id, lines after the
/// header).
fn specs_with(cases: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        default_specs_dir().join("requirements.json"),
        d.path().join("requirements.json"),
    )
    .unwrap();
    std::fs::create_dir(d.path().join("sequences")).unwrap();
    for (id, steps) in cases {
        let header = format!(
            r#"{{"case": "{id}", "title": "t", "requirements": ["MMIO-DEV-01", "MMIO-DEV-02"]}}"#
        );
        std::fs::write(
            d.path().join("sequences").join(format!("{id}.jsonl")),
            format!("{header}\n{steps}\n"),
        )
        .unwrap();
    }
    d
}

/// Two checks the reference fails on purpose: MagicValue (MMIO-DEV-01) and Version
/// (MMIO-DEV-02) compared with wrong values.
const TWO_FAILING: &str = r#"{"op": "read", "reg": "MagicValue", "expect": 0, "req": "MMIO-DEV-01"}
{"op": "read", "reg": "Version", "expect": 7, "req": "MMIO-DEV-02"}"#;

fn run(specs: &Path, expectations: &str) -> Report {
    let suite = Suite::load(specs).unwrap();
    let ex = Expectations::parse(expectations, "test.json").unwrap();
    let t = ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None).unwrap();
    run_suite(
        &suite,
        once(t),
        &Options {
            expectations: Some(ex),
            ..Options::default()
        },
    )
}

fn per_check(entries: &str) -> String {
    format!(
        r#"{{"schema": "virtio-conform/expectations/2", "target": "reference", "entries": [{entries}]}}"#
    )
}

#[test]
fn only_the_named_checks_become_xfail() {
    let d = specs_with(&[("x.two", TWO_FAILING)]);
    let one = per_check(r#"{"case": "x.*", "requirements": ["MMIO-DEV-01"], "reason": "known"}"#);
    let r = run(d.path(), &one);
    let c = &r.results[0];
    assert_eq!(c.outcome, Outcome::Fail, "{c:?}");
    assert_eq!(c.failures[0].xfail.as_deref(), Some("known"));
    assert_eq!(c.failures[1].xfail, None);
    assert_eq!(r.exit_code(false), 1);

    let both = per_check(
        r#"{"case": "x.*", "requirements": ["MMIO-DEV-01", "MMIO-DEV-02"], "reason": "known"}"#,
    );
    let r = run(d.path(), &both);
    assert_eq!(r.results[0].outcome, Outcome::Xfail, "{:?}", r.results[0]);
    assert_eq!(r.exit_code(true), 0);
    assert!(r.stale_expectations.is_empty());
}

#[test]
fn step_and_observed_value_narrow_an_entry() {
    let d = specs_with(&[("x.two", TWO_FAILING)]);
    // The right step and value: excused.
    let ok = per_check(
        r#"{"case": "x.two", "requirements": ["MMIO-DEV-01"], "step": 0, "observed": "MagicValue = 0x74726976", "reason": "r"},
           {"case": "x.two", "requirements": ["MMIO-DEV-02"], "step": 1, "reason": "r"}"#,
    );
    assert_eq!(run(d.path(), &ok).results[0].outcome, Outcome::Xfail);
    // Another observed value: the check stays unexpected and the entry is stale.
    let other = per_check(
        r#"{"case": "x.two", "requirements": ["MMIO-DEV-01"], "observed": "MagicValue = 0x1", "reason": "r"},
           {"case": "x.two", "requirements": ["MMIO-DEV-02"], "step": 1, "reason": "r"}"#,
    );
    let r = run(d.path(), &other);
    assert_eq!(r.results[0].outcome, Outcome::Fail);
    assert_eq!(r.stale_expectations.len(), 1, "{:?}", r.stale_expectations);
    // A glob over the observed value.
    let glob = per_check(
        r#"{"case": "x.two", "requirements": ["MMIO-DEV-01"], "observed": "MagicValue = 0x7472*", "reason": "r"},
           {"case": "x.two", "requirements": ["MMIO-DEV-02"], "reason": "r"}"#,
    );
    assert_eq!(run(d.path(), &glob).results[0].outcome, Outcome::Xfail);
    // Another step: likewise.
    let step = per_check(
        r#"{"case": "x.two", "requirements": ["MMIO-DEV-01", "MMIO-DEV-02"], "step": 1, "reason": "r"}"#,
    );
    assert_eq!(run(d.path(), &step).results[0].outcome, Outcome::Fail);
}

#[test]
fn a_new_failing_check_in_an_xfailed_case_is_unexpected() {
    let before = specs_with(&[(
        "x.case",
        r#"{"op": "read", "reg": "MagicValue", "expect": 0, "req": "MMIO-DEV-01"}"#,
    )]);
    let ex = per_check(r#"{"case": "x.case", "requirements": ["MMIO-DEV-01"], "reason": "known"}"#);
    let r = run(before.path(), &ex);
    assert_eq!(r.results[0].outcome, Outcome::Xfail);
    assert_eq!(r.exit_code(true), 0);
    // The same case with one more failing check (another requirement): exit 1.
    let after = specs_with(&[("x.case", TWO_FAILING)]);
    let r = run(after.path(), &ex);
    assert_eq!(r.results[0].outcome, Outcome::Fail);
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn stale_entries_are_reported_and_fail_under_strict() {
    let d = specs_with(&[
        ("x.two", TWO_FAILING),
        (
            "x.pass",
            r#"{"op": "read", "reg": "MagicValue", "expect": "0x74726976"}"#,
        ),
    ]);
    let ex = per_check(
        r#"{"case": "x.two", "requirements": ["MMIO-DEV-01", "MMIO-DEV-02"], "reason": "used"},
           {"case": "x.pass", "requirements": ["MMIO-DEV-01"], "reason": "passes now"},
           {"case": "y.nothing-*", "requirements": ["MMIO-DEV-01"], "reason": "typo"}"#,
    );
    let r = run(d.path(), &ex);
    let stale: Vec<&str> = r
        .stale_expectations
        .iter()
        .map(|s| s.case.as_str())
        .collect();
    assert_eq!(stale, ["x.pass", "y.nothing-*"]);
    assert_eq!(r.exit_code(false), 0, "a warning without --strict");
    assert_eq!(r.exit_code(true), 1, "an error under --strict");
    // An entry for a case that did not run (filtered out) is not stale.
    let suite = Suite::load(d.path()).unwrap();
    let t = ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None).unwrap();
    let r = run_suite(
        &suite,
        once(t),
        &Options {
            only: vec!["x.two".into()],
            expectations: Some(Expectations::parse(&ex, "t").unwrap()),
            ..Options::default()
        },
    );
    let stale: Vec<&str> = r
        .stale_expectations
        .iter()
        .map(|s| s.case.as_str())
        .collect();
    assert_eq!(stale, ["y.nothing-*"]);
}

#[test]
fn malformed_entries_are_refused_with_the_file_name() {
    for (text, want) in [
        (
            per_check(r#"{"case": "a", "reason": "no ids"}"#),
            "requirements",
        ),
        (
            per_check(r#"{"case": "a", "requirements": ["X"], "reason": " "}"#),
            "reason is mandatory",
        ),
        (
            per_check(r#"{"case": "a", "requirements": ["X"]}"#),
            "missing field `reason`",
        ),
        (
            per_check(r#"{"case": "[", "requirements": ["X"], "reason": "r"}"#),
            "entry `[`",
        ),
        (
            r#"{"schema": "virtio-conform/expectations/9", "target": "t", "entries": []}"#.into(),
            "schema",
        ),
        (
            r#"{"schema": "virtio-conform/expectations/1", "target": "t", "entries": [{"case": "a", "expect": "fail", "requirements": ["X"], "reason": "r"}]}"#.into(),
            "need schema",
        ),
    ] {
        let e = Expectations::parse(&text, "ex.json").unwrap_err().to_string();
        assert!(e.contains("ex.json") && e.contains(want), "{e}");
    }
}

#[test]
fn whole_case_form_is_still_read() {
    let d = specs_with(&[("x.two", TWO_FAILING)]);
    let ex = r#"{"schema": "virtio-conform/expectations/1", "target": "t", "entries": [{"case": "x.*", "expect": "fail", "reason": "old form"}]}"#;
    let r = run(d.path(), ex);
    assert_eq!(r.results[0].outcome, Outcome::Xfail);
}

#[test]
fn shipped_expectation_files_are_per_check_with_reasons() {
    let suite = Suite::load_default().unwrap();
    for f in ["qemu-v1.json", "qemu-v2.json"] {
        let p = default_specs_dir().join("expectations").join(f);
        let (ex, _) = Expectations::load(&p).unwrap();
        assert!(ex.per_check(), "{f} uses the per-check form");
        for e in &ex.entries {
            assert!(!e.requirements.is_empty() && e.reason.len() > 20, "{e:?}");
            for id in &e.requirements {
                assert!(suite.catalog.requirements.contains_key(id), "{f}: {id}");
            }
        }
    }
}

/// The QEMU run with the committed expectations, from a copy of the specs in which one
/// xfailed case (`features.page-2-reads-zero`) gets one more failing check: exit 1.
#[test]
fn qemu_xfailed_case_with_a_new_failing_check_exits_1() {
    let opts = QemuOptions::new(DeviceKind::Entropy, TransportVersion::Modern);
    if let Err(e) = qemu_version(&opts.qemu) {
        if std::env::var_os("VIRTIO_CONFORM_REQUIRE_QEMU").is_some_and(|v| v == "1") {
            panic!("QEMU required but unavailable: {e}");
        }
        println!("skipped: QEMU unavailable: {e}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = default_specs_dir();
    std::fs::copy(
        src.join("requirements.json"),
        d.path().join("requirements.json"),
    )
    .unwrap();
    std::fs::create_dir(d.path().join("sequences")).unwrap();
    for f in std::fs::read_dir(src.join("sequences")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.path().join("sequences").join(f.file_name().unwrap())).unwrap();
    }
    let case = "features.page-2-reads-zero.jsonl";
    let original = std::fs::read_to_string(src.join("sequences").join(case)).unwrap();
    let ex_path: PathBuf = src.join("expectations").join("qemu-v2.json");
    let run_qemu = |specs: &Path| {
        let suite = Suite::load(specs).unwrap();
        let t = QemuTarget::new(opts.clone()).expect("QEMU starts");
        run_suite(
            &suite,
            once(t),
            &Options {
                only: vec!["features.page-2-reads-zero".into()],
                expectations: Some(Expectations::load(&ex_path).unwrap()),
                ..Options::default()
            },
        )
    };
    let r = run_qemu(d.path());
    assert_eq!(r.results[0].outcome, Outcome::Xfail, "{:?}", r.results[0]);
    // Stale entries for cases that did not run are not reported.
    assert_eq!(r.exit_code(true), 0, "{:?}", r.stale_expectations);
    std::fs::write(
        d.path().join("sequences").join(case),
        format!(
            "{}\n{{\"op\": \"read\", \"reg\": \"Version\", \"expect\": 7, \"req\": \"MMIO-DEV-02\"}}\n",
            original.trim_end()
        ),
    )
    .unwrap();
    let r = run_qemu(d.path());
    assert_eq!(r.results[0].outcome, Outcome::Fail, "{:?}", r.results[0]);
    assert_eq!(r.exit_code(true), 1);
}

/// The CLI (whose cases run on parallel workers) reports stale entries the same way: a
/// warning without `--strict`, exit 1 with it.
#[test]
fn cli_reports_stale_entries_across_workers() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex.json");
    std::fs::write(
        &ex,
        per_check(
            r#"{"case": "reset.clears-interrupt-status", "requirements": ["MMIO-DEV-05"], "reason": "passes on the reference"},
               {"case": "reset.clears-queue-ready", "requirements": ["MMIO-DEV-06"], "reason": "also passes"}"#,
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_virtio-conform");
    for (strict, code) in [(false, 0), (true, 1)] {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["run", "--only", "reset.*", "-j", "2", "--expectations"])
            .arg(&ex);
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{text}");
        assert_eq!(text.matches("stale expectation").count(), 2, "{text}");
    }
}
