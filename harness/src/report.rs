//! Reports: the versioned JSON report, JUnit XML, the terminal summary, expectations files and
//! report comparison.

use crate::case::Case;
use crate::catalog::Catalog;
use crate::outcome::{Outcome, Severity};
use crate::runner::Failure;
use crate::target::TargetInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema tag of the JSON report.
pub const REPORT_SCHEMA: &str = "virtio-conform/report/1";
/// Schema tag of the JSON report of `replay` (one fuzz input).
pub const REPLAY_SCHEMA: &str = "virtio-conform/replay/1";
pub use crate::expectations::{
    Expectation, ExpectationState, Expectations, StaleExpectation, EXPECTATIONS_SCHEMA,
    EXPECTATIONS_SCHEMA_WHOLE_CASE,
};

/// A requirement as cited in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cited {
    /// Requirement id.
    pub id: String,
    /// Spec section (1.3 numbering).
    pub section: String,
    /// MUST / SHOULD / ...
    pub level: String,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Case id.
    pub case: String,
    /// Case title.
    pub title: String,
    /// Outcome after expectations.
    pub outcome: Outcome,
    /// Worst severity.
    pub severity: Severity,
    /// Requirements the case checks.
    pub requirements: Vec<Cited>,
    /// Failed checks.
    #[serde(default)]
    pub failures: Vec<FailureOut>,
    /// Why the case stopped early or was skipped/expected to fail.
    pub reason: Option<String>,
    /// Target diagnostics (e.g. QEMU's stderr tail).
    pub diagnostics: Option<String>,
    /// Command that replays the case.
    pub replay: String,
    /// Wall time in milliseconds.
    pub duration_ms: f64,
}

/// A failed check in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureOut {
    /// Step index (0-based) if the failure belongs to a step.
    pub step: Option<usize>,
    /// Line of the case file.
    pub line: Option<usize>,
    /// Step op or oracle.
    pub op: String,
    /// Requirements broken, with sections.
    pub requirements: Vec<Cited>,
    /// MUST / SHOULD / MAY grade.
    pub level: String,
    /// Severity.
    pub severity: Severity,
    /// What the spec asks for.
    pub expected: String,
    /// What the target did.
    pub observed: String,
    /// The reason of the expectations entry that excused this check (it is then expected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfail: Option<String>,
}

/// Spec coverage: statements with at least one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Coverage {
    /// Device-side statements in the catalog.
    pub device_statements: usize,
    /// Of those, how many at least one case checks.
    pub covered: usize,
    /// Per section prefix (e.g. `2.7`): (covered, total).
    pub by_section: BTreeMap<String, (usize, usize)>,
    /// Device-side statements no case checks.
    pub uncovered: Vec<String>,
    /// Device-side statements a driver can observe (the catalog's `checkable` has no `N`).
    #[serde(default)]
    pub checkable_statements: usize,
    /// Of those, how many at least one case checks.
    #[serde(default)]
    pub checkable_covered: usize,
}

impl Coverage {
    /// Percentage of the checkable device-side statements with a case (0.0 without any).
    pub fn checkable_percent(&self) -> f64 {
        if self.checkable_statements == 0 {
            return 0.0;
        }
        100.0 * self.checkable_covered as f64 / self.checkable_statements as f64
    }
}

/// The JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// `virtio-conform <version>`.
    pub tool: String,
    /// Spec edition of the catalog.
    pub spec: String,
    /// The target.
    pub target: TargetInfoOut,
    /// Counts per outcome.
    pub summary: BTreeMap<String, usize>,
    /// Wall time of the run in milliseconds.
    pub duration_ms: f64,
    /// One entry per case.
    pub results: Vec<CaseResult>,
    /// Spec coverage of the cases that were loaded.
    pub coverage: Coverage,
    /// Expectations entries that excused nothing (exit 1 under `--strict`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_expectations: Vec<StaleExpectation>,
    /// Set when the run was cut short (a signal, a killed run recovered from its records):
    /// why. `results` then holds only the cases that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// When the run started (RFC 3339, UTC), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
}

