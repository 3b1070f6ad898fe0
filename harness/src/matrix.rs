//! `virtio-conform matrix`: every case on several targets, as one JSON document and one
//! self-contained HTML page (a case × target grid coloured by outcome, details per cell).

use crate::outcome::{Outcome, Severity};
use crate::report::Report;
use serde::Serialize;
use std::collections::BTreeMap;

/// One column of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// `--target` value.
    pub target: String,
    /// Device type.
    pub device: String,
    /// Transport version.
    pub version: u32,
    /// Implementation version string (crate version, QEMU version).
    pub implementation: String,
    /// Driver personality of the column's run (`--driver`), when not the spec's order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Count per outcome in this column.
    pub totals: BTreeMap<String, usize>,
}

impl Column {
    /// `target device vN`, plus `(driver)` for a personality other than the spec's.
    pub fn label(&self) -> String {
        let mut l = format!("{} {} v{}", self.target, self.device, self.version);
        if let Some(d) = &self.driver {
            l.push_str(&format!(" ({d})"));
        }
        l
    }
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Outcome (`null` when the case does not apply to the column).
    pub outcome: Option<Outcome>,
    /// Worst severity of the case's failures.
    pub severity: Severity,
    /// Details: failures with requirement ids, reason, replay command.
    pub detail: String,
}

/// The matrix document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    /// Always `virtio-conform/matrix/1`.
    pub schema: String,
    /// `virtio-conform <version>`.
    pub tool: String,
    /// When the matrix was built (RFC 3339, UTC).
    pub generated: String,
    /// The columns.
    pub columns: Vec<Column>,
    /// Case id → one cell per column.
    pub rows: BTreeMap<String, Vec<Cell>>,
}

