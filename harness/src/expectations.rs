//! Expectations files: the known divergences of one target, committed next to its CI gate.
//!
//! Two forms, told apart by the file's `schema` tag:
//!
//! - **per check** ([`EXPECTATIONS_SCHEMA`], `virtio-conform/expectations/2`): an entry names a
//!   case glob and the requirement ids it excuses, optionally the step index and the observed
//!   value, with a mandatory reason. Only the failed checks it matches become expected
//!   (`xfail`); any other failed check of the same case stays unexpected. An entry that
//!   excused nothing although a case it names ran (or that names no case of the suite at all)
//!   is *stale*: reported, and `exit 1` under `--strict`.
//! - **whole case** ([`EXPECTATIONS_SCHEMA_WHOLE_CASE`], `virtio-conform/expectations/1`, the
//!   first form, still read): `"expect": "fail"` excuses every failed check of the matching
//!   cases, and a matching case that passes is an `xpass`.
//!
//! In both forms an entry with `"expect": "skip"` skips the matching cases.

use crate::case::Case;
use crate::catalog::Level;
use crate::outcome::Outcome;
use crate::runner::{grade_failures, CaseRun, Failure};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Schema tag of a per-check expectations file.
pub const EXPECTATIONS_SCHEMA: &str = "virtio-conform/expectations/2";
/// Schema tag of the older whole-case form.
pub const EXPECTATIONS_SCHEMA_WHOLE_CASE: &str = "virtio-conform/expectations/1";

/// One entry of an expectations file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Glob over case ids (`malformed.*`, `vqreset.{ring-reset,reenable-smaller}`).
    pub case: String,
    /// Per-check form: the requirement ids whose failed checks this entry excuses (a failed
    /// check matches when it cites at least one of them). Required unless `expect` is `skip`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// Per-check form: only the failed check at this step (0-based index, as in reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// Per-check form: only a failed check whose observed value (the report's `observed`) is
    /// this text, or matches it as a glob (`*` any text, `?` one character), for values that
    /// vary from run to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// `fail` (the default in the per-check form) or `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Why: the spec section and the known divergence. Mandatory, never empty.
    pub reason: String,
    /// Restrict to one transport version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Restrict to one device type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl Expectation {
    /// Whether the entry skips its cases.
    pub fn is_skip(&self) -> bool {
        self.expect.as_deref() == Some("skip")
    }

    /// Whether the entry (with its compiled case `glob`) names `case` on `device` over
    /// transport `version`.
    pub fn applies(
        &self,
        glob: &globset::GlobMatcher,
        case: &str,
        device: &str,
        version: u32,
    ) -> bool {
        glob.is_match(case)
            && self.version.is_none_or(|v| v == version)
            && self.device.as_deref().is_none_or(|d| d == device)
    }

    fn matches_check(&self, f: &Failure, observed: Option<&globset::GlobMatcher>) -> bool {
        if self.requirements.is_empty() {
            // Whole-case form: every failed check.
            return true;
        }
        self.requirements.iter().any(|r| f.requirements.contains(r))
            && self.step.is_none_or(|s| f.step == Some(s))
            && self.observed.as_deref().is_none_or(|o| {
                o == f.observed || observed.is_some_and(|g| g.is_match(&f.observed))
            })
    }
}

/// A committed expectations file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// [`EXPECTATIONS_SCHEMA`] or [`EXPECTATIONS_SCHEMA_WHOLE_CASE`].
    pub schema: String,
    /// Target the file describes.
    pub target: String,
    /// Free text saying which form the file uses (ignored by the tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// The entries.
    pub entries: Vec<Expectation>,
}

impl Expectations {
    /// Whether the file uses the per-check form.
    pub fn per_check(&self) -> bool {
        self.schema == EXPECTATIONS_SCHEMA
    }