/// The JSON report of `virtio-conform replay`: one fuzz input decoded and checked by its fuzz
/// target's oracles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Always [`REPLAY_SCHEMA`].
    pub schema: String,
    /// `virtio-conform <version>`.
    pub tool: String,
    /// Spec edition of the catalog.
    pub spec: String,
    /// The fuzz target (`queue_chain`, `mmio_regs`, `diff_mmio`).
    pub fuzz_target: String,
    /// The input file.
    pub input: String,
    /// What the input ran against: `reference` or `mutant:<name>`.
    pub subject: String,
    /// Implementation version string of the subject.
    pub implementation: String,
    /// The decoded operation stream, one operation per entry.
    pub ops: Vec<String>,
    /// Counts per outcome.
    pub summary: BTreeMap<String, usize>,
    /// One result: `pass` or `fail` with what the oracle found.
    pub results: Vec<CaseResult>,
    /// When the replay ran (RFC 3339, UTC).
    pub started: Option<String>,
}

/// The current time as RFC 3339 in UTC, to the second (`2026-11-30T22:15:00Z`).
pub fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Target identity in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfoOut {
    /// `--target` value.
    pub name: String,
    /// Device type.
    pub device: String,
    /// Transport version.
    pub version: u32,
    /// Implementation version string.
    pub implementation: String,
    /// The driver personality of the run's `init` steps (`--driver`), when the report comes
    /// from a suite run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl From<TargetInfo> for TargetInfoOut {
    fn from(t: TargetInfo) -> Self {
        TargetInfoOut {
            name: t.name,
            device: t.device,
            version: t.version,
            implementation: t.implementation,
            driver: None,
        }
    }
}

/// Cites `ids` with their sections from the catalog.
pub fn cite(catalog: &Catalog, ids: &[String]) -> Vec<Cited> {
    ids.iter()
        .map(|id| match catalog.requirements.get(id) {
            Some(r) => Cited {
                id: id.clone(),
                section: r.section.clone(),
                level: r.level.clone(),
            },
            None => Cited {
                id: id.clone(),
                section: "?".into(),
                level: "?".into(),
            },
        })
        .collect()
}

/// Converts interpreter failures for the report.
pub fn failures_out(catalog: &Catalog, f: &[Failure]) -> Vec<FailureOut> {
    f.iter()
        .map(|f| FailureOut {
            step: f.step,
            line: f.line,
            op: f.op.clone(),
            requirements: cite(catalog, &f.requirements),
            level: format!("{:?}", f.level).to_uppercase(),
            severity: f.severity,
            expected: f.expected.clone(),
            observed: f.observed.clone(),
            xfail: None,
        })
        .collect()
}

/// Computes spec coverage of `cases`.
pub fn coverage(catalog: &Catalog, cases: &[Case]) -> Coverage {
    let checked: std::collections::BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c.requirements.iter().map(|s| s.as_str()))
        .collect();
    let mut cov = Coverage::default();
    for r in catalog.device_side() {
        cov.device_statements += 1;
        let sec: String = r.section.split('.').take(2).collect::<Vec<_>>().join(".");
        let e = cov.by_section.entry(sec).or_default();
        e.1 += 1;
        let checkable = r.is_checkable();
        cov.checkable_statements += usize::from(checkable);
        if checked.contains(r.id.as_str()) {
            cov.covered += 1;
            cov.checkable_covered += usize::from(checkable);
            e.0 += 1;
        } else {
            cov.uncovered.push(r.id.clone());
        }
    }
    cov
}

/// Counts outcomes.
pub fn summarize(results: &[CaseResult]) -> BTreeMap<String, usize> {
    let mut m: BTreeMap<String, usize> = Outcome::ALL
        .iter()
        .map(|o| (o.name().to_string(), 0))
        .collect();
    for r in results {
        *m.entry(r.outcome.name().to_string()).or_default() += 1;
    }
    m
}

