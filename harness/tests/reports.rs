//! Reports a CI system can trust: every report kind (run, replay, diff, matrix) validates
//! against its committed JSON Schema (`harness/schemas/`), JUnit XML reads as a JUnit
//! consumer expects it, and the terminal summary counts each outcome under its own name.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema(kind: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{kind}.schema.json"));
    let s: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&s)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts `doc` fits the schema of `kind`, listing every violation.
fn assert_fits(kind: &str, doc: &Value, what: &str) {
    let v = schema(kind);
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .take(10)
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not fit harness/schemas/{kind}.schema.json (update the schema with the report): {errors:#?}"
    );
}

fn json_of(args: &[&str]) -> (Option<i32>, Value) {
    let out = bin().args(args).output().unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

#[test]
fn run_reports_fit_their_schema() {
    for args in [
        &["run", "--format", "json"][..],
        &[
            "run",
            "--format",
            "json",
            "--device",
            "block",
            "--version",
            "1",
        ],
        &[
            "run",
            "--format",
            "json",
            "--target",
            "mutant:interrupt-ack-ignored",
        ],
        &["run", "--format", "json", "--target", "virtio-queue"],
        &[
            "run",
            "--format",
            "json",
            "--target",
            "mutant:reset-sets-failed",
            "--expectations",
            "specs/expectations/qemu-v2.json",
        ],
    ] {
        let out = bin().current_dir(root()).args(args).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_fits("report", &v, &format!("{args:?}"));
    }
    // The documented example too.
    let ex: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/report.example.json"))
            .unwrap(),
    )
    .unwrap();
    assert_fits("report", &ex, "examples/report.example.json");
}

#[test]
fn a_partial_report_fits_the_run_schema() {
    use virtio_conform::records::{partial_path, read_partial, RecordSink, RecordsHeader};
    let (_, full) = json_of(&["run", "--format", "json", "--only", "init.*"]);
    let report: virtio_conform::report::Report = serde_json::from_value(full).unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("r.json");
    let mut sink = RecordSink::create(
        &path,
        &RecordsHeader {
            schema: virtio_conform::records::RECORDS_SCHEMA.into(),
            tool: report.tool.clone(),
            spec: report.spec.clone(),
            target: report.target.clone(),
            started: report.started.clone(),
        },
    )
    .unwrap();
    for r in &report.results[..2] {
        sink.record(r);
    }
    let partial = read_partial(&partial_path(&path)).unwrap();
    assert_eq!(partial.results.len(), 2);
    assert_fits(
        "report",
        &serde_json::to_value(&partial).unwrap(),
        "a report read back from FILE.partial",
    );
}

#[test]
fn replay_reports_fit_their_schema() {
    let corpora = root().join("corpora");
    let seed = corpora.join("queue_chain/seed-basic");
    let (code, v) = json_of(&[
        "replay",
        "queue_chain",
        seed.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0));
    assert_fits("replay", &v, "replay of a seed");
    assert_eq!(v["subject"], "reference");
    // A regression input against its mutant: a failing result.
    let dir = corpora.join("queue_chain/regressions/used-idx-saturates");
    let input = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (code, v) = json_of(&[
        "replay",
        "queue_chain",
        input.to_str().unwrap(),
        "--mutant",
        "used-idx-saturates",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(1));
    assert_fits("replay", &v, "replay of a regression input");
    assert_eq!(v["results"][0]["outcome"], "fail");
    // A run-shaped document with a made-up device is not a valid report of either kind.
    let mut fake = v.clone();
    fake["schema"] = "virtio-conform/report/1".into();
    assert!(!schema("report").is_valid(&fake));
    let (_, mut run) = json_of(&["run", "--format", "json", "--only", "init.*"]);
    run["target"]["device"] = "fuzz".into();
    run["target"]["version"] = 0.into();
    assert!(!schema("report").is_valid(&run));
}

#[test]
fn diff_and_matrix_reports_fit_their_schema() {
    let d = tempfile::tempdir().unwrap();
    let diff = d.path().join("diff.json");
    let out = bin()
        .args([
            "diff",
            "--target",
            "mutant:reset-sets-failed",
            "--only",
            "reset.*",
            "--random",
            "3",
            "-o",
        ])
        .arg(&diff)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&diff).unwrap()).unwrap();
    assert!(!v["divergences"].as_array().unwrap().is_empty());
    assert_fits("diff", &v, "diff against a mutant");

    let m = d.path().join("m");
    let out = bin()
        .args([
            "matrix",
            "--target",
            "reference",
            "--target",
            "mutant:reset-sets-failed",
            "--device",
            "entropy",
            "--device",
            "block",
            "--version",
            "2",
            "--version",
            "1",
            "--driver",
            "spec",
            "--driver",
            "rcore",
            "-o",
        ])
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(m.join("matrix.json")).unwrap()).unwrap();
    assert_fits(
        "matrix",
        &v,
        "matrix of two targets, two devices, two versions, two driver personalities",
    );
    let cols = v["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 16);
    assert_eq!(
        cols.iter().filter(|c| c["driver"] == "rcore").count(),
        8,
        "one rcore column per target, device and version"
    );
}