    /// Parses and validates expectations JSON; `origin` names the file in errors (with the
    /// line and column for syntax errors, the entry's case glob otherwise).
    pub fn parse(
        text: &str,
        origin: &str,
    ) -> anyhow::Result<(Expectations, Vec<globset::GlobMatcher>)> {
        let ex: Expectations = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}:{}:{}: {e}", e.line(), e.column()))?;
        if ex.schema != EXPECTATIONS_SCHEMA && ex.schema != EXPECTATIONS_SCHEMA_WHOLE_CASE {
            anyhow::bail!(
                "{origin}: schema `{}` is neither `{EXPECTATIONS_SCHEMA}` (per check) nor `{EXPECTATIONS_SCHEMA_WHOLE_CASE}` (whole case)",
                ex.schema
            );
        }
        let mut globs = Vec::new();
        for e in &ex.entries {
            let bad = |what: &str| anyhow::anyhow!("{origin}: entry `{}`: {what}", e.case);
            match (e.expect.as_deref(), ex.per_check()) {
                (Some("fail") | Some("skip"), _) | (None, true) => {}
                (None, false) => return Err(bad("expect must be `fail` or `skip`")),
                (Some(other), _) => {
                    return Err(bad(&format!(
                        "expect must be `fail` or `skip`, not `{other}`"
                    )))
                }
            }
            if e.reason.trim().is_empty() {
                return Err(bad("a reason is mandatory"));
            }
            if ex.per_check() && !e.is_skip() && e.requirements.is_empty() {
                return Err(bad(
                    "name the requirement ids whose failed checks the entry excuses (`requirements`)",
                ));
            }
            if !ex.per_check()
                && (!e.requirements.is_empty() || e.step.is_some() || e.observed.is_some())
            {
                return Err(bad(&format!(
                    "`requirements`, `step` and `observed` need schema `{EXPECTATIONS_SCHEMA}`"
                )));
            }
            globs.push(
                globset::Glob::new(&e.case)
                    .map_err(|err| bad(&err.to_string()))?
                    .compile_matcher(),
            );
        }
        Ok((ex, globs))
    }

    /// Loads and validates an expectations file; errors name the file (and line).
    pub fn load(path: &Path) -> anyhow::Result<(Expectations, Vec<globset::GlobMatcher>)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// An entry that excused nothing in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleExpectation {
    /// The entry's case glob.
    pub case: String,
    /// The entry's requirement ids.
    #[serde(default)]
    pub requirements: Vec<String>,
    /// The entry's reason.
    pub reason: String,
    /// Why it is stale.
    pub why: String,
}

/// What the expectations make of one case run.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The outcome after expectations.
    pub outcome: Outcome,
    /// The reason to report (the excusing entries' reasons, or the run's own).
    pub reason: Option<String>,
    /// Per failure of the run (same order): the reason of the entry that excused it.
    pub excused: Vec<Option<String>>,
}

/// Applies one expectations file over a whole run, remembering which entries were used so
/// stale ones can be reported at the end.
pub struct ExpectationState<'a> {
    ex: &'a Expectations,
    globs: &'a [globset::GlobMatcher],
    /// Per entry: its `observed` value as a glob, when it is one.
    observed: Vec<Option<globset::GlobMatcher>>,
    /// Per entry: excused at least one failed check (or skipped a case, or was an xpass).
    used: Vec<bool>,
    /// Per entry: a case it names ran.
    ran: Vec<bool>,
}

impl<'a> ExpectationState<'a> {
    /// Starts tracking `ex` over a run.
    pub fn new(ex: &'a (Expectations, Vec<globset::GlobMatcher>)) -> Self {
        let n = ex.0.entries.len();
        let observed =
            ex.0.entries
                .iter()
                .map(|e| {
                    let o = e.observed.as_deref()?;
                    globset::GlobBuilder::new(o)
                        .literal_separator(false)
                        .backslash_escape(true)
                        .build()
                        .ok()
                        .map(|g| g.compile_matcher())
                })
                .collect();
        ExpectationState {
            ex: &ex.0,
            globs: &ex.1,
            observed,
            used: vec![false; n],
            ran: vec![false; n],
        }
    }