/// Builds the matrix from one report per column.
pub fn build(reports: &[Report]) -> Matrix {
    let columns: Vec<Column> = reports
        .iter()
        .map(|r| Column {
            target: r.target.name.clone(),
            device: r.target.device.clone(),
            version: r.target.version,
            implementation: r.target.implementation.clone(),
            driver: r.target.driver.clone().filter(|d| d != "spec"),
            totals: r.summary.clone(),
        })
        .collect();
    let mut rows: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
    for (i, r) in reports.iter().enumerate() {
        for res in &r.results {
            let row = rows.entry(res.case.clone()).or_insert_with(|| {
                vec![
                    Cell {
                        outcome: None,
                        severity: Severity::None,
                        detail: String::new()
                    };
                    reports.len()
                ]
            });
            let mut detail = Vec::new();
            for f in &res.failures {
                let ids: Vec<String> = f
                    .requirements
                    .iter()
                    .map(|c| format!("{} §{}", c.id, c.section))
                    .collect();
                detail.push(format!(
                    "[{}] expected {}; observed {}",
                    ids.join(", "),
                    f.expected,
                    f.observed
                ));
            }
            if let Some(why) = &res.reason {
                detail.push(format!("reason: {why}"));
            }
            detail.push(format!("replay: {}", res.replay));
            row[i] = Cell {
                outcome: Some(res.outcome),
                severity: res.severity,
                detail: detail.join("\n"),
            };
        }
    }
    Matrix {
        schema: "virtio-conform/matrix/1".into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        generated: crate::report::now_rfc3339(),
        columns,
        rows,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What each outcome means, for the legend.
const LEGEND: [(Outcome, &str); 10] = [
    (Outcome::Pass, "every check held"),
    (Outcome::Fail, "a MUST was broken"),
    (Outcome::NonStrict, "a SHOULD was not followed"),
    (
        Outcome::Informational,
        "behaviour the spec leaves open; never fails",
    ),
    (
        Outcome::Unsupported,
        "the target does not offer what the case needs",
    ),
    (Outcome::Skipped, "skipped by the expectations file"),
    (
        Outcome::Xfail,
        "failed as the expectations file says (known divergence)",
    ),
    (
        Outcome::Xpass,
        "passed although expected to fail: the expectation is stale",
    ),
    (
        Outcome::Timeout,
        "the target did not answer within its budget",
    ),
    (Outcome::Error, "the harness or the target connection broke"),
];

/// Cell text of an outcome (short, distinct for every outcome).
fn label(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
        Outcome::NonStrict => "should",
        Outcome::Informational => "info",
        Outcome::Unsupported => "n/s",
        Outcome::Skipped => "skip",
        Outcome::Xfail => "xfail",
        Outcome::Xpass => "XPASS",
        Outcome::Timeout => "TIME",
        Outcome::Error => "ERR",
    }
}

/// The self-contained HTML page: run metadata, a legend, per-column totals, and the grid (a
/// static table, readable without JavaScript). Clicking a cell opens a detail panel next to
/// it naming the case and the target, with the failures, requirement ids and replay command.
pub fn html(m: &Matrix) -> String {
    let mut out = String::new();
    out.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>virtio-conform matrix</title><style>\n");
    out.push_str("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}\n");
    out.push_str("th.col{writing-mode:vertical-rl;transform:rotate(180deg)}td.cell{cursor:pointer;text-align:center}\n");
    out.push_str(".pass{background:#8c8}.fail{background:#e66}.non_strict{background:#fc6}.informational{background:#9cf}.unsupported{background:#ddd}.skipped{background:#eee;color:#666}\n");
    out.push_str(".xfail{background:repeating-linear-gradient(45deg,#fff,#fff 3px,#c9b3e6 3px,#c9b3e6 6px);font-style:italic}.xpass{background:#f9c;font-weight:bold}.timeout{background:#c6f;font-weight:bold}.error{background:#666;color:#fff}.na{background:#fff}\n");
    out.push_str(".sev-critical{outline:3px solid #900;outline-offset:-3px}.sev-high{outline:2px dashed #900;outline-offset:-2px}\n");
    out.push_str("#legend td{padding:2px 8px}#legend .swatch{width:4em;text-align:center}\n");
    out.push_str("#detail{display:none;position:absolute;white-space:pre-wrap;background:#fffff0;border:1px solid #666;box-shadow:2px 2px 6px #888;padding:6px;max-width:60em;z-index:10}\n");
    out.push_str(
        "tfoot td{font-size:11px;vertical-align:top;white-space:nowrap}</style></head><body>\n",
    );
    out.push_str("<h1>virtio-conform: case × target</h1>\n<p id=\"meta\">");
    out.push_str(&format!(
        "{} · generated {} · {} cases × {} targets</p>\n",
        esc(&m.tool),
        esc(&m.generated),
        m.rows.len(),
        m.columns.len()
    ));
    out.push_str("<ul id=\"targets\">");
    for c in &m.columns {
        out.push_str(&format!(
            "<li>{}: {}</li>",
            esc(&c.label()),
            esc(&c.implementation)
        ));
    }
    out.push_str("</ul>\n<table id=\"legend\"><caption>Legend</caption>");
    for (o, what) in LEGEND {
        out.push_str(&format!(
            "<tr><td class=\"swatch {}\" data-legend=\"{}\">{}</td><td>{} — {}</td></tr>",
            o.name(),
            o.name(),
            label(o),
            o.name(),
            esc(what)
        ));
    }
    out.push_str("<tr><td class=\"swatch fail sev-critical\">FAIL</td><td>severity critical: the device touched guest memory it must not (solid frame)</td></tr>");
    out.push_str("<tr><td class=\"swatch fail sev-high\">FAIL</td><td>severity high: the target crashed, hung or panicked (dashed frame)</td></tr>");
    out.push_str("<tr><td class=\"swatch na\"></td><td>the case does not apply to this device or version</td></tr>");
    out.push_str("</table>\n<div id=\"detail\"></div>\n");
    out.push_str("<table id=\"grid\"><thead><tr><th>case</th>");
    for (i, c) in m.columns.iter().enumerate() {
        out.push_str(&format!(
            "<th class=\"col\" data-col=\"{i}\">{}</th>",
            esc(&c.label())
        ));
    }
    out.push_str("</tr></thead><tbody>\n");
    for (case, cells) in &m.rows {
        out.push_str(&format!("<tr><th>{}</th>", esc(case)));
        for (i, c) in cells.iter().enumerate() {
            let (class, text) = match c.outcome {
                Some(o) => (o.name(), label(o)),
                None => ("na", ""),
            };
            let sev = match c.severity {
                Severity::Critical => " sev-critical",
                Severity::High => " sev-high",
                _ => "",
            };
            let title = match c.outcome {
                Some(o) if c.severity > Severity::None => {
                    format!("{} ({})", o.name(), c.severity.name())
                }
                Some(o) => o.name().to_string(),
                None => "does not apply".into(),
            };
            out.push_str(&format!(
                "<td class=\"cell {class}{sev}\" data-outcome=\"{class}\" data-severity=\"{}\" data-col=\"{i}\" title=\"{}\" data-detail=\"{}\">{}</td>",
                c.severity.name(),
                esc(&title),
                esc(&c.detail),
                text
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody><tfoot><tr><th>totals</th>");
    for c in &m.columns {
        let t: Vec<String> = c
            .totals
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        out.push_str(&format!(
            "<td class=\"totals\">{}</td>",
            esc(&t.join("\n")).replace('\n', "<br>")
        ));
    }
    out.push_str("</tr></tfoot></table>\n<script>\n");
    out.push_str("var cols=[");
    for (i, c) in m.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&c.label()).unwrap_or_default());
    }
    out.push_str("];\n");
    out.push_str("var panel=document.getElementById('detail');\n");
    out.push_str("document.querySelectorAll('td.cell').forEach(function(td){td.addEventListener('click',function(ev){var r=td.getBoundingClientRect();panel.textContent=td.parentNode.firstChild.textContent+' on '+cols[+td.dataset.col]+': '+td.title+'\\n'+td.dataset.detail;panel.style.left=(window.scrollX+r.right+4)+'px';panel.style.top=(window.scrollY+r.top)+'px';panel.style.display='block';panel.dataset.col=td.dataset.col;ev.stopPropagation();});});\n");
    out.push_str("document.addEventListener('click',function(){panel.style.display='none';});\n");
    // A link to one cell (`matrix.html#cell=<case>/<column>`) opens its details.
    out.push_str("(function(){var m=/^#cell=([^/]+)\\/(\\d+)$/.exec(decodeURIComponent(location.hash));if(!m)return;document.querySelectorAll('#grid tbody tr').forEach(function(tr){if(tr.firstChild.textContent===m[1]){var td=tr.querySelectorAll('td.cell')[+m[2]];if(td){td.scrollIntoView();td.click();}}});})();\n");
    out.push_str("document.body.setAttribute('data-cells', String(document.querySelectorAll('td.cell').length));\n");
    out.push_str("</script></body></html>\n");
    out
}
