//! `compare`: fixed and broken cases, and every kind of worsening; reports with an unknown
//! schema tag are refused.

use virtio_conform::outcome::{Outcome, Severity};
use virtio_conform::report::{compare, CaseResult, Report, REPORT_SCHEMA};
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{DeviceKind, ReferenceTarget};
use virtio_reference_device::TransportVersion;

fn base() -> Report {
    let suite = Suite::load_default().unwrap();
    run_suite(
        &suite,
        || ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None),
        &Options {
            only: vec!["reset.*".into()],
            ..Options::default()
        },
    )
}

fn set(r: &mut Report, case: &str, outcome: Outcome, severity: Severity) {
    let c: &mut CaseResult = r.results.iter_mut().find(|c| c.case == case).unwrap();
    c.outcome = outcome;
    c.severity = severity;
}

#[test]
fn worsening_is_reported() {
    let old = base();
    assert!(old.results.len() >= 5);
    let ids: Vec<String> = old.results.iter().map(|c| c.case.clone()).collect();
    let mut o = old.clone();
    let mut n = old.clone();
    // Severity rising on a case that failed in both.
    set(&mut o, &ids[0], Outcome::Fail, Severity::Low);
    set(&mut n, &ids[0], Outcome::Fail, Severity::High);
    // A failure that became a timeout.
    set(&mut o, &ids[1], Outcome::Fail, Severity::Low);
    set(&mut n, &ids[1], Outcome::Timeout, Severity::High);
    // A pass that became unsupported, and one that became skipped.
    set(&mut n, &ids[2], Outcome::Unsupported, Severity::None);
    set(&mut n, &ids[3], Outcome::Skipped, Severity::None);
    // A new critical failure on a case that already failed.
    set(&mut o, &ids[4], Outcome::NonStrict, Severity::Low);
    set(&mut n, &ids[4], Outcome::NonStrict, Severity::Critical);
    let c = compare(&o, &n);
    assert!(c.broken.is_empty() && c.new_errors.is_empty(), "{c:?}");
    assert_eq!(c.worsened.len(), 5, "{c:#?}");
    for (i, want) in [
        (0, "severity low -> high"),
        (1, "fail -> timeout"),
        (2, "pass -> unsupported"),
        (3, "pass -> skipped"),
        (4, "new critical"),
    ] {
        assert!(
            c.worsened
                .iter()
                .any(|w| w.starts_with(&format!("{}:", ids[i])) && w.contains(want)),
            "{want}: {:?}",
            c.worsened
        );
    }
    assert!(c.regressed());
    // The same reports the other way round: nothing worsened.
    let back = compare(&n, &o);
    assert!(back.worsened.is_empty(), "{back:?}");
    // Identical reports: nothing.
    assert!(!compare(&old, &old).regressed());
}

#[test]
fn fail_to_error_is_a_new_error() {
    let mut o = base();
    let mut n = o.clone();
    let id = o.results[0].case.clone();
    set(&mut o, &id, Outcome::Fail, Severity::Low);
    set(&mut n, &id, Outcome::Error, Severity::None);
    let c = compare(&o, &n);
    assert_eq!(c.new_errors, [id]);
    assert!(c.regressed());
}

#[test]
fn unknown_schema_tags_are_refused() {
    let r = base();
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(
        Report::parse(&text, "a.json").unwrap().schema,
        REPORT_SCHEMA
    );
    let other = text.replace(REPORT_SCHEMA, "virtio-conform/report/99");
    let e = Report::parse(&other, "b.json").unwrap_err().to_string();
    assert!(e.contains("b.json") && e.contains("report/99"), "{e}");
    let e = Report::parse("{\"results\": []}", "c.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.json") && e.contains("schema"), "{e}");
    let e = Report::parse("{", "d.json").unwrap_err().to_string();
    assert!(e.contains("d.json:1"), "{e}");
}
