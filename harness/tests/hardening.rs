//! Hostile input never panics or hangs the harness: malformed case files, catalogs and flags
//! are errors naming the file and line (or the flag) with exit 2; a case that never ends
//! becomes `timeout`; a mistake in a case is a case error, never the device's `fail`.

use std::process::{Command, Stdio};
use std::time::Duration;
use virtio_conform::case::{Case, Op, QueueSpec, Step, Upto};
use virtio_conform::catalog::Catalog;
use virtio_conform::outcome::{Outcome, Severity};
use virtio_conform::runner::{run_case, run_case_within};
use virtio_conform::suite::Suite;
use virtio_conform::target::{DeviceKind, ReferenceTarget, Target};
use virtio_reference_device::TransportVersion;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
}

fn shipped_specs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs")
}

/// A specs folder with the shipped catalog and one case file.
fn specs_with(case_file: &str, body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        shipped_specs().join("requirements.json"),
        dir.path().join("requirements.json"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sequences")).unwrap();
    std::fs::write(dir.path().join("sequences").join(case_file), body).unwrap();
    dir
}

const HEADER: &str = r#"{"case": "bad.case", "title": "t", "requirements": ["MMIO-DEV-01"]}"#;

/// Runs `run` on a specs folder holding `bad.case.jsonl` = HEADER + `steps`; returns the exit
/// code and stderr.
fn run_case_file(body: &str) -> (Option<i32>, String) {
    let d = specs_with("bad.case.jsonl", body);
    let out = bin()
        .arg("--specs")
        .arg(d.path())
        .arg("run")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts exit 2, the file and line, each of `words` in the message, and no panic.
fn assert_rejected(body: &str, line: usize, words: &[&str]) {
    let (code, err) = run_case_file(body);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&format!("bad.case.jsonl:{line}:")), "{err}");
    for w in words {
        assert!(err.contains(w), "missing `{w}` in: {err}");
    }
}

