//! Crash records: what a fuzz binary writes next to a crash artifact so that replaying it
//! needs no flags.
//!
//! When a fuzz target's oracle fires, the binary in `fuzz/fuzz_targets/` calls [`found`]. It
//! writes a [`CrashRecord`] (JSON, schema [`CRASH_RECORD_SCHEMA`]) naming the fuzz target,
//! the subject it ran against (`reference` or a mutant name) and the finding, into the
//! folder libFuzzer writes its artifacts to (`-artifact_prefix=`, or the folder of
//! `-exact_artifact_path=`, else the current folder as libFuzzer does), as
//! `finding-<key>.json` where `<key>` is [`input_key`] of the input. It then panics with the
//! finding, so libFuzzer stores the input as `crash-<sha1>` beside the record.
//!
//! `virtio-conform replay <input>` looks the record up with [`find_record`] (`<input>.json`
//! first, then `finding-<key>.json` in the input's folder) and replays against the recorded
//! target and subject.

use super::{Finding, MUTANT_ENV, TARGETS};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use virtio_reference_device::Mutant;

/// Schema tag of a [`CrashRecord`].
pub const CRASH_RECORD_SCHEMA: &str = "virtio-conform/fuzz-crash/1";

/// What produced a crash artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashRecord {
    /// Always [`CRASH_RECORD_SCHEMA`].
    pub schema: String,
    /// The fuzz target (`queue_chain`, `mmio_regs`, `diff_mmio`).
    pub target: String,
    /// The subject the body ran against: `reference`, or a mutant's name (for `diff_mmio` the
    /// mutant compared with the reference).
    pub mutant: String,
    /// [`input_key`] of the input the record belongs to.
    pub input_key: String,
    /// Length of that input in bytes.
    pub input_len: usize,
    /// The oracle that fired.
    pub oracle: String,
    /// What it said.
    pub message: String,
    /// Requirement ids the oracle enforces.
    pub requirements: Vec<String>,
    /// Index of the operation at which it fired.
    pub op: Option<usize>,
    /// The tool that wrote the record (`virtio-conform <version>`).
    pub tool: String,
}