/// Terminal summary grouped by spec section of each case's first requirement.
pub fn text_summary(report: &Report, catalog: &Catalog, verbose: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let t = &report.target;
    let _ = writeln!(
        out,
        "virtio-conform: {} (device {}, version {}, {})",
        t.name, t.device, t.version, t.implementation
    );
    let mut groups: BTreeMap<String, Vec<&CaseResult>> = BTreeMap::new();
    for r in &report.results {
        let sec = r
            .requirements
            .first()
            .map(|c| c.section.clone())
            .unwrap_or_default();
        let top: String = sec.split('.').take(2).collect::<Vec<_>>().join(".");
        groups.entry(top).or_default().push(r);
    }
    for (sec, rs) in groups {
        if !verbose && rs.iter().all(|r| r.outcome == Outcome::Pass) {
            continue;
        }
        let _ = writeln!(out, "\n§{sec}");
        for r in rs {
            let mark = match r.outcome {
                Outcome::Pass => "ok",
                Outcome::Unsupported | Outcome::Skipped => "--",
                Outcome::Informational | Outcome::Xfail => "~~",
                _ => "XX",
            };
            if !verbose && matches!(r.outcome, Outcome::Pass) {
                continue;
            }
            let _ = writeln!(
                out,
                "  [{mark}] {:<44} {}{}",
                r.case,
                r.outcome.name(),
                if r.severity > Severity::None {
                    format!(" ({:?})", r.severity).to_lowercase()
                } else {
                    String::new()
                }
            );
            for f in r.failures.iter().take(3) {
                let ids: Vec<_> = f
                    .requirements
                    .iter()
                    .map(|c| format!("{} §{}", c.id, c.section))
                    .collect();
                let _ = writeln!(
                    out,
                    "       step {} (line {}) {}: [{}] expected {}; observed {}{}",
                    f.step.map_or("-".into(), |s| s.to_string()),
                    f.line.map_or("-".into(), |s| s.to_string()),
                    f.op,
                    ids.join(", "),
                    f.expected,
                    f.observed,
                    if f.xfail.is_some() { " (expected)" } else { "" }
                );
            }
            if let Some(why) = &r.reason {
                let _ = writeln!(out, "       reason: {why}");
            }
            if r.outcome.is_failure() {
                let _ = writeln!(out, "       replay: {}", r.replay);
            }
        }
    }
    let _ = writeln!(out);
    let counts: Vec<String> = report
        .summary
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let _ = writeln!(
        out,
        "{} cases in {:.0} ms: {}",
        report.results.len(),
        report.duration_ms,
        counts.join(", ")
    );
    if let Some(why) = &report.interrupted {
        let _ = writeln!(out, "incomplete run: {why}");
    }
    let c = &report.coverage;
    if c.device_statements > 0 {
        let _ = writeln!(
            out,
            "spec coverage: {}/{} device-side statements have at least one case; {}/{} ({:.1} %) of those a driver can observe ({})",
            c.covered,
            c.device_statements,
            c.checkable_covered,
            c.checkable_statements,
            c.checkable_percent(),
            catalog.spec
        );
    }
    for st in &report.stale_expectations {
        let _ = writeln!(
            out,
            "stale expectation: case `{}` [{}]: {} (an error under --strict)",
            st.case,
            st.requirements.join(", "),
            st.why
        );
    }
    let _ = writeln!(out, "{}", closing_line(report));
    out
}

/// The summary's last line: `N passed, N failed`, then every other outcome that occurred
/// under its own name (`, 1 unsupported, 2 xfail`). `failed` counts the outcomes that make
/// the run exit non-zero without `--strict`: fail, timeout, xpass and error.
pub fn closing_line(report: &Report) -> String {
    let count = |o: Outcome| report.results.iter().filter(|r| r.outcome == o).count();
    let failed = [
        Outcome::Fail,
        Outcome::Timeout,
        Outcome::Xpass,
        Outcome::Error,
    ]
    .into_iter()
    .map(count)
    .sum::<usize>();
    let mut line = format!("{} passed, {failed} failed", count(Outcome::Pass));
    for o in [
        Outcome::NonStrict,
        Outcome::Informational,
        Outcome::Unsupported,
        Outcome::Skipped,
        Outcome::Xfail,
    ] {
        let n = count(o);
        if n > 0 {
            line.push_str(&format!(", {n} {}", o.name()));
        }
    }
    line
}

/// JUnit XML of the report (one test suite, one test case per case), graded as `run` exits
/// without `--strict`; see [`junit_with`].
pub fn junit(report: &Report) -> String {
    junit_with(report, false)
}