    /// The skip entry for this case: when the first entry (in file order) that applies to the
    /// case is a `skip` entry, the case is skipped.
    pub fn skip(&mut self, case: &str, device: &str, version: u32) -> Option<&'a Expectation> {
        let ex = self.ex;
        let i = (0..ex.entries.len())
            .find(|&i| ex.entries[i].applies(&self.globs[i], case, device, version))?;
        let e = &ex.entries[i];
        if !e.is_skip() {
            return None;
        }
        self.used[i] = true;
        self.ran[i] = true;
        Some(e)
    }

    /// Grades `run` of case `case` with the expectations: the failed checks an entry matches
    /// are excused; the outcome is graded on the others alone, and is `xfail` when only
    /// excused checks failed.
    pub fn apply(&mut self, case: &str, device: &str, version: u32, run: &CaseRun) -> Applied {
        let ex = self.ex;
        let entries: Vec<usize> = (0..ex.entries.len())
            .filter(|&i| {
                let e = &ex.entries[i];
                !e.is_skip() && e.applies(&self.globs[i], case, device, version)
            })
            .collect();
        for &i in &entries {
            self.ran[i] = true;
        }
        let mut excused = Vec::with_capacity(run.failures.len());
        let mut reasons: Vec<&str> = Vec::new();
        let mut left = Vec::new();
        for f in &run.failures {
            let hit = entries
                .iter()
                .copied()
                .find(|&i| ex.entries[i].matches_check(f, self.observed[i].as_ref()));
            match hit {
                Some(i) => {
                    self.used[i] = true;
                    let r = ex.entries[i].reason.as_str();
                    if !reasons.contains(&r) {
                        reasons.push(r);
                    }
                    excused.push(Some(r.to_string()));
                }
                None => {
                    excused.push(None);
                    left.push(f.clone());
                }
            }
        }
        let mut outcome = run.outcome;
        let mut reason = run.reason.clone();
        let any_excused = left.len() < run.failures.len();
        if any_excused {
            match run.outcome {
                Outcome::Fail | Outcome::NonStrict | Outcome::Informational | Outcome::Timeout => {
                    let (rest, _) = grade_failures(&left);
                    if matches!(rest, Outcome::Pass | Outcome::Informational)
                        && left.iter().all(|f| f.level == Level::May)
                    {
                        outcome = Outcome::Xfail;
                        reason = Some(reasons.join("; "));
                    } else if run.outcome != Outcome::Timeout {
                        outcome = rest;
                    }
                }
                _ => {}
            }
        } else if !ex.per_check() && run.outcome == Outcome::Pass {
            // Whole-case form: an expected failure that passed.
            if let Some(&i) = entries.first() {
                self.used[i] = true;
                outcome = Outcome::Xpass;
                reason = Some(format!(
                    "expected to fail ({}) but passed: the expectation is stale",
                    ex.entries[i].reason
                ));
            }
        }
        Applied {
            outcome,
            reason,
            excused,
        }
    }

    /// Entries that excused nothing although a case they name ran, and entries whose glob
    /// names no case of `cases` at all.
    pub fn stale(&self, cases: &[Case]) -> Vec<StaleExpectation> {
        let ex = self.ex;
        let mut out = Vec::new();
        for (i, e) in ex.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let why = if !cases.iter().any(|c| self.globs[i].is_match(&c.id)) {
                "its case glob names no case of the suite"
            } else if self.ran[i] {
                "the cases it names ran, and no failed check matched it"
            } else {
                continue;
            };
            out.push(StaleExpectation {
                case: e.case.clone(),
                requirements: e.requirements.clone(),
                reason: e.reason.clone(),
                why: why.into(),
            });
        }
        out
    }
}