impl CrashRecord {
    /// The record of `finding`, found by fuzz target `target` on `data` against `mutant`.
    pub fn new(target: &str, data: &[u8], mutant: Option<Mutant>, finding: &Finding) -> Self {
        CrashRecord {
            schema: CRASH_RECORD_SCHEMA.into(),
            target: target.into(),
            mutant: mutant.map_or("reference", |m| m.name()).into(),
            input_key: input_key(data),
            input_len: data.len(),
            oracle: finding.oracle.into(),
            message: finding.message.clone(),
            requirements: finding.requirements.iter().map(|s| s.to_string()).collect(),
            op: finding.op,
            tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The recorded subject: `Ok(None)` for the reference, `Ok(Some(m))` for a mutant.
    /// Errors: a mutant name this build does not know.
    pub fn subject(&self) -> Result<Option<Mutant>, String> {
        if self.mutant == "reference" {
            return Ok(None);
        }
        Mutant::from_name(&self.mutant).map(Some).ok_or_else(|| {
            format!(
                "the crash record names mutant `{}`, which this build does not know",
                self.mutant
            )
        })
    }
}

/// A stable 64-bit key of an input (FNV-1a, as 16 hex digits): the same bytes give the same
/// key on every build, so a record can be matched to its input.
pub fn input_key(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The subject a fuzz binary runs `data` against, as the bodies choose it: the mutant pinned
/// by [`MUTANT_ENV`], and for `diff_mmio` otherwise the one its first byte selects.
pub fn subject(target: &str, data: &[u8]) -> Option<Mutant> {
    match target {
        "diff_mmio" => super::diff_mmio::select_mutant(data),
        _ => super::pinned_mutant(),
    }
}

/// The folder a libFuzzer process writes its artifacts to, from its command line: the
/// folder part of `-artifact_prefix=` (the whole value when it ends with `/`), the folder of
/// `-exact_artifact_path=`, else the current folder.
pub fn artifact_dir(args: &[String]) -> PathBuf {
    let folder_of = |p: &str| {
        let parent = Path::new(p).parent().map(Path::to_path_buf);
        parent
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    };
    for a in args.iter().rev() {
        if let Some(p) = a.strip_prefix("-exact_artifact_path=") {
            return folder_of(p);
        }
        if let Some(p) = a.strip_prefix("-artifact_prefix=") {
            return if p.ends_with('/') {
                PathBuf::from(p)
            } else {
                folder_of(p)
            };
        }
    }
    PathBuf::from(".")
}

/// Path of the record of `data` in folder `dir`: `dir/finding-<key>.json`.
pub fn record_path(dir: &Path, data: &[u8]) -> PathBuf {
    dir.join(format!("finding-{}.json", input_key(data)))
}

/// Writes `record` for `data` into `dir` and returns its path.
pub fn write_record(dir: &Path, data: &[u8], record: &CrashRecord) -> std::io::Result<PathBuf> {
    let path = record_path(dir, data);
    let body = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
    std::fs::write(&path, body + "\n")?;
    Ok(path)
}

/// Finds the record of the input at `input` (whose bytes are `data`): `<input>.json`, then
/// `finding-<key>.json` in the input's folder. `Ok(None)` when there is none.
///
/// Errors name the record file: unreadable, not JSON of this schema, or recorded for other
/// bytes (a different [`input_key`]).
pub fn find_record(input: &Path, data: &[u8]) -> Result<Option<(PathBuf, CrashRecord)>, String> {
    let mut beside = input.as_os_str().to_owned();
    beside.push(".json");
    let dir = input
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for path in [PathBuf::from(beside), record_path(dir, data)] {
        if !path.is_file() {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rec: CrashRecord = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a crash record: {e}", path.display()))?;
        if rec.schema != CRASH_RECORD_SCHEMA {
            return Err(format!(
                "{}: schema `{}`, expected `{CRASH_RECORD_SCHEMA}`",
                path.display(),
                rec.schema
            ));
        }
        if !TARGETS.contains(&rec.target.as_str()) {
            return Err(format!(
                "{}: unknown fuzz target `{}`: expected one of {}",
                path.display(),
                rec.target,
                TARGETS.join(", ")
            ));
        }
        if rec.input_key != input_key(data) {
            return Err(format!(
                "{}: recorded for another input (key {}, this input's is {})",
                path.display(),
                rec.input_key,
                input_key(data)
            ));
        }
        return Ok(Some((path, rec)));
    }
    Ok(None)
}

/// Writes the crash record of `finding` (fuzz target `target`, input `data`, the subject
/// [`subject`] names) into `dir` and returns the message a fuzz binary panics with: the
/// finding, then where the record went (or why it could not be written, with the mutant to
/// pin instead).
pub fn record_finding(dir: &Path, target: &str, data: &[u8], finding: &Finding) -> String {
    let rec = CrashRecord::new(target, data, subject(target, data), finding);
    match write_record(dir, data, &rec) {
        Ok(p) => format!(
            "{finding}\ncrash record {} (replay: virtio-conform replay <artifact>)",
            p.display()
        ),
        Err(e) => format!(
            "{finding}\ncould not write the crash record into {}: {e}; replay with {MUTANT_ENV}={}",
            dir.display(),
            rec.mutant
        ),
    }
}

/// Called by a fuzz binary when `target`'s oracle fired on `data`: writes the crash record
/// into libFuzzer's artifact folder ([`artifact_dir`] of the process's arguments) and panics
/// with the finding, so libFuzzer keeps the input. A record that cannot be written is
/// reported in the panic message; the finding is never lost.
pub fn found(target: &'static str, data: &[u8], finding: Finding) -> ! {
    let args: Vec<String> = std::env::args().collect();
    let msg = record_finding(&artifact_dir(&args), target, data, &finding);
    panic!("{msg}");
}