/// JUnit XML of the report, consistent with the exit code of `run` (`strict`: `non_strict`
/// is a failure, as it makes `run --strict` exit 1; otherwise a pass with a note).
///
/// One `<testsuite>` (name `target:device:vN`, `timestamp` = the run's start) with one
/// `<testcase>` per case: `classname` is the spec area (`§2.7`, the section of the case's
/// first requirement), `time` its wall time. fail/timeout/xpass (and non_strict when
/// `strict`) are `<failure>` whose text names each failed check with its requirement ids,
/// sections, step, line, expected and observed values, and the replay command; error is
/// `<error>`; unsupported/skipped are `<skipped>` with the reason.
pub fn junit_with(report: &Report, strict: bool) -> String {
    use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};
    let mut jr = JReport::new("virtio-conform");
    let mut name = format!("{}:{}", report.target.name, report.target.device);
    if report.target.version > 0 {
        name.push_str(&format!(":v{}", report.target.version));
    }
    let mut suite = TestSuite::new(name);
    if let Some(t) = report
        .started
        .as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        suite.set_timestamp(t);
        jr.set_timestamp(t);
    }
    suite.set_time(std::time::Duration::from_secs_f64(
        report.duration_ms.max(0.0) / 1000.0,
    ));
    let failure_text = |r: &CaseResult| -> String {
        let mut lines: Vec<String> = r
            .failures
            .iter()
            .map(|f| {
                let ids: Vec<String> = f
                    .requirements
                    .iter()
                    .map(|c| format!("{} §{} ({})", c.id, c.section, c.level))
                    .collect();
                let at = match (f.step, f.line) {
                    (Some(s), Some(l)) => format!("step {s} (line {l}) {}", f.op),
                    (Some(s), None) => format!("step {s} {}", f.op),
                    _ => f.op.clone(),
                };
                format!(
                    "{at}: [{}] {} severity {}: expected {}; observed {}",
                    ids.join(", "),
                    f.level,
                    f.severity.name(),
                    f.expected,
                    f.observed
                )
            })
            .collect();
        if let Some(why) = &r.reason {
            lines.push(format!("reason: {why}"));
        }
        if let Some(d) = &r.diagnostics {
            lines.push(format!("diagnostics:\n{d}"));
        }
        lines.push(format!("replay: {}", r.replay));
        lines.join("\n")
    };
    for r in &report.results {
        let cited: Vec<String> = r
            .requirements
            .iter()
            .map(|c| format!("{} §{}", c.id, c.section))
            .collect();
        let summary = |head: &str| -> String {
            match r.failures.first() {
                Some(f) => format!(
                    "{head}: {}{}: expected {}; observed {}",
                    f.requirements
                        .iter()
                        .map(|c| format!("{} §{} ", c.id, c.section))
                        .collect::<String>(),
                    f.op,
                    f.expected,
                    f.observed
                ),
                None => format!("{head}: {}", r.reason.clone().unwrap_or_default()),
            }
        };
        let failure = |kind: NonSuccessKind, head: &str| {
            let mut s = TestCaseStatus::non_success(kind);
            s.set_message(summary(head));
            s.set_type(head.to_string());
            s.set_description(failure_text(r));
            s
        };
        let status = match r.outcome {
            Outcome::Pass | Outcome::Informational | Outcome::Xfail => TestCaseStatus::success(),
            Outcome::NonStrict if !strict => TestCaseStatus::success(),
            Outcome::Unsupported | Outcome::Skipped => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(format!(
                    "{}: {}",
                    r.outcome.name(),
                    r.reason.clone().unwrap_or_default()
                ));
                s
            }
            Outcome::Error => failure(NonSuccessKind::Error, "error"),
            o => failure(NonSuccessKind::Failure, o.name()),
        };
        let mut tc = TestCase::new(r.case.clone(), status);
        let sec = r
            .requirements
            .first()
            .map(|c| c.section.split('.').take(2).collect::<Vec<_>>().join("."))
            .unwrap_or_default();
        tc.set_classname(format!("§{sec}"));
        tc.set_time(std::time::Duration::from_secs_f64(
            r.duration_ms.max(0.0) / 1000.0,
        ));
        // The outcome and the cited requirements, also for passing cases.
        let mut out = format!(
            "outcome: {}\nrequirements: {}",
            r.outcome.name(),
            cited.join(", ")
        );
        if matches!(
            r.outcome,
            Outcome::NonStrict | Outcome::Informational | Outcome::Xfail
        ) {
            out.push('\n');
            out.push_str(&failure_text(r));
        }
        tc.set_system_out(out);
        suite.add_test_case(tc);
    }
    jr.add_test_suite(suite);
    jr.to_string().unwrap_or_default()
}