/// Attributes of an XML start tag.
fn attrs(e: &quick_xml::events::BytesStart) -> std::collections::BTreeMap<String, String> {
    e.attributes()
        .map(|a| {
            let a = a.unwrap();
            (
                String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                a.unescape_value().unwrap().into_owned(),
            )
        })
        .collect()
}

#[derive(Debug, Default)]
struct JCase {
    attrs: std::collections::BTreeMap<String, String>,
    /// `failure`, `error` or `skipped`, with its attributes and text.
    status: Option<(String, std::collections::BTreeMap<String, String>, String)>,
}

/// Reads JUnit XML as a CI consumer does: the suite's attributes and each test case.
fn read_junit(xml: &str) -> (std::collections::BTreeMap<String, String>, Vec<JCase>) {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(xml);
    let mut suite = Default::default();
    let mut cases: Vec<JCase> = Vec::new();
    let mut in_status = false;
    loop {
        match r.read_event().unwrap() {
            ev @ (Event::Start(_) | Event::Empty(_)) => {
                let empty = matches!(ev, Event::Empty(_));
                let (Event::Start(e) | Event::Empty(e)) = ev else {
                    unreachable!()
                };
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                match name.as_str() {
                    "testsuite" => suite = attrs(&e),
                    "testcase" => cases.push(JCase {
                        attrs: attrs(&e),
                        status: None,
                    }),
                    "failure" | "error" | "skipped" => {
                        let c = cases.last_mut().expect("status outside a testcase");
                        c.status = Some((name, attrs(&e), String::new()));
                        in_status = !empty;
                    }
                    _ => {}
                }
            }
            Event::Text(t) if in_status => {
                let c = cases.last_mut().unwrap();
                c.status.as_mut().unwrap().2.push_str(&t.decode().unwrap());
            }
            Event::GeneralRef(g) if in_status => {
                let c = cases.last_mut().unwrap();
                let s = match g.decode().unwrap().as_ref() {
                    "apos" => "'",
                    "quot" => "\"",
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    _ => "?",
                };
                c.status.as_mut().unwrap().2.push_str(s);
            }
            Event::End(e) if matches!(e.name().as_ref(), b"failure" | b"error" | b"skipped") => {
                in_status = false;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (suite, cases)
}

#[test]
fn junit_reads_as_a_consumer_expects_and_agrees_with_the_exit_code() {
    // activation-failure-silent: one SHOULD (non_strict) result, no MUST failure: exit 0
    // unless --strict.
    for strict in [false, true] {
        let mut args = vec![
            "run",
            "--target",
            "mutant:activation-failure-silent",
            "--format",
            "junit",
        ];
        if strict {
            args.push("--strict");
        }
        let out = bin().args(&args).output().unwrap();
        let xml = String::from_utf8(out.stdout).unwrap();
        assert!(!xml.contains("Some("), "{xml}");
        let (suite, cases) = read_junit(&xml);
        let (_, report) = json_of(&[
            "run",
            "--target",
            "mutant:activation-failure-silent",
            "--format",
            "json",
        ]);
        let n = |o: &str| report["summary"][o].as_u64().unwrap() as usize;
        assert_eq!(
            n("non_strict"),
            1,
            "the chosen mutant gives one non_strict result"
        );
        let failures = cases
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.0 == "failure"))
            .count();
        let skipped = cases
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.0 == "skipped"))
            .count();
        assert_eq!(suite["tests"].parse::<usize>().unwrap(), cases.len());
        assert_eq!(suite["failures"].parse::<usize>().unwrap(), failures);
        assert_eq!(skipped, n("unsupported") + n("skipped"));
        // A failure in the XML exactly when `run` exits 1.
        let expected_failures =
            n("fail") + n("timeout") + n("xpass") + if strict { n("non_strict") } else { 0 };
        assert_eq!(failures, expected_failures, "strict {strict}");
        assert_eq!(out.status.code(), Some(if failures > 0 { 1 } else { 0 }));
        // The timestamp parses as RFC 3339; every case has a spec-area classname and a time.
        chrono::DateTime::parse_from_rfc3339(&suite["timestamp"]).unwrap();
        for c in &cases {
            assert!(c.attrs["classname"].starts_with('§'), "{:?}", c.attrs);
            assert!(c.attrs["time"].parse::<f64>().unwrap() >= 0.0);
        }
        for c in cases
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.0 == "failure"))
        {
            let (_, a, text) = c.status.as_ref().unwrap();
            assert!(a.contains_key("message") && a.contains_key("type"), "{a:?}");
            // Requirement ids with their sections, the step and line, the replay command.
            assert!(text.contains(" §"), "{text}");
            assert!(text.contains("(line "), "{text}");
            assert!(text.contains("replay: virtio-conform run"), "{text}");
        }
    }
}

