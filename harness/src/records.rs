//! Results written as they happen, so no result is lost when a run is interrupted.
//!
//! While `virtio-conform run -o FILE` runs, `FILE.partial` holds one JSON record per line: a
//! header (`{"schema": "virtio-conform/records/1", "tool": ..., "target": {...}}`), then one
//! [`CaseResult`] per finished case, each flushed to the file system as soon as the case
//! ends. At the end of the run the report goes to `FILE` (written beside it and renamed, so a
//! reader never sees half a report) and `FILE.partial` is removed. A run killed outright
//! (SIGKILL, a crash) leaves `FILE.partial` behind; [`read_partial`] turns it back into a
//! report.

use crate::report::{self, CaseResult, Report, TargetInfoOut};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Schema tag of the header line of a records file.
pub const RECORDS_SCHEMA: &str = "virtio-conform/records/1";

/// The first line of a records file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordsHeader {
    /// Always [`RECORDS_SCHEMA`].
    pub schema: String,
    /// `virtio-conform <version>`.
    pub tool: String,
    /// Spec edition of the catalog.
    pub spec: String,
    /// The target.
    pub target: TargetInfoOut,
}

/// The path of the records file that belongs to report `path` (`FILE.partial`).
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Streams results of a run into `FILE.partial`, then writes the report to `FILE`.
#[derive(Debug)]
pub struct RecordSink {
    path: PathBuf,
    partial: PathBuf,
    file: Option<File>,
}

impl RecordSink {
    /// Checks that the report `path` can be written (creating it when missing, leaving an
    /// existing one as it is) and starts its records file with `header`.
    ///
    /// Errors: the path cannot be created or written, named with the reason; nothing has run.
    pub fn create(path: &Path, header: &RecordsHeader) -> Result<RecordSink, String> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("{}: cannot write the report: {e}", path.display()))?;
        let partial = partial_path(path);
        let mut file = File::create(&partial)
            .map_err(|e| format!("{}: cannot write the records: {e}", partial.display()))?;
        let line = serde_json::to_string(header).map_err(|e| e.to_string())?;
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        Ok(RecordSink {
            path: path.to_path_buf(),
            partial,
            file: Some(file),
        })
    }

    /// Appends one result and flushes it. A write error is reported once on stderr and the
    /// run goes on (the final report is still written at the end).
    pub fn record(&mut self, r: &CaseResult) {
        let Some(f) = self.file.as_mut() else { return };
        let ok = serde_json::to_string(r)
            .map_err(std::io::Error::other)
            .and_then(|l| writeln!(f, "{l}"))
            .and_then(|_| f.flush());
        if let Err(e) = ok {
            eprintln!(
                "virtio-conform: warning: {}: {e}; results are kept in memory",
                self.partial.display()
            );
            self.file = None;
        }
    }

    /// Writes the finished report `body` to the report path and removes the records file.
    pub fn finish(mut self, body: &str) -> Result<(), String> {
        self.file = None;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let _ = std::fs::remove_file(&self.partial);
        Ok(())
    }
}

/// Reads a records file (`FILE.partial`) back into a report of the cases that finished,
/// marked `interrupted`. Errors name the file and line.
pub fn read_partial(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines().enumerate();
    let (_, first) = lines
        .next()
        .ok_or_else(|| format!("{}: empty records file", path.display()))?;
    let header: RecordsHeader =
        serde_json::from_str(first).map_err(|e| format!("{}:1: {e}", path.display()))?;
    if header.schema != RECORDS_SCHEMA {
        return Err(format!(
            "{}:1: schema `{}` is not `{RECORDS_SCHEMA}`",
            path.display(),
            header.schema
        ));
    }
    let mut results = Vec::new();
    for (i, l) in lines {
        match serde_json::from_str::<CaseResult>(l) {
            Ok(r) => results.push(r),
            // The last line may be cut short by the kill; earlier ones may not.
            Err(_) if i + 1 == text.lines().count() => break,
            Err(e) => return Err(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    Ok(Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: header.tool,
        spec: header.spec,
        target: header.target,
        summary: report::summarize(&results),
        duration_ms: results.iter().map(|r| r.duration_ms).sum(),
        results,
        coverage: Default::default(),
        interrupted: Some("the run ended before its report was written".into()),
        stale_expectations: Vec::new(),
    })
}