/// Differences between two reports of the same suite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Cases that failed in OLD and pass in NEW.
    pub fixed: Vec<String>,
    /// Cases that passed in OLD and fail in NEW.
    pub broken: Vec<String>,
    /// Cases that are errors in NEW but were not in OLD.
    pub new_errors: Vec<String>,
    /// Cases whose result got worse without being `broken` or a new error: severity rising,
    /// a failure turned timeout or error, a pass turned unsupported or skipped, a new
    /// critical failure. Each entry: `case: why`.
    pub worsened: Vec<String>,
    /// Cases only in NEW.
    pub added: Vec<String>,
    /// Cases only in OLD.
    pub removed: Vec<String>,
}

impl Comparison {
    /// Whether NEW is worse than OLD anywhere (broken, new errors, worsened).
    pub fn regressed(&self) -> bool {
        !(self.broken.is_empty() && self.new_errors.is_empty() && self.worsened.is_empty())
    }
}

impl Report {
    /// Parses a JSON report; `origin` names the file in errors. A report whose `schema` tag
    /// is not [`REPORT_SCHEMA`] is refused: its fields may mean something else.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Report> {
        #[derive(Deserialize)]
        struct Tag {
            schema: Option<String>,
        }
        let tag: Tag = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}:{}:{}: {e}", e.line(), e.column()))?;
        match tag.schema.as_deref() {
            Some(REPORT_SCHEMA) => {}
            Some(other) => anyhow::bail!(
                "{origin}: report schema `{other}` is not `{REPORT_SCHEMA}`, the one this version reads"
            ),
            None => anyhow::bail!("{origin}: no `schema` field: not a virtio-conform report"),
        }
        serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}:{}:{}: {e}", e.line(), e.column()))
    }
}

/// Compares two reports.
pub fn compare(old: &Report, new: &Report) -> Comparison {
    let o: BTreeMap<_, _> = old.results.iter().map(|r| (r.case.as_str(), r)).collect();
    let n: BTreeMap<_, _> = new.results.iter().map(|r| (r.case.as_str(), r)).collect();
    let mut c = Comparison::default();
    for (case, nr) in &n {
        let Some(or) = o.get(case) else {
            c.added.push(case.to_string());
            continue;
        };
        let (oo, no) = (or.outcome, nr.outcome);
        if oo.is_failure() && no == Outcome::Pass {
            c.fixed.push(case.to_string());
        }
        let broken = oo == Outcome::Pass && no.is_failure();
        if broken {
            c.broken.push(case.to_string());
        }
        let new_error = no == Outcome::Error && oo != Outcome::Error;
        if new_error {
            c.new_errors.push(case.to_string());
        }
        if broken || new_error {
            continue;
        }
        let mut why = Vec::new();
        if oo.is_failure() && no.is_failure() && nr.severity > or.severity {
            why.push(format!("severity {:?} -> {:?}", or.severity, nr.severity));
        }
        if oo == Outcome::Fail && no == Outcome::Timeout {
            why.push("fail -> timeout".to_string());
        }
        if oo == Outcome::Pass && matches!(no, Outcome::Unsupported | Outcome::Skipped) {
            why.push(format!("pass -> {}", no.name()));
        }
        if oo == Outcome::NonStrict && no == Outcome::Fail {
            why.push("non_strict -> fail".to_string());
        }
        if nr.severity == Severity::Critical && or.severity != Severity::Critical {
            why.push("new critical failure".to_string());
        }
        if !why.is_empty() {
            why.dedup();
            c.worsened
                .push(format!("{case}: {}", why.join(", ").to_lowercase()));
        }
    }
    c.removed = o
        .keys()
        .filter(|k| !n.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    c
}