fn with_steps(steps: &[&str]) -> String {
    let mut s = format!("{HEADER}\n");
    for l in steps {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[test]
fn size_zero_queue_then_post_or_cycle_is_a_case_error_not_a_panic() {
    for step in [
        r#"{"op": "post", "chain": [{"len": 4, "write": true}]}"#,
        r#"{"op": "cycle", "count": 4, "batch": 2}"#,
    ] {
        assert_rejected(
            &with_steps(&[
                r#"{"op": "init", "queues": [{"index": 0, "size": 0}]}"#,
                step,
            ]),
            3,
            &["queue 0", "size 0", "line 2"],
        );
    }
    // The interpreter itself refuses too (a case built in code, not parsed).
    let suite = Suite::load_default().unwrap();
    let mut t = ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None).unwrap();
    let mut case = suite.cases[0].clone();
    case.steps = vec![
        Step {
            line: 2,
            op: Op::Init {
                features: None,
                order: None,
                upto: Upto::DriverOk,
                queues: Some(vec![QueueSpec {
                    index: 0,
                    size: 0,
                    align: None,
                }]),
                grade: Default::default(),
            },
        },
        Step {
            line: 3,
            op: Op::Cycle {
                queue: 0,
                count: 4,
                batch: 2,
                len: None,
                grade: Default::default(),
            },
        },
    ];
    t.fresh().unwrap();
    let run = run_case(&mut t, &case, &suite.catalog);
    assert_eq!(run.outcome, Outcome::Error, "{run:?}");
    let why = run.reason.as_deref().unwrap();
    assert!(
        why.contains("case error") && why.contains("size 0"),
        "{run:?}"
    );
}

#[test]
fn non_ascii_hex_is_an_error_not_a_panic() {
    assert_rejected(
        &with_steps(&[r#"{"op": "mem_write", "addr": 4096, "data": "aéb"}"#]),
        2,
        &["aéb", "`é` is not a hex digit", "field `data`"],
    );
}

#[test]
fn list_into_a_closed_pipe_does_not_panic() {
    for args in [&["list"][..], &["list", "--requirements"], &["coverage"]] {
        let mut child = bin()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything (as `| head -0` would).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn an_endless_cycle_ends_as_timeout_high() {
    let suite = Suite::load_default().unwrap();
    let text = with_steps(&[
        r#"{"op": "init"}"#,
        r#"{"op": "cycle", "count": 4000000000, "batch": 8}"#,
    ]);
    let case = Case::parse(&text, "endless.jsonl", &suite.catalog).unwrap();
    let mut t = ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None).unwrap();
    t.fresh().unwrap();
    let run = run_case_within(&mut t, &case, &suite.catalog, Duration::from_millis(300));
    assert_eq!(run.outcome, Outcome::Timeout, "{run:?}");
    assert_eq!(run.severity, Severity::High, "{run:?}");
    let f = &run.failures[0];
    assert_eq!(f.line, Some(3), "{run:?}");
    assert!(f.observed.contains("wall-clock budget"), "{run:?}");
}

#[test]
fn numbers_wider_than_their_field_are_rejected() {
    for (step, words) in [
        (
            r#"{"op": "write", "reg": "Status", "width": 1, "value": "0x1ff"}"#,
            &["field `value`", "0x1ff", "8 bits"][..],
        ),
        (
            r#"{"op": "read", "reg": "Status", "width": 2, "expect": 65536}"#,
            &["field `expect`", "16 bits"][..],
        ),
        (
            r#"{"op": "read", "offset": "0x2000"}"#,
            &["field `offset`", "0x2000"][..],
        ),
        (
            r#"{"op": "read", "reg": "Config", "offset": "0xffffffffffffffff"}"#,
            &["field `offset`"][..],
        ),
        (
            r#"{"op": "post", "head": 65536, "chain": [{"len": 1, "write": true}]}"#,
            &["field `head`", "0x10000", "16 bits"][..],
        ),
        (
            r#"{"op": "post", "chain": [{"len": "0x100000000", "write": true}]}"#,
            &["field `chain[0].len`", "32 bits"][..],
        ),
        (
            r#"{"op": "set_avail_idx", "value": 70000}"#,
            &["field `value`", "16 bits"][..],
        ),
        (
            r#"{"op": "queue", "index": 0, "size": 70000}"#,
            &["field `size`", "70000", "u16"][..],
        ),
        (
            r#"{"op": "kick", "value": -1}"#,
            &["field `value`", "-1", "negative"][..],
        ),
    ] {
        assert_rejected(&with_steps(&[r#"{"op": "init"}"#, step]), 3, words);
    }
}

#[test]
fn header_versions_and_devices_must_be_known() {
    for (header, words) in [
        (
            r#"{"case": "bad.case", "title": "t", "requirements": ["MMIO-DEV-01"], "versions": [3]}"#,
            &["`versions`", "3"][..],
        ),
        (
            r#"{"case": "bad.case", "title": "t", "requirements": ["MMIO-DEV-01"], "devices": ["toaster"]}"#,
            &["`devices`", "toaster"][..],
        ),
        (
            r#"{"case": "bad.case", "title": "t", "requirements": ["MMIO-DEV-01"], "versions": []}"#,
            &["`versions` is empty"][..],
        ),
    ] {
        assert_rejected(&format!("{header}\n{{\"op\": \"reset\"}}\n"), 1, words);
    }
}

#[test]
fn header_errors_name_the_header_line_after_comments() {
    let body = "// a comment\n\n// another\n{\"case\": \"bad.case\", \"title\": \"t\", \"requirements\": [\"NOPE-1\"]}\n";
    assert_rejected(body, 4, &["NOPE-1"]);
    let body = "// a comment\n{\"case\": \"other.id\", \"title\": \"t\", \"requirements\": [\"MMIO-DEV-01\"]}\n";
    assert_rejected(body, 2, &["differs from the file name"]);
}

#[test]
fn messages_name_the_field_and_value_without_serde_internals() {
    for (step, words) in [
        (
            r#"{"op": "read", "reg": "Status", "expect": "banana"}"#,
            &["field `expect`", "`banana` is not a number"][..],
        ),
        (
            r#"{"op": "init", "features": ["WARP_DRIVE"]}"#,
            &["`WARP_DRIVE`", "field `features`"][..],
        ),
        (
            r#"{"op": "expect_used", "req": 5}"#,
            &["requirement id"][..],
        ),
        (r#"{"op": "blk", "type": "teleport"}"#, &["`teleport`"][..]),
    ] {
        let (code, err) = run_case_file(&with_steps(&[step]));
        assert_eq!(code, Some(2), "{err}");
        for w in words {
            assert!(err.contains(w), "missing `{w}` in: {err}");
        }
        for bad in ["untagged enum", "Name(", "line 1 column"] {
            assert!(!err.contains(bad), "`{bad}` in: {err}");
        }
    }
    // A syntax error gives the file line and the column in it.
    let (code, err) = run_case_file(&with_steps(&[r#"{"op": "reset",}"#]));
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.case.jsonl:2: column"), "{err}");
    assert!(!err.contains("line 1 column"), "{err}");
}

#[test]
fn a_step_on_a_queue_never_set_up_is_a_case_error() {
    // Caught when the file loads.
    assert_rejected(
        &with_steps(&[
            r#"{"op": "init"}"#,
            r#"{"op": "post", "queue": 1, "chain": [{"len": 4, "write": true}]}"#,
        ]),
        3,
        &["queue 1", "before any earlier step sets it up"],
    );
    assert_rejected(
        &with_steps(&[r#"{"op": "read", "reg": "Status", "expect_var": "x"}"#]),
        2,
        &["$x", "save"],
    );
    // And by the interpreter for a case built in code: an error, not the device's fail.
    let suite = Suite::load_default().unwrap();
    let mut case = suite.cases[0].clone();
    case.steps = vec![Step {
        line: 7,
        op: Op::ExpectUsed {
            queue: 3,
            count: None,
            count_min: None,
            len: None,
            len_max: None,
            len_min: None,
            none: false,
            grade: Default::default(),
        },
    }];
    let mut t = ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None).unwrap();
    t.fresh().unwrap();
    let run = run_case(&mut t, &case, &suite.catalog);
    assert_eq!(run.outcome, Outcome::Error, "{run:?}");
    assert!(run.failures.is_empty(), "{run:?}");
    let why = run.reason.unwrap();
    assert!(why.contains("case error") && why.contains(":7"), "{why}");
}

#[test]
fn invalid_glob_and_empty_selection_exit_2() {
    for (args, words) in [
        (
            &["run", "--only", "["][..],
            &["--only", "`[`", "invalid glob"][..],
        ),
        (
            &["run", "--skip", "a{b"][..],
            &["--skip", "invalid glob"][..],
        ),
        (
            &["run", "--only", "no.such.case"][..],
            &["no case matches"][..],
        ),
        (
            &[
                "run",
                "--device",
                "block",
                "--only",
                "init.linux-order",
                "--skip",
                "*",
            ][..],
            &["no case matches"][..],
        ),
        (
            &["diff", "--only", "["][..],
            &["--only", "invalid glob"][..],
        ),
    ] {
        let out = bin().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: missing `{w}` in: {err}");
        }
    }
}

#[test]
fn catalog_level_and_section_are_validated() {
    let text = std::fs::read_to_string(shipped_specs().join("requirements.json")).unwrap();
    let first_level = text.find("\"level\": \"MUST NOT\"").unwrap();
    let bad_level = format!(
        "{}\"level\": \"MUSTN'T\"{}",
        &text[..first_level],
        &text[first_level + "\"level\": \"MUST NOT\"".len()..]
    );
    let err = Catalog::parse(&bad_level, "requirements.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("requirements.json:6:") && err.contains("MUSTN'T") && err.contains("`level`"),
        "{err}"
    );
    let bad_section = text.replacen("\"section\": \"2.1.2\"", "\"section\": \"two\"", 1);
    let err = Catalog::parse(&bad_section, "requirements.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`section`") && err.contains("`two`"), "{err}");
    // Through the CLI: exit 2.
    let d = specs_with("x.jsonl", "");
    std::fs::write(d.path().join("requirements.json"), bad_level).unwrap();
    let out = bin()
        .arg("--specs")
        .arg(d.path())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A specs folder with a quick passing case and a case that never ends on its own.
fn slow_specs() -> tempfile::TempDir {
    let d = specs_with(
        "a.quick.jsonl",
        "{\"case\": \"a.quick\", \"title\": \"quick\", \"requirements\": [\"RESET-DEV-01\"]}\n{\"op\": \"reset\"}\n",
    );
    std::fs::write(
        d.path().join("sequences/b.endless.jsonl"),
        "{\"case\": \"b.endless\", \"title\": \"endless\", \"requirements\": [\"VQ-DEV-21\"]}\n{\"op\": \"init\"}\n{\"op\": \"cycle\", \"count\": 4000000000, \"batch\": 8}\n",
    )
    .unwrap();
    d
}

/// Starts `run -o FILE` on the slow specs, waits until the quick case is recorded, sends
/// `sig`, and returns (exit code, stdout, the report file's text).
fn interrupt_run(sig: nix::sys::signal::Signal, format: &str) -> (Option<i32>, String, String) {
    let d = slow_specs();
    let report = d.path().join("out.report");
    let child = bin()
        .arg("--specs")
        .arg(d.path())
        .args(["run", "-j", "1", "--format", format, "-o"])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = virtio_conform::records::partial_path(&report);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = std::fs::read_to_string(&partial)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the quick case was never recorded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The records file alone is already a usable partial report.
    let recovered = virtio_conform::records::read_partial(&partial).unwrap();
    assert_eq!(recovered.results.len(), 1);
    assert_eq!(recovered.results[0].case, "a.quick");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        !partial.exists(),
        "records file left after a clean interruption"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read_to_string(&report).unwrap_or_default(),
    )
}

#[test]
fn sigint_and_sigterm_leave_a_partial_report_and_a_summary() {
    use nix::sys::signal::Signal;
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let (c, stdout, text) = interrupt_run(sig, "json");
        assert_eq!(c, Some(code), "{stdout}");
        let r: virtio_conform::report::Report = serde_json::from_str(&text).unwrap();
        assert_eq!(r.results.len(), 1, "{text}");
        assert_eq!(r.results[0].case, "a.quick");
        assert_eq!(r.results[0].outcome, Outcome::Pass);
        assert!(
            r.interrupted.as_deref().unwrap().contains(sig.as_str()),
            "{text}"
        );
        // The printed summary says what ran.
        assert!(
            stdout.contains("1 cases") && stdout.contains("1 pass"),
            "{stdout}"
        );
        assert!(stdout.contains("interrupted"), "{stdout}");
    }
    let (c, _, text) = interrupt_run(Signal::SIGINT, "junit");
    assert_eq!(c, Some(130));
    assert!(
        text.contains("a.quick") && !text.contains("b.endless"),
        "{text}"
    );
}

#[test]
fn sigkill_leaves_a_records_file_that_reads_as_the_partial_report() {
    // SIGKILL gives the run no chance to finalise: what ran must still be on disk.
    let d = slow_specs();
    let report = d.path().join("killed.json");
    let mut child = bin()
        .arg("--specs")
        .arg(d.path())
        .args(["run", "-j", "1", "--format", "json", "-o"])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = virtio_conform::records::partial_path(&report);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&partial)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 2
    {
        assert!(
            std::time::Instant::now() < end,
            "the quick case was never recorded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The writability check may have created the report file; it cannot hold a report.
    let finished = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(
        serde_json::from_str::<virtio_conform::report::Report>(&finished).is_err(),
        "a killed run cannot have finalised: {finished}"
    );
    let recovered = virtio_conform::records::read_partial(&partial).unwrap();
    assert_eq!(recovered.results.len(), 1);
    assert_eq!(recovered.results[0].case, "a.quick");
    assert_eq!(recovered.results[0].outcome, Outcome::Pass);
}

#[test]
fn an_unwritable_report_path_fails_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "-o"])
        .arg(d.path().join("no/such/dir/r.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("r.json") && err.contains("cannot write"),
        "{err}"
    );
    // Nothing ran: no summary on stdout.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn parallel_workers_give_the_same_report_as_one() {
    let run = |jobs: &str| {
        let out = bin()
            .args([
                "run",
                "--target",
                "mutant:used-idx-saturates",
                "--format",
                "json",
                "-j",
                jobs,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let r: virtio_conform::report::Report = serde_json::from_slice(&out.stdout).unwrap();
        r.results
            .into_iter()
            .map(|r| (r.case, r.outcome, r.failures))
            .collect::<Vec<_>>()
    };
    let one = run("1");
    assert!(one.len() > 50);
    assert_eq!(one, run("3"));
}

#[test]
fn parallel_workers_report_the_same_stale_expectations_as_one_sequential_run() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex.json");
    std::fs::write(
        &ex,
        r#"{"schema": "virtio-conform/expectations/2", "target": "t", "entries": [
  {"case": "reset.reinit-works", "requirements": ["RESET-DEV-01"], "reason": "used"},
  {"case": "features.page-0-and-1", "requirements": ["MMIO-REG-01"], "reason": "ran, excused nothing"},
  {"case": "no.such.case", "requirements": ["RESET-DEV-01"], "reason": "names nothing"},
  {"case": "init.*", "requirements": ["RESET-DEV-01"], "reason": "many cases"},
  {"case": "init.*", "requirements": ["MMIO-REG-01"], "reason": "many cases, nothing"}
]}"#,
    )
    .unwrap();
    let suite = Suite::load_default().unwrap();
    let make = || {
        ReferenceTarget::new(
            DeviceKind::Entropy,
            TransportVersion::Modern,
            virtio_reference_device::Mutant::from_name("reset-sets-failed"),
        )
    };
    let sequential = virtio_conform::suite::run_suite(
        &suite,
        make,
        &virtio_conform::suite::Options {
            expectations: Some(virtio_conform::report::Expectations::load(&ex).unwrap()),
            jobs: 1,
            ..Default::default()
        },
    );
    let stale: Vec<&str> = sequential
        .stale_expectations
        .iter()
        .map(|s| s.reason.as_str())
        .collect();
    assert_eq!(
        stale,
        [
            "ran, excused nothing",
            "names nothing",
            "many cases, nothing"
        ]
    );
    for jobs in ["1", "3"] {
        let out = bin()
            .args([
                "run",
                "--target",
                "mutant:reset-sets-failed",
                "--format",
                "json",
                "-j",
                jobs,
            ])
            .arg("--expectations")
            .arg(&ex)
            .output()
            .unwrap();
        let r: virtio_conform::report::Report = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            r.stale_expectations, sequential.stale_expectations,
            "-j {jobs}"
        );
        let outcomes = |r: &virtio_conform::report::Report| {
            r.results
                .iter()
                .map(|c| (c.case.clone(), c.outcome))
                .collect::<Vec<_>>()
        };
        assert_eq!(outcomes(&r), outcomes(&sequential), "-j {jobs}");
    }
}

#[test]
fn matrix_checks_every_combination_before_running_any() {
    for (args, words) in [
        (
            &["--target", "reference", "--target", "mutant:no-such-bug"][..],
            &["mutant:no-such-bug", "unknown mutant"][..],
        ),
        (
            &["--device", "entropy", "--device", "toaster"][..],
            &["toaster"][..],
        ),
        (
            &["--version", "2", "--version", "3"][..],
            &["version 3"][..],
        ),
        (
            &[
                "--target",
                "reference",
                "--target",
                "virtio-queue",
                "--version",
                "1",
            ][..],
            &["virtio-queue"][..],
        ),
        (
            &["--expectations", "nosuch=specs/expectations/qemu-v2.json"][..],
            &["`nosuch` names none"][..],
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let out_dir = d.path().join("m");
        let out = bin()
            .arg("matrix")
            .args(args)
            .arg("-o")
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: missing `{w}` in {err}");
        }
        // Nothing ran.
        assert!(!err.contains("matrix: reference"), "{err}");
        assert!(!out_dir.exists());
    }
}

#[test]
fn a_failing_matrix_combination_keeps_the_others() {
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("broken-qemu");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'QEMU emulator version 0.0.0'; exit 0; fi\necho 'cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out_dir = d.path().join("m");
    let out = bin()
        .args([
            "matrix",
            "--target",
            "qemu",
            "--target",
            "reference",
            "--qemu",
        ])
        .arg(&fake)
        .arg("-o")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("matrix.json")).unwrap()).unwrap();
    let cols = m["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 2, "{m}");
    let row = &m["rows"]["init.spec-order"];
    assert_eq!(row[0]["outcome"], "error", "{row}");
    assert!(row[0]["detail"]
        .as_str()
        .unwrap()
        .contains("could not start"));
    assert_eq!(row[1]["outcome"], "pass", "{row}");
}

#[test]
fn an_unknown_pinned_mutant_is_an_error() {
    let seed = shipped_specs().join("../corpora/queue_chain/seed-basic");
    let out = bin()
        .env("VIRTIO_CONFORM_MUTANT", "no-such-bug")
        .args(["replay", "queue_chain"])
        .arg(&seed)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("VIRTIO_CONFORM_MUTANT") && err.contains("no-such-bug"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Known names still work.
    let out = bin()
        .env("VIRTIO_CONFORM_MUTANT", "used-idx-saturates")
        .args(["replay", "queue_chain"])
        .arg(&seed)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(2));
}