#[test]
fn the_summary_names_every_outcome() {
    use virtio_conform::outcome::{Outcome, Severity};
    use virtio_conform::report::{closing_line, summarize, CaseResult, Report};
    let (_, v) = json_of(&["run", "--format", "json", "--only", "init.spec-order"]);
    let mut report: Report = serde_json::from_value(v).unwrap();
    let template = report.results[0].clone();
    report.results = Outcome::ALL
        .iter()
        .map(|&o| CaseResult {
            case: format!("x.{}", o.name()),
            outcome: o,
            severity: Severity::None,
            ..template.clone()
        })
        .collect();
    report.summary = summarize(&report.results);
    assert_eq!(
        closing_line(&report),
        "1 passed, 4 failed, 1 non_strict, 1 informational, 1 unsupported, 1 skipped, 1 xfail"
    );
    let text = virtio_conform::report::text_summary(
        &report,
        &virtio_conform::suite::Suite::load_default()
            .unwrap()
            .catalog,
        false,
    );
    for o in Outcome::ALL {
        assert!(
            text.contains(&format!("1 {}", o.name())),
            "{}: {text}",
            o.name()
        );
    }
}

/// No report text shows a Rust debug form of an optional value (`Some(..)`, `None`): the run
/// report in JSON, JUnit XML and the verbose terminal summary, against mutants that fail
/// checks of every kind (registers, status, rings, malformed chains, block status bytes,
/// console and net host-side checks, packed rings), on both transport versions.
#[test]
fn no_report_text_shows_rust_option_debug_forms() {
    use virtio_conform::suite::{run_suite, Options, Suite};
    use virtio_conform::target::{DeviceKind, ReferenceTarget};
    use virtio_reference_device::{Mutant, TransportVersion};
    let suite = Suite::load_default().unwrap();
    let runs: &[(&str, DeviceKind, TransportVersion)] = &[
        (
            "reset-keeps-queue-ready",
            DeviceKind::Entropy,
            TransportVersion::Modern,
        ),
        (
            "single-bit-status-writes",
            DeviceKind::Entropy,
            TransportVersion::Legacy,
        ),
        (
            "buffer-end-off-by-one",
            DeviceKind::Entropy,
            TransportVersion::Modern,
        ),
        (
            "malformed-request-not-returned",
            DeviceKind::Block,
            TransportVersion::Modern,
        ),
        (
            "writes-readable-buffers",
            DeviceKind::Entropy,
            TransportVersion::Modern,
        ),
        (
            "block-unknown-type-ok",
            DeviceKind::Block,
            TransportVersion::Modern,
        ),
        (
            "read-only-writes-accepted",
            DeviceKind::Block,
            TransportVersion::Legacy,
        ),
        (
            "console-rx-len-overstated",
            DeviceKind::Console,
            TransportVersion::Modern,
        ),
        (
            "net-num-buffers-always-one",
            DeviceKind::Net,
            TransportVersion::Modern,
        ),
        ("wrong-device-id", DeviceKind::Net, TransportVersion::Legacy),
        (
            "packed-used-wrap-bit-constant",
            DeviceKind::Entropy,
            TransportVersion::Modern,
        ),
        (
            "config-generation-static",
            DeviceKind::Block,
            TransportVersion::Modern,
        ),
        (
            "no-chain-length-cap",
            DeviceKind::Entropy,
            TransportVersion::Modern,
        ),
    ];
    let mut failures = 0;
    for &(name, device, version) in runs {
        let mutant = Mutant::from_name(name).unwrap_or_else(|| panic!("no mutant {name}"));
        let report = run_suite(
            &suite,
            move || ReferenceTarget::new(device, version, Some(mutant)),
            &Options::default(),
        );
        failures += report
            .results
            .iter()
            .map(|r| r.failures.len())
            .sum::<usize>();
        let texts = [
            ("JSON", serde_json::to_string_pretty(&report).unwrap()),
            ("JUnit", virtio_conform::report::junit(&report)),
            (
                "terminal",
                virtio_conform::report::text_summary(&report, &suite.catalog, true),
            ),
        ];
        for (kind, text) in texts {
            for line in text.lines() {
                assert!(
                    !line.contains("Some(") && !line.contains("None"),
                    "{kind} report of mutant:{name} ({device:?}, {version:?}): {line}"
                );
            }
        }
    }
    assert!(
        failures >= runs.len(),
        "the mutants fail checks: {failures}"
    );
}
