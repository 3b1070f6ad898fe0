//! Outcome and severity vocabulary shared by every report.

use serde::{Deserialize, Serialize};

/// Result of one case on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A MUST was broken.
    Fail,
    /// A SHOULD was not followed.
    NonStrict,
    /// Behaviour the spec leaves open was recorded; never fails.
    Informational,
    /// The target does not offer what the case needs.
    Unsupported,
    /// Skipped by the expectations file.
    Skipped,
    /// Failed as the expectations file says it would.
    Xfail,
    /// Passed although the expectations file says it fails: the expectation is stale.
    Xpass,
    /// The target exceeded its step or time budget.
    Timeout,
    /// The harness or the target connection broke.
    Error,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 10] = [
        Outcome::Pass,
        Outcome::Fail,
        Outcome::NonStrict,
        Outcome::Informational,
        Outcome::Unsupported,
        Outcome::Skipped,
        Outcome::Xfail,
        Outcome::Xpass,
        Outcome::Timeout,
        Outcome::Error,
    ];

    /// snake_case name as in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::NonStrict => "non_strict",
            Outcome::Informational => "informational",
            Outcome::Unsupported => "unsupported",
            Outcome::Skipped => "skipped",
            Outcome::Xfail => "xfail",
            Outcome::Xpass => "xpass",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    /// Whether this outcome makes `run` exit 1 (`strict` also counts `non_strict`).
    pub fn is_unexpected(self, strict: bool) -> bool {
        matches!(self, Outcome::Fail | Outcome::Xpass | Outcome::Timeout)
            || (strict && self == Outcome::NonStrict)
    }

    /// Whether the case did not hold (fail-like).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::NonStrict | Outcome::Timeout)
    }
}

impl Severity {
    /// snake_case name as in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Low => "low",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// How bad a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Graceful rejection, or nothing wrong.
    None,
    /// The device misbehaved or wedged itself (e.g. DEVICE_NEEDS_RESET, wrong register value).
    Low,
    /// The target crashed, hung or panicked.
    High,
    /// The device touched guest memory it must not.
    Critical,
}
