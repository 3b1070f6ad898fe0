//! `virtio-conform matrix`: every case on several targets, as one JSON document and one
//! self-contained HTML page (a case × target grid coloured by outcome, details per cell).

use crate::outcome::Outcome;
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
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Outcome (`null` when the case does not apply to the column).
    pub outcome: Option<Outcome>,
    /// Details: failures with requirement ids, reason, replay command.
    pub detail: String,
}

/// The matrix document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    /// Always `virtio-conform/matrix/1`.
    pub schema: String,
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
        })
        .collect();
    let mut rows: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
    for (i, r) in reports.iter().enumerate() {
        for res in &r.results {
            let row = rows.entry(res.case.clone()).or_insert_with(|| {
                vec![
                    Cell {
                        outcome: None,
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
                detail: detail.join("\n"),
            };
        }
    }
    Matrix {
        schema: "virtio-conform/matrix/1".into(),
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

/// The self-contained HTML page: a static table (readable without JavaScript), with a small
/// script that shows a cell's details when it is clicked.
pub fn html(m: &Matrix) -> String {
    let mut out = String::new();
    out.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>virtio-conform matrix</title><style>\n");
    out.push_str("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}\n");
    out.push_str("th.col{writing-mode:vertical-rl;transform:rotate(180deg)}td.cell{cursor:pointer;text-align:center}\n");
    out.push_str(".pass{background:#8c8}.fail{background:#e66}.non_strict{background:#fc6}.informational{background:#9cf}.unsupported,.skipped{background:#ddd}.xfail{background:#cdb}.xpass{background:#f9c}.timeout{background:#c6f}.error{background:#999}.na{background:#fff}\n");
    out.push_str("#detail{white-space:pre-wrap;border:1px solid #999;padding:6px;margin:8px 0;min-height:2em}</style></head><body>\n");
    out.push_str("<h1>virtio-conform: case × target</h1><div id=\"detail\">Click a cell for details.</div>\n");
    out.push_str("<table id=\"grid\"><thead><tr><th>case</th>");
    for c in &m.columns {
        out.push_str(&format!(
            "<th class=\"col\">{} {} v{}</th>",
            esc(&c.target),
            esc(&c.device),
            c.version
        ));
    }
    out.push_str("</tr></thead><tbody>\n");
    for (case, cells) in &m.rows {
        out.push_str(&format!("<tr><th>{}</th>", esc(case)));
        for c in cells {
            let (class, label) = match c.outcome {
                Some(o) => (o.name(), o.name()),
                None => ("na", ""),
            };
            out.push_str(&format!(
                "<td class=\"cell {class}\" data-outcome=\"{class}\" title=\"{}\">{}</td>",
                esc(&c.detail),
                esc(label)
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n<script>\n");
    out.push_str("document.querySelectorAll('td.cell').forEach(function(td){td.addEventListener('click',function(){document.getElementById('detail').textContent=td.parentNode.firstChild.textContent+' / '+td.dataset.outcome+'\\n'+td.title;});});\n");
    out.push_str("document.body.setAttribute('data-cells', String(document.querySelectorAll('td.cell').length));\n");
    out.push_str("</script></body></html>\n");
    out
}
